"""The `torch` Backend: eager PyTorch on the CPU or a CUDA GPU, in fp32, fp16 or bf16, NCHW or channels_last.

Timing follows the challenge: on CUDA, events around the forward call only, with the input already on the device;
on the CPU, ``time.perf_counter_ns`` around the forward call. The end-to-end time adds the dtype/layout conversion
and the copies both ways.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sr_deploy.archs.base import SRNet
from sr_deploy.errors import GateFailedError, MissingDependencyError, SRDeployError
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput

TorchPrecision = Literal["fp32", "fp16", "bf16"]

_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

#: Issue 5: bf16 on the CPU is refused where the Set5 mean Y-PSNR drops by more than this against fp32.
BF16_MAX_Y_DROP_DB = 0.05
#: Without HR images the drop cannot be measured; the output must then stay this close to fp32 (the FP16 gate).
BF16_MIN_PSNR_DB = 50.0


# ---------------------------------------------------------------------------------------------- machine facts
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_bf16_support(flags: frozenset[str] | None = None) -> str | None:
    """None when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), else the reason it does not."""
    have = cpu_flags() if flags is None else flags
    if "avx512_bf16" in have or "amx_bf16" in have:
        return None
    return "this CPU has neither AVX512-BF16 nor AMX-BF16, so bf16 would be emulated and slower than fp32"


def physical_cores(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """Physical cores this process may use: hyper-threads share one core's FMA units, so they add nothing here."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return max(1, usable)
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip() and core:
            cores.add((phys, core))
            phys = core = ""
    if core:
        cores.add((phys, core))
    count = len(cores) if cores else usable
    return max(1, min(count, usable))


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


# ---------------------------------------------------------------------------------------------- backend
class TorchBackend(Backend):
    """NCHW float32 in [0, 1] in and out; computes in `precision` on `device`."""

    def __init__(
        self,
        model: SRNet,
        *,
        device: str = "cpu",
        precision: TorchPrecision = "fp32",
        channels_last: bool = False,
    ) -> None:
        if precision not in _DTYPES:
            raise SRDeployError(f"--precision {precision!r}: the torch backend takes fp32, fp16 or bf16")
        dev = torch.device(device)
        if dev.type == "cuda" and not cuda_available():
            raise MissingDependencyError(
                "--device cuda: no CUDA GPU is visible to PyTorch (install a CUDA build of torch on a GPU machine)"
            )
        if dev.type not in ("cpu", "cuda"):
            raise SRDeployError(f"--device {device!r}: the torch backend runs on cpu or cuda")
        if dev.type == "cpu" and precision == "bf16" and (reason := cpu_bf16_support()) is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
        self._device = dev
        self._precision: TorchPrecision = precision
        self._dtype = _DTYPES[precision]
        self._format = torch.channels_last if channels_last else torch.contiguous_format
        self._channels_last = channels_last
        # A private copy: .to() converts modules in place and the caller's model must stay as it was.
        self._model = copy.deepcopy(model).eval().to(device=dev, dtype=self._dtype)
        if channels_last:
            # Module.to(memory_format=...) exists at run time but not in torch's type stubs.
            self._model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._details: dict[str, Any] = {"channels_last": channels_last, "threads": torch.get_num_threads()}

    @property
    def info(self) -> BackendInfo:
        name = str(self._device) if self._device.type == "cpu" else f"cuda:{self._device.index or 0}"
        return BackendInfo("torch", name, self._precision, dict(self._details))

    @property
    def model(self) -> SRNet:
        return self._model

    def add_detail(self, key: str, value: Any) -> None:
        """Record a fact (e.g. the bf16 gate's figures) that `info` reports."""
        self._details[key] = value

    def prepare(self, max_shape: Shape4) -> None:
        # One forward at the largest size: oneDNN / cuDNN pick and cache their kernels, the allocator grows once.
        self.run_timed(np.zeros(max_shape, dtype=np.float32))

    def _to_device(self, lr: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))
        return x.to(device=self._device, dtype=self._dtype, non_blocking=False).contiguous(memory_format=self._format)

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        if lr.ndim != 4:
            raise SRDeployError(f"expected an NCHW batch, got shape {lr.shape}")
        cuda = self._device.type == "cuda"
        with torch.inference_mode():
            t0 = time.perf_counter_ns()
            x = self._to_device(lr)
            if cuda:
                start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                torch.cuda.synchronize(self._device)
                start.record()
                y = self._model(x)
                end.record()
                end.synchronize()
                forward_ms = float(start.elapsed_time(end))
            else:
                f0 = time.perf_counter_ns()
                y = self._model(x)
                forward_ms = (time.perf_counter_ns() - f0) / 1e6
            out = y.to(device="cpu", dtype=torch.float32).contiguous().numpy()
            end_to_end_ms = (time.perf_counter_ns() - t0) / 1e6
        return TimedOutput(out, forward_ms, end_to_end_ms)


# ---------------------------------------------------------------------------------------------- bf16 gate
@dataclass
class PrecisionCheck:
    """A reduced-precision path against fp32 on the same inputs."""

    precision: str
    inputs: str
    psnr_vs_fp32_db: float
    y_psnr_fp32: float | None
    y_psnr: float | None
    threshold: str
    passed: bool
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def y_drop_db(self) -> float | None:
        if self.y_psnr_fp32 is None or self.y_psnr is None:
            return None
        return self.y_psnr_fp32 - self.y_psnr

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "inputs": self.inputs,
            "psnr_vs_fp32_db": self.psnr_vs_fp32_db,
            "y_psnr_fp32": self.y_psnr_fp32,
            "y_psnr": self.y_psnr,
            "y_drop_db": self.y_drop_db,
            "threshold": self.threshold,
            "passed": self.passed,
            **self.details,
        }


def _torch_runner(model: SRNet, precision: TorchPrecision) -> Callable[[np.ndarray], np.ndarray]:
    low = copy.deepcopy(model).to(_DTYPES[precision]).eval()

    def run(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = low(torch.from_numpy(lr).to(_DTYPES[precision])).float().numpy()
            return out

    return run


def check_precision(
    model: SRNet,
    references: Sequence[Any],
    *,
    precision: TorchPrecision = "bf16",
    label: str = "",
    max_y_drop_db: float = BF16_MAX_Y_DROP_DB,
    min_psnr_db: float = BF16_MIN_PSNR_DB,
    run: Callable[[np.ndarray], np.ndarray] | None = None,
) -> PrecisionCheck:
    """Run `model` in fp32 (torch, the oracle) and in `precision` over `references` (ReferenceImage list).

    The reduced-precision side is `run` (NCHW float32 in and out; e.g. another runtime's bf16 backend), or by
    default `model` itself in torch at `precision` on the CPU. With HR images the gate is the mean Y-PSNR drop
    (<= `max_y_drop_db`); without, the output PSNR against fp32 (>= `min_psnr_db`).
    """
    from sr_deploy.export.onnx import to_uint8_rgb, y_psnr

    ref32 = copy.deepcopy(model).float().eval()
    run_low = run if run is not None else _torch_runner(model, precision)
    sq, count = 0.0, 0
    y32: list[float] = []
    ylo: list[float] = []
    with torch.inference_mode():
        for ref in references:
            x = torch.from_numpy(np.ascontiguousarray(ref.lr, dtype=np.float32))
            a = ref32(x).numpy()
            b = np.asarray(run_low(x.numpy()), dtype=np.float32)
            sq += float(((a.astype(np.float64) - b) ** 2).sum())
            count += a.size
            if ref.hr is not None:
                border = model.spec.scale
                y32.append(y_psnr(to_uint8_rgb(a), ref.hr, border))
                ylo.append(y_psnr(to_uint8_rgb(b), ref.hr, border))
    mse = sq / max(count, 1)
    psnr = float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))
    if y32:
        drop = float(np.mean(y32) - np.mean(ylo))
        passed, rule = drop <= max_y_drop_db, f"mean Y-PSNR drop <= {max_y_drop_db} dB"
    else:
        passed, rule = psnr >= min_psnr_db, f"output PSNR vs fp32 >= {min_psnr_db} dB (no HR images)"
    return PrecisionCheck(
        precision=precision,
        inputs=label or f"{len(references)} inputs",
        psnr_vs_fp32_db=psnr,
        y_psnr_fp32=float(np.mean(y32)) if y32 else None,
        y_psnr=float(np.mean(ylo)) if ylo else None,
        threshold=rule,
        passed=passed,
    )


def require_precision(check: PrecisionCheck) -> PrecisionCheck:
    """Raise GateFailedError naming the figures when `check` failed."""
    if not check.passed:
        got = (
            f"Y-PSNR drop {check.y_drop_db:.4f} dB"
            if check.y_drop_db is not None
            else (f"output PSNR {check.psnr_vs_fp32_db:.2f} dB")
        )
        raise GateFailedError(
            f"--precision {check.precision}: refused, {got} on {check.inputs} fails the gate ({check.threshold})"
        )
    return check
