"""The `onnxruntime` Backend: an exported ONNX graph on the CPU, CUDA or TensorRT execution provider.

Providers are asked for only where they can load: on a machine without an NVIDIA GPU the GPU providers are never
requested, so onnxruntime-gpu prints no CUDA library errors. On CUDA, IOBinding keeps the input and output on the
device so the forward-only time excludes the copies, as the challenge measures.
"""

from __future__ import annotations

import ctypes
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput
from sr_deploy.runtime.graph_rewrite import split_free_bytes
from sr_deploy.runtime.torch_backend import physical_cores

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: Short names a user can give.
PROVIDER_NAMES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}

_TRT_LIBS = ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so")


def gpu_present() -> bool:
    """An NVIDIA GPU and driver are visible. Checked before any GPU provider is requested."""
    if Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists():
        return True
    return shutil.which("nvidia-smi") is not None and Path("/proc/driver/nvidia").exists()


def _loads(names: Sequence[str]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def provider_status() -> dict[str, str | None]:
    """Each execution provider -> None when it can be used here, else why not. Loads nothing from a GPU library
    unless a GPU is present."""
    try:
        import onnxruntime as ort
    except ImportError:
        reason = "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu on a GPU machine)"
        return {CPU: reason, CUDA: reason, TENSORRT: reason}
    built = set(ort.get_available_providers())
    status: dict[str, str | None] = {CPU: None}
    gpu = gpu_present()
    for name in (CUDA, TENSORRT):
        if name not in built:
            status[name] = f"this onnxruntime build has no {name} (install onnxruntime-gpu)"
        elif not gpu:
            status[name] = "no NVIDIA GPU is visible"
        else:
            status[name] = None
    if status[TENSORRT] is None and not _loads(_TRT_LIBS):
        status[TENSORRT] = "TensorRT libraries (libnvinfer) are not installed"
    return status


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The providers to ask for, best first, keeping only those that can load here; CPU always closes the list.

    Default (None): CUDA then CPU. The TensorRT provider builds an engine on first use (minutes) and is only used
    when asked for by name.
    """
    status = provider_status()
    if status[CPU] is not None:
        raise MissingDependencyError(status[CPU] or "onnxruntime is not installed")
    wanted = [CUDA, CPU] if requested is None else [PROVIDER_NAMES.get(p.lower(), p) for p in requested]
    unknown = [p for p in wanted if p not in status]
    if unknown:
        raise SRDeployError(f"unknown execution provider(s) {unknown}: expected {', '.join(PROVIDER_NAMES)}")
    if requested is not None:
        refused = {p: status[p] for p in wanted if status[p] is not None}
        if refused and len(refused) == len(wanted):
            p, why = next(iter(refused.items()))
            raise MissingDependencyError(f"execution provider {p} cannot run here: {why}")
    usable = [p for p in wanted if status[p] is None]
    if CPU not in usable:
        usable.append(CPU)
    return usable


def _provider_options(provider: str, cache_dir: Path | None) -> dict[str, str]:
    if provider == TENSORRT and cache_dir is not None:
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache_dir)}
    return {}


class OrtBackend(Backend):
    """NCHW float32 in [0, 1] in and out; the graph's own I/O type (float16 graphs) is handled inside."""

    def __init__(
        self,
        onnx_model: str | Path | bytes,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        trt_cache_dir: Path | None = None,
        cpu_rewrite: bool = True,
    ) -> None:
        import onnxruntime as ort

        if not isinstance(onnx_model, bytes):
            path = Path(onnx_model)
            if not path.is_file():
                raise SRDeployError(f"{path}: no such ONNX file")
        wanted = resolve_providers(providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # One intra-op thread per physical core: the convs are FMA-bound, so hyper-threads only add contention.
        self._threads = threads if threads is not None else physical_cores()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        source: bytes | str = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
        self._rewritten = cpu_rewrite and wanted[0] == CPU
        if self._rewritten:
            source = split_free_bytes(onnx_model)
        try:
            self._sess = ort.InferenceSession(
                source, opts, providers=[(p, _provider_options(p, trt_cache_dir)) for p in wanted]
            )
        except Exception as e:  # onnxruntime raises its own exception types for unreadable graphs
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = "ONNX bytes" if isinstance(onnx_model, bytes) else str(onnx_model)
            raise SRDeployError(f"{where}: onnxruntime cannot load it ({first})") from None
        self._active: list[str] = list(self._sess.get_providers())
        inp, out = self._sess.get_inputs()[0], self._sess.get_outputs()[0]
        self._in_name, self._out_name = inp.name, out.name
        self._in_dtype = np.float16 if "float16" in inp.type else np.float32
        self._gpu = self._active[0] in (CUDA, TENSORRT)
        meta = self._sess.get_modelmeta().custom_metadata_map
        self._precision = meta.get("precision", "fp16" if self._in_dtype == np.float16 else "fp32")
        self._extra: dict[str, Any] = {}

    @property
    def info(self) -> BackendInfo:
        device = "cuda:0" if self._gpu else "cpu"
        details: dict[str, Any] = {
            "providers": list(self._active),
            "intra_op_threads": self._threads,
            "graph": "split-free" if self._rewritten else "as exported",
            **self._extra,
        }
        return BackendInfo("onnxruntime", device, self._precision, details)

    def add_detail(self, key: str, value: Any) -> None:
        """Record a fact (e.g. which int8 graph runs) that `info` reports."""
        self._extra[key] = value

    def prepare(self, max_shape: Shape4) -> None:
        # The first run plans memory and (TensorRT provider) builds the engine; keep that out of the timings.
        self.run_timed(np.zeros(max_shape, dtype=np.float32))

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        if lr.ndim != 4:
            raise SRDeployError(f"expected an NCHW batch, got shape {lr.shape}")
        if self._gpu:
            return self._run_device(lr)
        t0 = time.perf_counter_ns()
        x = np.ascontiguousarray(lr, dtype=self._in_dtype)
        f0 = time.perf_counter_ns()
        y = self._sess.run([self._out_name], {self._in_name: x})[0]
        forward_ms = (time.perf_counter_ns() - f0) / 1e6
        out = np.asarray(y, dtype=np.float32)
        return TimedOutput(out, forward_ms, (time.perf_counter_ns() - t0) / 1e6)

    def _run_device(self, lr: np.ndarray) -> TimedOutput:
        import onnxruntime as ort

        t0 = time.perf_counter_ns()
        x = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(lr, dtype=self._in_dtype), "cuda", 0)
        binding = self._sess.io_binding()
        binding.bind_ortvalue_input(self._in_name, x)
        binding.bind_output(self._out_name, "cuda", 0)
        binding.synchronize_inputs()
        f0 = time.perf_counter_ns()
        self._sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
        forward_ms = (time.perf_counter_ns() - f0) / 1e6
        out = np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)
        return TimedOutput(out, forward_ms, (time.perf_counter_ns() - t0) / 1e6)
