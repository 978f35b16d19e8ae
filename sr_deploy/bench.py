"""The NTIRE 2022 ESR timing method, its statistics, the budget verdict, and the benchmark report.

The challenge's harness (``test_demo.py``) put each input on the GPU, recorded CUDA events around the forward
call only, did no warm-up, and averaged the per-image times over the set with the first image counted. This
module reproduces that number (the "challenge mean") and puts beside it what a deployer also wants: the cold
first image on its own, warm statistics after a warm-up, the end-to-end time with copies, throughput, and the
PSNR of each backend's own output.

Timing itself happens inside the backends (`Backend.run_timed`): CUDA events on a GPU, ``perf_counter_ns``
on the CPU. Everything here is plain functions on numbers, paths and arrays, so it can be tested without a
clock; the only impure edges are `load_bench_images` (reads files), `run_bench` (runs backends),
`collect_environment` (asks the machine) and `write_plot` (writes a file).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.imaging.pairing import check_pair_scale, pair_images
from sr_deploy.runtime.base import BACKEND_KINDS

if TYPE_CHECKING:
    from sr_deploy.archs.base import SRNet
    from sr_deploy.runtime.base import Backend

#: The paper's runtime budget: mean per-image x4 upscale of the DIV2K validation LR images, forward pass only.
DEFAULT_BUDGET_MS = 49.42
#: The PSNR protocol of ../shared/data/reference_psnr.json: uint8, 4 pixels cut per border, RGB and Y (MATLAB
#: rgb2ycbcr). RGB is the challenge's metric: NTIRE 2022 ESR test_demo.py ranks by it (its Y lines are commented
#: out), and the paper's 29.05 dB is RGB; Y is what most SR papers tabulate.
PSNR_CROP_BORDER = 4
#: Which of the two PSNRs the challenge ranked by, for tables and notes.
CHALLENGE_PSNR = "rgb"
#: Bumped when the report's JSON layout changes incompatibly.
SCHEMA_VERSION = 1

BACKEND_CHOICES: tuple[str, ...] = (*BACKEND_KINDS, "all")
PRECISION_CHOICES: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")

#: Backends whose `prepare` runs a forward pass at the largest size (a warm-up) and that need nothing allocated
#: before their first run. The challenge did no warm-up, so the bench does not call their `prepare`: their first
#: image is then as cold as it was in the challenge. TensorRT's `prepare` only allocates buffers and OpenVINO's
#: only compiles for the input shape, so theirs is called.
WARMING_PREPARE: frozenset[str] = frozenset({"torch", "onnxruntime"})

#: Key of the `--backend all` row the speed-up column is measured against: what the challenge ran.
BASELINE_ROW = "torch-fp32"


# --------------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class BenchImage:
    """One low-resolution input, already decoded (loading is never timed), and its HR image if paired."""

    name: str
    lr: np.ndarray  # HxWx3 uint8 or uint16 RGB
    source: Path | None = None
    hr_path: Path | None = None

    @property
    def height(self) -> int:
        return int(self.lr.shape[0])

    @property
    def width(self) -> int:
        return int(self.lr.shape[1])


#: The most --synthetic images one run takes: the mean is stable long before, and every image keeps its own
#: timings in the report.
MAX_SYNTHETIC_COUNT = 10_000


class SyntheticImages(Sequence[BenchImage]):
    """`count` reproducible uniform-noise uint8 images, each made when it is asked for: a conv network's time does
    not depend on content, and 10,000 DIV2K-sized images made up front would take 5 GB."""

    def __init__(self, height: int, width: int, count: int, *, seed: int) -> None:
        if count < 1:
            raise SRDeployError(f"--count must be >= 1, got {count}")
        if count > MAX_SYNTHETIC_COUNT:
            raise SRDeployError(f"--count {count}: at most {MAX_SYNTHETIC_COUNT} synthetic images per run")
        if height < 1 or width < 1:
            raise SRDeployError(f"synthetic size must be at least 1x1, got {height}x{width}")
        self.height, self.width, self.n, self.seed = height, width, count, seed
        self._digits = max(3, len(str(count - 1)))

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> BenchImage: ...

    @overload
    def __getitem__(self, index: slice) -> list[BenchImage]: ...

    def __getitem__(self, index: int | slice) -> BenchImage | list[BenchImage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        i = index + self.n if index < 0 else index
        if not 0 <= i < self.n:
            raise IndexError(index)
        # One generator per image, seeded by (seed, index): image i is the same whenever and however it is asked for.
        rng = np.random.default_rng([self.seed, i])
        return BenchImage(
            name=f"synthetic_{i:0{self._digits}d}_{self.height}x{self.width}",
            lr=rng.integers(0, 256, size=(self.height, self.width, 3), dtype=np.uint8),
        )


def synthetic_images(height: int, width: int, count: int, *, seed: int) -> list[BenchImage]:
    """`SyntheticImages` made all at once, for callers that want a list (small counts)."""
    return list(SyntheticImages(height, width, count, seed=seed))


def modcrop(hr: np.ndarray, lr_hw: tuple[int, int], scale: int) -> np.ndarray:
    """The top-left ``LR x scale`` part of an HR image, as the reference protocol's modcrop does."""
    return hr[: lr_hw[0] * scale, : lr_hw[1] * scale]


def load_bench_images(input_dir: Path, hr_dir: Path | None, *, scale: int) -> list[BenchImage]:
    """Decode every input (not timed) and, with `hr_dir`, pair and size-check the HR images up front.

    The HR images are decoded here only to check their size and dropped again (a DIV2K HR set would not fit
    comfortably in memory); the PSNR step reads each one again when it needs it.
    """
    from sr_deploy.imaging.io import list_images, read_image

    inputs = list_images(input_dir)
    if hr_dir is None:
        return [BenchImage(name=p.name, lr=read_image(p).rgb, source=p) for p in inputs]
    pairs = pair_images(inputs, list_images(hr_dir))
    images = []
    for lr_path, hr_path in pairs:
        lr = read_image(lr_path).rgb
        hr = read_image(hr_path).rgb
        check_pair_scale(lr_path.name, lr.shape[:2], hr_path.name, hr.shape[:2], scale)
        images.append(BenchImage(name=lr_path.name, lr=lr, source=lr_path, hr_path=hr_path))
    return images


# ----------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class TimeStats:
    """Summary of a set of times in milliseconds. Percentiles interpolate linearly; std is the population std."""

    count: int
    mean_ms: float
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "mean_ms": self.mean_ms,
            "median_ms": self.median_ms,
            "p90_ms": self.p90_ms,
            "p99_ms": self.p99_ms,
            "min_ms": self.min_ms,
            "max_ms": self.max_ms,
            "std_ms": self.std_ms,
        }


def time_stats(samples_ms: Sequence[float]) -> TimeStats:
    """Mean, median, p90, p99, min, max and std of `samples_ms` (at least one, all finite and >= 0)."""
    if len(samples_ms) == 0:
        raise ValueError("time_stats needs at least one sample")
    a = np.asarray(samples_ms, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("times must be finite and non-negative")
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return TimeStats(
        count=int(a.size),
        mean_ms=float(a.mean()),
        median_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        min_ms=float(a.min()),
        max_ms=float(a.max()),
        std_ms=float(a.std()),
    )


@dataclass(frozen=True)
class ChallengeFigures:
    """The challenge's number and the cold first image it includes.

    ``mean_ms`` is the mean of the per-image forward times of one pass over the set, first image counted, no
    warm-up: what NTIRE 2022 ESR reported. ``mean_without_first_ms`` shows how much the cold start weighs.
    """

    mean_ms: float
    cold_first_ms: float
    first_image: str
    mean_without_first_ms: float | None
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_ms": self.mean_ms,
            "cold_first_ms": self.cold_first_ms,
            "first_image": self.first_image,
            "mean_without_first_ms": self.mean_without_first_ms,
            "images": self.images,
        }


def challenge_figures(names: Sequence[str], forward_ms: Sequence[float]) -> ChallengeFigures:
    """The challenge mean over one cold pass (`forward_ms` in image order, the first image first)."""
    if len(names) != len(forward_ms) or not forward_ms:
        raise ValueError("challenge_figures needs one time per image and at least one image")
    times = [float(t) for t in forward_ms]
    rest = times[1:]
    return ChallengeFigures(
        mean_ms=math.fsum(times) / len(times),
        cold_first_ms=times[0],
        first_image=names[0],
        mean_without_first_ms=math.fsum(rest) / len(rest) if rest else None,
        images=len(times),
    )


def throughput_mpix_s(output_pixels: Sequence[int], times_ms: Sequence[float]) -> float:
    """Output megapixels per second: all output pixels over all the time spent making them."""
    if len(output_pixels) != len(times_ms) or not times_ms:
        raise ValueError("throughput needs one time per output and at least one")
    total_ms = math.fsum(times_ms)
    if total_ms <= 0:
        return math.inf
    return (sum(output_pixels) / 1e6) / (total_ms / 1e3)


def speedup(baseline_ms: float | None, ms: float | None) -> float | None:
    """How many times faster than the baseline (>1 is faster); None when either side is missing."""
    if baseline_ms is None or ms is None or ms <= 0:
        return None
    return baseline_ms / ms


# -------------------------------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Verdict:
    """PASS when the challenge mean is within the budget. ``ratio`` = mean / budget (<= 1 passes)."""

    passed: bool
    mean_ms: float
    budget_ms: float
    ratio: float
    label: str
    device: str
    message: str

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"

    @property
    def gpu_budget_on_cpu(self) -> bool:
        return not self.device.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "passed": self.passed,
            "mean_ms": self.mean_ms,
            "budget_ms": self.budget_ms,
            "ratio": self.ratio,
            "label": self.label,
            "device": self.device,
            "gpu_budget_on_cpu": self.gpu_budget_on_cpu,
            "message": self.message,
        }


def check_budget(budget_ms: float) -> float:
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise SRDeployError(f"--budget-ms must be a positive number of milliseconds, got {budget_ms:g}")
    return float(budget_ms)


def make_verdict(mean_ms: float, budget_ms: float, *, label: str, device: str) -> Verdict:
    """Judge the challenge mean against the budget; on a CPU say plainly that the budget is a GPU budget."""
    check_budget(budget_ms)
    ratio = mean_ms / budget_ms
    passed = mean_ms <= budget_ms
    status = "PASS" if passed else "FAIL"
    relation = "within" if passed else "over"
    message = (
        f"{status}: challenge mean {mean_ms:.2f} ms is {ratio:.2f}x the {budget_ms:g} ms budget "
        f"({relation} it) for {label}"
    )
    if not device.startswith("cuda"):
        # The budget comes from a GPU harness; a CPU time neither confirms nor refutes a GPU claim.
        message += (
            f". Measured on {device}, but the budget is a GPU budget (the challenge timed the forward pass on a "
            "GPU with CUDA events), so this says how this machine does, not whether the model meets the budget"
        )
    message += "."
    return Verdict(
        passed=passed, mean_ms=mean_ms, budget_ms=budget_ms, ratio=ratio, label=label, device=device, message=message
    )


# ---------------------------------------------------------------------------------------------- row planning


@dataclass(frozen=True)
class RowPlan:
    """One backend configuration to measure. ``model`` is "deploy" (collapsed) or "clb" (training-time)."""

    key: str
    title: str
    kind: str
    precision: str
    model: str = "deploy"
    #: Set when the row is known to be pointless before anything runs (kept so the table has fixed rows).
    skip_reason: str | None = None
    #: Replay one CUDA graph per input shape (torch and tensorrt on CUDA; captured outside the timer).
    cuda_graphs: bool = False
    #: ``torch.compile`` mode for a torch row (compiled at first sight of each shape, outside the timer).
    compile_mode: str | None = None
    #: int8 rows: the Q/DQ graph (``srdeploy quantize``) the row runs.
    int8_graph: str | None = None


def best_torch_precision(device: str) -> str:
    """The fastest precision torch offers here: fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
    from sr_deploy.runtime.torch_backend import cpu_bf16_support

    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_bf16_support() is None else "fp32"


def option_suffix(cuda_graphs: bool, compile_mode: str | None) -> tuple[str, str]:
    """(key suffix, title suffix) naming a row's CUDA-graph or compile option."""
    if cuda_graphs:
        return "-graphs", ", CUDA graphs"
    if compile_mode is not None:
        return "-compiled", f", torch.compile ({compile_mode})"
    return "", ""


def plan_rows(
    backend: str,
    precision: str,
    *,
    best_precision: str,
    device: str = "cpu",
    cuda_graphs: bool = False,
    compile_mode: str | None = None,
    int8_graph: str | None = None,
) -> list[RowPlan]:
    """The rows to measure: one for a named backend (with the --cuda-graphs / --compile options it was given), the
    issue's comparison table for ``all``; on CUDA that table adds torch with CUDA graphs and compiled, in the best
    precision (the options themselves are ignored by ``all``, like --precision). With an `int8_graph`, ``all`` adds
    OpenVINO and ONNX Runtime int8 rows that run it."""
    if backend not in BACKEND_CHOICES:
        raise SRDeployError(f"--backend {backend!r}: expected one of {', '.join(BACKEND_CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise SRDeployError(f"--precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    if backend != "all" and precision == "int8" and int8_graph is None:
        raise SRDeployError("--precision int8 needs the quantized graph: --onnx model.int8.onnx (srdeploy quantize)")
    if backend != "all" and precision != "int8" and int8_graph is not None:
        raise SRDeployError(f"--onnx: the int8 graph is timed with --precision int8 or --backend all (got {precision})")
    int8_rows = (
        [
            RowPlan("openvino-int8", "OpenVINO int8 (CPU, Q/DQ graph)", "openvino", "int8", int8_graph=int8_graph),
            RowPlan(
                "onnxruntime-int8",
                "ONNX Runtime int8 numerics (CPU, Q/DQ graph in float kernels)",
                "onnxruntime",
                "int8",
                int8_graph=int8_graph,
            ),
        ]
        if int8_graph is not None
        else []
    )
    if backend != "all":
        key, title = option_suffix(cuda_graphs, compile_mode)
        return [
            RowPlan(
                key=f"{backend}-{precision}{key}",
                title=f"{backend} {precision}{title}",
                kind=backend,
                precision=precision,
                cuda_graphs=cuda_graphs,
                compile_mode=compile_mode,
                int8_graph=int8_graph,
            )
        ]
    cuda_rows = [
        RowPlan(
            f"torch-best-{best_precision}-graphs",
            f"torch {best_precision}, CUDA graphs (captured per input shape outside the timer)",
            "torch",
            best_precision,
            cuda_graphs=True,
        ),
        RowPlan(
            f"torch-best-{best_precision}-compiled",
            f"torch.compile {best_precision} (compiled per input shape outside the timer)",
            "torch",
            best_precision,
            compile_mode="default",
        ),
    ]
    return [
        RowPlan(
            "torch-clb-fp32",
            "torch eager fp32, training-time CLB model (what the paper trains)",
            "torch",
            "fp32",
            model="clb",
        ),
        RowPlan(BASELINE_ROW, "torch eager fp32, collapsed (what the challenge ran)", "torch", "fp32"),
        RowPlan(
            f"torch-best-{best_precision}",
            f"torch eager {best_precision}, collapsed (best precision here)",
            "torch",
            best_precision,
            skip_reason=None if best_precision != "fp32" else "no precision faster than fp32 for torch on this device",
        ),
        *(cuda_rows if device.startswith("cuda") else []),
        RowPlan("onnxruntime-fp32", "ONNX Runtime fp32", "onnxruntime", "fp32"),
        RowPlan("onnxruntime-fp16", "ONNX Runtime fp16", "onnxruntime", "fp16"),
        RowPlan("openvino-fp32", "OpenVINO fp32 (CPU)", "openvino", "fp32"),
        RowPlan("openvino-bf16", "OpenVINO bf16 (CPU)", "openvino", "bf16"),
        *int8_rows,
        RowPlan("tensorrt-fp32", "TensorRT fp32", "tensorrt", "fp32"),
        RowPlan("tensorrt-fp16", "TensorRT fp16", "tensorrt", "fp16"),
    ]


# ------------------------------------------------------------------------------------------------ measuring


@dataclass
class ImageResult:
    """Every measurement of one image: the cold pass, each warm pass, and the PSNRs (RGB, Y) of the cold-pass
    output."""

    name: str
    lr_hw: tuple[int, int]
    sr_hw: tuple[int, int]
    cold_forward_ms: float
    cold_end_to_end_ms: float
    warm_forward_ms: list[float] = field(default_factory=list)
    warm_end_to_end_ms: list[float] = field(default_factory=list)
    psnr_y: float | None = None
    psnr_rgb: float | None = None

    @property
    def output_pixels(self) -> int:
        return self.sr_hw[0] * self.sr_hw[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr_hw": list(self.lr_hw),
            "sr_hw": list(self.sr_hw),
            "cold_forward_ms": self.cold_forward_ms,
            "cold_end_to_end_ms": self.cold_end_to_end_ms,
            "warm_forward_ms": list(self.warm_forward_ms),
            "warm_end_to_end_ms": list(self.warm_end_to_end_ms),
            "psnr_y": _finite_or_none(self.psnr_y),
            "psnr_rgb": _finite_or_none(self.psnr_rgb),
        }


def jsonable(obj: Any) -> Any:
    """Backend details as strict JSON: numpy scalars to Python, non-finite floats to null, unknown types to str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def _finite_or_none(x: float | None) -> float | None:
    # JSON has no infinity; an infinite PSNR (identical images) is recorded as null.
    return x if x is not None and math.isfinite(x) else None


@dataclass
class RowResult:
    """One backend row: its plan, what happened (ok / skipped / failed), and its figures when it ran."""

    plan: RowPlan
    status: str  # "ok", "skipped", "failed"
    reason: str = ""
    backend: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)
    images: list[ImageResult] = field(default_factory=list)
    challenge: ChallengeFigures | None = None
    warm: TimeStats | None = None
    warm_end_to_end: TimeStats | None = None
    throughput_mpix_s: float | None = None
    end_to_end_throughput_mpix_s: float | None = None
    psnr_y_mean: float | None = None
    psnr_rgb_mean: float | None = None
    speedup: float | None = None
    verdict: Verdict | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.plan.key,
            "title": self.plan.title,
            "kind": self.plan.kind,
            "precision": self.plan.precision,
            "model": self.plan.model,
            "status": self.status,
            "reason": self.reason,
            "backend": jsonable(self.backend),
            "timing": jsonable(self.timing),
            "images": [i.to_dict() for i in self.images],
            "challenge": self.challenge.to_dict() if self.challenge else None,
            "warm": self.warm.to_dict() if self.warm else None,
            "warm_end_to_end": self.warm_end_to_end.to_dict() if self.warm_end_to_end else None,
            "throughput_mpix_s": _finite_or_none(self.throughput_mpix_s),
            "end_to_end_throughput_mpix_s": _finite_or_none(self.end_to_end_throughput_mpix_s),
            "psnr_y_mean": _finite_or_none(self.psnr_y_mean),
            "psnr_rgb_mean": _finite_or_none(self.psnr_rgb_mean),
            "speedup_vs_challenge_way": self.speedup,
            "verdict": self.verdict.to_dict() if self.verdict else None,
        }


#: Reads the HR image paired with a bench image, as uint8 RGB (only called when PSNR is wanted).
HRLoader = Callable[[BenchImage], np.ndarray]
#: Called once per forward pass with (row key, phase, done, total) so a caller can draw a progress bar.
ProgressHook = Callable[[str, str, int, int], None]


def read_hr(image: BenchImage) -> np.ndarray:
    """The default HRLoader: decode the paired HR file."""
    from sr_deploy.imaging.io import read_image

    if image.hr_path is None:
        raise SRDeployError(f"{image.name}: no HR image paired")
    return read_image(image.hr_path).rgb


def psnrs_of_output(output: np.ndarray, hr: np.ndarray, lr_hw: tuple[int, int], scale: int) -> tuple[float, float]:
    """(RGB, Y) PSNR, border 4, of a backend's NCHW float output against the HR, as reference_psnr.json measures
    them; RGB is the challenge's metric."""
    from sr_deploy.imaging.io import from_model_output, to_uint8
    from sr_deploy.imaging.metrics import psnr

    sr = from_model_output(output, 8)  # clamp to [0, 1], x255, round: the challenge's quantisation
    ref = to_uint8(modcrop(hr, lr_hw, scale))
    return (
        psnr(sr, ref, crop_border=PSNR_CROP_BORDER, y_channel=False),
        psnr(sr, ref, crop_border=PSNR_CROP_BORDER, y_channel=True),
    )


def psnr_of_output(output: np.ndarray, hr: np.ndarray, lr_hw: tuple[int, int], scale: int) -> float:
    """The Y-PSNR alone (see psnrs_of_output)."""
    return psnrs_of_output(output, hr, lr_hw, scale)[1]


def _timing_settings(backend: Backend) -> dict[str, Any]:
    """What a reader needs to compare a figure with trtexec or the challenge: clock, copies, CUDA graphs."""
    info = backend.info
    details = info.details
    # The TensorRT backend names its engine (whose file name carries the cache key); a digest is used when given.
    engine_key = next(
        (str(details[k]) for k in ("engine_key", "cache_key", "sidecar_key", "engine") if details.get(k)), None
    )
    return {
        "forward_clock": "cuda-events" if info.device.startswith("cuda") else "perf_counter_ns",
        "forward_includes_copies": False,
        "end_to_end_includes_copies": True,
        "cuda_graph": bool(details.get("cuda_graph", details.get("cuda_graphs", False))),
        "engine_key": engine_key,
    }


def measure_backend(
    backend: Backend,
    plan: RowPlan,
    images: Sequence[BenchImage],
    *,
    warmup: int,
    repeat: int,
    scale: int,
    hr_loader: HRLoader | None = None,
    progress: ProgressHook | None = None,
) -> RowResult:
    """Time one prepared backend the challenge's way, then warm, and score its own outputs.

    Pass 1 (cold): each image once, in order, with no warm-up: the challenge mean and the cold first image.
    The PSNRs (RGB and Y) are taken from these very outputs. Then `warmup` untimed calls cycling over the images, then
    `repeat` timed passes over the whole set for the warm statistics.
    """
    from sr_deploy.imaging.io import to_tensor_layout

    if not images:
        raise SRDeployError("nothing to benchmark: no input images")
    total = len(images) * (1 + repeat) + warmup
    done = 0

    def tick(phase: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(plan.key, phase, done, total)

    results: list[ImageResult] = []
    for img in images:
        x = to_tensor_layout(img.lr)  # to float NCHW: preparation, not timed
        t = backend.run_timed(x)
        out_hw = (int(t.output.shape[-2]), int(t.output.shape[-1]))
        rgb = y = None
        if hr_loader is not None and img.hr_path is not None:
            rgb, y = psnrs_of_output(t.output, hr_loader(img), (img.height, img.width), scale)
        results.append(
            ImageResult(
                name=img.name,
                lr_hw=(img.height, img.width),
                sr_hw=out_hw,
                cold_forward_ms=float(t.forward_ms),
                cold_end_to_end_ms=float(t.end_to_end_ms),
                psnr_y=y,
                psnr_rgb=rgb,
            )
        )
        tick("cold")
    for i in range(warmup):
        backend.run_timed(to_tensor_layout(images[i % len(images)].lr))
        tick("warm-up")
    for _ in range(repeat):
        for img, res in zip(images, results, strict=True):
            t = backend.run_timed(to_tensor_layout(img.lr))
            res.warm_forward_ms.append(float(t.forward_ms))
            res.warm_end_to_end_ms.append(float(t.end_to_end_ms))
            tick("warm")
    return summarize_row(plan, results, backend_info=backend.info.to_dict(), timing=_timing_settings(backend))


def summarize_row(
    plan: RowPlan, results: list[ImageResult], *, backend_info: dict[str, Any], timing: dict[str, Any]
) -> RowResult:
    """Statistics of one row from its per-image measurements (no verdict or speed-up yet: those need context)."""
    names = [r.name for r in results]
    challenge = challenge_figures(names, [r.cold_forward_ms for r in results])
    warm_fw = [t for r in results for t in r.warm_forward_ms]
    warm_e2e = [t for r in results for t in r.warm_end_to_end_ms]
    pixels = [r.output_pixels for r in results for _ in r.warm_forward_ms]
    scores = [r.psnr_y for r in results if r.psnr_y is not None]
    scores_rgb = [r.psnr_rgb for r in results if r.psnr_rgb is not None]
    return RowResult(
        plan=plan,
        status="ok",
        backend=backend_info,
        timing=timing,
        images=results,
        challenge=challenge,
        warm=time_stats(warm_fw),
        warm_end_to_end=time_stats(warm_e2e),
        throughput_mpix_s=throughput_mpix_s(pixels, warm_fw),
        end_to_end_throughput_mpix_s=throughput_mpix_s(pixels, warm_e2e),
        psnr_y_mean=math.fsum(scores) / len(scores) if len(scores) == len(results) else None,
        psnr_rgb_mean=math.fsum(scores_rgb) / len(scores_rgb) if len(scores_rgb) == len(results) else None,
    )


def finish_rows(rows: list[RowResult], *, budget_ms: float) -> RowResult | None:
    """Add each row's verdict and speed-up over the challenge's way; return the row the headline verdict is for.

    That row is the only one with a single backend, or with ``all`` the fastest row by challenge mean: the
    configuration one would deploy from this table.
    """
    ran = [r for r in rows if r.ok and r.challenge is not None]
    base = next((r for r in ran if r.plan.key == BASELINE_ROW), None)
    for r in ran:
        assert r.challenge is not None
        device = str(r.backend.get("device", "cpu"))
        label = str(r.backend.get("label", r.plan.key))
        r.verdict = make_verdict(r.challenge.mean_ms, budget_ms, label=label, device=device)
        if base is not None and base.challenge is not None:
            r.speedup = speedup(base.challenge.mean_ms, r.challenge.mean_ms)
    if not ran:
        return None
    return min(ran, key=lambda r: r.challenge.mean_ms if r.challenge else math.inf)


# --------------------------------------------------------------------------------------------------- models


@dataclass
class BenchModels:
    """The deploy model to time, the training-time CLB form (for ``--backend all``), and their provenance."""

    deploy: SRNet
    clb: SRNet | None
    arch: str
    weights_source: str
    weights_sha256: str
    random_weights: bool
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "weights_source": self.weights_source,
            "weights_sha256": self.weights_sha256,
            "random_weights": self.random_weights,
            "params": self.params,
            "scale": self.deploy.spec.scale,
        }


def load_bench_models(weights: str | None, *, need_clb: bool, seed: int) -> BenchModels:
    """Weights from `weights`, or the paper's deploy model with seeded random weights.

    The random model is built in its training-time CLB form and collapsed, so the CLB row and the deploy rows
    of ``--backend all`` compute the same function, as they do with real weights.
    """
    from sr_deploy.archs.base import SRNet
    from sr_deploy.archs.registry import arch_of, build_model, preset
    from sr_deploy.checkpoints import load_model
    from sr_deploy.fusion import collapse

    if weights is None:
        clb = build_model(preset("imdn-b7-clb"), seed=seed).eval()
        deploy = collapse(clb)
        assert isinstance(deploy, SRNet)
        return BenchModels(
            deploy=deploy,
            clb=clb if need_clb else None,
            arch=deploy.spec.name,
            weights_source=f"seeded random (seed {seed})",
            weights_sha256="",
            random_weights=True,
            params=sum(p.numel() for p in deploy.parameters()),
        )
    deploy, loaded = load_model(weights, form="plain")
    has_training_form = arch_of(deploy.spec).training_spec(deploy.spec) is not None
    clb_model = load_model(weights, form="clb")[0] if need_clb and has_training_form else None
    return BenchModels(
        deploy=deploy,
        clb=clb_model,
        arch=deploy.spec.name,
        weights_source=loaded.source,
        weights_sha256=loaded.sha256,
        random_weights=False,
        params=sum(p.numel() for p in deploy.parameters()),
    )


# ---------------------------------------------------------------------------------------------- environment


def _version_of(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks used by this process) from /proc; None where there is no /proc."""
    try:
        fields = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()[1:]
        own = Path("/proc/self/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    # user nice system idle iowait irq softirq steal: everything but idle and iowait is busy.
    ticks = [int(x) for x in fields[:8]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    # utime and stime are fields 14 and 15 of /proc/self/stat, i.e. 11 and 12 after the ")" that ends the name.
    return busy, int(own[11]) + int(own[12])


def foreign_cpu_load(window_s: float = 0.25) -> float | None:
    """How many CPUs other processes kept busy over a short window: the contention a timing will suffer.

    Unlike the load average, this leaves out this process itself, so a benchmark that just ran in the same
    process does not make the machine look busy.
    """
    before = _cpu_jiffies()
    if before is None:
        return None
    time.sleep(window_s)
    after = _cpu_jiffies()
    if after is None:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    others = (after[0] - before[0]) - (after[1] - before[1])
    return round(max(0.0, others / (hz * window_s)), 2)


def collect_environment() -> dict[str, Any]:
    """The machine and software a figure was taken on, including how loaded the machine was."""
    import torch

    gpu: dict[str, Any] | None = None
    if torch.cuda.is_available():
        idx = torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        gpu = {
            "name": torch.cuda.get_device_name(idx),
            "compute_capability": f"{major}.{minor}",
            "driver": _nvidia_driver(),
            "cuda_runtime": torch.version.cuda,
        }
    load = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    foreign = foreign_cpu_load()
    cpus = os.cpu_count() or 1
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": cpus,
        "torch_threads": torch.get_num_threads(),
        "load_average": load,
        "other_processes_cpus": foreign,
        # Busy when other processes hold a quarter of the CPUs: the timings then measure sharing too.
        "loaded_machine": bool(foreign is not None and foreign > 0.25 * cpus),
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "srdeploy": _version_of("srdeploy"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "onnxruntime": _version_of("onnxruntime-gpu") or _version_of("onnxruntime"),
            "openvino": _version_of("openvino"),
            "tensorrt": _version_of("tensorrt"),
        },
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
    }


# --------------------------------------------------------------------------------------------------- report


def report_schema() -> dict[str, Any]:
    """The JSON Schema a report's `to_dict` conforms to (shipped as package data)."""
    import json
    from importlib.resources import files

    text = files("sr_deploy").joinpath("schemas/bench_report.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@dataclass
class BenchReport:
    """Everything one bench run measured and on what, ready for JSON (`to_dict`) and markdown."""

    settings: dict[str, Any]
    model: dict[str, Any]
    inputs: dict[str, Any]
    environment: dict[str, Any]
    rows: list[RowResult]
    headline: str | None
    notes: list[str] = field(default_factory=list)
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def headline_row(self) -> RowResult | None:
        return next((r for r in self.rows if r.plan.key == self.headline), None)

    @property
    def verdict(self) -> Verdict | None:
        row = self.headline_row
        return row.verdict if row else None

    def to_dict(self) -> dict[str, Any]:
        v = self.verdict
        return {
            "schema_version": SCHEMA_VERSION,
            "created_utc": self.created_utc,
            "settings": dict(self.settings),
            "model": dict(self.model),
            "inputs": dict(self.inputs),
            "environment": dict(self.environment),
            "rows": [r.to_dict() for r in self.rows],
            "headline": self.headline,
            "verdict": v.to_dict() if v else None,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class BenchSettings:
    """How to measure: the flags of ``srdeploy bench`` that are not about inputs or outputs."""

    backend: str = "auto"
    precision: str = "fp32"
    device: str = "auto"
    budget_ms: float = DEFAULT_BUDGET_MS
    warmup: int = 3
    repeat: int = 3
    seed: int = 0

    cuda_graphs: bool = False
    compile_mode: str | None = None
    #: --onnx: the int8 Q/DQ graph for --precision int8 (and the int8 rows of --backend all).
    int8_onnx: str | None = None

    def validate(self) -> None:
        """The checks that need nothing but the flags (see check_device_options for those that need the device)."""
        from sr_deploy.runtime.factory import check_kind_options
        from sr_deploy.runtime.torch_backend import TorchOptions, check_torch_options

        if self.repeat < 1:
            raise SRDeployError(f"--repeat must be >= 1 (timed passes over the set), got {self.repeat}")
        if self.warmup < 0:
            raise SRDeployError(f"--warmup must be >= 0, got {self.warmup}")
        check_budget(self.budget_ms)
        plan_rows(self.backend, self.precision, best_precision="fp32", int8_graph=self.int8_onnx)
        # Names and combinations of the options; "cuda" here so that only the device check refuses CUDA graphs.
        check_torch_options(TorchOptions(cuda_graphs=self.cuda_graphs, compile_mode=self.compile_mode), "cuda")
        if self.backend != "all":
            check_kind_options(self.backend, cuda_graphs=self.cuda_graphs, compile_mode=self.compile_mode)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "device": self.device,
            "budget_ms": self.budget_ms,
            "warmup": self.warmup,
            "repeat": self.repeat,
            "seed": self.seed,
            "cuda_graphs": self.cuda_graphs,
            "compile": self.compile_mode,
            "int8_onnx": self.int8_onnx,
        }


#: Builds a ready (not yet prepared) backend for a row; the default is sr_deploy.runtime.factory.make_backend.
BackendMaker = Callable[[RowPlan, "SRNet", str, str], "Backend"]
#: Says which backend kinds can run here: None = usable, else why not.
Availability = Callable[[], dict[str, str | None]]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return device


def gpu_visible() -> bool:
    """A CUDA GPU that torch can use, or at least an NVIDIA driver (TensorRT and ONNX Runtime do not need torch's)."""
    import torch

    from sr_deploy.runtime.ort_backend import gpu_present

    return bool(torch.cuda.is_available()) or gpu_present()


def check_device_options(settings: BenchSettings, device: str, *, gpu: bool | None = None) -> None:
    """The checks that need the resolved `device`: --device cuda without a GPU, CUDA graphs on the CPU. One line
    each, naming the flag; `gpu` says whether a GPU is visible (default: ask the machine)."""
    from sr_deploy.runtime.torch_backend import TorchOptions, check_torch_options

    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise SRDeployError(f"--device {settings.device!r}: expected auto, cpu, cuda or cuda:N")
    if kind == "cuda" and not (gpu_visible() if gpu is None else gpu):
        raise MissingDependencyError(
            f"--device {settings.device}: no CUDA GPU is visible on this machine (no NVIDIA driver, and torch "
            "sees none); run on a GPU machine or use --device cpu"
        )
    check_torch_options(TorchOptions(cuda_graphs=settings.cuda_graphs, compile_mode=settings.compile_mode), kind)


def _factory_maker(
    plan: RowPlan, model: SRNet, device: str, weights_sha256: str, *, references: Sequence[Any] | None = None
) -> Backend:
    """`references`: the bf16 gate's images (--reference-dir); None lets the factory find its default."""
    from sr_deploy.runtime.factory import graph_cache, make_backend

    # Seeded random weights have no hash: their graph is made in a temporary folder, never cached.
    backend: Backend = make_backend(
        plan.kind,
        model,
        precision=plan.precision,
        device=device,
        weights_sha256=weights_sha256,
        work_dir=graph_cache() if weights_sha256 else None,
        cuda_graphs=plan.cuda_graphs,
        compile_mode=plan.compile_mode,
        references=references,
        int8_graph=Path(plan.int8_graph) if plan.int8_graph is not None else None,
    )
    return backend


def _factory_availability() -> dict[str, str | None]:
    from sr_deploy.runtime.factory import available_backends

    found: dict[str, str | None] = available_backends()
    return found


def check_backend_available(backend: str, availability: Availability | None = None) -> dict[str, str | None]:
    """Raise (one line: what is missing) when a single named backend cannot run here; return the availability."""
    avail = (availability or _factory_availability)()
    if backend not in ("auto", "all") and avail.get(backend) is not None:
        raise MissingDependencyError(f"backend {backend} is not available here: {avail[backend]}")
    return avail


def run_bench(
    images: Sequence[BenchImage],
    models: BenchModels,
    settings: BenchSettings,
    *,
    inputs: dict[str, Any],
    make: BackendMaker | None = None,
    availability: Availability | None = None,
    hr_loader: HRLoader | None = read_hr,
    progress: ProgressHook | None = None,
    environment: dict[str, Any] | None = None,
    references: Sequence[Any] | None = None,
) -> BenchReport:
    """Measure every planned row on the same images in one process and assemble the report.

    A single named backend that cannot run here is an error (one line, what is missing). With ``all``, a row
    that cannot run is kept in the table as skipped, with the reason, so the table always has the same rows.
    `references` (--reference-dir): the images of the bf16 accuracy gate, for the default factory.
    """
    settings.validate()
    device = resolve_device(settings.device)
    check_device_options(settings, device)
    # Taken before measuring, so the load average shows what else was running, not this benchmark itself.
    env = environment if environment is not None else collect_environment()
    plans = plan_rows(
        settings.backend,
        settings.precision,
        best_precision=best_torch_precision(device),
        device=device,
        cuda_graphs=settings.cuda_graphs,
        compile_mode=settings.compile_mode,
        int8_graph=settings.int8_onnx,
    )
    single = settings.backend != "all"
    # Looked up at call time (not as default arguments) so the factory is imported only when a run needs it.
    if make is None and references is not None:
        refs = references

        def make_with_references(row: RowPlan, net: SRNet, dev: str, sha: str) -> Backend:
            return _factory_maker(row, net, dev, sha, references=refs)

        make = make_with_references
    make = make or _factory_maker
    avail = check_backend_available(settings.backend, availability)
    want_psnr = hr_loader is not None and not models.random_weights and any(i.hr_path for i in images)
    rows: list[RowResult] = []
    for plan in plans:
        reason = avail.get(plan.kind) or plan.skip_reason
        if not single and reason is not None:
            rows.append(RowResult(plan=plan, status="skipped", reason=reason))
            continue
        model = models.clb if plan.model == "clb" else models.deploy
        if model is None:
            rows.append(RowResult(plan=plan, status="skipped", reason="training-time model not loaded"))
            continue
        try:
            rows.append(
                _measure_row(make, plan, model, device, models, images, settings, want_psnr, hr_loader, progress)
            )
        except SRDeployError as e:
            if single:
                raise
            rows.append(RowResult(plan=plan, status="skipped", reason=str(e)))
        except Exception as e:
            # In a comparison table one broken runtime must not hide the others; alone, it is the answer.
            if single:
                raise
            rows.append(RowResult(plan=plan, status="failed", reason=f"{type(e).__name__}: {e}"))
    headline = finish_rows(rows, budget_ms=settings.budget_ms)
    notes = _notes(models, images, inputs, env, want_psnr, several_rows=not single)
    return BenchReport(
        settings={**settings.to_dict(), "resolved_device": device},
        model=models.to_dict(),
        inputs=inputs,
        environment=env,
        rows=rows,
        headline=headline.plan.key if headline else None,
        notes=notes,
    )


def _measure_row(
    make: BackendMaker,
    plan: RowPlan,
    model: SRNet,
    device: str,
    models: BenchModels,
    images: Sequence[BenchImage],
    settings: BenchSettings,
    want_psnr: bool,
    hr_loader: HRLoader | None,
    progress: ProgressHook | None,
) -> RowResult:
    """Build, prepare (untimed: the challenge did not time model construction either), measure, release."""
    backend = make(plan, model, device, models.weights_sha256)
    try:
        prepared = backend.info.name not in WARMING_PREPARE
        prepare_ms = 0.0
        if prepared:
            t0 = time.perf_counter_ns()
            backend.prepare((1, 3, max(i.height for i in images), max(i.width for i in images)))
            prepare_ms = (time.perf_counter_ns() - t0) / 1e6
        row = measure_backend(
            backend,
            plan,
            images,
            warmup=settings.warmup,
            repeat=settings.repeat,
            scale=models.deploy.spec.scale,
            hr_loader=hr_loader if want_psnr else None,
            progress=progress,
        )
        row.timing.update(prepare_called=prepared, prepare_ms=prepare_ms)
        if plan.kind == "auto":
            # Name the row after what `auto` chose, so the table and the verdict say which runtime was timed.
            kind = backend.info.name
            row.plan = replace(plan, key=f"{kind}-{plan.precision}", title=f"{kind} {plan.precision} (auto)", kind=kind)
        return row
    finally:
        backend.close()


def random_weights_note(arch: str, source: str) -> str:
    """The plain statement a run without --weights owes its reader."""
    return (
        f"No --weights: {arch} with {source} weights. The timing is that of the real model, but the PSNR would be "
        "meaningless and is not shown."
    )


def _notes(
    models: BenchModels,
    images: Sequence[BenchImage],
    inputs: dict[str, Any],
    environment: dict[str, Any] | None,
    want_psnr: bool,
    several_rows: bool,
) -> list[str]:
    notes = []
    if models.random_weights:
        notes.append(random_weights_note(models.arch, models.weights_source))
    elif any(i.hr_path for i in images) and want_psnr:
        notes.append(
            f"PSNR: RGB (the challenge's metric: NTIRE 2022 ESR test_demo.py ranks by it) and Y (BT.601, as most SR "
            f"papers tabulate), {PSNR_CROP_BORDER}-pixel border, uint8, from each backend's own output."
        )
    if inputs.get("kind") == "synthetic":
        notes.append(
            "Synthetic inputs (seeded uniform noise): a convolutional network's time does not depend on content."
        )
    if several_rows:
        notes.append(
            "Rows run one after another in one process; each row's first image is cold for that backend, but "
            "process-wide caches (e.g. oneDNN kernels for the same shapes) may already be warm from earlier rows."
        )
    if environment and environment.get("loaded_machine"):
        notes.append(
            f"Other processes kept {environment.get('other_processes_cpus')} of {environment.get('cpu_count')} CPUs "
            f"busy just before measuring (load average {environment.get('load_average')}): times are pessimistic."
        )
    return notes


# ------------------------------------------------------------------------------------------------ rendering


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _fmt(x: float | None, spec: str) -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def describe_timing(timing: dict[str, Any]) -> str:
    """The timing settings in words, as trtexec users will compare them."""
    parts = [
        f"Forward timed with {timing.get('forward_clock', '?')}, copies excluded"
        f" (end-to-end includes them); CUDA graphs {'on' if timing.get('cuda_graph') else 'off'}",
        "prepare() (buffers, or OpenVINO's per-shape compile; no forward) done before the cold pass"
        if timing.get("prepare_called")
        else "prepare() not called (it runs a warm-up forward), so the first image is cold",
    ]
    if timing.get("engine_key"):
        parts.append(f"engine key {timing['engine_key']}")
    return "; ".join(parts) + "."


def render_markdown(report: BenchReport, *, title: str = "srdeploy bench") -> str:
    """A readable summary of the report: verdict, the backend table, the machine, per-image times."""
    env = report.environment
    s = report.settings
    lines = [f"# {title}", ""]
    v = report.verdict
    lines += [f"**{v.message}**" if v else "**No backend ran: no verdict.**", ""]
    lines += [
        f"- Model: {report.model.get('arch')} ({report.model.get('params'):,} params), weights "
        f"{report.model.get('weights_source')}"
        + (f" sha256 `{report.model['weights_sha256']}`" if report.model.get("weights_sha256") else ""),
        f"- Inputs: {report.inputs.get('description', report.inputs.get('kind'))}",
        f"- Method: challenge mean = mean forward time of one cold pass (first image counted, no warm-up); "
        f"warm = {s.get('repeat')} timed pass(es) after {s.get('warmup')} warm-up call(s); "
        f"budget {s.get('budget_ms')} ms",
        f"- Machine: {env.get('cpu_model')} ({env.get('cpu_count')} CPUs, torch threads {env.get('torch_threads')})"
        + (
            f"; GPU {env['gpu']['name']} (cc {env['gpu']['compute_capability']}, driver {env['gpu']['driver']})"
            if env.get("gpu")
            else "; no GPU"
        )
        + f"; load average {env.get('load_average')}",
        "- Versions: " + ", ".join(f"{k} {v_}" for k, v_ in env.get("versions", {}).items() if v_),
        "",
    ]
    show_psnr = any(r.psnr_y_mean is not None for r in report.rows)
    head = [
        "backend",
        "challenge mean (ms)",
        "cold first (ms)",
        "warm median (ms)",
        "warm p90 (ms)",
        "end-to-end median (ms)",
        "MP/s",
        "speed-up",
        "verdict",
    ] + (["PSNR RGB (dB, challenge)", "PSNR Y (dB)"] if show_psnr else [])
    # The speed-up is over the challenge's way (torch eager fp32), which only `--backend all` measures.
    keep = [h != "speed-up" or any(r.speedup is not None for r in report.rows) for h in head]
    head = [h for h, k in zip(head, keep, strict=True) if k]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report.rows:
        name = r.plan.title + (" **(headline)**" if r.plan.key == report.headline and len(report.rows) > 1 else "")
        if not r.ok:
            cells = [name, f"{r.status}: {r.reason}"] + [""] * (len(head) - 2)
        else:
            assert r.challenge is not None and r.warm is not None and r.warm_end_to_end is not None
            cells = [
                name,
                _ms(r.challenge.mean_ms),
                _ms(r.challenge.cold_first_ms),
                _ms(r.warm.median_ms),
                _ms(r.warm.p90_ms),
                _ms(r.warm_end_to_end.median_ms),
                _fmt(r.throughput_mpix_s, ".2f"),
                _fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else ""),
                f"{r.verdict.status} ({r.verdict.ratio:.2f}x)" if r.verdict else "–",
            ] + ([_fmt(r.psnr_rgb_mean, ".4f"), _fmt(r.psnr_y_mean, ".4f")] if show_psnr else [])
            cells = [c for c, k in zip(cells, keep, strict=True) if k]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    hr = report.headline_row
    if hr is not None and hr.warm is not None:
        lines += [
            f"Warm statistics of the headline row ({hr.plan.title}): median {_ms(hr.warm.median_ms)}, "
            f"p90 {_ms(hr.warm.p90_ms)}, p99 {_ms(hr.warm.p99_ms)}, max {_ms(hr.warm.max_ms)}, "
            f"std {_ms(hr.warm.std_ms)} ms over {hr.warm.count} runs. {describe_timing(hr.timing)}",
            "",
            "| image | LR | cold forward (ms) | warm median (ms) | end-to-end cold (ms) |"
            + (" PSNR RGB (dB, challenge) | PSNR Y (dB) |" if show_psnr else ""),
            "|---|---|---|---|---|" + ("---|---|" if show_psnr else ""),
        ]
        for im in hr.images:
            med = float(np.median(im.warm_forward_ms)) if im.warm_forward_ms else None
            row = (
                f"| {im.name} | {im.lr_hw[0]}x{im.lr_hw[1]} | {_ms(im.cold_forward_ms)} | {_ms(med)} | "
                f"{_ms(im.cold_end_to_end_ms)} |"
            )
            lines.append(row + (f" {_fmt(im.psnr_rgb, '.4f')} | {_fmt(im.psnr_y, '.4f')} |" if show_psnr else ""))
        lines.append("")
    for n in report.notes:
        lines.append(f"- {n}")
    lines += ["", f"_Generated {report.created_utc} by srdeploy {env.get('versions', {}).get('srdeploy')}._", ""]
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise (one line, how to install it) unless matplotlib can draw here; cheap enough to check before a run."""
    import importlib

    try:
        for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib (a dependency of srdeploy), which is missing here: pip install matplotlib"
        ) from None


def write_plot(report: BenchReport, path: Path) -> Path:
    """Bar chart of each row's challenge mean and warm median, with the budget as a horizontal line."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sr_deploy.fileio import atomic_path, plot_format

    ran = [r for r in report.rows if r.ok and r.challenge is not None and r.warm is not None]
    budget = float(report.settings.get("budget_ms", DEFAULT_BUDGET_MS))
    # Figure + Agg canvas rather than pyplot: no global figure state, no display backend needed.
    fig = Figure(figsize=(max(6.0, 1.3 * len(ran) + 3), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = np.arange(len(ran))
    cold = [r.challenge.mean_ms for r in ran if r.challenge]
    warm = [r.warm.median_ms for r in ran if r.warm]
    ax.bar(xs - 0.2, cold, width=0.4, label="challenge mean (cold pass)", color="#4472c4")
    ax.bar(xs + 0.2, warm, width=0.4, label="warm median", color="#a5a5a5")
    ax.axhline(budget, color="#c00000", linestyle="--", label=f"budget {budget:g} ms")
    # The PSNRs go under each row's name: a second axis in dB would suggest a trade-off the bars do not show.
    labels = [
        r.plan.key
        + (
            f"\nRGB {r.psnr_rgb_mean:.4f} / Y {r.psnr_y_mean:.4f} dB"
            if r.psnr_rgb_mean is not None and r.psnr_y_mean is not None
            else ""
        )
        for r in ran
    ]
    ax.set_xticks(xs, labels, rotation=20, ha="right")
    ax.set_ylabel("forward time per image (ms)")
    if any(r.psnr_rgb_mean is not None for r in ran):
        ax.set_xlabel("PSNR: RGB is the challenge's metric (NTIRE 2022 ESR ranks by it), Y beside it", fontsize=8)
    if ran and max(cold + warm) > 20 * budget:
        ax.set_yscale("log")  # keep the budget line visible next to CPU times tens of times larger
    device = str(report.settings.get("resolved_device", ""))
    ax.set_title(
        # Two lines: a folder path in the description would otherwise run off the figure.
        f"{report.model.get('arch')} x{report.model.get('scale')} on {device}\n{report.inputs.get('description', '')}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    with atomic_path(path, "--plot") as tmp:
        fig.savefig(tmp, format=plot_format(path, "--plot"), dpi=120)
    return path
