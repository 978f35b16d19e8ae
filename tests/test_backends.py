"""Backends: torch and ONNX Runtime agree with the model, providers only where they load, the factory's choices."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.archs.imdn import IMDN
from sr_deploy.errors import GateFailedError, MissingDependencyError, SRDeployError
from sr_deploy.export.onnx import random_references
from sr_deploy.runtime import factory
from sr_deploy.runtime.ort_backend import CPU, OrtBackend, gpu_present, provider_status, resolve_providers
from sr_deploy.runtime.torch_backend import (
    TorchBackend,
    check_precision,
    cpu_bf16_support,
    cpu_flags,
    physical_cores,
    require_precision,
)

SHA = "cd" * 32
NO_GPU = pytest.mark.skipif(gpu_present(), reason="checks the behaviour of a machine without a GPU")


@pytest.fixture(scope="module")
def small(tiny_model: IMDN) -> IMDN:
    return tiny_model


@pytest.fixture(scope="module")
def lr() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 11, 7), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(small: IMDN, lr: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return small(torch.from_numpy(lr)).numpy()


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by the factory tests: the ONNX export is made once and reused (same weights hash)."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def onnx_paths(tiny_onnx: dict[str, Path]) -> dict[str, Path]:
    return tiny_onnx


# ---------------------------------------------------------------------------------------------- torch
@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_fp32_matches_the_model(small: IMDN, lr: np.ndarray, expected: np.ndarray, channels_last: bool) -> None:
    backend = TorchBackend(small, channels_last=channels_last)
    out = backend.run_timed(lr)
    assert out.output.dtype == np.float32 and out.output.flags.c_contiguous
    assert out.output.shape == (1, 3, 44, 28)
    assert np.abs(out.output - expected).max() <= 1e-5
    assert 0 <= out.forward_ms <= out.end_to_end_ms
    assert backend.info.label == "torch-cpu-fp32"
    assert backend.info.details["channels_last"] is channels_last


def test_torch_backend_leaves_the_callers_model_alone(small: IMDN) -> None:
    TorchBackend(small, precision="fp16", channels_last=True)
    assert next(small.parameters()).dtype == torch.float32


@pytest.mark.skipif(cpu_bf16_support() is not None, reason="this CPU has no native bf16")
def test_torch_bf16_is_close_to_fp32(small: IMDN, lr: np.ndarray, expected: np.ndarray) -> None:
    out = TorchBackend(small, precision="bf16", channels_last=True).run(lr)
    assert out.dtype == np.float32
    assert 10 * np.log10(1.0 / np.mean((out.astype(np.float64) - expected) ** 2)) > 35.0


def test_bf16_support_comes_from_the_cpu_flags(tmp_path: Path) -> None:
    assert cpu_bf16_support(frozenset({"avx2", "avx512f"})) is not None
    assert cpu_bf16_support(frozenset({"amx_bf16"})) is None
    assert cpu_bf16_support(frozenset({"avx512_bf16"})) is None
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 sse\n\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx512_bf16", "sse"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_physical_cores_ignores_hyperthreads(tmp_path: Path) -> None:
    blocks = [f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n" for i in range(4)]
    info = tmp_path / "cpuinfo"
    info.write_text("\n".join(blocks) + "\n")
    # Four logical CPUs on two cores; never more than this process may use.
    assert physical_cores(info) == min(2, len(os.sched_getaffinity(0)))
    assert physical_cores(tmp_path / "missing") >= 1


def test_precision_gate_refuses_a_large_drop(small: IMDN) -> None:
    refs = random_references(small.spec, seed=1, shapes=((9, 7),))
    check = check_precision(small, refs, precision="bf16", min_psnr_db=1e9)
    assert not check.passed and check.y_drop_db is None
    with pytest.raises(GateFailedError, match="--precision bf16: refused"):
        require_precision(check)
    ok = check_precision(small, refs, precision="bf16", min_psnr_db=0.0)
    assert require_precision(ok) is ok


def test_torch_refuses_unknown_precision_and_device(small: IMDN) -> None:
    with pytest.raises(SRDeployError, match="--precision"):
        TorchBackend(small, precision="int8")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="--device cuda"):
            TorchBackend(small, device="cuda")


# ---------------------------------------------------------------------------------------------- onnxruntime
@pytest.mark.parametrize("as_bytes", [False, True])
def test_ort_fp32_matches_torch(
    onnx_paths: dict[str, Path], lr: np.ndarray, expected: np.ndarray, as_bytes: bool
) -> None:
    src = onnx_paths["fp32"].read_bytes() if as_bytes else onnx_paths["fp32"]
    backend = OrtBackend(src, threads=1)
    out = backend.run_timed(lr)
    assert out.output.dtype == np.float32
    assert np.abs(out.output - expected).max() <= 1e-4
    assert backend.info.precision == "fp32"
    assert backend.info.details["intra_op_threads"] == 1


def test_ort_fp16_io_graph_takes_and_returns_float32(
    onnx_paths: dict[str, Path], lr: np.ndarray, expected: np.ndarray
) -> None:
    backend = OrtBackend(onnx_paths["fp16"])
    out = backend.run(lr)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - expected).max() < 1e-2
    assert backend.info.precision == "fp16"


@NO_GPU
def test_without_a_gpu_only_the_cpu_provider_is_asked_for(
    onnx_paths: dict[str, Path], capfd: pytest.CaptureFixture[str]
) -> None:
    status = provider_status()
    assert status[CPU] is None
    assert status["CUDAExecutionProvider"] is not None
    assert resolve_providers(None) == [CPU]
    assert resolve_providers(["cuda", "cpu"]) == [CPU]
    backend = OrtBackend(onnx_paths["fp32"])
    backend.run(np.zeros((1, 3, 4, 4), dtype=np.float32))
    assert backend.info.details["providers"] == [CPU]
    assert backend.info.device == "cpu"
    captured = capfd.readouterr()
    assert "CUDA" not in captured.err and "cuda" not in captured.err.lower()
    with pytest.raises(MissingDependencyError, match="CUDAExecutionProvider cannot run here"):
        resolve_providers(["cuda"])


def test_unknown_provider_and_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SRDeployError, match="unknown execution provider"):
        resolve_providers(["npu"])
    with pytest.raises(SRDeployError, match="no such ONNX file"):
        OrtBackend(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    # On the CPU the graph is parsed first (for the split-free rewrite); without the rewrite ORT parses it.
    with pytest.raises(SRDeployError, match=r"bad\.onnx: not an ONNX model"):
        OrtBackend(bad)
    with pytest.raises(SRDeployError, match=r"bad\.onnx: onnxruntime cannot load it"):
        OrtBackend(bad, cpu_rewrite=False)


# ---------------------------------------------------------------------------------------------- factory
def test_available_backends_names_every_kind() -> None:
    avail = factory.available_backends()
    assert set(avail) == {"torch", "onnxruntime", "openvino", "tensorrt"}
    assert avail["torch"] is None and avail["onnxruntime"] is None


@NO_GPU
@pytest.mark.parametrize(
    ("missing", "bf16_native", "fp32_pick", "bf16_pick"),
    [
        ((), True, "openvino", "openvino"),
        ((), False, "openvino", "torch"),
        (("openvino",), True, "onnxruntime", "torch"),
        (("openvino", "onnxruntime"), True, "torch", "torch"),
    ],
)
def test_auto_policy_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch,
    missing: tuple[str, ...],
    bf16_native: bool,
    fp32_pick: str,
    bf16_pick: str,
) -> None:
    from sr_deploy.runtime import ov_backend

    avail = {"torch": None, "onnxruntime": None, "openvino": None, "tensorrt": "not installed"}
    avail.update({k: "not installed" for k in missing})
    monkeypatch.setattr(factory, "available_backends", lambda: dict(avail))
    monkeypatch.setattr(factory, "cuda_available", lambda: False)
    monkeypatch.setattr(ov_backend, "bf16_capable", lambda: None if bf16_native else "no bf16")
    assert factory.choose_auto("fp32", "auto") == fp32_pick
    assert factory.choose_auto("bf16", "cpu") == bf16_pick
    assert factory.choose_auto("fp16", "cpu") == "torch"


def test_auto_on_this_cpu_is_openvino(small: IMDN, lr: np.ndarray, expected: np.ndarray, work_dir: Path) -> None:
    # openvino is a dependency on every platform it has wheels for, so a fresh install picks it.
    backend = factory.make_backend("auto", small, device="cpu", weights_sha256=SHA, work_dir=work_dir)
    assert backend.info.name == "openvino" and backend.info.precision == "fp32"
    assert np.abs(backend.run(lr) - expected).max() <= 1e-4


def test_make_backend_kinds_agree(small: IMDN, lr: np.ndarray, expected: np.ndarray, work_dir: Path) -> None:
    torch_b = factory.make_backend("torch", small, device="cpu")
    assert torch_b.info.name == "torch" and torch_b.info.details["channels_last"] is True
    ort_b = factory.make_backend("onnxruntime", small, device="cpu", weights_sha256=SHA, work_dir=work_dir)
    assert ort_b.info.name == "onnxruntime"
    for b in (torch_b, ort_b):
        assert np.abs(b.run(lr) - expected).max() <= 1e-4


def test_make_backend_reuses_the_onnx_in_work_dir(small: IMDN, work_dir: Path) -> None:
    factory.make_backend("onnxruntime", small, device="cpu", weights_sha256=SHA, work_dir=work_dir)
    (path,) = work_dir.glob("*.onnx")
    stamp = path.stat().st_mtime_ns
    factory.make_backend("onnxruntime", small, device="cpu", weights_sha256=SHA, work_dir=work_dir)
    assert path.stat().st_mtime_ns == stamp
    assert sorted(work_dir.glob("*.onnx")) == [path]
    # The cache is keyed by the tensors, not by the claimed hash: other weights get their own graph, never the
    # cached one, and the same tensors under another label reuse it.
    factory.make_backend("onnxruntime", small, device="cpu", weights_sha256="ef" * 32, work_dir=work_dir)
    assert sorted(work_dir.glob("*.onnx")) == [path]
    other = copy.deepcopy(small)
    with torch.no_grad():
        next(other.parameters()).add_(0.01)
    factory.make_backend("onnxruntime", other, device="cpu", weights_sha256="ef" * 32, work_dir=work_dir)
    assert len(list(work_dir.glob("*.onnx"))) == 2


def test_make_backend_refuses_what_cannot_run(small: IMDN) -> None:
    with pytest.raises(SRDeployError, match="--backend 'bogus'"):
        factory.make_backend("bogus", small)
    with pytest.raises(SRDeployError, match="--precision 'int4'"):
        factory.make_backend("torch", small, precision="int4")
    with pytest.raises(SRDeployError, match="bf16"):
        factory.make_backend("onnxruntime", small, precision="bf16", device="cpu")
    if factory.available_backends()["tensorrt"] is not None:
        with pytest.raises(MissingDependencyError):
            factory.make_backend("tensorrt", small)


@pytest.mark.skipif(cpu_bf16_support() is not None, reason="this CPU has no native bf16")
def test_bf16_backend_records_its_gate(small: IMDN) -> None:
    refs = random_references(small.spec, seed=2, shapes=((9, 7),))
    backend = factory.make_backend("torch", small, precision="bf16", device="cpu", references=refs)
    gate = backend.info.details["bf16_gate"]
    assert gate["passed"] is True and gate["precision"] == "bf16"
