"""The `openvino` Backend: the exported ONNX graph compiled by OpenVINO for the CPU, in fp32 or bf16.

Why it exists: on this project's AVX-512 CPUs it is the only runtime that keeps >= 90% of the fp32 matmul peak on
the IMDN graph (issue 5; benchmarks/results/cpu_backends.md), and its bf16 (AMX) path is several times faster
than torch's.

- The graph is rewritten split-free first (sr_deploy.runtime.graph_rewrite), which is exact and faster.
- Each input shape gets its own static compile (~0.1 s, kept in a small LRU cache): measured faster than one
  dynamic-shape compile, most at the DIV2K size. The compile runs before the timers start, like a TensorRT
  engine build, and is reported in ``info.details``.
- The precision is always set explicitly: on CPUs with AMX, OpenVINO's own default is bf16, which would make an
  "fp32" run silently lossy. After compiling, the precision the plugin reports is checked against the request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.precision import Precision
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput
from sr_deploy.runtime.graph_rewrite import split_free_bytes
from sr_deploy.runtime.torch_backend import physical_cores

#: srdeploy precision -> OpenVINO's inference precision (as set, and as the compiled model reports it back); its
#: keys are the precisions this backend runs. int8: the quantized convs run in int8 whatever the hint; the hint is
#: for what the graph leaves in floating point (its float remainder: the float layers, the Q/DQ arithmetic, adds),
#: f32 by default, bf16 only where the int8 gate passed that way too (recorded in the graph's metadata).
_HINTS: dict[Precision, str] = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
#: What an int8 graph's float remainder may compute in.
INT8_REMAINDERS: tuple[Precision, ...] = ("fp32", "bf16")


def openvino_status() -> str | None:
    """None when OpenVINO can run on this machine's CPU, else why not."""
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    if not hasattr(ov, "Core"):
        return "the installed openvino package has no runtime (openvino.Core is missing)"
    # Ask the CPU plugin only: listing every device would load the GPU and NPU plugins too.
    try:
        ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    except RuntimeError as e:
        return f"openvino's CPU plugin cannot run here ({_first_line(e)})"
    return None


def bf16_capable() -> str | None:
    """None when OpenVINO's CPU plugin computes bf16 natively here (AVX512-BF16 or AMX), else why not."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return None if "BF16" in caps else "this CPU has no native bf16 (AVX512-BF16 or AMX) for OpenVINO"


def int8_capable() -> str | None:
    """None when OpenVINO's CPU plugin runs int8 here (it reports INT8: VNNI, AMX-INT8 or plain AVX2/AVX-512), else why
    not."""
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return None if "INT8" in caps else "this CPU has no int8 support in OpenVINO's CPU plugin"


def runtime_precisions(compiled: Any, layer_type: str = "Convolution") -> dict[str, int]:
    """How many `layer_type` layers of a compiled model run in each precision ("i8", "u8", "f32", "bf16"), from the
    runtime model OpenVINO really executes: what an int8 run is checked against."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" not in info or info["layerType"].astype(str) != layer_type:
            continue
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "unknown"
        counts[precision] = counts.get(precision, 0) + 1
    return dict(sorted(counts.items()))


def _type_name(value: Any) -> str:
    get_name = getattr(value, "get_type_name", None)
    return str(get_name()) if callable(get_name) else str(value)


class OpenVinoBackend(Backend):
    """NCHW float32 in [0, 1] in and out; computes in `precision` on the CPU."""

    def __init__(
        self,
        onnx_model: str | Path | bytes,
        *,
        precision: Precision = "fp32",
        threads: int | None = None,
        rewrite: bool = True,
        cache_size: int = 8,
        int8_remainder: Precision = "fp32",
    ) -> None:
        reason = openvino_status()
        if reason is not None:
            raise MissingDependencyError(reason)
        if precision not in _HINTS:
            raise SRDeployError(f"--precision {precision!r}: the openvino backend runs {', '.join(_HINTS)}")
        if precision == "bf16" and (why := bf16_capable()) is not None:
            raise MissingDependencyError(f"--precision bf16: {why}")
        if precision == "int8" and (why := int8_capable()) is not None:
            raise MissingDependencyError(f"--precision int8: {why}")
        if int8_remainder not in INT8_REMAINDERS or (int8_remainder != "fp32" and precision != "int8"):
            raise SRDeployError(f"int8 remainder {int8_remainder!r}: an int8 graph's float part runs in fp32 or bf16")
        if int8_remainder == "bf16" and (why := bf16_capable()) is not None:
            raise MissingDependencyError(f"the int8 graph's bf16 remainder: {why}")
        import openvino as ov

        where = "ONNX bytes" if isinstance(onnx_model, bytes) else str(onnx_model)
        if not isinstance(onnx_model, bytes) and not Path(onnx_model).is_file():
            raise SRDeployError(f"{where}: no such ONNX file")
        data = split_free_bytes(onnx_model) if rewrite else _read_bytes(onnx_model)
        self._core = ov.Core()
        try:
            self._model = self._core.read_model(data)
        except RuntimeError as e:
            raise SRDeployError(f"{where}: openvino cannot read it ({_first_line(e)})") from None
        element = _type_name(self._model.inputs[0].get_element_type())
        if element != "f32":
            raise SRDeployError(
                f"{where}: the openvino backend takes an fp32 graph (input is {element}); "
                "for bf16 give the fp32 graph with --precision bf16"
            )
        quantized = any(op.get_type_name() == "FakeQuantize" for op in self._model.get_ordered_ops())
        if precision == "int8" and not quantized:
            raise SRDeployError(
                f"{where}: --precision int8 needs an int8 (Q/DQ) graph, this one is fp32: srdeploy quantize"
            )
        if precision != "int8" and quantized:
            raise SRDeployError(f"{where}: is an int8 (Q/DQ) graph; run it with --precision int8")
        self._precision: Precision = precision
        self._hint = _HINTS[int8_remainder] if precision == "int8" else _HINTS[precision]
        self._threads = threads if threads is not None else physical_cores()
        self._rewritten = rewrite
        self._cache: OrderedDict[Shape4, Any] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._compiles = 0
        self._compile_ms = 0.0
        self._extra: dict[str, Any] = {}

    @property
    def info(self) -> BackendInfo:
        details: dict[str, Any] = {
            "openvino": _ov_version(),
            "threads": self._threads,
            "graph": "split-free" if self._rewritten else "as exported",
            "static_compiles": self._compiles,
            "compute_precision_hint": self._hint,
            "compile_ms_total": round(self._compile_ms, 3),
            **self._extra,
        }
        return BackendInfo("openvino", "cpu", self._precision, details)

    def add_detail(self, key: str, value: Any) -> None:
        """Record a fact (e.g. the bf16 gate's figures) that `info` reports."""
        self._extra[key] = value

    def config(self) -> dict[str, Any]:
        """The compile properties (the precision is explicit: OpenVINO's default on AMX CPUs is bf16)."""
        return {
            "INFERENCE_PRECISION_HINT": self._hint,
            "INFERENCE_NUM_THREADS": self._threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }

    def compiled_precision(self, shape: Shape4) -> str:
        """The element type the CPU plugin reports it computes in for `shape` ("f32", "bf16")."""
        return _type_name(self._request(shape)[0].get_property("INFERENCE_PRECISION_HINT"))

    def _request(self, shape: Shape4) -> tuple[Any, Any]:
        hit: tuple[Any, Any] | None = self._cache.get(shape)
        if hit is not None:
            self._cache.move_to_end(shape)
            return hit
        import openvino as ov

        t0 = time.perf_counter_ns()
        model = self._model.clone()
        model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
        try:
            compiled = self._core.compile_model(model, "CPU", self.config())
        except RuntimeError as e:
            raise SRDeployError(f"openvino cannot compile the graph for input {shape} ({_first_line(e)})") from None
        got = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if got != self._hint:
            raise SRDeployError(f"openvino compiled for {got} although {self._precision} was asked for")
        if self._precision == "int8":
            convs = runtime_precisions(compiled)
            if not any(p in ("i8", "u8") for p in convs):
                # Never time or label as int8 what runs in floating point (the CPU twin of rf-detr #1453).
                raise SRDeployError(
                    f"openvino runs no convolution of the int8 graph in int8 (convs by precision: {convs})"
                )
            self._extra["convolutions_by_precision"] = convs
        entry = (compiled, compiled.create_infer_request())
        self._compile_ms += (time.perf_counter_ns() - t0) / 1e6
        self._compiles += 1
        self._cache[shape] = entry
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def prepare(self, max_shape: Shape4) -> None:
        # Compiles only; no forward runs, so a caller's first timed image stays cold.
        self._request(max_shape)

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        if lr.ndim != 4:
            raise SRDeployError(f"expected an NCHW batch, got shape {lr.shape}")
        shape: Shape4 = (int(lr.shape[0]), int(lr.shape[1]), int(lr.shape[2]), int(lr.shape[3]))
        _, request = self._request(shape)
        t0 = time.perf_counter_ns()
        x = np.ascontiguousarray(lr, dtype=np.float32)
        f0 = time.perf_counter_ns()
        request.infer({0: x}, share_inputs=True)
        forward_ms = (time.perf_counter_ns() - f0) / 1e6
        # The request reuses its output buffer on the next call: copy out.
        out = np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        return TimedOutput(out, forward_ms, (time.perf_counter_ns() - t0) / 1e6)


def _read_bytes(onnx_model: str | Path | bytes) -> bytes:
    return onnx_model if isinstance(onnx_model, bytes) else Path(onnx_model).read_bytes()


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("Exception from")]
    return lines[0] if lines else type(e).__name__


def _ov_version() -> str:
    import openvino as ov

    return str(getattr(ov, "__version__", "unknown"))
