"""The `tensorrt` Backend: run a built engine with pycuda, timed the challenge's way.

- pycuda through `pycuda.autoprimaryctx`, never `pycuda.autoinit`: the primary context is the one PyTorch uses,
  so both can live in one process (TensorRT issues #4335, #4608).
- Page-locked host buffers and device buffers are sized once for the engine's largest profile shape.
- Per image: `set_input_shape`, `set_tensor_address`, `execute_async_v3` on our own stream. The forward time comes
  from CUDA events around the enqueue only (input already on the device); the end-to-end time from events around
  the copies as well.
- Optional CUDA-graph capture per input shape (what trtexec 11 does by default), cached by shape.
- Everything CUDA goes through the small `CudaRuntime` protocol; `PycudaRuntime` implements it, so a cuda-python
  implementation can slot in later.
- An engine is refused before deserializing when its sidecar is missing or names another TensorRT or GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import sha256_file
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput
from sr_deploy.trt_env import (
    PcDeviceAllocation,
    PcDriver,
    PcEvent,
    PcGraphExec,
    detect_gpu,
    load_pycuda,
    require_tensorrt,
)
from sr_deploy.trt_plan.engine_key import GpuInfo, explain_runtime_mismatch
from sr_deploy.trt_plan.profiles import ProfilePlan, format_shape
from sr_deploy.trt_plan.sidecar import EngineSidecar, load_sidecar

if TYPE_CHECKING:
    import tensorrt as trt

    from sr_deploy.archs.base import SRNet
    from sr_deploy.precision import Precision

# --------------------------------------------------------------------------------------------------------------
# Buffer management behind a small interface
# --------------------------------------------------------------------------------------------------------------


class TimingEvent(Protocol):
    """An opaque event recorded on the runtime's stream."""


class CudaRuntime(Protocol):
    """What the TensorRT runner needs from a CUDA binding: one stream, named buffers, events, graphs."""

    @property
    def stream_handle(self) -> int: ...

    def allocate(self, name: str, max_elements: int, dtype: np.dtype[Any]) -> None:
        """Page-locked host buffer and device buffer of `max_elements`, allocated once."""

    def device_pointer(self, name: str) -> int: ...

    def upload(self, name: str, array: np.ndarray) -> None:
        """Queue a host-to-device copy of `array` (converted to the buffer's dtype) on the stream."""

    def download(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """Queue a device-to-host copy of `prod(shape)` elements; valid after `synchronize()`."""

    def record(self) -> TimingEvent: ...

    def elapsed_ms(self, start: TimingEvent, end: TimingEvent) -> float: ...

    def synchronize(self) -> None: ...

    def capture_graph(self, enqueue: Callable[[], None]) -> Callable[[], None]:
        """Capture what `enqueue` puts on the stream into a CUDA graph; return its launcher."""

    def close(self) -> None: ...


@dataclass
class _Buffer:
    host: np.ndarray
    device: PcDeviceAllocation


class PycudaRuntime:
    """`CudaRuntime` on pycuda, in the primary context."""

    def __init__(self, driver: PcDriver | None = None) -> None:
        self._cuda = driver or load_pycuda()
        self._stream = self._cuda.Stream()
        self._buffers: dict[str, _Buffer] = {}
        self._graphs: list[PcGraphExec] = []  # kept alive as long as the runtime

    @property
    def stream_handle(self) -> int:
        return int(self._stream.handle)

    def allocate(self, name: str, max_elements: int, dtype: np.dtype[Any]) -> None:
        old = self._buffers.pop(name, None)
        if old is not None:
            old.device.free()
        host = self._cuda.pagelocked_empty((max_elements,), dtype.type)
        device = self._cuda.mem_alloc(max(1, host.nbytes))
        self._buffers[name] = _Buffer(host, device)

    def device_pointer(self, name: str) -> int:
        return int(self._buffers[name].device)

    def upload(self, name: str, array: np.ndarray) -> None:
        buf = self._buffers[name]
        n = array.size
        if n > buf.host.size:
            raise SRDeployError(f"input of {n} elements exceeds the buffer of {buf.host.size} (profile max)")
        buf.host[:n] = array.reshape(-1)  # converts to the engine's dtype (e.g. FP16 I/O)
        self._cuda.memcpy_htod_async(buf.device, buf.host[:n], self._stream)

    def download(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._buffers[name]
        n = int(np.prod(shape))
        view = buf.host[:n]
        self._cuda.memcpy_dtoh_async(view, buf.device, self._stream)
        return view.reshape(shape)

    def record(self) -> TimingEvent:
        return self._cuda.Event().record(self._stream)

    def elapsed_ms(self, start: TimingEvent, end: TimingEvent) -> float:
        end_event = cast(PcEvent, end)
        end_event.synchronize()
        return float(end_event.time_since(cast(PcEvent, start)))

    def synchronize(self) -> None:
        self._stream.synchronize()

    def capture_graph(self, enqueue: Callable[[], None]) -> Callable[[], None]:
        self._stream.begin_capture()
        try:
            enqueue()
        finally:
            graph = self._stream.end_capture()
        instance = graph.instantiate()
        self._graphs.append(instance)
        stream = self._stream
        return lambda: instance.launch(stream)

    def close(self) -> None:
        for buf in self._buffers.values():
            buf.device.free()
        self._buffers.clear()
        self._graphs.clear()


# --------------------------------------------------------------------------------------------------------------
# Engine checks that need no TensorRT
# --------------------------------------------------------------------------------------------------------------


def check_engine_for_machine(engine_path: Path, trt_version: str, gpu: GpuInfo) -> EngineSidecar:
    """The engine's sidecar, if the engine may run here; otherwise one line saying why not.

    Runs before anything is deserialized: an engine from another TensorRT or GPU fails to load or runs slowly.
    """
    if not engine_path.is_file():
        raise SRDeployError(f"{engine_path}: engine file not found")
    sidecar = load_sidecar(engine_path)
    reasons = explain_runtime_mismatch(sidecar.key, trt_version, gpu)
    if reasons:
        raise SRDeployError(f"{engine_path.name}: {'; '.join(reasons)}; rebuild it here with `srdeploy export-trt`")
    size = engine_path.stat().st_size
    if size != sidecar.engine_bytes or sha256_file(engine_path) != sidecar.engine_sha256:
        raise SRDeployError(f"{engine_path.name}: the engine file does not match its sidecar (replaced or corrupt)")
    if not sidecar.audit.ok:
        raise SRDeployError(f"{engine_path.name}: failed its precision audit ({sidecar.audit.message})")
    return sidecar


# --------------------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineIONames:
    input: str
    output: str


def engine_io_names(engine: trt.ICudaEngine) -> EngineIONames:
    """The engine's single input and single output, by the name-based API (10.x and 11.x)."""
    import tensorrt as trt

    inputs: list[str] = []
    outputs: list[str] = []
    for i in range(int(engine.num_io_tensors)):
        name = str(engine.get_tensor_name(i))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            inputs.append(name)
        else:
            outputs.append(name)
    if len(inputs) != 1 or len(outputs) != 1:
        raise SRDeployError(f"engine has inputs {inputs} and outputs {outputs}; expected one of each")
    return EngineIONames(inputs[0], outputs[0])


def engine_device_memory(engine: trt.ICudaEngine) -> int:
    """Scratch memory a context needs: `device_memory_size_v2` (10.x, and the only one left in 11.x)."""
    if hasattr(engine, "device_memory_size_v2"):
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def _dims(shape: trt.Dims) -> tuple[int, ...]:
    return tuple(int(shape[i]) for i in range(len(shape)))


class TensorRTBackend(Backend):
    """NCHW float32 in [0, 1] in and out; computes in whatever precision the engine was built for.

    `TensorRTBackend(path)` is the public way in: it refuses an engine whose sidecar is missing or names another
    TensorRT or GPU, before deserializing. `from_serialized` is for the builder's own checks of a new engine.
    """

    def __init__(
        self, engine_path: str | Path, *, cuda_graphs: bool = False, runtime: CudaRuntime | None = None
    ) -> None:
        path = Path(engine_path)
        version = require_tensorrt()
        gpu = detect_gpu()
        sidecar = check_engine_for_machine(path, version, gpu)
        details: dict[str, Any] = {
            "engine": path.name,
            "engine_key": sidecar.key.digest(),
            "tensorrt": version,
            "gpu": gpu.to_dict(),
            "route": sidecar.key.route,
            "fp16_tensor_fraction": sidecar.audit.fp16_tensor_fraction,
        }
        plan = ProfilePlan(sidecar.key.profiles, "from the engine's sidecar")
        self._setup(path.read_bytes(), plan, sidecar.key.precision, str(path), details, cuda_graphs, runtime)

    @classmethod
    def from_serialized(
        cls,
        blob: bytes,
        profiles: ProfilePlan,
        precision: str,
        *,
        source: str = "engine",
        cuda_graphs: bool = False,
        runtime: CudaRuntime | None = None,
    ) -> TensorRTBackend:
        """A backend on an engine that is not written yet (the builder audits and gates it first)."""
        version = require_tensorrt()
        self = cls.__new__(cls)
        self._setup(blob, profiles, precision, source, {"engine": source, "tensorrt": version}, cuda_graphs, runtime)
        return self

    def _setup(
        self,
        blob: bytes,
        plan: ProfilePlan,
        precision: str,
        source: str,
        details: dict[str, Any],
        cuda_graphs: bool,
        runtime: CudaRuntime | None,
    ) -> None:
        self._plan = plan
        self._precision = precision
        self._details = {**details, "cuda_graphs": cuda_graphs, "profiles": plan.to_dict()["profiles"]}
        self._cuda_graphs = cuda_graphs
        self._rt: CudaRuntime = runtime if runtime is not None else PycudaRuntime()
        # The logger and runtime must outlive the engine they deserialized, so they are kept with it.
        self._loaded = deserialize_engine(blob, source)
        self._engine = self._loaded.engine
        self._context = self._engine.create_execution_context()
        self._details["device_memory_bytes"] = engine_device_memory(self._engine)
        self._names = engine_io_names(self._engine)
        self._in_dtype = _numpy_dtype(self._engine, self._names.input)
        self._out_dtype = _numpy_dtype(self._engine, self._names.output)
        self._active_profile = 0
        self._graphs: dict[Shape4, Callable[[], None]] = {}
        self._prepared = False

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(name="tensorrt", device="cuda:0", precision=self._precision, details=dict(self._details))

    @property
    def engine(self) -> trt.ICudaEngine:
        return self._engine

    @property
    def context(self) -> trt.IExecutionContext:
        return self._context

    @property
    def io_names(self) -> dict[str, str]:
        return {"input": self._names.input, "output": self._names.output}

    def bind_shape(self, shape: Shape4) -> None:
        """Select the profile for `shape` and set it as the input shape (also what the inspector needs)."""
        self._select_profile(self._plan.profile_for(shape))
        self._set_shape(shape)

    def prepare(self, max_shape: Shape4) -> None:
        # Per dimension: images of both orientations may need different profiles, each checked per image.
        limit = self._plan.max_shape
        if any(d > m for d, m in zip(max_shape, limit, strict=True)):
            raise SRDeployError(
                f"input {format_shape(max_shape)} exceeds the engine's largest profile shape {format_shape(limit)}; "
                "rebuild with a larger --max"
            )
        if self._prepared:
            return
        # Sized once for the largest shape any profile admits, so no image ever reallocates.
        in_elems = 0
        out_elems = 0
        for index, profile in enumerate(self._plan.profiles):
            self._select_profile(index)
            self._set_shape(profile.max)
            in_elems = max(in_elems, int(np.prod(profile.max)))
            out_elems = max(out_elems, int(np.prod(_dims(self._context.get_tensor_shape(self._names.output)))))
        self._rt.allocate(self._names.input, in_elems, self._in_dtype)
        self._rt.allocate(self._names.output, out_elems, self._out_dtype)
        self._bind_addresses()
        self._prepared = True

    def _bind_addresses(self) -> None:
        for name in (self._names.input, self._names.output):
            if not self._context.set_tensor_address(name, self._rt.device_pointer(name)):
                raise SRDeployError(f"TensorRT refused the device address for tensor {name!r}")

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        if lr.ndim != 4:
            raise SRDeployError(f"input of shape {lr.shape}: expected NCHW")
        shape: Shape4 = (int(lr.shape[0]), int(lr.shape[1]), int(lr.shape[2]), int(lr.shape[3]))
        if not self._prepared:
            self.prepare(shape)
        self.bind_shape(shape)
        out_shape = _dims(self._context.get_tensor_shape(self._names.output))
        enqueue = self._enqueue_for(shape)

        e2e_start = self._rt.record()
        self._rt.upload(self._names.input, lr)
        fwd_start = self._rt.record()
        enqueue()
        fwd_end = self._rt.record()
        host_out = self._rt.download(self._names.output, out_shape)
        e2e_end = self._rt.record()
        self._rt.synchronize()
        return TimedOutput(
            output=np.asarray(host_out, dtype=np.float32).copy(),
            forward_ms=self._rt.elapsed_ms(fwd_start, fwd_end),
            end_to_end_ms=self._rt.elapsed_ms(e2e_start, e2e_end),
        )

    def close(self) -> None:
        self._graphs.clear()
        self._rt.close()
        self._prepared = False

    # -- helpers ------------------------------------------------------------------------------------------------

    def _select_profile(self, index: int) -> None:
        if index != self._active_profile:
            if not self._context.set_optimization_profile_async(index, self._rt.stream_handle):
                raise SRDeployError(f"TensorRT could not switch to optimization profile {index}")
            self._active_profile = index
            self._graphs.clear()  # graphs captured under another profile are stale
            if self._prepared:
                self._bind_addresses()  # cheap, and addresses must hold for the newly selected profile

    def _set_shape(self, shape: Shape4) -> None:
        if not self._context.set_input_shape(self._names.input, shape):
            raise SRDeployError(f"TensorRT rejected input shape {format_shape(shape)} for {self._names.input!r}")

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._rt.stream_handle):
            raise SRDeployError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _enqueue_for(self, shape: Shape4) -> Callable[[], None]:
        if not self._cuda_graphs:
            return self._execute
        launcher = self._graphs.get(shape)
        if launcher is None:
            # One plain run first: TensorRT does shape-dependent set-up work that must not be captured.
            self._execute()
            self._rt.synchronize()
            launcher = self._rt.capture_graph(self._execute)
            self._graphs[shape] = launcher
        return launcher


def _numpy_dtype(engine: trt.ICudaEngine, name: str) -> np.dtype[Any]:
    """Host dtype for an engine I/O tensor (our own table: the stubs leave `trt.nptype` untyped)."""
    import tensorrt as trt

    table: dict[trt.DataType, type[np.generic]] = {
        trt.DataType.FLOAT: np.float32,
        trt.DataType.HALF: np.float16,
        trt.DataType.INT32: np.int32,
        trt.DataType.INT8: np.int8,
        trt.DataType.UINT8: np.uint8,
        trt.DataType.BOOL: np.bool_,
    }
    dtype = engine.get_tensor_dtype(name)
    if dtype not in table:
        raise SRDeployError(f"engine tensor {name!r} has dtype {dtype}; expected FP32 or FP16 image I/O")
    return np.dtype(table[dtype])


@dataclass(frozen=True)
class LoadedEngine:
    """An engine with the logger and runtime that made it: TensorRT needs them alive as long as the engine."""

    logger: trt.ILogger
    runtime: trt.Runtime
    engine: trt.ICudaEngine


def deserialize_engine(blob: bytes, source: str) -> LoadedEngine:
    """Deserialize with TensorRT; a None engine (version or GPU mismatch the sidecar missed) is one line."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(blob)
    if engine is None:
        raise SRDeployError(f"{source}: TensorRT could not deserialize the engine (other TensorRT version or GPU?)")
    return LoadedEngine(logger, runtime, engine)


def backend_for_model(
    model: SRNet,
    *,
    precision: Precision,
    weights_sha256: str = "",
    work_dir: Path | None = None,
    cuda_graphs: bool = False,
) -> TensorRTBackend:
    """The tensorrt backend for an in-memory model: build or reuse its engine under `work_dir` (default engines/),
    then open it with all its checks. The runtime composes the two; the builder is handed `from_serialized` to run
    each new engine through its audit and gate, so it never imports the runtime."""
    from sr_deploy.export.tensorrt import engine_for_model

    path = engine_for_model(
        model, precision, TensorRTBackend.from_serialized, weights_sha256=weights_sha256, work_dir=work_dir
    )
    return TensorRTBackend(path, cuda_graphs=cuda_graphs)
