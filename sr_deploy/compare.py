"""One way to compare outputs: error statistics of a candidate against a reference output, PSNR against HR images,
and a threshold check that returns a report. The fusion proof, the ONNX export gates, the TensorRT gate and the
bf16 / int8 gates all measure through here, so "PSNR" means one formula everywhere.

Outputs are images in [0, 1] (`peak` 1); PSNR against HR follows the challenge's protocol (uint8, crop border,
MATLAB Y) in `sr_deploy.imaging.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sr_deploy.errors import SRDeployError


def psnr_db(reference: np.ndarray, candidate: np.ndarray, peak: float = 1.0) -> float:
    """PSNR of `candidate` against `reference` in float64 (MSE over every element); inf when identical."""
    diff = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return psnr_from_mse(float(np.mean(diff * diff)), peak)


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """10 log10(peak^2 / mse): the one PSNR formula; inf for mse 0, nan for nan."""
    if math.isnan(mse):
        return math.nan
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def db_or_none(x: float | None) -> float | None:
    """A dB figure for JSON: None for inf (identical outputs), nan or None; JSON has no infinity."""
    return None if x is None or not math.isfinite(x) else x


@dataclass
class Comparison:
    """A candidate's outputs against reference outputs, accumulated sample by sample (`add`).

    Non-finite values (in the candidate or, a broken oracle, in the reference) are counted and left out of the
    error statistics; a sample with any has no PSNR and makes the worst-sample PSNR -inf. `psnr_db` pools every
    sample's squared error; `worst_psnr_db` is the lowest per-sample figure.
    """

    peak: float = 1.0
    samples: int = 0
    max_abs: float = 0.0
    nonfinite: int = 0
    worst_psnr_db: float = math.inf
    _sum_abs: float = field(default=0.0, repr=False)
    _sum_sq: float = field(default=0.0, repr=False)
    _count: int = field(default=0, repr=False)

    def add(self, reference: np.ndarray, candidate: np.ndarray) -> Comparison:
        ref = np.asarray(reference, dtype=np.float64)
        cand = np.asarray(candidate, dtype=np.float64)
        if ref.shape != cand.shape:
            raise SRDeployError(f"comparison: sample {self.samples} has shape {cand.shape}, reference {ref.shape}")
        finite = np.isfinite(cand) & np.isfinite(ref)
        bad = int(cand.size - int(finite.sum()))
        diff = np.abs(cand[finite] - ref[finite]) if bad else np.abs(cand - ref).reshape(-1)
        sq = float(np.dot(diff, diff))
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self._sum_abs += float(diff.sum())
            self._sum_sq += sq
            self._count += int(diff.size)
        self.nonfinite += bad
        sample_psnr = -math.inf if bad else psnr_from_mse(sq / diff.size if diff.size else 0.0, self.peak)
        self.worst_psnr_db = min(self.worst_psnr_db, sample_psnr)
        self.samples += 1
        return self

    @property
    def mean_abs(self) -> float:
        return self._sum_abs / self._count if self._count else 0.0

    @property
    def psnr_db(self) -> float:
        """Over every finite value of every sample; -inf when there was any non-finite one."""
        if self.nonfinite:
            return -math.inf
        return psnr_from_mse(self._sum_sq / self._count if self._count else 0.0, self.peak)

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            # null: identical (inf) or not defined (a non-finite output); see "nonfinite".
            "psnr_db": db_or_none(self.psnr_db),
            "worst_psnr_db": db_or_none(self.worst_psnr_db),
            "nonfinite": self.nonfinite,
            "peak": self.peak,
        }


def compare_outputs(
    reference: Iterable[np.ndarray], candidate: Iterable[np.ndarray], *, peak: float = 1.0
) -> Comparison:
    """`Comparison` of paired outputs; the two must have the same number of samples."""
    refs, cands = list(reference), list(candidate)
    if not refs or len(refs) != len(cands):
        raise SRDeployError(f"comparison: {len(refs)} reference outputs but {len(cands)} candidate outputs")
    comp = Comparison(peak=peak)
    for r, c in zip(refs, cands, strict=True):
        comp.add(r, c)
    return comp


def output_to_uint8_rgb(output: np.ndarray) -> np.ndarray:
    """A 1x3xHxW (or 3xHxW) output in [0, 1] -> HxWx3 uint8: the protocol's clamp, x255, round, in float32 like
    the challenge (`sr_deploy.imaging.io.quantize`, so eval, training and the gates round alike)."""
    from sr_deploy.imaging.io import quantize  # cv2 is loaded only when an output is scored

    arr = np.asarray(output)
    if arr.ndim == 4:
        arr = arr[0]
    # NaN has no pixel value: it scores as black here, and `Comparison` counts it as non-finite.
    arr = np.nan_to_num(arr, nan=0.0)
    return np.ascontiguousarray(quantize(arr, 8).transpose(1, 2, 0))


@dataclass(frozen=True)
class HrPsnr:
    """PSNR of one output against its HR image: RGB (the NTIRE challenge's metric) and Y (most SR papers')."""

    rgb_db: float
    y_db: float

    def to_dict(self) -> dict[str, Any]:
        return {"rgb_db": db_or_none(self.rgb_db), "y_db": db_or_none(self.y_db)}


def psnr_vs_hr(output: np.ndarray, hr: np.ndarray, crop_border: int) -> HrPsnr:
    """RGB and Y PSNR of a [0, 1] model output (NCHW or CHW) or a uint8 HxWx3 image against a uint8 HR image, with
    `crop_border` pixels cut from each side (the challenge uses the scale factor)."""
    from sr_deploy.imaging.metrics import psnr

    sr = (
        output
        if (output.ndim == 3 and output.shape[-1] == 3 and output.dtype == np.uint8)
        else output_to_uint8_rgb(output)
    )
    return HrPsnr(
        rgb_db=psnr(sr, hr, crop_border=crop_border, y_channel=False),
        y_db=psnr(sr, hr, crop_border=crop_border, y_channel=True),
    )


def mean_brightness_shift(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest per-channel shift of the mean level (0-255) of NCHW outputs in [0, 1]: a colour cast is one."""
    a = np.clip(np.nan_to_num(np.asarray(candidate, np.float64), nan=0.0), 0.0, 1.0) * 255.0
    b = np.clip(np.asarray(reference, np.float64), 0.0, 1.0) * 255.0
    axes = tuple(i for i in range(a.ndim) if i != a.ndim - 3)
    return float(np.max(np.abs(a.mean(axis=axes) - b.mean(axis=axes))))


@dataclass(frozen=True)
class Tolerance:
    """Bounds on a Comparison; None leaves a figure unchecked. Non-finite values always fail."""

    max_abs: float | None = None
    mean_abs: float | None = None
    min_psnr_db: float | None = None  # pooled PSNR against the reference output
    min_worst_psnr_db: float | None = None  # the worst sample's PSNR

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs": self.max_abs,
            "mean_abs": self.mean_abs,
            "min_psnr_db": self.min_psnr_db,
            "min_worst_psnr_db": self.min_worst_psnr_db,
        }


@dataclass(frozen=True)
class CheckReport:
    """A Comparison held to a Tolerance: whether it passed, and for each failed bound one line saying by how much."""

    label: str
    comparison: Comparison
    tolerance: Tolerance
    reasons: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "passed": self.passed,
            "comparison": self.comparison.to_dict(),
            "tolerance": self.tolerance.to_dict(),
            "reasons": list(self.reasons),
        }


def check(comparison: Comparison, tolerance: Tolerance, label: str = "") -> CheckReport:
    """Hold `comparison` to `tolerance`; each failed bound gives a reason with the figure and the bound."""
    c, t = comparison, tolerance
    reasons: list[str] = []
    if c.nonfinite:
        reasons.append(f"{c.nonfinite} NaN/Inf values in the outputs")
    if t.max_abs is not None and c.max_abs > t.max_abs:
        reasons.append(f"max abs error {c.max_abs:.3g} > {t.max_abs:g}")
    if t.mean_abs is not None and c.mean_abs > t.mean_abs:
        reasons.append(f"mean abs error {c.mean_abs:.3g} > {t.mean_abs:g}")
    if t.min_psnr_db is not None and not c.nonfinite and c.psnr_db < t.min_psnr_db:
        reasons.append(f"PSNR against the reference {c.psnr_db:.2f} dB < {t.min_psnr_db:g} dB")
    if t.min_worst_psnr_db is not None and not c.nonfinite and c.worst_psnr_db < t.min_worst_psnr_db:
        reasons.append(
            f"worst sample's PSNR against the reference {c.worst_psnr_db:.2f} dB < {t.min_worst_psnr_db:g} dB"
        )
    return CheckReport(label=label, comparison=c, tolerance=t, reasons=tuple(reasons))
