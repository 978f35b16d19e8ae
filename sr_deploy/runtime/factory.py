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

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet
from sr_deploy.archs.registry import check_precision_supported
from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.runtime.base import BACKEND_KINDS, Backend
from sr_deploy.runtime.torch_backend import (
    BF16_MAX_Y_DROP_DB,
    PrecisionCheck,
    TorchBackend,
    TorchOptions,
    TorchPrecision,
    check_precision,
    check_torch_options,
    cpu_bf16_support,
    cuda_available,
    cuda_bf16_native,
    cuda_bf16_support,
    require_cuda,
    require_precision,
    torch_runner,
)

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


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
    if precision == "int8":
        # Only ever on request: int8 is the quantized graph the user gave, never a silent step down from fp32.
        if usable["openvino"] is None:
            from sr_deploy.runtime.ov_backend import int8_capable

            if int8_capable() is None:
                return "openvino"
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


def graph_key(model: SRNet, precision: str) -> str:
    """sha256 of what an exported graph is made from: every tensor of the model (names, dtypes, shapes, bytes), its
    spec, the precision and the srdeploy version. The cache is keyed by this content, not by a file's name or its
    metadata, so changed weights can never find an old graph."""
    import torch

    h = hashlib.sha256()
    h.update(json.dumps([model.spec.to_dict(), precision, __version__], sort_keys=True).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _cached_graph(path: Path, model: SRNet, precision: str) -> bool:
    """Whether the cached graph at `path` may be used: its sha256 is the one recorded when it was written (a
    truncated file or one whose weights were edited is not), and its metadata says what we would write again."""
    from sr_deploy.export.onnx import read_onnx_metadata
    from sr_deploy.fileio import digest_matches

    if not digest_matches(path):
        return False
    try:
        meta = read_onnx_metadata(path)
    except SRDeployError:
        return False
    return (
        meta.spec == model.spec.collapsed()
        and meta.precision == precision
        and meta.srdeploy_version == __version__
        and meta.static_hw is None
    )


def _onnx_for(model: SRNet, precision: str, weights_sha256: str, work_dir: Path) -> Path:
    """The model's ONNX graph in `work_dir`, exported (and verified) unless a checked one is already there.

    Anything wrong with a cached graph (cut short, edited, unreadable, written by another version) makes it a miss:
    the graph is exported again and replaces it atomically, then its digest is recorded beside it."""
    from sr_deploy.export.onnx import export_onnx
    from sr_deploy.fileio import record_digest

    path = work_dir / f"{model.spec.name}-{precision}-{graph_key(model, precision)[:16]}.onnx"
    if _cached_graph(path, model, precision):
        return path
    report = export_onnx(
        model, path, precision="fp16" if precision == "fp16" else "fp32", weights_sha256=weights_sha256
    )
    record_digest(path, report.sha256)
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
    cuda_graphs: bool = False,
    compile_mode: str | None = None,
    int8_graph: Path | None = None,
) -> Backend:
    """A ready Backend of `kind` for `model`.

    - ``onnxruntime`` exports the model to ONNX in `work_dir` (reused when `weights_sha256` matches) or in a
      temporary folder, with the usual export verification.
    - ``torch`` with bf16 on the CPU runs the bf16 accuracy gate on `references` (ReferenceImage list; Set5 from
      ../shared when present, else seeded random inputs) and refuses bf16 when it fails. On CUDA, fp16 and bf16
      pass the same kind of gate (fp16: the ONNX export's Y-PSNR drop bound), so a GPU path is held to the CPU's rules.
    - ``torch`` takes `cuda_graphs` (CUDA only) and `compile_mode` (``torch.compile``); ``tensorrt`` takes
      `cuda_graphs`; any other kind given either is a one-line error naming the flag.
    - ``tensorrt`` is imported lazily; without TensorRT it raises MissingDependencyError with how to get it.
    - ``int8`` runs `int8_graph` (written by ``srdeploy quantize`` for these weights; checked) in OpenVINO or ONNX
      Runtime on the CPU; ``auto`` never picks int8 unless it is asked for.
    """
    if kind not in BACKEND_KINDS:
        raise SRDeployError(f"--backend {kind!r}: expected one of {', '.join(BACKEND_KINDS)}")
    if precision not in PRECISIONS:
        raise SRDeployError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    check_precision_supported(model.spec, precision)
    dev = _resolve_device(device)
    named = kind
    if kind == "auto":
        kind = choose_auto(precision, device)
        named = f"auto (= {kind})"
        if dev.startswith("cuda") and kind != "tensorrt":
            # auto fell back to a CPU runtime: say that the GPU is missing, not that that runtime cannot use it.
            require_cuda("cuda")
    check_kind_options(kind, cuda_graphs=cuda_graphs, compile_mode=compile_mode, named=named)
    if precision == "int8" or int8_graph is not None:
        return _make_int8(kind, model, precision, device, weights_sha256, int8_graph, providers)
    if kind == "torch":
        options = TorchOptions(cuda_graphs=cuda_graphs, compile_mode=compile_mode)
        return _make_torch(model, precision, dev, channels_last, references, options)
    if kind == "onnxruntime":
        # ONNX Runtime finds its own GPU providers (torch may be a CPU build on a GPU machine): pass "auto" through.
        return _make_ort(model, precision, device, weights_sha256, work_dir, providers)
    if kind == "openvino":
        return _make_openvino(model, precision, device, weights_sha256, work_dir, references)
    return _make_tensorrt(model, precision, weights_sha256, work_dir, cuda_graphs)


def check_kind_options(kind: str, *, cuda_graphs: bool, compile_mode: str | None, named: str = "") -> None:
    """Refuse, naming the flag, an option the backend `kind` has no use for (``auto`` is checked once resolved;
    `named` is how the user named it, e.g. "auto (= openvino)")."""
    said = named or kind
    if compile_mode is not None and kind not in ("torch", "auto"):
        raise SRDeployError(f"--compile: only the torch backend compiles (--backend {said}); use --backend torch")
    if cuda_graphs and kind not in ("torch", "tensorrt", "auto"):
        raise SRDeployError(f"--cuda-graphs: only the torch and tensorrt backends use CUDA graphs (--backend {said})")


def _make_torch(
    model: SRNet,
    precision: str,
    device: str,
    channels_last: bool | None,
    references: Sequence[Any] | None,
    options: TorchOptions | None = None,
) -> TorchBackend:
    cpu = device == "cpu"
    opts = options or TorchOptions()
    check_torch_options(opts, "cpu" if cpu else "cuda")  # a flag mistake first, before any gate's work
    require_cuda("cpu" if cpu else "cuda")
    # channels_last: measured faster on the CPU (oneDNN's blocked NHWC convs); on CUDA it pays off in half only.
    nhwc = channels_last if channels_last is not None else (cpu or precision != "fp32")
    prec: TorchPrecision = "bf16" if precision == "bf16" else ("fp16" if precision == "fp16" else "fp32")
    check = None
    if cpu and prec == "bf16":
        reason = cpu_bf16_support()
        if reason is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
        check = _bf16_gate(model, references)
    elif not cpu and prec != "fp32":
        check = _cuda_gate(model, prec, device, nhwc, references)
    backend = TorchBackend(model, device=device, precision=prec, channels_last=nhwc, options=opts)
    if check is not None:
        backend.add_detail(f"{prec}_gate", check.to_dict())
    return backend


def _cuda_gate(
    model: SRNet, precision: TorchPrecision, device: str, channels_last: bool, references: Sequence[Any] | None
) -> PrecisionCheck:
    """fp16 / bf16 on CUDA against torch fp32 on the CPU, with the CPU's rules: bf16 may lose at most
    BF16_MAX_Y_DROP_DB of mean Y-PSNR, fp16 the ONNX export's fp16 bound; without HR images the output must stay
    within BF16_MIN_PSNR_DB of fp32. The reduced side is eager torch on the GPU, not the backend itself, so that the
    backend's first image stays cold and its graphs or compiled shapes are made only where they are timed."""
    from sr_deploy.export.onnx import ExportGates

    if precision == "bf16":
        reason = cuda_bf16_support(cuda_bf16_native(), _gpu_name(device))
        if reason is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
    refs, label = _bf16_references(model, references)
    drop = BF16_MAX_Y_DROP_DB if precision == "bf16" else ExportGates().fp16_max_y_psnr_drop_db
    run = torch_runner(model, precision, device=device, channels_last=channels_last)
    check = check_precision(model, refs, precision=precision, label=f"{label} on {device}", max_y_drop_db=drop, run=run)
    return require_precision(check)


def _gpu_name(device: str) -> str:
    import torch

    return str(torch.cuda.get_device_name(torch.device(device)))


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
    return random_references(model.spec, seed=0), "random inputs (seed 0): real reference images not found"


def _graph(model: SRNet, precision: str, weights_sha256: str, work_dir: Path | None) -> Path | bytes:
    """The verified ONNX graph: its file in `work_dir` (reused when the weights hash matches), or without a work
    folder its bytes (exported in a temporary folder that is gone when this returns)."""
    if work_dir is not None:
        if not work_dir.is_dir():
            raise SRDeployError(f"work folder {work_dir} does not exist")
        return _onnx_for(model, precision, weights_sha256, work_dir)
    with tempfile.TemporaryDirectory(prefix="srdeploy-graph-") as tmp:
        return _onnx_for(model, precision, "", Path(tmp)).read_bytes()


def _make_int8(
    kind: str,
    model: SRNet,
    precision: str,
    device: str,
    weights_sha256: str,
    int8_graph: Path | None,
    providers: Sequence[str] | None,
) -> Backend:
    """The int8 graph on the CPU: refused, one line each, without a graph, with a graph of another precision or
    other weights, and on runtimes that have no int8 path here."""
    if precision != "int8":
        raise SRDeployError(f"--onnx: a given graph is run with --precision int8 only (got --precision {precision})")
    if int8_graph is None:
        raise SRDeployError(
            "--precision int8 needs the quantized graph: --onnx model.int8.onnx (make it with srdeploy quantize)"
        )
    if kind in ("torch", "tensorrt"):
        hint = " (build an engine with srdeploy export-trt --precision int8)" if kind == "tensorrt" else ""
        raise SRDeployError(
            f"--precision int8: the {kind} backend does not run the int8 graph here{hint}; "
            "use --backend openvino or onnxruntime"
        )
    if device.startswith("cuda"):
        raise SRDeployError(f"--device {device}: int8 runs on the CPU here (openvino, onnxruntime); use --device cpu")
    from sr_deploy.export.quantize import check_int8_graph

    graph = check_int8_graph(int8_graph, model.spec, weights_sha256)
    if kind == "openvino":
        from sr_deploy.runtime.ov_backend import OpenVinoBackend

        ov_backend = OpenVinoBackend(graph.path, precision="int8")
        ov_backend.add_detail("int8_graph", graph.to_dict())
        return ov_backend
    from sr_deploy.runtime.ort_backend import OrtBackend

    ort_backend = OrtBackend(graph.path, providers=providers or ["cpu"])
    ort_backend.add_detail("int8_graph", graph.to_dict())
    # Said, not hidden: ONNX Runtime turns DQ -> Conv -> Q into an int8 QLinearConv only when a Q follows the conv,
    # and the TensorRT placement has none there, so its CPU provider computes the int8 numerics in float kernels.
    ort_backend.add_detail(
        "compute", "float kernels on dequantized int8 weights and activations (the int8 graph's numerics, not speed)"
    )
    return ort_backend


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


def _make_tensorrt(
    model: SRNet, precision: str, weights_sha256: str, work_dir: Path | None, cuda_graphs: bool = False
) -> Backend:
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
    backend: Backend = build(
        model, precision=precision, weights_sha256=weights_sha256, work_dir=work_dir, cuda_graphs=cuda_graphs
    )
    return backend
