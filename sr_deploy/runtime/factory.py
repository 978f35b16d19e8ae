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
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet
from sr_deploy.archs.registry import check_precision_supported
from sr_deploy.errors import SRDeployError
from sr_deploy.precision import Precision, parse_precision
from sr_deploy.runtime.base import Backend
from sr_deploy.runtime.registry import (
    AUTO,
    COMPILE,
    CUDA_GRAPHS,
    BackendRequest,
    Registry,
    default_registry,
)
from sr_deploy.runtime.torch_backend import (
    PrecisionCheck,
    check_precision,
    cuda_available,
    require_cuda,
    require_precision,
)

if TYPE_CHECKING:
    from sr_deploy.export.quantize import Int8Graph


def available_backends(registry: Registry | None = None) -> dict[str, str | None]:
    """Backend kind -> None when usable here, else the reason it is not."""
    return (registry or default_registry()).available()


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise SRDeployError(f"--device {device!r}: expected auto, cpu or cuda")
    return device


def choose_auto(precision: str, device: str) -> str:
    """The backend kind `auto` stands for (see the module docstring for the measurements behind it). The policy
    names srdeploy's own backends: a backend added to the registry is used when named, never picked by auto."""
    usable = {name for name, reason in available_backends().items() if reason is None}
    gpu_wanted = device.startswith("cuda") or (device == "auto" and (cuda_available() or "tensorrt" in usable))
    if gpu_wanted and "tensorrt" in usable and precision in default_registry().get("tensorrt").precisions:
        return "tensorrt"
    if gpu_wanted and cuda_available():
        return "torch"
    if precision == "fp32" and "openvino" in usable:
        return "openvino"
    if precision == "bf16" and "openvino" in usable:
        from sr_deploy.runtime.ov_backend import bf16_capable

        if bf16_capable() is None:
            return "openvino"
    if precision == "fp32" and "onnxruntime" in usable:
        return "onnxruntime"
    if precision == "int8":
        # Only ever on request: int8 is the quantized graph the user gave, never a silent step down from fp32.
        if "openvino" in usable:
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
    registry: Registry | None = None,
) -> Backend:
    """A ready Backend of `kind` for `model`, made by that backend's descriptor (sr_deploy.runtime.registry).

    Checked here for every backend, one line each naming the flag: the kind, the precision (against the model and
    the backend's precisions), the device (against the backend's devices), options it has no use for, and the int8
    graph (given exactly when --precision int8). What each backend then does:

    - ``onnxruntime`` and ``openvino`` export the model to ONNX in `work_dir` (reused when `weights_sha256`
      matches) or in a temporary folder, with the usual export verification; with int8 they run `int8_graph`
      (written by ``srdeploy quantize`` for these weights; checked) on the CPU.
    - ``torch`` with bf16 on the CPU runs the bf16 accuracy gate on `references` (ReferenceImage list; Set5 from
      ../shared when present, else seeded random inputs) and refuses bf16 when it fails. On CUDA, fp16 and bf16
      pass the same kind of gate (fp16: the ONNX export's Y-PSNR drop bound), so a GPU path is held to the CPU's rules.
    - ``torch`` takes `cuda_graphs` (CUDA only) and `compile_mode` (``torch.compile``); ``tensorrt`` takes
      `cuda_graphs`.
    - ``tensorrt`` is imported lazily; without TensorRT it raises MissingDependencyError with how to get it.
    - ``auto`` is `choose_auto`; it never picks int8 unless it is asked for.
    """
    reg = registry or default_registry()
    reg.check_kind(kind)
    prec = parse_precision(precision, "--precision")
    check_precision_supported(model.spec, prec)
    dev = _resolve_device(device)
    named = kind
    if kind == AUTO:
        kind = choose_auto(prec, device)
        named = f"auto (= {kind})"
        if dev.startswith("cuda") and kind != "tensorrt":
            # auto fell back to a CPU runtime: say that the GPU is missing, not that that runtime cannot use it.
            require_cuda("cuda")
    descriptor = reg.get(kind)
    check_kind_options(kind, cuda_graphs=cuda_graphs, compile_mode=compile_mode, named=named, registry=reg)
    check_int8_request(prec, int8_graph)
    reg.check_precision(kind, prec)
    # The device as given: "auto" lets a CPU-only backend run on a GPU machine.
    where = device.split(":")[0]
    if where != AUTO and where not in descriptor.devices:
        runs_on = " or ".join(d.upper() for d in descriptor.devices)
        raise SRDeployError(
            f"--device {device}: the {kind} backend runs on the {runs_on}; use --device {descriptor.devices[0]}"
        )
    request = BackendRequest(
        model=model,
        precision=prec,
        device=device,
        resolved_device=dev,
        channels_last=channels_last,
        weights_sha256=weights_sha256,
        work_dir=work_dir,
        references=references,
        providers=providers,
        cuda_graphs=cuda_graphs,
        compile_mode=compile_mode,
        int8_graph=int8_graph,
    )
    return descriptor.make(request)


def check_kind_options(
    kind: str, *, cuda_graphs: bool, compile_mode: str | None, named: str = "", registry: Registry | None = None
) -> None:
    """Refuse, naming the flag, an option the backend `kind` has no use for (``auto`` is checked once resolved;
    `named` is how the user named it, e.g. "auto (= openvino)"). Who uses what is each descriptor's `options`."""
    if kind == AUTO:
        return
    reg = registry or default_registry()
    said = named or kind
    compilers = reg.with_option(COMPILE)
    if compile_mode is not None and kind not in compilers:
        hint = f"; use --backend {' or '.join(compilers)}" if compilers else ""
        raise SRDeployError(f"--compile: {_only(compilers)} compile{_s(compilers)} (--backend {said}){hint}")
    graphs = reg.with_option(CUDA_GRAPHS)
    if cuda_graphs and kind not in graphs:
        raise SRDeployError(f"--cuda-graphs: {_only(graphs)} use{_s(graphs)} CUDA graphs (--backend {said})")


def _only(names: Sequence[str]) -> str:
    if not names:
        return "no backend"
    return f"only the {' and '.join(names)} backend{'s' if len(names) > 1 else ''}"


def _s(names: Sequence[str]) -> str:
    """The verb's -s after `_only(names)`."""
    return "" if len(names) > 1 else "s"


_NEEDS_INT8_GRAPH = (
    "--precision int8 needs the quantized graph: --onnx model.int8.onnx (make it with srdeploy quantize)"
)


def check_int8_request(precision: Precision, int8_graph: Path | None) -> None:
    """An int8 graph goes with --precision int8, and --precision int8 needs one."""
    if int8_graph is not None and precision != "int8":
        raise SRDeployError(f"--onnx: a given graph is run with --precision int8 only (got --precision {precision})")
    if precision == "int8" and int8_graph is None:
        raise SRDeployError(_NEEDS_INT8_GRAPH)


def int8_graph_for(request: BackendRequest) -> Int8Graph:
    """The request's int8 graph, checked (written by srdeploy quantize for these weights); int8 runs on the CPU."""
    from sr_deploy.export.quantize import check_int8_graph

    if request.device.startswith("cuda"):
        raise SRDeployError(f"--device {request.device}: int8 runs on the CPU here; use --device cpu")
    if request.int8_graph is None:  # make_backend refuses this first; a maker called directly says the same
        raise SRDeployError(_NEEDS_INT8_GRAPH)
    return check_int8_graph(request.int8_graph, request.model.spec, request.weights_sha256)


def bf16_gate(
    model: SRNet, references: Sequence[Any] | None, run: Callable[[np.ndarray], np.ndarray] | None = None
) -> PrecisionCheck:
    """The bf16 accuracy gate on `references` (default: Set5 or seeded random inputs); raises when it fails.
    `run` is the bf16 side (default: torch bf16)."""
    refs, label = gate_references(model, references)
    return require_precision(check_precision(model, refs, precision="bf16", label=label, run=run))


def gate_references(model: SRNet, references: Sequence[Any] | None) -> tuple[Sequence[Any], str]:
    """The images a precision gate compares on, and how to name them: `references` when given, else Set5 from the
    shared data (x4 models), else seeded random inputs."""
    from sr_deploy.export.onnx import default_reference_folder, load_reference_images, random_references

    if references is not None:
        return references, f"{len(references)} reference images"
    folder = default_reference_folder()
    if folder is not None and model.spec.scale == 4:
        return load_reference_images(folder, scale=4), f"Set5 ({folder})"
    return random_references(model.spec, seed=0), "random inputs (seed 0): real reference images not found"


def exported_graph(model: SRNet, precision: str, weights_sha256: str, work_dir: Path | None) -> Path | bytes:
    """The verified ONNX graph: its file in `work_dir` (reused when the weights hash matches), or without a work
    folder its bytes (exported in a temporary folder that is gone when this returns)."""
    if work_dir is not None:
        if not work_dir.is_dir():
            raise SRDeployError(f"work folder {work_dir} does not exist")
        return _onnx_for(model, precision, weights_sha256, work_dir)
    with tempfile.TemporaryDirectory(prefix="srdeploy-graph-") as tmp:
        return _onnx_for(model, precision, "", Path(tmp)).read_bytes()
