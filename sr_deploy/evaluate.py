"""`srdeploy eval`: PSNR/SSIM of a model on an HR set, with the challenge's conventions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sr_deploy.compare import psnr_vs_hr
from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import db_or_null
from sr_deploy.imaging.io import from_model_output, list_images, make_lr, read_image, to_tensor_layout, to_uint8
from sr_deploy.imaging.metrics import ssim
from sr_deploy.imaging.pairing import pair_images
from sr_deploy.imaging.resize import modcrop
from sr_deploy.shapes import check_min_size

RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EvalPair:
    name: str
    hr: Path
    lr: Path | None  # None: made from the modcropped HR with the MATLAB bicubic


@dataclass(frozen=True)
class ImageScore:
    name: str
    lr_hw: tuple[int, int]
    psnr_rgb: float
    psnr_y: float
    ssim_y: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "lr_hw": list(self.lr_hw),
            # An image identical to its HR has an infinite PSNR, which JSON cannot hold: null with the reason.
            **db_or_null("psnr_rgb", self.psnr_rgb, infinite="identical to the HR image"),
            **db_or_null("psnr_y", self.psnr_y, infinite="identical to the HR image"),
            "ssim_y": self.ssim_y,
        }


@dataclass
class EvalReport:
    weights: str
    weights_sha256: str
    arch: str
    backend: str
    scale: int
    crop_border: int
    lr_source: str  # "folder" or "bicubic"
    images: list[ImageScore] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        values = [getattr(s, metric) for s in self.images]
        return float(np.mean(values)) if values else math.nan

    def _means(self) -> dict[str, Any]:
        if not self.images:  # every image failed: no mean (NaN is not JSON)
            return {"psnr_rgb": None, "psnr_y": None, "ssim_y": None, "note": "no image was scored"}
        out: dict[str, Any] = {}
        for m in ("psnr_rgb", "psnr_y"):
            out.update(db_or_null(m, self.mean(m), infinite="every image identical to its HR"))
        out["ssim_y"] = self.mean("ssim_y")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "arch": self.arch,
            "backend": self.backend,
            "scale": self.scale,
            "crop_border": self.crop_border,
            "lr_source": self.lr_source,
            "mean": self._means(),
            "images": [s.to_dict() for s in self.images],
            "failures": dict(self.failures),
        }


def pair_eval_images(hr_dir: str | Path, lr_dir: str | Path | None) -> list[EvalPair]:
    """HR images with their LR partners (equal names, or DIV2K 0801x4.png ~ 0801.png); unpaired ones named."""
    hrs = list_images(hr_dir)
    if lr_dir is None:
        return [EvalPair(p.name, p, None) for p in hrs]
    pairs = pair_images(list_images(lr_dir), hrs)
    return [EvalPair(hr.name, hr, lr) for lr, hr in pairs]


def load_pair(pair: EvalPair, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, modcropped HR) as uint8 RGB, checking that their sizes agree at `scale`."""
    hr_full = to_uint8(read_image(pair.hr).rgb)
    if min(hr_full.shape[:2]) < scale:
        raise SRDeployError(f"{pair.hr}: {hr_full.shape[0]}x{hr_full.shape[1]} is smaller than the scale x{scale}")
    hr = modcrop(hr_full, scale)
    if pair.lr is None:
        return make_lr(hr, scale), hr
    lr = to_uint8(read_image(pair.lr).rgb)
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise SRDeployError(
            f"LR {pair.lr} is {lr.shape[0]}x{lr.shape[1]} but HR {pair.hr} is {hr_full.shape[0]}x{hr_full.shape[1]}:"
            f" at x{scale} the LR must be {hr.shape[0] // scale}x{hr.shape[1] // scale}"
        )
    return lr, hr


def score_image(name: str, run: RunFn, lr: np.ndarray, hr: np.ndarray, crop_border: int) -> ImageScore:
    sr = from_model_output(run(to_tensor_layout(lr)), 8)
    if sr.shape != hr.shape:
        raise SRDeployError(f"{name}: output {sr.shape} does not match HR {hr.shape}")
    vs_hr = psnr_vs_hr(sr, hr, crop_border)
    return ImageScore(
        name=name,
        lr_hw=(int(lr.shape[0]), int(lr.shape[1])),
        psnr_rgb=vs_hr.rgb_db,
        psnr_y=vs_hr.y_db,
        ssim_y=ssim(sr, hr, crop_border=crop_border, y_channel=True),
    )


def evaluate(
    run: RunFn,
    pairs: Sequence[EvalPair],
    report: EvalReport,
    *,
    on_image: Callable[[str], None] | None = None,
    min_size: int = 1,
) -> EvalReport:
    """Score every pair into `report`; an image that fails (one below the architecture's smallest input `min_size`
    included) is recorded by name and the rest go on."""
    for pair in pairs:
        try:
            lr, hr = load_pair(pair, report.scale)
            check_min_size(lr.shape[0], lr.shape[1], min_size, f"{pair.lr or pair.hr} (LR)", report.arch)
            report.images.append(score_image(pair.name, run, lr, hr, report.crop_border))
        except SRDeployError as e:
            report.failures[pair.name] = str(e)
        if on_image is not None:
            on_image(pair.name)
    return report
