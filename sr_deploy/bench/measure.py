"""Timing one backend over the images the challenge's way, then warm, and the per-row results."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sr_deploy.bench.inputs import BenchImage, modcrop
from sr_deploy.bench.rows import BASELINE_ROW, RowPlan
from sr_deploy.bench.stats import (
    ChallengeFigures,
    TimeStats,
    challenge_figures,
    speedup,
    throughput_mpix_s,
    time_stats,
)
from sr_deploy.bench.verdict import Verdict, make_verdict
from sr_deploy.errors import SRDeployError

if TYPE_CHECKING:
    from sr_deploy.runtime.base import Backend

#: The PSNR protocol of ../shared/data/reference_psnr.json: uint8, 4 pixels cut per border, RGB and Y (MATLAB
#: rgb2ycbcr). RGB is the challenge's metric: NTIRE 2022 ESR test_demo.py ranks by it (its Y lines are commented
#: out), and the paper's 29.05 dB is RGB; Y is what most SR papers tabulate.
PSNR_CROP_BORDER = 4
#: Which of the two PSNRs the challenge ranked by, for tables and notes.
CHALLENGE_PSNR = "rgb"


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
    from sr_deploy.compare import psnr_vs_hr
    from sr_deploy.imaging.io import to_uint8

    scores = psnr_vs_hr(output, to_uint8(modcrop(hr, lr_hw, scale)), PSNR_CROP_BORDER)
    return scores.rgb_db, scores.y_db


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
