"""What TensorRT, pycuda and GPU this machine has, or the one line that says how to get them.

The builder (`sr_deploy.export.tensorrt`) and the runtime (`sr_deploy.runtime.trt_backend`) both ask here, so the
builder never imports the runtime. `tensorrt` is imported lazily; availability is judged from a real attribute
(`tensorrt.Builder`, `tensorrt.__version__`), never from `import tensorrt` succeeding: the `tensorrt-stubs` package
makes that import succeed as an empty namespace.
"""

from __future__ import annotations

import importlib
from typing import Protocol, cast

import numpy as np

from sr_deploy.errors import MissingDependencyError
from sr_deploy.trt_plan.engine_key import GpuInfo
from sr_deploy.trt_plan.versions import parse_trt_version

TRT_MISSING = "TensorRT is not installed: pip install 'srdeploy[trt]' on a machine with an NVIDIA GPU"


def tensorrt_version() -> str | None:
    """The installed TensorRT's version, or None when only the stubs (or nothing) are installed."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    if not hasattr(trt, "Builder"):  # the stubs' namespace package has no attributes at run time
        return None
    version = getattr(trt, "__version__", None)
    return version if isinstance(version, str) else None


def require_tensorrt() -> str:
    """The TensorRT version, or MissingDependencyError with the one line that says how to get it."""
    version = tensorrt_version()
    if version is None:
        raise MissingDependencyError(TRT_MISSING)
    parse_trt_version(version)  # refuses TensorRT < 10 with its own line
    return version


PYCUDA_MISSING = (
    "pycuda is not installed: pip install 'srdeploy[trt]' on a machine with an NVIDIA GPU "
    "(pycuda builds against the CUDA toolkit there)"
)
NO_GPU = "no CUDA GPU is visible: the tensorrt backend needs an NVIDIA GPU and its driver"

# --------------------------------------------------------------------------------------------------------------
# The few pycuda calls we make, as precise Protocols (pycuda ships no type information).
# --------------------------------------------------------------------------------------------------------------


class PcGraphExec(Protocol):
    def launch(self, stream: PcStream) -> None: ...


class PcGraph(Protocol):
    def instantiate(self) -> PcGraphExec: ...


class PcStream(Protocol):
    @property
    def handle(self) -> int: ...

    def synchronize(self) -> None: ...

    def begin_capture(self) -> None: ...

    def end_capture(self) -> PcGraph: ...


class PcEvent(Protocol):
    def record(self, stream: PcStream) -> PcEvent: ...

    def synchronize(self) -> PcEvent: ...

    def time_since(self, start: PcEvent) -> float: ...


class PcDeviceAllocation(Protocol):
    def __int__(self) -> int: ...

    def free(self) -> None: ...


class PcDevice(Protocol):
    def name(self) -> str: ...

    def compute_capability(self) -> tuple[int, int]: ...


class PcDriver(Protocol):
    """`pycuda.driver`, the part of it we use."""

    # pycuda's own (capitalised) names, so the module itself satisfies this protocol
    def Stream(self) -> PcStream: ...

    def Event(self) -> PcEvent: ...

    def Device(self, ordinal: int) -> PcDevice: ...

    def mem_alloc(self, nbytes: int) -> PcDeviceAllocation: ...

    def pagelocked_empty(self, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray: ...

    def memcpy_htod_async(self, dest: PcDeviceAllocation, src: np.ndarray, stream: PcStream) -> None: ...

    def memcpy_dtoh_async(self, dest: np.ndarray, src: PcDeviceAllocation, stream: PcStream) -> None: ...


def load_pycuda() -> PcDriver:
    """`pycuda.driver` on the primary context (shared with PyTorch), or one line saying how to get it."""
    try:
        importlib.import_module("pycuda.autoprimaryctx")  # activates the device's primary context
        driver = importlib.import_module("pycuda.driver")
    except ImportError:
        raise MissingDependencyError(PYCUDA_MISSING) from None
    except Exception as e:  # pycuda raises its own errors when there is no driver or device
        raise MissingDependencyError(f"{NO_GPU} ({type(e).__name__}: {e})") from None
    return cast(PcDriver, driver)


def detect_gpu() -> GpuInfo:
    """Name and compute capability of GPU 0: from PyTorch when it sees CUDA, else from pycuda."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return GpuInfo(str(torch.cuda.get_device_name(0)), f"{major}.{minor}")
    except ImportError:
        pass
    device = load_pycuda().Device(0)
    major, minor = device.compute_capability()
    return GpuInfo(str(device.name()), f"{major}.{minor}")
