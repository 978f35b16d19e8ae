"""The `torch` Backend: PyTorch on the CPU or a CUDA GPU, in fp32, fp16 or bf16, NCHW or channels_last; on CUDA
optionally replayed from CUDA graphs (one per input shape) or compiled with ``torch.compile``.

Timing follows the challenge: on CUDA, events around the forward call only, with the input already on the device;
on the CPU, ``time.perf_counter_ns`` around the forward call. The end-to-end time adds the dtype/layout conversion
and the copies both ways (on CUDA through pinned host buffers, asynchronously). What is done once per input shape
(a graph capture, a compile) happens at first sight of the shape, before the timer starts, and is reported in the
backend's details (``shape_setups``, ``shape_setup_ms``), never hidden in or added to a timed figure.
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
from torch import nn

from sr_deploy.archs.base import SRNet
from sr_deploy.compare import Comparison, Tolerance, check, db_or_none, psnr_vs_hr
from sr_deploy.errors import GateFailedError, MissingDependencyError, SRDeployError
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput
from sr_deploy.runtime.cuda_graphs import (
    DEFAULT_GRAPH_CACHE,
    Capture,
    Forward,
    GraphedForward,
    capture_cuda_graph,
    shape_key,
)

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


def require_cuda(device_type: str) -> None:
    """Raise the one-line --device error when CUDA is asked for and torch sees no GPU."""
    if device_type == "cuda" and not cuda_available():
        raise MissingDependencyError(
            "--device cuda: no CUDA GPU is visible to PyTorch (install a CUDA build of torch on a GPU machine)"
        )


def cuda_bf16_support(native: bool, gpu: str) -> str | None:
    """None when the GPU computes bf16 natively (torch.cuda.is_bf16_supported), else the reason it does not."""
    if native:
        return None
    return f"{gpu} has no native bf16 in this torch build (torch.cuda.is_bf16_supported() is False); use fp16"


def cuda_bf16_native() -> bool:
    # Recent torch answers True for emulated bf16 (pre-Ampere) unless asked for native support only.
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument only reports native support
        return bool(torch.cuda.is_bf16_supported())


def grow_capacity(current: int, needed: int, *, step: int = 1 << 20) -> int:
    """Elements to allocate for a reusable host buffer: `current` when it is enough, else `needed` rounded up to
    `step` elements (4 MiB of float32), so that a stream of slightly different sizes reallocates rarely; pinning
    memory is slow (a driver call and a page lock), so it must not happen per image."""
    if needed <= current:
        return current
    return -(-needed // step) * step


# ---------------------------------------------------------------------------------------------- options
#: `torch.compile` modes the backend takes. "reduce-overhead" and "max-autotune" are left out on purpose: they record
#: their own CUDA graphs on the second and third call of each shape, i.e. inside the challenge's timed pass, and their
#: cudagraph trees cannot be told apart from the forward time; --cuda-graphs does that part outside the timer.
COMPILE_MODES: tuple[str, ...] = ("default", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TorchOptions:
    """How the torch backend runs beyond precision and layout: CUDA graphs or torch.compile (never both)."""

    cuda_graphs: bool = False
    compile_mode: str | None = None
    graph_cache: int = DEFAULT_GRAPH_CACHE

    def to_dict(self) -> dict[str, Any]:
        return {"cuda_graphs": self.cuda_graphs, "compile": self.compile_mode, "graph_cache": self.graph_cache}


def check_torch_options(options: TorchOptions, device_type: str) -> None:
    """Raise a one-line error naming the flag when `options` cannot run on `device_type` ("cpu" or "cuda")."""
    if options.compile_mode is not None and options.compile_mode not in COMPILE_MODES:
        raise SRDeployError(
            f"--compile {options.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)} (the modes that record "
            "their own CUDA graphs would do it inside the timed pass; use --cuda-graphs for that)"
        )
    if options.cuda_graphs and options.compile_mode is not None:
        raise SRDeployError(
            "--cuda-graphs with --compile: choose one (a compiled module is not captured into our graphs)"
        )
    if options.graph_cache < 1:
        raise SRDeployError(f"--cuda-graphs: the graph cache must keep at least 1 shape, got {options.graph_cache}")
    if options.cuda_graphs and device_type != "cuda":
        raise SRDeployError(
            f"--cuda-graphs: CUDA graphs need a CUDA device, and this run is on {device_type} (use --device cuda "
            "on a GPU machine)"
        )


def torch_compile(model: nn.Module, mode: str) -> Forward:
    """The default compiler: ``torch.compile`` with dynamic shapes. DIV2K's inputs come in 26 sizes; dynamic
    shapes mean one compile for all of them rather than one per size (torch stops recompiling after 8 and then runs
    eagerly without saying so)."""
    compiled: Forward = torch.compile(model, mode=mode, dynamic=True)
    return compiled


#: Turns the model into the forward function to run; `torch_compile` unless a test passes a fake.
Compiler = Callable[[nn.Module, str], Forward]


# ---------------------------------------------------------------------------------------------- backend
class TorchBackend(Backend):
    """NCHW float32 in [0, 1] in and out; computes in `precision` on `device`, as `options` say.

    `compiler` and `capture` exist for tests: they replace ``torch.compile`` and the CUDA graph capture.
    """

    def __init__(
        self,
        model: SRNet,
        *,
        device: str = "cpu",
        precision: TorchPrecision = "fp32",
        channels_last: bool = False,
        options: TorchOptions | None = None,
        compiler: Compiler | None = None,
        capture: Capture | None = None,
    ) -> None:
        if precision not in _DTYPES:
            raise SRDeployError(f"--precision {precision!r}: the torch backend takes fp32, fp16 or bf16")
        dev = torch.device(device)
        require_cuda(dev.type)
        if dev.type not in ("cpu", "cuda"):
            raise SRDeployError(f"--device {device!r}: the torch backend runs on cpu or cuda")
        opts = options or TorchOptions()
        check_torch_options(opts, dev.type)
        if dev.type == "cpu" and precision == "bf16" and (reason := cpu_bf16_support()) is not None:
            raise MissingDependencyError(f"--precision bf16: {reason}")
        if dev.type == "cuda" and precision == "bf16":
            reason = cuda_bf16_support(cuda_bf16_native(), torch.cuda.get_device_name(dev))
            if reason is not None:
                raise MissingDependencyError(f"--precision bf16: {reason}")
        self._device = dev
        self._precision: TorchPrecision = precision
        self._dtype = _DTYPES[precision]
        self._format = torch.channels_last if channels_last else torch.contiguous_format
        self._channels_last = channels_last
        self._options = opts
        # A private copy: .to() converts modules in place and the caller's model must stay as it was.
        self._model = copy.deepcopy(model).eval().to(device=dev, dtype=self._dtype)
        if channels_last:
            # Module.to(memory_format=...) exists at run time but not in torch's type stubs.
            self._model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._forward: Forward = self._model
        if opts.compile_mode is not None:
            try:
                self._forward = (compiler or torch_compile)(self._model, opts.compile_mode)
            except Exception as e:  # torch.compile fails with many exception types; the flag is the answer
                raise SRDeployError(f"--compile {opts.compile_mode}: torch.compile failed ({_first_line(e)})") from None
        self._graphs: GraphedForward | None = None
        if opts.cuda_graphs:
            self._graphs = GraphedForward(self._forward, capture or capture_cuda_graph, opts.graph_cache)
        # Shapes the compiled forward has already run on (compiles and guard checks happen at first sight).
        self._compiled_shapes: set[tuple[int, ...]] = set()
        self._pinned: dict[str, torch.Tensor] = {}
        self._pinned_ok = True
        self._setups = 0
        self._setup_ms = 0.0
        self._details: dict[str, Any] = {
            "channels_last": channels_last,
            "threads": torch.get_num_threads(),
            **opts.to_dict(),
        }
        if dev.type == "cuda":
            # fp32 convs on Ampere and later run in TF32 when torch allows it (its default for cuDNN): the challenge's
            # "fp32" figure was taken that way, so it is kept, and said.
            self._details["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)

    @property
    def info(self) -> BackendInfo:
        name = str(self._device) if self._device.type == "cpu" else f"cuda:{self._device.index or 0}"
        details = dict(self._details)
        details.update(shape_setups=self._setups, shape_setup_ms=round(self._setup_ms, 3))
        if self._graphs is not None:
            details["graph_cache_stats"] = self._graphs.stats.to_dict()
        if self._device.type == "cuda":
            details["pinned_host_buffers"] = self._pinned_ok
        return BackendInfo("torch", name, self._precision, details)

    @property
    def model(self) -> SRNet:
        return self._model

    @property
    def options(self) -> TorchOptions:
        return self._options

    def add_detail(self, key: str, value: Any) -> None:
        """Record a fact (e.g. the bf16 gate's figures) that `info` reports."""
        self._details[key] = value

    def prepare(self, max_shape: Shape4) -> None:
        # One forward at the largest size: oneDNN / cuDNN pick and cache their kernels, the allocator grows once;
        # on CUDA also the pinned host buffers, and with --cuda-graphs the graph of that shape.
        self.run_timed(np.zeros(max_shape, dtype=np.float32))

    def close(self) -> None:
        """Drop the captured graphs, the compiled shapes and the pinned buffers (their memory goes back to torch)."""
        if self._graphs is not None:
            self._graphs.clear()
        self._compiled_shapes.clear()
        self._pinned.clear()

    def _to_device(self, lr: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))
        return x.to(device=self._device, dtype=self._dtype, non_blocking=False).contiguous(memory_format=self._format)

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        if lr.ndim != 4:
            raise SRDeployError(f"expected an NCHW batch, got shape {lr.shape}")
        with torch.inference_mode():
            if self._device.type == "cuda":
                return self._run_cuda(lr)
            return self._run_cpu(lr)

    def _first_sight(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """What the timed region calls for `x`, after the once-per-shape work (capture, compile) is done."""
        if self._graphs is not None:
            t0 = time.perf_counter_ns()
            try:
                graph, captured = self._graphs.load(x)
            except Exception as e:  # an op that cannot be captured, or memory: the flag and the shape say which
                raise SRDeployError(
                    f"--cuda-graphs: capturing the forward pass for input {tuple(x.shape)} failed ({_first_line(e)})"
                ) from None
            if captured:
                self._note_setup(t0)

            def replay() -> torch.Tensor:
                graph.replay()
                return graph.static_out

            return replay
        if self._options.compile_mode is not None and shape_key(x) not in self._compiled_shapes:
            t0 = time.perf_counter_ns()
            try:
                self._forward(x)  # compiles, or checks guards and specialises, for this shape
                if self._device.type == "cuda":
                    torch.cuda.synchronize(self._device)
            except Exception as e:  # torch.compile compiles lazily: its errors surface at the first call
                raise SRDeployError(
                    f"--compile {self._options.compile_mode}: torch.compile failed for input {tuple(x.shape)} "
                    f"({_first_line(e)})"
                ) from None
            self._compiled_shapes.add(shape_key(x))
            self._note_setup(t0)
        forward = self._forward
        return lambda: forward(x)

    def _note_setup(self, t0: int) -> None:
        self._setups += 1
        self._setup_ms += (time.perf_counter_ns() - t0) / 1e6

    def _run_cpu(self, lr: np.ndarray) -> TimedOutput:
        t0 = time.perf_counter_ns()
        x = self._to_device(lr)
        setup_before = self._setup_ms
        step = self._first_sight(x)
        f0 = time.perf_counter_ns()
        y = step()
        forward_ms = (time.perf_counter_ns() - f0) / 1e6
        out = y.to(device="cpu", dtype=torch.float32).contiguous().numpy()
        # The once-per-shape work is reported apart (shape_setup_ms), not as part of this image's copies.
        end_to_end_ms = (time.perf_counter_ns() - t0) / 1e6 - (self._setup_ms - setup_before)
        return TimedOutput(out, forward_ms, end_to_end_ms)

    def _host_buffer(self, which: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A reusable float32 host buffer viewed as `shape`: pinned, so copies to and from it are truly
        asynchronous DMA (pageable memory is staged through a driver buffer); plain memory if pinning fails."""
        needed = 1
        for d in shape:
            needed *= int(d)
        buf = self._pinned.get(which)
        current = 0 if buf is None else int(buf.numel())
        capacity = grow_capacity(current, needed)
        if buf is None or capacity != current:
            try:
                buf = torch.empty(capacity, dtype=torch.float32, pin_memory=self._pinned_ok)
            except RuntimeError:  # e.g. a locked-memory limit: still correct, only the copies are synchronous
                self._pinned_ok = False
                buf = torch.empty(capacity, dtype=torch.float32)
            self._pinned[which] = buf
        return buf[:needed].view(shape)

    def _run_cuda(self, lr: np.ndarray) -> TimedOutput:
        stream = torch.cuda.current_stream(self._device)
        t0 = time.perf_counter_ns()
        src = np.ascontiguousarray(lr, dtype=np.float32)
        host_in = self._host_buffer("in", tuple(src.shape))
        np.copyto(host_in.numpy(), src)
        # Copy as float32 (pinned -> device, asynchronous), then convert dtype and layout on the device: a dtype
        # change inside a host-to-device copy would go through an unpinned temporary.
        x = host_in.to(device=self._device, non_blocking=True)
        x = x.to(dtype=self._dtype).contiguous(memory_format=self._format)
        setup_before = self._setup_ms
        step = self._first_sight(x)
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        # The input is on the device and nothing else is queued: the events time the forward call alone.
        stream.synchronize()
        start.record(stream)
        y = step()
        end.record(stream)
        end.synchronize()
        forward_ms = float(start.elapsed_time(end))
        y32 = y.to(dtype=torch.float32).contiguous()  # NCHW float32, on the device
        host_out = self._host_buffer("out", tuple(int(d) for d in y32.shape))
        host_out.copy_(y32, non_blocking=True)
        stream.synchronize()
        out = host_out.numpy().copy()  # the pinned buffer is reused by the next call
        end_to_end_ms = (time.perf_counter_ns() - t0) / 1e6 - (self._setup_ms - setup_before)
        return TimedOutput(out, forward_ms, end_to_end_ms)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


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
    comparison: Comparison = field(default_factory=Comparison)  # the outputs against fp32's
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
            # null: identical to fp32 (inf) or not defined (NaN/Inf outputs, see "nonfinite"); JSON has no inf.
            "psnr_vs_fp32_db": db_or_none(self.psnr_vs_fp32_db),
            "y_psnr_fp32": db_or_none(self.y_psnr_fp32),
            "y_psnr": db_or_none(self.y_psnr),
            "y_drop_db": db_or_none(self.y_drop_db),
            "max_abs": self.comparison.max_abs,
            "nonfinite": self.comparison.nonfinite,
            "threshold": self.threshold,
            "passed": self.passed,
            **self.details,
        }


def torch_runner(
    model: SRNet, precision: TorchPrecision, *, device: str = "cpu", channels_last: bool = False
) -> Callable[[np.ndarray], np.ndarray]:
    """`model` in `precision` on `device`, eager, as a plain NCHW float32 -> float32 function: the reduced-precision
    side of a gate, kept apart from the backend being gated so that its per-shape state and its cold first image
    are left untouched."""
    dtype = _DTYPES[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    low = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    if channels_last:
        low.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def run(lr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(lr).to(device=device, dtype=dtype).contiguous(memory_format=fmt)
            out: np.ndarray = low(x).float().cpu().contiguous().numpy()
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
    ref32 = copy.deepcopy(model).float().eval()
    run_low = run if run is not None else torch_runner(model, precision)
    comp = Comparison()
    y32: list[float] = []
    ylo: list[float] = []
    with torch.inference_mode():
        for ref in references:
            x = torch.from_numpy(np.ascontiguousarray(ref.lr, dtype=np.float32))
            a = ref32(x).numpy()
            b = np.asarray(run_low(x.numpy()), dtype=np.float32)
            comp.add(a, b)
            if ref.hr is not None:
                y32.append(psnr_vs_hr(a, ref.hr, model.spec.scale).y_db)
                ylo.append(psnr_vs_hr(b, ref.hr, model.spec.scale).y_db)
    if y32:
        drop = float(np.mean(y32) - np.mean(ylo))
        # NaN/Inf outputs fail whatever their Y-PSNR (they are clamped before it is measured).
        passed, rule = drop <= max_y_drop_db and not comp.nonfinite, f"mean Y-PSNR drop <= {max_y_drop_db} dB"
    else:
        passed = check(comp, Tolerance(min_psnr_db=min_psnr_db)).passed
        rule = f"output PSNR vs fp32 >= {min_psnr_db} dB (no HR images)"
    return PrecisionCheck(
        precision=precision,
        inputs=label or f"{len(references)} inputs",
        psnr_vs_fp32_db=comp.psnr_db,
        y_psnr_fp32=float(np.mean(y32)) if y32 else None,
        y_psnr=float(np.mean(ylo)) if ylo else None,
        threshold=rule,
        passed=passed,
        comparison=comp,
    )


def require_precision(check: PrecisionCheck) -> PrecisionCheck:
    """Raise GateFailedError naming the figures when `check` failed."""
    if not check.passed:
        got = (
            f"{check.comparison.nonfinite} NaN/Inf output values"
            if check.comparison.nonfinite
            else f"Y-PSNR drop {check.y_drop_db:.4f} dB"
            if check.y_drop_db is not None
            else f"output PSNR {check.psnr_vs_fp32_db:.2f} dB"
        )
        raise GateFailedError(
            f"--precision {check.precision}: refused, {got} on {check.inputs} fails the gate ({check.threshold})"
        )
    return check
