"""Statistics of measured times: summary statistics, the challenge's mean, throughput and speed-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


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
