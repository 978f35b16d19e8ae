"""Every GPU check of issue 14 in one command, for a lent GPU machine (one H200, ~15 minutes, offline).

    python benchmarks/gpu_check.py --data .gpu-data --out "$OUT"     # on the GPU machine: under 8 minutes
    python benchmarks/gpu_check.py --dry-run --out "$(mktemp -d)"     # on any CPU, seconds: plan + report writer

What it does, in this order, inside a time budget (default 420 s; work that would not fit is skipped, with the
reason, rather than overrunning):

1. team26 in fp32 eager first, so that the challenge's own configuration gets the process-cold first image;
2. the bf16 matmul peak (a large ``torch.matmul`` timed with CUDA events) and the device-to-device copy bandwidth;
3. for every registered architecture with published weights (loaded from --weights-dir, checked by sha256), every
   CUDA path: fp32 eager, fp16, fp16 + CUDA graphs, bf16 (all half paths channels_last) and, last because compiling
   is the slowest step, fp16 + ``torch.compile``. Each path is timed the challenge's way on the DIV2K test LR inputs
   (``sr_deploy.bench.measure``: CUDA events around the forward, input already on the device, no warm-up,
   first image counted; then warm statistics), then checked on Set5 against torch fp32 on the CPU (max abs, PSNR,
   RGB and Y PSNR against HR) with the project's gates, and its peak GPU memory is read;
4. TensorRT, pycuda and onnxruntime-gpu rows through the project's own backends where those exist, else skipped with
   the reason.

Writes ``<out>/gpu_<gpu name>.md`` and ``.json`` (default out: benchmarks/results) and prints the goals last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without `pip install -e .` (the GPU machine)
    sys.path.insert(0, str(HERE.parent))

from sr_deploy.archs.base import SRNet  # noqa: E402
from sr_deploy.bench.inputs import BenchImage  # noqa: E402
from sr_deploy.bench.measure import RowResult, jsonable, measure_backend  # noqa: E402
from sr_deploy.bench.rows import RowPlan  # noqa: E402
from sr_deploy.errors import SRDeployError  # noqa: E402
from sr_deploy.export.onnx import ExportGates, ReferenceImage  # noqa: E402
from sr_deploy.runtime.base import Backend  # noqa: E402
from sr_deploy.runtime.torch_backend import (  # noqa: E402
    BF16_MAX_Y_DROP_DB,
    BF16_MIN_PSNR_DB,
    TorchBackend,
    TorchOptions,
    TorchPrecision,
)

RESULTS = HERE / "results"
DEFAULT_DATA = Path("../shared/data")
DEFAULT_BUDGET_S = 420.0
#: The issue's goals.
GOAL_SPEEDUP = 3.0
GOAL_MEAN_MS = 2.0
GOAL_ARCH = "ntire:team26"
#: Where the NTIRE FLOP count is taken; it is scaled to each image by its pixel count.
REFERENCE_HW = (256, 256)
PSNR_BORDER = 4
#: Warm statistics: this many untimed calls after the cold pass, then this many timed passes over the set.
WARMUP_CALLS = 3
WARM_PASSES = 1
#: First guesses of a job's cost in seconds, before one of its kind has been measured in this run.
FIRST_ESTIMATE_S = {"eager": 20.0, "graphs": 30.0, "compile": 120.0, "tensorrt": 240.0, "onnxruntime": 60.0}
#: What is measured beyond the estimate is kept as a margin: a job is started only if it fits with this factor.
ESTIMATE_MARGIN = 1.25

Kind = Literal["torch", "tensorrt", "onnxruntime"]


# --------------------------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class PathSpec:
    """One way of running a network, e.g. fp16 + CUDA graphs. `key` names it in tables and in the JSON."""

    key: str
    title: str
    kind: Kind
    precision: TorchPrecision
    channels_last: bool = False
    cuda_graphs: bool = False
    compile_mode: str | None = None
    cuda_only: bool = True

    @property
    def cost_class(self) -> str:
        """Which first estimate applies (see FIRST_ESTIMATE_S)."""
        if self.kind != "torch":
            return self.kind
        if self.compile_mode is not None:
            return "compile"
        return "graphs" if self.cuda_graphs else "eager"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "kind": self.kind,
            "precision": self.precision,
            "channels_last": self.channels_last,
            "cuda_graphs": self.cuda_graphs,
            "compile": self.compile_mode,
        }


FP32_EAGER = PathSpec("fp32-eager", "torch fp32 eager, NCHW (what the challenge ran)", "torch", "fp32", cuda_only=False)
TORCH_PATHS: tuple[PathSpec, ...] = (
    FP32_EAGER,
    PathSpec("fp16", "torch fp16, channels_last", "torch", "fp16", channels_last=True),
    PathSpec("fp16-graphs", "torch fp16, channels_last, CUDA graphs", "torch", "fp16", True, cuda_graphs=True),
    PathSpec("bf16", "torch bf16, channels_last", "torch", "bf16", channels_last=True),
    PathSpec("fp16-compiled", "torch.compile fp16, channels_last", "torch", "fp16", True, compile_mode="default"),
)
OTHER_PATHS: tuple[PathSpec, ...] = (
    PathSpec("tensorrt-fp32", "TensorRT fp32", "tensorrt", "fp32"),
    PathSpec("tensorrt-fp16", "TensorRT fp16", "tensorrt", "fp16"),
    PathSpec("ort-cuda-fp32", "ONNX Runtime CUDA fp32", "onnxruntime", "fp32"),
    PathSpec("ort-cuda-fp16", "ONNX Runtime CUDA fp16", "onnxruntime", "fp16"),
)
GOAL_FAST = "fp16-graphs"


@dataclass
class ArchJob:
    """One network to check: its published weights and, once loaded, the model (None in the plan, or skipped)."""

    name: str  # the published name, e.g. ntire:team26
    arch: str  # registry id
    weights: Path | None
    sha256: str
    model: SRNet | None = None
    skip_reason: str | None = None
    fp16_refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "weights": str(self.weights) if self.weights else None,
            "sha256": self.sha256,
            "spec": self.model.spec.name if self.model is not None else None,
            "skip_reason": self.skip_reason,
            "fp16_refusal": self.fp16_refusal,
        }


def published_jobs(weights_dir: Path) -> list[ArchJob]:
    """Every published checkpoint of every registered architecture, in registry order (team26 first), with its file
    in `weights_dir` when it is there; a missing file is a skip with the reason, never an error."""
    from sr_deploy.archs.registry import all_archs

    jobs: list[ArchJob] = []
    for arch in all_archs():
        for w in arch.published:
            path = weights_dir / w.filename
            job = ArchJob(name=w.name, arch=arch.id, weights=path if path.is_file() else None, sha256=w.sha256)
            if job.weights is None:
                job.skip_reason = f"{w.filename} is not in {weights_dir}"
            jobs.append(job)
    return jobs


def load_job(job: ArchJob) -> ArchJob:
    """The job with its model loaded (deploy form), or skipped with the reason (bad hash, unreadable file)."""
    from sr_deploy.archs.registry import check_precision_supported
    from sr_deploy.checkpoints import load_model

    if job.weights is None or job.skip_reason:
        return job
    try:
        model, loaded = load_model(job.weights, form="plain")
    except SRDeployError as e:
        return replace(job, skip_reason=str(e))
    if job.sha256 and loaded.sha256 != job.sha256:
        return replace(job, skip_reason=f"{job.weights} has sha256 {loaded.sha256}, expected {job.sha256}")
    refusal = None
    try:
        check_precision_supported(model.spec, "fp16")
    except SRDeployError as e:
        refusal = str(e)
    return replace(job, model=model.eval(), fp16_refusal=refusal)


@dataclass(frozen=True)
class Task:
    """One unit of work in run order: the peaks, or one path of one network."""

    what: Literal["peaks", "path"]
    job: int = -1  # index into the jobs
    path: PathSpec | None = None


def order_tasks(jobs: Sequence[ArchJob], paths: Sequence[PathSpec]) -> list[Task]:
    """The run order: the first network's fp32 eager (process-cold, as in the challenge), the peaks, every other
    non-compiled path network by network, other runtimes, and the compiled paths last (slowest, so the budget cuts
    those first), the first network's before the others'."""
    tasks: list[Task] = []
    first = next((i for i, j in enumerate(jobs) if j.skip_reason is None), None)
    if first is not None and FP32_EAGER in paths:
        tasks.append(Task("path", first, FP32_EAGER))
    tasks.append(Task("peaks"))
    plain = [p for p in paths if p.kind == "torch" and p.compile_mode is None]
    others = [p for p in paths if p.kind != "torch"]
    compiled = [p for p in paths if p.kind == "torch" and p.compile_mode is not None]
    for group in (plain, others, compiled):
        for i in range(len(jobs)):
            for p in group:
                t = Task("path", i, p)
                if t not in tasks:
                    tasks.append(t)
    return tasks


# ------------------------------------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """Seconds allowed for the whole run, and what each kind of task has cost so far (the estimate for the next)."""

    total_s: float
    started: float = field(default_factory=time.monotonic)
    observed: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def estimate(self, cost_class: str) -> float:
        return estimate_s(cost_class, self.observed)

    def record(self, cost_class: str, seconds: float) -> None:
        self.observed[cost_class] = max(seconds, self.observed.get(cost_class, 0.0))

    def refusal(self, cost_class: str) -> str | None:
        return budget_refusal(self.elapsed(), self.total_s, self.estimate(cost_class))

    def left(self) -> float:
        return self.total_s - self.elapsed()


def estimate_s(cost_class: str, observed: dict[str, float]) -> float:
    """The longest task of this kind so far, or the first guess; the peaks take a few seconds."""
    if cost_class in observed:
        return observed[cost_class]
    return FIRST_ESTIMATE_S.get(cost_class, 10.0 if cost_class == "peaks" else 30.0)


def budget_refusal(elapsed_s: float, total_s: float, estimate: float, margin: float = ESTIMATE_MARGIN) -> str | None:
    """None when a task of `estimate` seconds fits in what is left of the budget (with `margin`), else why not."""
    left = total_s - elapsed_s
    need = estimate * margin
    if need <= left:
        return None
    return f"time budget: {elapsed_s:.0f} of {total_s:.0f} s used, and this step is estimated at {estimate:.0f} s"


class JobTimeout(BaseException):
    """Raised in the main thread when a task outlives what is left of the budget. A BaseException, so that the
    backends' own `except Exception` (which turn errors into one-line messages) let it through."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with JobTimeout after `seconds`: an estimate can be wrong (a compile that takes twice as
    long), and the run must still end inside its budget. Python-level only: a long C++ call finishes first. Does
    nothing off the main thread or without SIGALRM."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def fire(_sig: int, _frame: object) -> None:
        raise JobTimeout(f"stopped at the time budget after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------------------------------------ model figures


@dataclass(frozen=True)
class ModelCost:
    """Work per image at REFERENCE_HW, scaled to other sizes by pixel count.

    ``flops`` is the NTIRE count (sr_deploy.profile: a multiply-accumulate counts as one, plus one per activation
    output); the achieved FLOP/s uses 2 x that, the convention of the matmul peak (2 n^3 per n x n x n product).
    ``conv_io_elems`` is every conv's input plus output elements, ``weight_elems`` every conv weight element: the
    bytes a network must move at least if everything between convs were fused (see Definitions in the report).
    """

    reference_hw: tuple[int, int]
    flops: int
    conv_io_elems: int
    weight_elems: int

    def flop_for(self, h: int, w: int) -> float:
        return 2.0 * self.flops * (h * w) / (self.reference_hw[0] * self.reference_hw[1])

    def bytes_for(self, h: int, w: int, elem_bytes: int) -> float:
        pixels = (h * w) / (self.reference_hw[0] * self.reference_hw[1])
        return float(elem_bytes) * (self.conv_io_elems * pixels + self.weight_elems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_hw": list(self.reference_hw),
            "ntire_flops": self.flops,
            "conv_io_elems": self.conv_io_elems,
            "weight_elems": self.weight_elems,
        }


def model_cost(model: nn.Module, hw: tuple[int, int] = REFERENCE_HW) -> ModelCost:
    """NTIRE FLOPs (sr_deploy.profile) and conv traffic of `model` for one 1x3xHxW input, counted on the CPU."""
    from sr_deploy.profile import profile_model

    cpu = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    counts = {"io": 0, "weights": sum(int(m.weight.numel()) for m in cpu)}

    def hook(_m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        counts["io"] += int(inp[0].numel()) + int(out.numel())

    handles = [m.register_forward_hook(hook) for m in cpu]
    try:
        prof = profile_model(model, hw)
    finally:
        for h in handles:
            h.remove()
    return ModelCost(reference_hw=hw, flops=int(prof.flops), conv_io_elems=counts["io"], weight_elems=counts["weights"])


ELEM_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}


# ----------------------------------------------------------------------------------------------------- the peaks


@dataclass(frozen=True)
class Peaks:
    """The two ceilings of this run: bf16 matmul FLOP/s and device copy bandwidth (read + written bytes)."""

    device: str
    matmul_n: int
    bf16_matmul_flops: float
    copy_bytes: int
    copy_bytes_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "matmul_n": self.matmul_n,
            "bf16_matmul_tflops": self.bf16_matmul_flops / 1e12,
            "copy_buffer_mib": self.copy_bytes / 2**20,
            "copy_gb_per_s": self.copy_bytes_per_s / 1e9,
        }


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    """Seconds per call of `fn` over `reps` calls: CUDA events on a GPU, perf_counter on the CPU."""

    def run(fn: Callable[[], object], reps: int) -> float:
        if device.type == "cuda":
            start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) / 1e3 / reps
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    return run


def _matmul_seconds(device: torch.device, n: int, reps: int, trials: int, gen: torch.Generator) -> float:
    timed = _timer(device)
    a = torch.rand(n, n, device=device, generator=gen).to(torch.bfloat16)
    b = torch.rand(n, n, device=device, generator=gen).to(torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    timed(lambda: torch.matmul(a, b, out=c), 2)
    return min(timed(lambda: torch.matmul(a, b, out=c), reps) for _ in range(trials))


def _copy_seconds(device: torch.device, n_floats: int, reps: int, trials: int, gen: torch.Generator) -> float:
    timed = _timer(device)
    src = torch.rand(n_floats, device=device, generator=gen)
    dst = torch.empty_like(src)
    timed(lambda: dst.copy_(src), 2)
    return min(timed(lambda: dst.copy_(src), reps) for _ in range(trials))


def measure_peaks(device: torch.device, *, matmul_n: int, copy_bytes: int, reps: int, trials: int = 3) -> Peaks:
    """Best of `trials` rounds of `reps` bf16 n x n x n matmuls and `reps` device-to-device copies, on random data
    (zeros run faster than real data on these chips), after one warm-up round each. Each buffer lives in its helper
    only, so the matmul's are freed before the copy's are made."""
    gen = torch.Generator(device=device).manual_seed(0)
    mm_s = _matmul_seconds(device, matmul_n, reps, trials, gen)
    n_floats = copy_bytes // 4
    copy_s = _copy_seconds(device, n_floats, reps, trials, gen)
    return Peaks(
        device=str(device),
        matmul_n=matmul_n,
        bf16_matmul_flops=2.0 * matmul_n**3 / mm_s,
        copy_bytes=n_floats * 4,
        copy_bytes_per_s=2.0 * n_floats * 4 / copy_s,
    )


# -------------------------------------------------------------------------------------------------- correctness


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    threshold: float
    rule: Literal["<=", ">="]
    passed: bool

    def describe(self) -> str:
        return f"{self.name} {self.value:.4g} {self.rule} {self.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "threshold": self.threshold,
            "rule": self.rule,
            "passed": self.passed,
        }


def _gate(name: str, value: float, threshold: float, rule: Literal["<=", ">="]) -> Gate:
    ok = (value <= threshold) if rule == "<=" else (value >= threshold)
    return Gate(name, value, threshold, rule, bool(ok) and not math.isnan(value))


@dataclass
class Correctness:
    """A path's Set5 outputs against torch fp32 on the CPU (the oracle), and both against the HR images."""

    images: int
    finite: bool
    max_abs: float
    psnr_vs_cpu_db: float
    rgb_psnr: float | None
    y_psnr: float | None
    cpu_rgb_psnr: float | None
    cpu_y_psnr: float | None
    gates: list[Gate] = field(default_factory=list)

    @property
    def y_drop_db(self) -> float | None:
        if self.y_psnr is None or self.cpu_y_psnr is None:
            return None
        return self.cpu_y_psnr - self.y_psnr

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failures(self) -> list[str]:
        return [g.describe() for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "finite": self.finite,
            "max_abs": self.max_abs,
            "psnr_vs_cpu_db": self.psnr_vs_cpu_db,
            "rgb_psnr": self.rgb_psnr,
            "y_psnr": self.y_psnr,
            "cpu_rgb_psnr": self.cpu_rgb_psnr,
            "cpu_y_psnr": self.cpu_y_psnr,
            "y_drop_db": self.y_drop_db,
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
        }


def path_gates(precision: str, c: Correctness, *, tf32: bool = False) -> list[Gate]:
    """The project's rules, the same as on the CPU:

    - every precision: no NaN/Inf;
    - fp32: the ONNX export's fp32 gate, max abs <= 1e-4;
    - fp32 with TF32 convs (`tf32`: torch's default for cuDNN on Ampere and later, so what the challenge's "fp32"
      was): TF32 keeps fp16's 10-bit mantissa, so fp16's gates apply;
    - fp16: the ONNX export's gates, PSNR against fp32 >= 50 dB and a mean Y-PSNR drop <= 0.02 dB;
    - bf16: the bf16 gate, a mean Y-PSNR drop <= BF16_MAX_Y_DROP_DB (without HR: PSNR >= BF16_MIN_PSNR_DB).
    """
    out = [_gate("finite outputs", 1.0 if c.finite else 0.0, 1.0, ">=")]
    drop = c.y_drop_db
    if precision == "fp32" and not tf32:
        out.append(_gate("max abs vs CPU fp32", c.max_abs, ExportGates().fp32_max_abs, "<="))
    elif precision in ("fp16", "fp32"):
        g = ExportGates()
        out.append(_gate("PSNR vs CPU fp32 (dB)", c.psnr_vs_cpu_db, g.fp16_min_psnr_db, ">="))
        if drop is not None:
            out.append(_gate("mean Y-PSNR drop (dB)", drop, g.fp16_max_y_psnr_drop_db, "<="))
    elif drop is not None:
        out.append(_gate("mean Y-PSNR drop (dB)", drop, BF16_MAX_Y_DROP_DB, "<="))
    else:
        out.append(_gate("PSNR vs CPU fp32 (dB)", c.psnr_vs_cpu_db, BF16_MIN_PSNR_DB, ">="))
    return out


def _psnrs(out: np.ndarray, hr: np.ndarray) -> tuple[float, float]:
    """(RGB, Y) PSNR of an NCHW float output against a uint8 HR, border 4, the challenge's quantisation."""
    from sr_deploy.imaging.io import from_model_output
    from sr_deploy.imaging.metrics import psnr

    sr = from_model_output(out, 8)
    return (
        psnr(sr, hr, crop_border=PSNR_BORDER, y_channel=False),
        psnr(sr, hr, crop_border=PSNR_BORDER, y_channel=True),
    )


def correctness(
    precision: str,
    outputs: Sequence[np.ndarray],
    oracle: Sequence[np.ndarray],
    hrs: Sequence[np.ndarray | None],
    *,
    tf32: bool = False,
) -> Correctness:
    """Compare a path's outputs with the CPU fp32 oracle's (same inputs, same order) and score both against HR."""
    if len(outputs) != len(oracle) or len(outputs) != len(hrs) or not outputs:
        raise ValueError("correctness needs one output, one oracle output and one HR slot per image")
    finite, max_abs, sq, count = True, 0.0, 0.0, 0
    rgb: list[float] = []
    y: list[float] = []
    rgb_cpu: list[float] = []
    y_cpu: list[float] = []
    for got, ref, hr in zip(outputs, oracle, hrs, strict=True):
        if got.shape != ref.shape:
            raise SRDeployError(f"output shape {got.shape} differs from the CPU's {ref.shape}")
        g64 = got.astype(np.float64)
        ok = np.isfinite(g64)
        finite = finite and bool(ok.all())
        diff = np.abs(np.where(ok, g64, np.inf) - ref.astype(np.float64))
        max_abs = max(max_abs, float(diff.max()))
        sq += float(np.square(np.where(ok, diff, 1.0)).sum())
        count += diff.size
        if hr is not None:
            r, yy = _psnrs(got, hr)
            rc, yc = _psnrs(ref, hr)
            rgb.append(r)
            y.append(yy)
            rgb_cpu.append(rc)
            y_cpu.append(yc)
    mse = sq / max(count, 1)
    result = Correctness(
        images=len(outputs),
        finite=finite,
        max_abs=max_abs,
        psnr_vs_cpu_db=math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse),
        rgb_psnr=float(np.mean(rgb)) if rgb else None,
        y_psnr=float(np.mean(y)) if y else None,
        cpu_rgb_psnr=float(np.mean(rgb_cpu)) if rgb_cpu else None,
        cpu_y_psnr=float(np.mean(y_cpu)) if y_cpu else None,
    )
    result.gates = path_gates(precision, result, tf32=tf32)
    return result


# ------------------------------------------------------------------------------------------------------ results


@dataclass
class PathResult:
    """One path of one network: its challenge-method timing, its share of the peaks, memory, and correctness."""

    arch: str
    path: PathSpec
    status: Literal["ok", "skipped", "failed"]
    reason: str = ""
    row: RowResult | None = None
    achieved_flops: float | None = None
    flops_share: float | None = None
    bytes_per_s: float | None = None
    bandwidth_share: float | None = None
    peak_memory_bytes: int | None = None
    memory_before_bytes: int | None = None
    check: Correctness | None = None
    seconds: float = 0.0

    @property
    def challenge_mean_ms(self) -> float | None:
        return self.row.challenge.mean_ms if self.row and self.row.challenge else None

    @property
    def passed(self) -> bool:
        """Ran and passed every gate."""
        return self.status == "ok" and self.check is not None and self.check.passed

    def to_dict(self) -> dict[str, Any]:
        r = self.row
        return {
            "arch": self.arch,
            "path": self.path.to_dict(),
            "status": self.status,
            "reason": self.reason,
            "challenge": r.challenge.to_dict() if r and r.challenge else None,
            "warm": r.warm.to_dict() if r and r.warm else None,
            "warm_end_to_end": r.warm_end_to_end.to_dict() if r and r.warm_end_to_end else None,
            "backend": r.backend if r else None,
            "timing": r.timing if r else None,
            "per_image": [
                {"name": i.name, "lr_hw": list(i.lr_hw), "cold_ms": i.cold_forward_ms, "warm_ms": i.warm_forward_ms}
                for i in (r.images if r else [])
            ],
            "achieved_tflops": None if self.achieved_flops is None else self.achieved_flops / 1e12,
            "share_of_bf16_matmul_peak": self.flops_share,
            "achieved_gb_per_s": None if self.bytes_per_s is None else self.bytes_per_s / 1e9,
            "share_of_copy_bandwidth": self.bandwidth_share,
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_before_bytes": self.memory_before_bytes,
            "correctness": self.check.to_dict() if self.check else None,
            "seconds": self.seconds,
        }


def shares(row: RowResult, cost: ModelCost, precision: str, peaks: Peaks | None) -> tuple[float, float, float, float]:
    """(FLOP/s, share of the bf16 matmul peak, bytes/s, share of the copy bandwidth) over the warm passes; shares
    are NaN without peaks."""
    flop = byts = ms = 0.0
    for im in row.images:
        h, w = im.lr_hw
        for t in im.warm_forward_ms:
            flop += cost.flop_for(h, w)
            byts += cost.bytes_for(h, w, ELEM_BYTES[precision])
            ms += t
    if ms <= 0:
        return math.nan, math.nan, math.nan, math.nan
    fps, bps = flop / (ms / 1e3), byts / (ms / 1e3)
    if peaks is None:
        return fps, math.nan, bps, math.nan
    return fps, fps / peaks.bf16_matmul_flops, bps, bps / peaks.copy_bytes_per_s


@dataclass(frozen=True)
class Goal:
    name: str
    target: str
    value: str
    passed: bool | None  # None: not measured in this run

    @property
    def status(self) -> str:
        return "not measured" if self.passed is None else ("PASS" if self.passed else "FAIL")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "value": self.value, "status": self.status}


def evaluate_goals(results: Sequence[PathResult], *, gpu: bool, arch: str = GOAL_ARCH) -> list[Goal]:
    """The issue's three goals from the results of this one run. The two time goals are GPU goals: off a GPU their
    figures are shown but they count as not measured."""
    mine = {r.path.key: r for r in results if r.arch == arch and r.status == "ok"}
    base = mine.get(FP32_EAGER.key)
    fast = mine.get(GOAL_FAST)
    goals: list[Goal] = []
    b, f = (base.challenge_mean_ms if base else None), (fast.challenge_mean_ms if fast else None)
    if b is not None and f is not None and f > 0:
        x = b / f
        goals.append(
            Goal(
                f"{arch}: fp16 + CUDA graphs vs fp32 eager",
                f">= {GOAL_SPEEDUP:g}x faster (challenge mean, same run)",
                f"{x:.2f}x ({f:.3f} ms vs {b:.3f} ms)",
                x >= GOAL_SPEEDUP if gpu else None,
            )
        )
    else:
        goals.append(Goal(f"{arch}: fp16 + CUDA graphs vs fp32 eager", f">= {GOAL_SPEEDUP:g}x", "–", None))
    passing = [r for r in mine.values() if r.challenge_mean_ms is not None and r.check is not None and r.check.passed]
    if passing:
        best = min(passing, key=lambda r: r.challenge_mean_ms or math.inf)
        ms = best.challenge_mean_ms or math.inf
        goals.append(
            Goal(
                f"{arch}: challenge mean on the DIV2K test inputs",
                f"<= {GOAL_MEAN_MS:g} ms (fastest path that passes its gates)",
                f"{ms:.3f} ms ({best.path.key})" + ("" if gpu else ", not on a GPU"),
                ms <= GOAL_MEAN_MS if gpu else None,
            )
        )
    else:
        goals.append(Goal(f"{arch}: challenge mean on the DIV2K test inputs", f"<= {GOAL_MEAN_MS:g} ms", "–", None))
    checked = [r for r in results if r.status == "ok" and r.check is not None]
    failed = [f"{r.arch} {r.path.key}: {'; '.join(r.check.failures())}" for r in checked if r.check and not r.passed]
    value = f"{len(checked) - len(failed)} of {len(checked)} paths pass"
    if failed:
        value += f"; failing: {' / '.join(failed)}"
    goals.append(
        Goal(
            "PSNR rules as on the CPU, every path checked",
            "every gate passes",
            value,
            (not failed) if checked else None,
        )
    )
    return goals


# ------------------------------------------------------------------------------------------------------ running


@dataclass
class Inputs:
    """Decoded once, never timed: the timing images (DIV2K test LR) and the Set5 references."""

    timing: list[BenchImage]
    timing_label: str
    references: list[ReferenceImage]
    references_label: str


def make_backend_for(path: PathSpec, model: SRNet, device: str, work_dir: Path) -> Backend:
    """The backend of `path`: TorchBackend directly for torch paths (the gates are this script's own step, reported
    rather than refused), the project's factory for the other runtimes."""
    if path.kind == "torch":
        return TorchBackend(
            model,
            device=device,
            precision=path.precision,
            channels_last=path.channels_last,
            options=TorchOptions(cuda_graphs=path.cuda_graphs, compile_mode=path.compile_mode),
        )
    from sr_deploy.runtime.factory import make_backend

    if path.kind == "tensorrt":
        return make_backend("tensorrt", model, precision=path.precision, device="cuda", work_dir=work_dir)
    return make_backend(
        "onnxruntime", model, precision=path.precision, device="cuda", work_dir=work_dir, providers=["cuda"]
    )


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def run_path(
    job: ArchJob,
    path: PathSpec,
    inputs: Inputs,
    oracle: Sequence[np.ndarray],
    cost: ModelCost,
    peaks: Peaks | None,
    device: torch.device,
    work_dir: Path,
) -> PathResult:
    """Build, time the challenge's way, check on Set5, read the peak memory, release."""
    assert job.model is not None
    cuda = device.type == "cuda"
    _free(device)
    before = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = int(torch.cuda.memory_allocated(device))
    backend = make_backend_for(path, job.model, str(device), work_dir)
    try:
        plan = RowPlan(f"{job.name}:{path.key}", path.title, path.kind, path.precision, cuda_graphs=path.cuda_graphs)
        row = measure_backend(
            backend, plan, inputs.timing, warmup=WARMUP_CALLS, repeat=WARM_PASSES, scale=job.model.spec.scale
        )
        outs = [backend.run(ref.lr) for ref in inputs.references]
        check = correctness(
            path.precision, outs, oracle, [ref.hr for ref in inputs.references], tf32=tf32_convs(device)
        )
        peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    finally:
        backend.close()
        del backend
    fps, fshare, bps, bshare = shares(row, cost, path.precision, peaks)
    return PathResult(
        arch=job.name,
        path=path,
        status="ok",
        row=row,
        achieved_flops=fps,
        flops_share=fshare,
        bytes_per_s=bps,
        bandwidth_share=bshare,
        peak_memory_bytes=peak,
        memory_before_bytes=before,
        check=check,
    )


def tf32_convs(device: torch.device) -> bool:
    """Whether fp32 convs run in TF32 here: torch allows it for cuDNN by default, and GPUs of compute capability
    8.0 and later (Ampere, Hopper) do it."""
    if device.type != "cuda":
        return False
    return bool(torch.backends.cudnn.allow_tf32) and torch.cuda.get_device_capability(device) >= (8, 0)


def cpu_oracle(model: SRNet, refs: Sequence[ReferenceImage]) -> list[np.ndarray]:
    """torch fp32 on the CPU: what every path is compared with."""
    import copy

    cpu = copy.deepcopy(model).float().cpu().eval()
    with torch.inference_mode():
        return [cpu(torch.from_numpy(np.ascontiguousarray(r.lr, dtype=np.float32))).numpy() for r in refs]


def availability() -> dict[str, str | None]:
    """The optional GPU runtimes: None when usable here, else why not (the rows that need them are skipped)."""
    from sr_deploy.runtime.factory import available_backends
    from sr_deploy.runtime.ort_backend import CUDA, provider_status

    trt = available_backends()["tensorrt"]
    pycuda = None if importlib.util.find_spec("pycuda") is not None else "pycuda is not installed"
    return {"tensorrt": trt, "pycuda": pycuda, "onnxruntime-gpu": provider_status()[CUDA]}


def path_skip_reason(path: PathSpec, device: torch.device, avail: dict[str, str | None], job: ArchJob) -> str | None:
    """Why `path` cannot run here for `job`, decided before anything is built; None when it can."""
    if path.kind == "tensorrt":
        missing = [f"{k}: {v}" for k in ("tensorrt", "pycuda") if (v := avail.get(k)) is not None]
        if missing:
            return "; ".join(missing)
    if path.kind == "onnxruntime" and (why := avail.get("onnxruntime-gpu")) is not None:
        return f"onnxruntime-gpu: {why}"
    if path.cuda_only and device.type != "cuda":
        return f"needs CUDA (this run is on {device.type})"
    if path.precision == "fp16" and job.fp16_refusal:
        return job.fp16_refusal
    if path.precision == "bf16" and device.type == "cuda":
        from sr_deploy.runtime.torch_backend import cuda_bf16_native, cuda_bf16_support

        return cuda_bf16_support(cuda_bf16_native(), torch.cuda.get_device_name(device))
    return None


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


@dataclass
class Report:
    """Everything one run measured, ready for JSON (`to_dict`) and markdown (`render_markdown`)."""

    title: str
    dry_run: bool
    device: str
    settings: dict[str, Any]
    environment: dict[str, Any]
    availability: dict[str, str | None]
    jobs: list[ArchJob]
    costs: dict[str, ModelCost]
    peaks: Peaks | None
    peaks_reason: str
    results: list[PathResult]
    goals: list[Goal]
    notes: list[str]
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        d = {
            "title": self.title,
            "created_utc": self.created_utc,
            "dry_run": self.dry_run,
            "device": self.device,
            "settings": dict(self.settings),
            "environment": dict(self.environment),
            "availability": dict(self.availability),
            "networks": [j.to_dict() for j in self.jobs],
            "model_costs": {k: v.to_dict() for k, v in self.costs.items()},
            "peaks": self.peaks.to_dict() if self.peaks else None,
            "peaks_reason": self.peaks_reason,
            "results": [r.to_dict() for r in self.results],
            "goals": [g.to_dict() for g in self.goals],
            "notes": list(self.notes),
        }
        cleaned: dict[str, Any] = jsonable(d)  # strict JSON: NaN and inf become null
        return cleaned


def _f(x: float | None, spec: str, scale: float = 1.0) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x * scale, spec)


DEFINITIONS = [
    "**challenge mean**: the mean per-image forward time of one pass over the inputs, first image counted, no "
    "warm-up, timed with CUDA events around the forward call only, the input already on the device in the path's "
    "dtype and layout (`sr_deploy.bench.measure`). With CUDA graphs, a shape seen for the first time is "
    "captured before its timed replay; with torch.compile it is compiled (or its guards checked) before its timed "
    "call. That per-shape work is counted apart (*setup*), never inside a figure.",
    f"**warm median**: {WARMUP_CALLS} untimed calls after the cold pass, then {WARM_PASSES} timed pass(es) over the "
    "set. **end-to-end**: the warm pass again with the copies: pinned host buffer -> device (asynchronous), dtype "
    "and layout conversion, forward, conversion back, device -> pinned host buffer.",
    "**TFLOP/s**: 2 x the NTIRE FLOP count (`sr_deploy.profile.profile_model` at 256x256, which counts a "
    "multiply-accumulate as one FLOP, as the challenge did), scaled to each image by its pixel count, over the warm "
    "forward time; **% bf16 peak** divides it by the bf16 matmul rate measured in this run (2 n^3 FLOP per n x n x n "
    "`torch.matmul`, best of 3 rounds).",
    "**GB/s**: bytes a network must move at least if everything between two convs were fused: every conv reads its "
    "input and writes its output once and reads its weights once, in the path's element size (4 bytes fp32, 2 "
    "half), scaled by pixel count; **% copy BW** divides it by the device-to-device copy bandwidth of this run "
    "(bytes read plus bytes written by a large `Tensor.copy_`, best of 3 rounds). Both shares are lower bounds "
    "on how busy the chip was.",
    "**peak memory**: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` just before the path's "
    "backend was built: the weights, the activations, CUDA graph pools (up to 8 shapes kept) and the Set5 check.",
    "**correctness**: the path's outputs on Set5 (LR_bicubic_x4) against torch fp32 on the CPU: max abs and PSNR "
    "over all pixels, and RGB / Y PSNR against HR (4-pixel border, uint8). Gates as on the CPU: fp32 max abs <= "
    f"{ExportGates().fp32_max_abs:g} (the ONNX export's fp32 gate), but fp32 with TF32 convs (torch's default for "
    "cuDNN on Ampere and later, and so what the challenge's fp32 was) keeps fp16's 10-bit mantissa and is held to "
    f"the fp16 gates; fp16 PSNR >= {ExportGates().fp16_min_psnr_db:g} dB and Y drop <= "
    f"{ExportGates().fp16_max_y_psnr_drop_db:g} dB (the ONNX export's fp16 gates); bf16 Y drop <= "
    f"{BF16_MAX_Y_DROP_DB:g} dB (the CPU bf16 gate).",
]


def render_markdown(rep: Report) -> str:
    lines = [f"# {rep.title}", ""]
    if rep.dry_run:
        lines += ["**Dry run on the CPU: a tiny synthetic plan that exercises the script, not a GPU measurement.**", ""]
    elif not rep.device.startswith("cuda"):
        lines += [f"**Not a GPU run: measured on {rep.device}.**", ""]
    lines += ["## Goals", "", "| goal | target | this run | status |", "|---|---|---|---|"]
    for g in rep.goals:
        lines.append(f"| {g.name} | {g.target} | {g.value.replace('|', '/')} | **{g.status}** |")
    env = rep.environment
    lines += ["", "## Machine", ""]
    gpu = env.get("gpu")
    lines.append(
        f"- GPU: {gpu['name']} (cc {gpu['compute_capability']}, driver {gpu.get('driver')}, CUDA "
        f"{gpu.get('cuda_runtime')})"
        if gpu
        else "- GPU: none"
    )
    lines.append(f"- CPU: {env.get('cpu_model')} ({env.get('cpu_count')} CPUs); torch {env.get('torch')}")
    lines.append(f"- Settings: {', '.join(f'{k} {v}' for k, v in rep.settings.items())}")
    for name, why in rep.availability.items():
        lines.append(f"- {name}: {'available' if why is None else why}")
    lines += ["", "## Peaks of this run", ""]
    if rep.peaks is None:
        lines.append(f"Not measured: {rep.peaks_reason}")
    else:
        p = rep.peaks
        lines.append(
            f"- bf16 matmul ({p.matmul_n}^3): **{p.bf16_matmul_flops / 1e12:.1f} TFLOP/s**; device copy "
            f"({p.copy_bytes / 2**20:.0f} MiB, read + write): **{p.copy_bytes_per_s / 1e9:.0f} GB/s**"
        )
    lines += [
        "",
        "## Paths",
        "",
        "Times in ms per image. Inputs: "
        + str(rep.settings.get("timing_inputs", ""))
        + "; correctness on "
        + str(rep.settings.get("reference_inputs", ""))
        + ".",
        "",
        "| network | path | challenge mean | cold first | mean w/o first | warm median | e2e median | setup "
        "(n, ms) | TFLOP/s | % bf16 peak | GB/s | % copy BW | peak MiB | max abs vs CPU | PSNR vs CPU | RGB PSNR "
        "| Y PSNR (CPU) | gates |",
        "|" + "---|" * 18,
    ]
    skipped: list[str] = []
    for r in rep.results:
        if r.status != "ok" or r.row is None:
            skipped.append(f"- {r.arch} {r.path.key}: {r.status}: {r.reason}")
            continue
        ch, warm, e2e, c = r.row.challenge, r.row.warm, r.row.warm_end_to_end, r.check
        details = r.row.backend.get("details", {}) if isinstance(r.row.backend, dict) else {}
        setup = f"{details.get('shape_setups', 0)}, {_f(details.get('shape_setup_ms'), '.0f')}"
        gates = "–" if c is None else ("pass" if c.passed else "FAIL: " + "; ".join(c.failures()))
        y = "–" if c is None else f"{_f(c.y_psnr, '.4f')} ({_f(c.cpu_y_psnr, '.4f')})"
        cells = [
            r.arch,
            r.path.key,
            _f(ch.mean_ms if ch else None, ".3f"),
            _f(ch.cold_first_ms if ch else None, ".3f"),
            _f(ch.mean_without_first_ms if ch else None, ".3f"),
            _f(warm.median_ms if warm else None, ".3f"),
            _f(e2e.median_ms if e2e else None, ".3f"),
            setup,
            _f(r.achieved_flops, ".2f", 1e-12),
            _f(r.flops_share, ".1f", 100.0),
            _f(r.bytes_per_s, ".0f", 1e-9),
            _f(r.bandwidth_share, ".1f", 100.0),
            _f(None if r.peak_memory_bytes is None else float(r.peak_memory_bytes), ".0f", 1 / 2**20),
            "–" if c is None else _f(c.max_abs, ".2e"),
            "–" if c is None else ("identical" if c.psnr_vs_cpu_db == math.inf else _f(c.psnr_vs_cpu_db, ".2f")),
            "–" if c is None else _f(c.rgb_psnr, ".4f"),
            y,
            gates,
        ]
        lines.append("| " + " | ".join(x.replace("|", "/") for x in cells) + " |")
    if skipped:
        lines += ["", "## Not run", "", *skipped]
    lines += ["", "## Networks", ""]
    for j in rep.jobs:
        cost = rep.costs.get(j.name)
        what = j.skip_reason or (
            f"{j.model.spec.name if j.model else '?'}, {cost.flops / 1e9:.2f} G NTIRE FLOPs at "
            f"{cost.reference_hw[0]}x{cost.reference_hw[1]}"
            if cost
            else "loaded"
        )
        lines.append(f"- {j.name}: {what}" + (f" (fp16 refused: {j.fp16_refusal})" if j.fp16_refusal else ""))
    lines += ["", "## Definitions", "", *[f"- {d}" for d in DEFINITIONS]]
    if rep.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in rep.notes]]
    lines += ["", f"_Generated {rep.created_utc} by benchmarks/gpu_check.py._", ""]
    return "\n".join(lines)


def slug(name: str) -> str:
    """gpu_<name> file stem: lower case, runs of anything else than letters and digits as one underscore."""
    s = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return f"gpu_{s or 'unknown'}"


def environment(device: torch.device) -> dict[str, Any]:
    """bench's environment (machine, versions, load) plus the settings that decide what "fp32" means on a GPU."""
    from sr_deploy.bench.environment import collect_environment

    env = collect_environment()
    if device.type != "cuda":
        env["gpu"] = None
    elif env.get("gpu"):
        env["gpu"]["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    env.update(
        torch=torch.__version__,
        cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
        matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
    )
    return env


# --------------------------------------------------------------------------------------------------- the inputs


def load_inputs(div2k: Path, set5: Path, limit: int | None) -> Inputs:
    from sr_deploy.bench.inputs import load_bench_images
    from sr_deploy.export.onnx import load_reference_images

    images = load_bench_images(div2k, None, scale=4)
    if limit is not None:
        images = images[:limit]
    refs = load_reference_images(set5, scale=4)
    sizes = len({(i.height, i.width) for i in images})
    return Inputs(images, f"{len(images)} images from {div2k} ({sizes} sizes)", refs, f"{len(refs)} images of {set5}")


def dry_inputs() -> Inputs:
    """Tiny seeded inputs: three LR images in two sizes to time, two references with synthetic HR."""
    from sr_deploy.bench.inputs import synthetic_images

    images = synthetic_images(12, 16, 2, seed=0) + synthetic_images(10, 14, 1, seed=1)
    rng = np.random.default_rng(2)
    refs = [
        ReferenceImage(
            f"synthetic{i}",
            rng.random((1, 3, h, w), dtype=np.float32),
            rng.integers(0, 256, (4 * h, 4 * w, 3), dtype=np.uint8),
        )
        for i, (h, w) in enumerate(((9, 11), (12, 8)))
    ]
    return Inputs(images, "3 synthetic images (2 sizes)", refs, "2 synthetic references with random HR")


def dry_jobs() -> list[ArchJob]:
    """One tiny seeded IMDN in place of the published networks."""
    from sr_deploy.archs.imdn import IMDNSpec
    from sr_deploy.archs.registry import build_model

    model = build_model(IMDNSpec(blocks=1, channels=8, distilled=2), seed=0).eval()
    return [ArchJob(name=GOAL_ARCH, arch="imdn", weights=None, sha256="", model=model)]


# ------------------------------------------------------------------------------------------------------- driver


@dataclass
class Settings:
    dry_run: bool
    device: str
    out: Path
    data: Path
    div2k: Path
    set5: Path
    weights_dir: Path
    budget_s: float
    limit: int | None
    archs: list[str] | None
    paths: list[str] | None


def parse_args(argv: Sequence[str] | None) -> Settings:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--dry-run", action="store_true", help="tiny synthetic plan, CPU fp32 torch only, seconds")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (checks the script itself on a CPU)")
    ap.add_argument("--out", type=Path, default=None, help="where the .md and .json go (default benchmarks/results)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding the three below (../shared/data)")
    ap.add_argument("--div2k", type=Path, default=None, help="DIV2K test LR x4 folder (DATA/DIV2K_test_LR_bicubic_x4)")
    ap.add_argument("--set5", type=Path, default=None, help="Set5 folder with LR_bicubic_x4 and HR (DATA/Set5)")
    ap.add_argument("--weights-dir", type=Path, default=None, help="published weights files (DATA/weights)")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="time budget in seconds (420)")
    ap.add_argument("--limit", type=int, default=None, help="time only the first N inputs")
    ap.add_argument("--archs", default=None, help="comma-separated published names, e.g. ntire:team26")
    ap.add_argument("--paths", default=None, help="comma-separated path keys, e.g. fp32-eager,fp16-graphs")
    a = ap.parse_args(argv)
    device = a.device or ("cpu" if a.dry_run else "cuda")
    out = a.out
    if out is None:
        # A dry run never writes into benchmarks/results: those files are GPU results.
        out = Path(tempfile.mkdtemp(prefix="gpu-check-dry-")) if a.dry_run else RESULTS
    return Settings(
        dry_run=a.dry_run,
        device=device,
        out=out,
        data=a.data,
        div2k=a.div2k or a.data / "DIV2K_test_LR_bicubic_x4",
        set5=a.set5 or a.data / "Set5",
        weights_dir=a.weights_dir or a.data / "weights",
        budget_s=a.budget_s,
        limit=a.limit,
        archs=[x.strip() for x in a.archs.split(",")] if a.archs else None,
        paths=[x.strip() for x in a.paths.split(",")] if a.paths else None,
    )


def check_settings(s: Settings) -> None:
    """One line, naming the flag or folder, for what would make the run pointless; before anything heavy."""
    if s.device not in ("cpu", "cuda") and not s.device.startswith("cuda:"):
        raise SRDeployError(f"--device {s.device!r}: expected cuda, cuda:N or cpu")
    if s.device.startswith("cuda") and not torch.cuda.is_available():
        raise SRDeployError(
            f"--device {s.device}: no CUDA GPU is visible to torch {torch.__version__}; run on the GPU machine, "
            "or give --dry-run on a CPU"
        )
    if not (s.budget_s > 0 and math.isfinite(s.budget_s)):
        raise SRDeployError(f"--budget-s must be a positive number of seconds, got {s.budget_s:g}")
    if s.limit is not None and s.limit < 1:
        raise SRDeployError(f"--limit must be >= 1, got {s.limit}")
    known = {p.key for p in (*TORCH_PATHS, *OTHER_PATHS)}
    unknown = [p for p in s.paths or [] if p not in known]
    if unknown:
        raise SRDeployError(f"--paths: unknown {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    if not s.dry_run:
        need = [("--div2k", s.div2k), ("--set5", s.set5 / "LR_bicubic_x4"), ("--weights-dir", s.weights_dir)]
        missing = [f"{flag} {path}" for flag, path in need if not path.is_dir()]
        if missing:
            raise SRDeployError(
                f"missing {', '.join(missing)}: carry ../shared/data's DIV2K_test_LR_bicubic_x4, Set5 and weights "
                "and point --data at them"
            )
    if not s.out.is_dir():
        raise SRDeployError(f"--out {s.out}: no such folder")


@dataclass
class Runner:
    """The state of one run while its tasks go by: what is loaded, the budget, and the results so far."""

    jobs: list[ArchJob]
    inputs: Inputs
    oracles: dict[str, list[np.ndarray]]
    costs: dict[str, ModelCost]
    avail: dict[str, str | None]
    budget: Budget
    device: torch.device
    work_dir: Path
    peak_sizes: tuple[int, int, int]  # matmul n, copy bytes, repetitions
    log: Callable[[str], None]
    results: list[PathResult] = field(default_factory=list)
    peaks: Peaks | None = None
    peaks_reason: str = "not reached"

    def do(self, task: Task) -> None:
        if task.what == "peaks":
            self._peaks()
            return
        job, path = self.jobs[task.job], task.path
        assert path is not None
        if job.skip_reason is not None or job.model is None:
            self.results.append(PathResult(job.name, path, "skipped", job.skip_reason or "not loaded"))
            return
        why = path_skip_reason(path, self.device, self.avail, job) or self.budget.refusal(path.cost_class)
        if why is not None:
            self.results.append(PathResult(job.name, path, "skipped", why))
            return
        t0 = time.monotonic()
        try:
            with deadline(self.budget.left()):
                res = run_path(
                    job, path, self.inputs, self.oracles[job.name], self.costs[job.name], self.peaks, self.device,
                    self.work_dir,
                )  # fmt: skip
        except (Exception, JobTimeout) as e:  # one broken path is a row of the report, not the end of the run
            res = PathResult(job.name, path, "failed", _one_line(e))
            _free(self.device)
        res.seconds = time.monotonic() - t0
        self.budget.record(path.cost_class, res.seconds)
        self.results.append(res)
        mean = res.challenge_mean_ms
        self.log(
            f"  {job.name} {path.key}: {res.status}"
            + (f", challenge mean {mean:.3f} ms" if mean is not None else f" ({res.reason})")
            + (f", gates {'pass' if res.check.passed else 'FAIL'}" if res.check else "")
            + f" [{res.seconds:.1f} s, {self.budget.elapsed():.0f} s in]"
        )

    def _peaks(self) -> None:
        if (why := self.budget.refusal("peaks")) is not None:
            self.peaks_reason = why
            return
        t0 = time.monotonic()
        n, nbytes, reps = self.peak_sizes
        try:
            self.peaks = measure_peaks(self.device, matmul_n=n, copy_bytes=nbytes, reps=reps)
            p = self.peaks
            self.log(
                f"  peaks: bf16 matmul {p.bf16_matmul_flops / 1e12:.1f} TFLOP/s, copy {p.copy_bytes_per_s / 1e9:.0f} "
                "GB/s"
            )
        except Exception as e:  # a broken peak must not cost the paths
            self.peaks_reason = _one_line(e)
        self.budget.record("peaks", time.monotonic() - t0)


def run(s: Settings, *, log: Callable[[str], None] = print) -> Report:
    budget = Budget(s.budget_s)
    device = torch.device(s.device)
    if s.dry_run:
        jobs, inputs = dry_jobs(), dry_inputs()
        paths: list[PathSpec] = [*TORCH_PATHS, *OTHER_PATHS]
        # The tiny plan: the whole pipeline with CPU fp32 torch only; the CUDA paths appear as skipped rows.
        matmul_n, copy_bytes, reps, ref_hw = 64, 1 << 20, 2, (16, 16)
    else:
        jobs = published_jobs(s.weights_dir)
        inputs = load_inputs(s.div2k, s.set5, s.limit)
        paths = [*TORCH_PATHS, *OTHER_PATHS]
        matmul_n, copy_bytes, reps, ref_hw = 8192, 1 << 30, 10, REFERENCE_HW
        if device.type != "cuda":
            matmul_n, copy_bytes, reps = 1024, 64 << 20, 3
    if s.archs is not None:
        jobs = [j for j in jobs if j.name in s.archs]
    if s.paths is not None:
        paths = [p for p in paths if p.key in s.paths]
    jobs = [load_job(j) for j in jobs]
    avail = availability()
    costs = {j.name: model_cost(j.model, ref_hw) for j in jobs if j.model is not None}
    oracles = {j.name: cpu_oracle(j.model, inputs.references) for j in jobs if j.model is not None}
    log(f"gpu_check: {len(jobs)} network(s), {len(paths)} path(s), budget {s.budget_s:.0f} s, device {device}")
    # Engines and ONNX graphs of the other runtimes' rows go here, and go away with it.
    with tempfile.TemporaryDirectory(prefix="gpu-check-work-") as tmp:
        runner = Runner(
            jobs, inputs, oracles, costs, avail, budget, device, Path(tmp), (matmul_n, copy_bytes, reps), log
        )
        for task in order_tasks(jobs, paths):
            runner.do(task)
    results, peaks, peaks_reason = runner.results, runner.peaks, runner.peaks_reason
    # Rows whose peaks came after them (the first row) get their shares now.
    if peaks is not None:
        for r in results:
            if r.row is not None and r.arch in costs:
                _, r.flops_share, _, r.bandwidth_share = shares(r.row, costs[r.arch], r.path.precision, peaks)
    env = environment(device)
    name = env["gpu"]["name"] if env.get("gpu") else f"{device.type} (not a GPU run)"
    notes = [
        f"{jobs[0].name if jobs else '-'} fp32 eager ran first in the process, so its cold first image includes the "
        "process's CUDA/cuDNN start-up, as in the challenge; later paths' first images are cold for their backend "
        "only.",
        f"Run took {budget.elapsed():.0f} s of a {s.budget_s:.0f} s budget.",
    ]
    if s.dry_run:
        notes.append("Dry run: a tiny seeded IMDN on synthetic inputs; the figures say nothing about any GPU.")
    return Report(
        title=f"GPU check: {name}",
        dry_run=s.dry_run,
        device=str(device),
        settings={
            "budget_s": s.budget_s,
            "warmup_calls": WARMUP_CALLS,
            "warm_passes": WARM_PASSES,
            "timing_inputs": inputs.timing_label,
            "reference_inputs": inputs.references_label,
            "limit": s.limit,
        },
        environment=env,
        availability=avail,
        jobs=jobs,
        costs=costs,
        peaks=peaks,
        peaks_reason=peaks_reason if peaks is None else "",
        results=results,
        goals=evaluate_goals(results, gpu=device.type == "cuda"),
        notes=notes,
    )


def write_report(rep: Report, out: Path) -> tuple[Path, Path]:
    from sr_deploy.fileio import write_text_atomic

    gpu = rep.environment.get("gpu")
    stem = slug(gpu["name"]) if gpu else slug(f"{'dry run' if rep.dry_run else 'no gpu'} {rep.device}")
    md = write_text_atomic(out / f"{stem}.md", render_markdown(rep), "--out")
    js = write_text_atomic(out / f"{stem}.json", json.dumps(rep.to_dict(), indent=2, allow_nan=False) + "\n", "--out")
    return md, js


def main(argv: Sequence[str] | None = None) -> int:
    try:
        s = parse_args(argv)
        check_settings(s)
        threads = torch.get_num_threads()
        if s.dry_run:
            # A smoke test on what is often a shared 2-core machine: one thread, since OpenMP threads spinning
            # against other processes make even a tiny network take 100x longer. Its figures mean nothing anyway.
            torch.set_num_threads(1)
        try:
            rep = run(s)
        finally:
            torch.set_num_threads(threads)
        md, js = write_report(rep, s.out)
    except SRDeployError as e:
        print(f"gpu_check: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {js}")
    for g in rep.goals:
        print(f"{g.status}: {g.name}: {g.value} (target {g.target})")
    return 1 if any(g.passed is False for g in rep.goals) else 0


if __name__ == "__main__":
    sys.exit(main())
