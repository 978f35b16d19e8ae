"""PSNR and SSIM on uint8 RGB images, with the crop border and the Y-channel choice as explicit arguments.

The protocol is the NTIRE / BasicSR / MATLAB one (see ``../shared/data/reference_psnr.json``):
pixels are uint8, ``crop_border`` pixels are cut from every side, MAX = 255, and Y is MATLAB's
``rgb2ycbcr`` luma of the uint8 RGB image, rounded to an integer.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from sr_deploy.compare import psnr_from_mse
from sr_deploy.errors import SRDeployError

_MAX = 255.0
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * _MAX) ** 2
_SSIM_C2 = (0.03 * _MAX) ** 2


def rgb_to_y(img: np.ndarray) -> npt.NDArray[np.float64]:
    """BT.601 luma of a uint8 HxWx3 RGB image, MATLAB ``rgb2ycbcr`` convention, as integers in [16, 235].

    Returned as float64 holding whole numbers (MATLAB returns uint8: the rounding is part of the protocol).
    """
    _check_rgb(img, "rgb_to_y")
    rgb = img.astype(np.float64)
    y = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
    out: npt.NDArray[np.float64] = np.round(y)
    return out


def _check_rgb(img: np.ndarray, what: str) -> None:
    if img.ndim != 3 or img.shape[2] != 3:
        raise SRDeployError(f"{what}: expected an HxWx3 RGB image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise SRDeployError(f"{what}: expected uint8 pixels, got dtype {img.dtype}")


def _prepare(
    a: np.ndarray, b: np.ndarray, crop_border: int, y_channel: bool, what: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Validate, crop and (optionally) take Y; returns float64 HxWxC (C = 1 for Y)."""
    if a.shape != b.shape:
        raise SRDeployError(f"{what}: images differ in shape: {a.shape} vs {b.shape}")
    _check_rgb(a, what)
    _check_rgb(b, what)
    if crop_border < 0:
        raise SRDeployError(f"{what}: crop_border must be >= 0, got {crop_border}")
    h, w = a.shape[:2]
    if h <= 2 * crop_border or w <= 2 * crop_border:
        raise SRDeployError(
            f"{what}: crop_border {crop_border} leaves nothing of images of shape {a.shape} and {b.shape}"
        )
    if y_channel:
        fa, fb = rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    else:
        fa, fb = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        fa = fa[crop_border:-crop_border, crop_border:-crop_border]
        fb = fb[crop_border:-crop_border, crop_border:-crop_border]
    return fa, fb


def psnr(a: np.ndarray, b: np.ndarray, *, crop_border: int, y_channel: bool) -> float:
    """PSNR in dB between two uint8 HxWx3 RGB images (MAX 255, MSE over all kept pixels and channels).

    Identical images (MSE 0) give ``math.inf``; averaging over a dataset then gives inf too, which is
    the honest answer rather than an arbitrary cap.
    """
    fa, fb = _prepare(a, b, crop_border, y_channel, "psnr")
    return psnr_from_mse(float(np.mean((fa - fb) ** 2)), _MAX)


def gaussian_window_1d(size: int = _SSIM_WINDOW, sigma: float = _SSIM_SIGMA) -> npt.NDArray[np.float64]:
    """Normalized 1-D Gaussian; its outer product is the 2-D SSIM window (as ``cv2.getGaussianKernel``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    out: npt.NDArray[np.float64] = g / g.sum()
    return out


def _filter_valid(img: npt.NDArray[np.float64], g: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Separable 'valid' correlation of an HxW plane with ``outer(g, g)`` (no padded borders)."""
    rows = sliding_window_view(img, g.size, axis=0) @ g  # (H-k+1, W)
    out: npt.NDArray[np.float64] = sliding_window_view(rows, g.size, axis=1) @ g
    return out


def _ssim_plane(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> float:
    g = gaussian_window_1d()
    mu_x, mu_y = _filter_valid(x, g), _filter_valid(y, g)
    var_x = _filter_valid(x * x, g) - mu_x**2
    var_y = _filter_valid(y * y, g) - mu_y**2
    cov = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _SSIM_C1) * (2 * cov + _SSIM_C2)
    den = (mu_x**2 + mu_y**2 + _SSIM_C1) * (var_x + var_y + _SSIM_C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, *, crop_border: int, y_channel: bool) -> float:
    """SSIM between two uint8 HxWx3 RGB images (Wang et al. 2004, as BasicSR / MATLAB ``ssim_index``).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, statistics only where the
    window fits inside the cropped image (no padding). On Y when `y_channel`, otherwise the mean of
    the three RGB channels' SSIM. Y is the same rounded luma as `psnr` uses.
    """
    fa, fb = _prepare(a, b, crop_border, y_channel, "ssim")
    if min(fa.shape[:2]) < _SSIM_WINDOW:
        raise SRDeployError(
            f"ssim: images of shape {a.shape} and {b.shape} are smaller than the"
            f" {_SSIM_WINDOW}x{_SSIM_WINDOW} window after cropping {crop_border} pixels"
        )
    return float(np.mean([_ssim_plane(fa[..., c], fb[..., c]) for c in range(fa.shape[2])]))
