"""One entry point for every runtime: ``make_backend(kind, model, ...)`` and what is usable on this machine.

``auto`` is a fixed policy from measurement (benchmarks/results/cpu_backends.md), not a timing race at start-up,
which would be slow and noisy:

- GPU present: TensorRT where it can be used, else torch on CUDA.
- CPU, fp32: OpenVINO (the only runtime here at >= 90% of the fp32 matmul peak), else ONNX Runtime (split-free
  graph), else torch.
- CPU, bf16: OpenVINO where its CPU plugin has native bf16 (several times faster than torch), else torch
  channels_last. Both pass the same bf16 accuracy gate.
- CPU, fp16: torch.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet
from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.runtime.base import BACKEND_KINDS, Backend
from sr_deploy.runtime.torch_backend import (
    PrecisionCheck,
    TorchBackend,
    TorchPrecision,
    check_precision,
    cpu_bf16_support,
    cuda_available,
    require_precision,
)

PRECISIONS = ("fp32", "fp16", "bf16")


def _tensorrt_status() -> str | None:
    try:
        from sr_deploy.export.tensorrt import require_tensorrt

        importlib.import_module("sr_deploy.runtime.trt_backend")
        require_tensorrt()
    except ImportError as e:
        return f"the tensorrt backend is not available ({e})"
    except SRDeployError as e:
        return str(e)
    from sr_deploy.runtime.ort_backend import gpu_present

    return None if gpu_present() else "no NVIDIA GPU is visible"


def available_backends() -> dict[str, str | None]:
    """Backend kind -> None when usable here, else the reason it is not."""
    from sr_deploy.runtime.ort_backend import CPU, provider_status
    from sr_deploy.runtime.ov_backend import openvino_status

    return {
        "torch": None,
        "onnxruntime": provider_status()[CPU],
        "openvino": openvino_status(),
        "tensorrt": _tensorrt_status(),
    }


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise SRDeployError(f"--device {device!r}: expected auto, cpu or cuda")
    return device


def choose_auto(precision: str, device: str) -> str:
    """The backend kind `auto` stands for (see the module docstring for the measurements behind it)."""
    usable = available_backends()
    gpu_wanted = device.startswith("cuda") or (device == "auto" and (cuda_available() or usable["tensorrt"] is None))
    if gpu_wanted and usable["tensorrt"] is None and precision in ("fp32", "fp16"):
        return "tensorrt"
    if gpu_wanted and cuda_available():
        return "torch"
    if precision == "fp32" and usable["openvino"] is None:
        return "openvino"
    if precision == "bf16" and usable["openvino"] is None:
        from sr_deploy.runtime.ov_backend import bf16_capable

        if bf16_capable() is None:
            return "openvino"
    if precision == "fp32" and usable["onnxruntime"] is None:
        return "onnxruntime"
    return "torch"


def graph_cache() -> Path | None:
    """Where commands keep exported graphs between runs ($SRDEPLOY_CACHE/graphs or ~/.cache/srdeploy/graphs), so
    that only the first run with given weights pays the export and its verification (~4 s for imdn-b7); None when
    that folder cannot be made (a temporary folder is used instead)."""
    from sr_deploy.checkpoints import cache_dir

    folder = cache_dir() / "graphs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _onnx_for(model: SRNet, precision: str, weights_sha256: str, work_dir: Path) -> Path:
    """The model's ONNX graph in `work_dir`, exported (and verified) unless an identical one is already there."""
    from sr_deploy.export.onnx import export_onnx, read_onnx_metadata

    tag = weights_sha256[:12] if weights_sha256 else "unhashed"
    path = work_dir / f"{model.spec.name}-{precision}-{tag}.onnx"
    if weights_sha256 and path.is_file():
        try:
            meta = read_onnx_metadata(path)
        except SRDeployError:
            meta = None
        # Reuse only what we would write again: same weights, spec, precision and srdeploy version.
        if (
            meta is not None
            and meta.weights_sha256 == weights_sha256
            and meta.spec == model.spec.collapsed()
            and meta.precision == precision
            and meta.srdeploy_version == __version__
            and meta.static_hw is None
        ):
            return path
    export_onnx(model, path, precision="fp16" if precision == "fp16" else "fp32", weights_sha256=weights_sha256)
    return path


def make_backend(
    kind: str,
    model: SRNet,
    *,
    precision: str = "fp32",
    device: str = "auto",
    channels_last: bool | None = None,
    weights_sha256: str = "",
    work_dir: Path | None = None,
    references: Sequence[Any] | None = None,
    providers: Sequence[str] | None = None,
) -> Backend:
    """A ready Backend of `kind` for `model`.

    - ``onnxruntime`` exports the model to ONNX in `work_dir` (reused when `weights_sha256` matches) or in a
      temporary folder, with the usual export verification.
    - ``torch`` with bf16 on the CPU runs the bf16 accuracy gate on `references` (ReferenceImage list; Set5 from
      ../shared when present, else seeded random inputs) and refuses bf16 when it fails.
    - ``tensorrt`` is imported lazily; without TensorRT it raises MissingDependencyError with how to get it.
    """
    if kind not in BACKEND_KINDS:
        raise SRDeployError(f"--backend {kind!r}: expected one of {', '.join(BACKEND_KINDS)}")
    if precision not in PRECISIONS:
        raise SRDeployError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dev = _resolve_device(device)
    if kind == "auto":
        kind = choose_auto(precision, device)
    if kind == "torch":
        return _make_torch(model, precision, dev, channels_last, references)
    if kind == "onnxruntime":
        # ONNX Runtime finds its own GPU providers (torch may be a CPU build on a GPU machine): pass "auto" through.
        return _make_ort(model, precision, device, weights_sha256, work_dir, providers)
    if kind == "openvino":
        return _make_openvino(model, precision, device, weights_sha256, work_dir, references)
    return _make_tensorrt(model, precision, weights_sha256, work_dir)


def _make_torch(
    model: SRNet, precision: str, device: str, channels_last: bool | None, references: Sequence[Any] | None
) -> TorchBackend:
    cpu = device == "cpu"
    # channels_last: measured faster on the CPU (oneDNN's blocked NHWC convs); on CUDA it pays off in half only.
    nhwc = channels_last if channels_last is not None else (cpu or precision != "fp32")
    prec: TorchPrecision = "bf16" if precision == "bf16" else ("fp16" if precision == "fp16" else "fp32")
    check = None
    if cpu and prec == "bf16":
        reason = cpu_bf16_support()
        if reason is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
        check = _bf16_gate(model, references)
    backend = TorchBackend(model, device=device, precision=prec, channels_last=nhwc)
    if check is not None:
        backend.add_detail("bf16_gate", check.to_dict())
    return backend


def _bf16_gate(
    model: SRNet, references: Sequence[Any] | None, run: Callable[[np.ndarray], np.ndarray] | None = None
) -> PrecisionCheck:
    """The bf16 accuracy gate on `references` (default: Set5 or seeded random inputs); raises when it fails.
    `run` is the bf16 side (default: torch bf16)."""
    refs, label = _bf16_references(model, references)
    return require_precision(check_precision(model, refs, precision="bf16", label=label, run=run))


def _bf16_references(model: SRNet, references: Sequence[Any] | None) -> tuple[Sequence[Any], str]:
    from sr_deploy.export.onnx import default_reference_folder, load_reference_images, random_references

    if references is not None:
        return references, f"{len(references)} reference images"
    folder = default_reference_folder()
    if folder is not None and model.spec.scale == 4:
        return load_reference_images(folder, scale=4), f"Set5 ({folder})"
    return random_references(model.spec, seed=0), "random inputs (seed 0)"


def _graph(model: SRNet, precision: str, weights_sha256: str, work_dir: Path | None) -> Path | bytes:
    """The verified ONNX graph: its file in `work_dir` (reused when the weights hash matches), or without a work
    folder its bytes (exported in a temporary folder that is gone when this returns)."""
    if work_dir is not None:
        if not work_dir.is_dir():
            raise SRDeployError(f"work folder {work_dir} does not exist")
        return _onnx_for(model, precision, weights_sha256, work_dir)
    with tempfile.TemporaryDirectory(prefix="srdeploy-graph-") as tmp:
        return _onnx_for(model, precision, "", Path(tmp)).read_bytes()


def _make_ort(
    model: SRNet,
    precision: str,
    device: str,
    weights_sha256: str,
    work_dir: Path | None,
    providers: Sequence[str] | None,
) -> Backend:
    from sr_deploy.runtime.ort_backend import OrtBackend

    if precision == "bf16":
        raise SRDeployError("--precision bf16: the onnxruntime backend runs fp32 or fp16 graphs; use --backend torch")
    if providers is None and device != "auto":
        providers = ["cpu"] if device == "cpu" else ["cuda", "cpu"]
    return OrtBackend(_graph(model, precision, weights_sha256, work_dir), providers=providers, trt_cache_dir=work_dir)


def _make_openvino(
    model: SRNet,
    precision: str,
    device: str,
    weights_sha256: str,
    work_dir: Path | None,
    references: Sequence[Any] | None,
) -> Backend:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    if device.startswith("cuda"):
        raise SRDeployError(f"--device {device}: the openvino backend runs on the CPU; use --device cpu")
    if precision not in ("fp32", "bf16"):
        raise SRDeployError(f"--precision {precision}: the openvino backend runs fp32 or bf16 on the CPU")
    ov_precision: Literal["fp32", "bf16"] = "bf16" if precision == "bf16" else "fp32"
    # bf16 is OpenVINO's compute precision for the fp32 graph, not a graph of its own.
    backend = OpenVinoBackend(_graph(model, "fp32", weights_sha256, work_dir), precision=ov_precision)
    if ov_precision == "bf16":
        backend.add_detail("bf16_gate", _bf16_gate(model, references, run=backend.run).to_dict())
    return backend


def _make_tensorrt(model: SRNet, precision: str, weights_sha256: str, work_dir: Path | None) -> Backend:
    from sr_deploy.export.tensorrt import require_tensorrt

    require_tensorrt()
    try:
        trt_backend = importlib.import_module("sr_deploy.runtime.trt_backend")
    except ImportError as e:
        raise MissingDependencyError(f"the tensorrt backend is not available ({e})") from None
    build = getattr(trt_backend, "backend_for_model", None)
    if build is None:
        raise MissingDependencyError(
            "the tensorrt backend cannot build from weights yet: build an engine with srdeploy export-trt"
        )
    backend: Backend = build(model, precision=precision, weights_sha256=weights_sha256, work_dir=work_dir)
    return backend
