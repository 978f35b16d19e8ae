"""The OpenVINO CPU backend: agrees with torch, computes in the precision asked for (never OpenVINO's own bf16
default on AMX CPUs when fp32 is asked), compiles per shape with a bounded cache, and refuses bad input in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.archs.imdn import IMDN
from sr_deploy.errors import GateFailedError, MissingDependencyError, SRDeployError
from sr_deploy.export.onnx import random_references
from sr_deploy.runtime import factory
from sr_deploy.runtime.ov_backend import openvino_status

pytestmark = pytest.mark.skipif(openvino_status() is not None, reason=f"openvino cannot run: {openvino_status()}")


def _bf16_native() -> bool:
    from sr_deploy.runtime.ov_backend import bf16_capable

    return bf16_capable() is None


@pytest.fixture(scope="module")
def small(tiny_model: IMDN) -> IMDN:
    return tiny_model


@pytest.fixture(scope="module")
def graphs(tiny_onnx: dict[str, Path]) -> dict[str, Path]:
    return tiny_onnx


def _torch(model: IMDN, lr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        out: np.ndarray = model(torch.from_numpy(lr)).numpy()
    return out


def test_fp32_agrees_with_torch_and_really_computes_in_fp32(small: IMDN, graphs: dict[str, Path]) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    backend = OpenVinoBackend(graphs["fp32"])
    rng = np.random.default_rng(0)
    for hw in ((11, 7), (16, 24)):
        lr = rng.random((1, 3, *hw), dtype=np.float32)
        timed = backend.run_timed(lr)
        assert timed.output.shape == (1, 3, 4 * hw[0], 4 * hw[1])
        assert np.abs(timed.output - _torch(small, lr)).max() <= 1e-4
        assert 0 < timed.forward_ms <= timed.end_to_end_ms
        # The trap: left to itself, OpenVINO computes bf16 on AMX CPUs.
        assert backend.compiled_precision(lr.shape) == "f32"
    info = backend.info
    assert (info.name, info.device, info.precision) == ("openvino", "cpu", "fp32")
    assert info.details["graph"] == "split-free" and info.details["static_compiles"] == 2


def test_output_is_not_overwritten_by_the_next_run(graphs: dict[str, Path]) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    backend = OpenVinoBackend(graphs["fp32"])
    a_in, b_in = np.zeros((1, 3, 8, 8), np.float32), np.ones((1, 3, 8, 8), np.float32)
    a = backend.run(a_in)
    a_copy = a.copy()
    backend.run(b_in)
    assert np.array_equal(a, a_copy)


def test_the_compile_cache_is_bounded(graphs: dict[str, Path]) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    backend = OpenVinoBackend(graphs["fp32"], cache_size=1)
    x1, x2 = np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 3, 8, 9), np.float32)
    backend.prepare(x1.shape)  # type: ignore[arg-type]
    backend.run(x1)
    assert backend.info.details["static_compiles"] == 1
    backend.run(x2)
    backend.run(x1)  # evicted by x2: compiled again
    assert backend.info.details["static_compiles"] == 3


def test_the_graph_as_exported_gives_the_same_output(graphs: dict[str, Path]) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    lr = np.random.default_rng(2).random((1, 3, 9, 10), dtype=np.float32)
    free = OpenVinoBackend(graphs["fp32"]).run(lr)
    plain = OpenVinoBackend(graphs["fp32"], rewrite=False)
    assert plain.info.details["graph"] == "as exported"
    assert np.abs(plain.run(lr) - free).max() <= 1e-5


@pytest.mark.skipif(not _bf16_native(), reason="this CPU has no native bf16 for OpenVINO")
def test_bf16_is_really_bf16_and_close(small: IMDN, graphs: dict[str, Path]) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    lr = np.random.default_rng(1).random((1, 3, 16, 16), dtype=np.float32)
    backend = OpenVinoBackend(graphs["fp32"], precision="bf16")
    out = backend.run(lr)
    assert backend.compiled_precision(lr.shape) == "bf16"
    err = out.astype(np.float64) - _torch(small, lr)
    psnr = 10 * np.log10(1.0 / np.mean(err**2))
    # bf16 keeps 8 mantissa bits: clearly not fp32 (> 1e-4 off somewhere), still close (> 35 dB).
    assert np.abs(err).max() > 1e-4 and psnr > 35


@pytest.mark.skipif(not _bf16_native(), reason="this CPU has no native bf16 for OpenVINO")
def test_factory_bf16_runs_and_records_the_gate(small: IMDN) -> None:
    refs = random_references(small.spec, seed=0)
    backend = factory.make_backend("openvino", small, precision="bf16", device="cpu", references=refs)
    gate = backend.info.details["bf16_gate"]
    assert backend.info.precision == "bf16" and gate["passed"] is True


@pytest.mark.skipif(not _bf16_native(), reason="this CPU has no native bf16 for OpenVINO")
def test_factory_bf16_gate_refuses(small: IMDN, monkeypatch: pytest.MonkeyPatch) -> None:
    from sr_deploy.runtime import torch_backend

    real = torch_backend.check_precision

    def strict(*args: object, **kwargs: object) -> object:
        kwargs["min_psnr_db"] = 1e9  # no HR images: the PSNR rule applies; nothing meets 1e9 dB
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(factory, "check_precision", strict)
    refs = random_references(small.spec)
    with pytest.raises(GateFailedError, match="--precision bf16: refused"):
        factory.make_backend("openvino", small, precision="bf16", device="cpu", references=refs)


def test_bad_input_is_one_clear_error(tmp_path: Path, graphs: dict[str, Path], small: IMDN) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    with pytest.raises(SRDeployError, match=r"none\.onnx: no such ONNX file"):
        OpenVinoBackend(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(SRDeployError, match=r"bad\.onnx: not an ONNX model"):
        OpenVinoBackend(bad)
    with pytest.raises(SRDeployError, match=r"bad\.onnx: openvino cannot read it"):
        OpenVinoBackend(bad, rewrite=False)
    with pytest.raises(SRDeployError, match=r"fp16\.onnx: the openvino backend takes an fp32 graph"):
        OpenVinoBackend(graphs["fp16"])
    with pytest.raises(SRDeployError, match="--precision 'fp16'"):
        OpenVinoBackend(graphs["fp32"], precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(SRDeployError, match="NCHW"):
        OpenVinoBackend(graphs["fp32"]).run(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(SRDeployError, match="--precision fp16: the openvino backend"):
        factory.make_backend("openvino", small, precision="fp16", device="cpu")
    with pytest.raises(SRDeployError, match="--device cuda: the openvino backend runs on the CPU"):
        factory.make_backend("openvino", small, device="cuda")


def test_missing_openvino_is_named(monkeypatch: pytest.MonkeyPatch, graphs: dict[str, Path]) -> None:
    from sr_deploy.runtime import ov_backend

    monkeypatch.setattr(ov_backend, "openvino_status", lambda: "openvino is not installed (pip install openvino)")
    with pytest.raises(MissingDependencyError, match="pip install openvino"):
        ov_backend.OpenVinoBackend(graphs["fp32"])
