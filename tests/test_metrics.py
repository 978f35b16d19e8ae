"""PSNR / SSIM / Y: checked against independent oracles and exact properties, not stored numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import from_model_output, read_image, to_tensor_layout
from sr_deploy.imaging.metrics import psnr, rgb_to_y, ssim
from sr_deploy.imaging.resize import modcrop


def _rand_rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _noisy(img: np.ndarray, seed: int, amp: int = 20) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-amp, amp + 1, size=img.shape)
    return np.clip(img.astype(np.int64) + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- Y channel


def test_rgb_to_y_bt601_anchor_colours() -> None:
    # MATLAB rgb2ycbcr maps uint8 black/white to the studio range 16/235, and pure R, G, B to
    # round(16 + 65.481), round(16 + 128.553), round(16 + 24.966).
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], dtype=np.uint8)
    assert rgb_to_y(px)[0].tolist() == [16, 235, round(16 + 65.481), round(16 + 128.553), round(16 + 24.966)]


def test_rgb_to_y_is_integer_valued_and_monotone_in_gray() -> None:
    gray = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    y = rgb_to_y(gray)[0]
    np.testing.assert_array_equal(y, np.round(y))
    assert np.all(np.diff(y) >= 0)


# ---------------------------------------------------------------- PSNR


def test_psnr_identical_is_inf() -> None:
    a = _rand_rgb(12, 12, 0)
    assert psnr(a, a.copy(), crop_border=0, y_channel=False) == math.inf
    assert psnr(a, a.copy(), crop_border=2, y_channel=True) == math.inf


@pytest.mark.parametrize("offset", [1, 3, 10])
def test_psnr_of_constant_offset(offset: int) -> None:
    a = np.full((10, 14, 3), 100, dtype=np.uint8)
    b = a + np.uint8(offset)
    assert psnr(a, b, crop_border=0, y_channel=False) == pytest.approx(10 * math.log10(255**2 / offset**2))


def test_psnr_crop_border_ignores_border_pixels() -> None:
    a = _rand_rgb(16, 16, 1)
    b = a.copy()
    b[:2] = 255 - b[:2]
    b[:, -2:] = 0
    assert psnr(a, b, crop_border=2, y_channel=False) == math.inf
    assert psnr(a, b, crop_border=1, y_channel=False) < 40


def test_psnr_y_uses_the_rounded_luma() -> None:
    a, b = _rand_rgb(20, 20, 2), _noisy(_rand_rgb(20, 20, 2), 3)
    ya, yb = rgb_to_y(a), rgb_to_y(b)
    mse = np.mean((ya[3:-3, 3:-3] - yb[3:-3, 3:-3]) ** 2)
    assert psnr(a, b, crop_border=3, y_channel=True) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-12)


def test_psnr_is_symmetric() -> None:
    a, b = _rand_rgb(9, 13, 4), _rand_rgb(9, 13, 5)
    assert psnr(a, b, crop_border=1, y_channel=False) == psnr(b, a, crop_border=1, y_channel=False)


# ---------------------------------------------------------------- SSIM oracles


def _ssim_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook SSIM: for every position where the 11x11 window fits, Gaussian-weighted statistics."""
    k, sigma = 11, 1.5
    win = np.empty((k, k))
    for i in range(k):
        for j in range(k):
            win[i, j] = math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * sigma**2))
    win /= win.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for r in range(x.shape[0] - k + 1):
        for c in range(x.shape[1] - k + 1):
            px, py = x[r : r + k, c : c + k], y[r : r + k, c : c + k]
            mx, my = float((win * px).sum()), float((win * py).sum())
            vx = float((win * (px - mx) ** 2).sum())
            vy = float((win * (py - my) ** 2).sum())
            cxy = float((win * (px - mx) * (py - my)).sum())
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def _ssim_basicsr(x: np.ndarray, y: np.ndarray) -> float:
    """BasicSR's ``_ssim`` (cv2.filter2D with a Gaussian kernel, then the valid region)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    kernel = cv2.getGaussianKernel(11, 1.5)
    window = np.outer(kernel, kernel.transpose())
    mu1 = cv2.filter2D(x, -1, window)[5:-5, 5:-5]
    mu2 = cv2.filter2D(y, -1, window)[5:-5, 5:-5]
    s1 = cv2.filter2D(x**2, -1, window)[5:-5, 5:-5] - mu1**2
    s2 = cv2.filter2D(y**2, -1, window)[5:-5, 5:-5] - mu2**2
    s12 = cv2.filter2D(x * y, -1, window)[5:-5, 5:-5] - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return float(m.mean())


def test_ssim_y_matches_textbook_loop() -> None:
    a = _rand_rgb(17, 19, 6)
    b = _noisy(a, 7)
    expected = _ssim_loop(rgb_to_y(a)[2:-2, 2:-2], rgb_to_y(b)[2:-2, 2:-2])
    assert ssim(a, b, crop_border=2, y_channel=True) == pytest.approx(expected, abs=1e-12)


def test_ssim_rgb_is_mean_of_channels_and_matches_loop() -> None:
    a = _rand_rgb(14, 16, 8)
    b = _noisy(a, 9, amp=40)
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    expected = np.mean([_ssim_loop(fa[..., c], fb[..., c]) for c in range(3)])
    assert ssim(a, b, crop_border=0, y_channel=False) == pytest.approx(expected, abs=1e-12)


def test_ssim_matches_basicsr_formulation_on_larger_image() -> None:
    a = _rand_rgb(48, 64, 10)
    b = _noisy(a, 11)
    y_a, y_b = rgb_to_y(a)[4:-4, 4:-4], rgb_to_y(b)[4:-4, 4:-4]
    assert ssim(a, b, crop_border=4, y_channel=True) == pytest.approx(_ssim_basicsr(y_a, y_b), abs=1e-9)


def test_ssim_properties() -> None:
    a = _rand_rgb(24, 24, 12)
    b = _noisy(a, 13)
    c = _noisy(a, 14, amp=80)
    assert ssim(a, a.copy(), crop_border=0, y_channel=False) == pytest.approx(1.0, abs=1e-12)
    s_ab = ssim(a, b, crop_border=0, y_channel=True)
    assert s_ab == pytest.approx(ssim(b, a, crop_border=0, y_channel=True), abs=1e-12)
    assert ssim(a, c, crop_border=0, y_channel=True) < s_ab < 1.0


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_shape_mismatch_names_both_shapes(metric: Callable[..., float]) -> None:
    a, b = _rand_rgb(20, 20, 0), _rand_rgb(20, 24, 0)
    with pytest.raises(SRDeployError) as err:
        metric(a, b, crop_border=0, y_channel=False)
    msg = str(err.value)
    assert "(20, 20, 3)" in msg and "(20, 24, 3)" in msg and "\n" not in msg


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_crop_that_leaves_nothing_raises(metric: Callable[..., float]) -> None:
    a = _rand_rgb(8, 8, 0)
    with pytest.raises(SRDeployError, match="crop_border 4"):
        metric(a, a, crop_border=4, y_channel=True)


def test_ssim_needs_a_full_window() -> None:
    a = _rand_rgb(12, 12, 0)
    with pytest.raises(SRDeployError, match="window"):
        ssim(a, a, crop_border=1, y_channel=True)


def test_non_uint8_or_non_rgb_rejected() -> None:
    a = _rand_rgb(8, 8, 0)
    with pytest.raises(SRDeployError, match="uint8"):
        psnr(a.astype(np.float32), a.astype(np.float32), crop_border=0, y_channel=False)
    with pytest.raises(SRDeployError, match="HxWx3"):
        psnr(a[..., 0], a[..., 0], crop_border=0, y_channel=False)


# ---------------------------------------------------------------- the challenge's own numbers


def test_set5_psnr_matches_the_challenge_reference(shared: Path, team26_pth: Path) -> None:
    # End to end through this package's I/O, layout, quantization and PSNR (Y and RGB): the published
    # checkpoint loads as a plain state dict, so the only thing under test beyond the network is us.
    import torch

    from sr_deploy.archs.registry import build_model, preset

    ref = json.loads((shared / "data" / "reference_psnr.json").read_text())["results"]
    per_image = ref[f"Set5/{team26_pth.name}"]["per_image"]
    model = build_model(preset("imdn-b7")).eval()
    model.load_state_dict(torch.load(team26_pth, map_location="cpu", weights_only=True), strict=True)
    for name, expected in per_image.items():
        hr = modcrop(read_image(shared / "data" / "Set5" / "HR" / name).rgb, 4)
        lr = read_image(shared / "data" / "Set5" / "LR_bicubic_x4" / name).rgb
        with torch.no_grad():
            sr = from_model_output(model(torch.from_numpy(to_tensor_layout(lr))).numpy(), 8)
        assert psnr(sr, hr, crop_border=4, y_channel=True) == pytest.approx(expected["psnr_y"], abs=0.01), name
        assert psnr(sr, hr, crop_border=4, y_channel=False) == pytest.approx(expected["psnr_rgb"], abs=0.01), name
