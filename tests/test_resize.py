"""MATLAB bicubic imresize: reference vectors, the published LR images, and the properties behind them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.resize import axis_weights, imresize, modcrop

CASES = range(7)


def _vectors(shared: Path) -> np.lib.npyio.NpzFile:
    p = shared / "vectors" / "matlab_bicubic.npz"
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    return np.load(p)


@pytest.mark.parametrize("case", CASES)
def test_matches_matlab_vectors(shared: Path, case: int) -> None:
    v = _vectors(shared)
    key = f"case{case}"
    if f"{key}_input" not in v.files:
        pytest.skip(f"{key} not in the vector file")
    out = imresize(v[f"{key}_input"], float(v[f"{key}_scale"]))
    ref = v[f"{key}_output"]
    assert out.dtype == np.float64
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-6


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_reproduces_published_lr_images(shared: Path, dataset: str) -> None:
    hr_dir = shared / "data" / dataset / "HR"
    if not hr_dir.is_dir():
        pytest.skip(f"{hr_dir} is absent")
    total = identical = 0
    for hr_path in sorted(hr_dir.glob("*.png")):
        hr = modcrop(_read_rgb(hr_path), 4)
        lr_ref = _read_rgb(shared / "data" / dataset / "LR_bicubic_x4" / hr_path.name)
        lr = np.clip(np.round(imresize(hr / 255.0, 0.25) * 255), 0, 255).astype(np.uint8)
        assert lr.shape == lr_ref.shape
        diff = np.abs(lr.astype(np.int16) - lr_ref)
        assert diff.max() <= 1, hr_path.name
        total += diff.size
        identical += int((diff == 0).sum())
    assert total > 0
    assert identical / total >= 0.999


def test_weights_sum_to_one_and_indices_mirror() -> None:
    aw = axis_weights(in_len=7, out_len=2, scale=0.25)
    np.testing.assert_allclose(aw.weights.sum(axis=1), 1.0, atol=1e-12)
    assert aw.indices.min() >= 0 and aw.indices.max() < 7
    # Upscaling x2, output pixel 0's first non-zero taps sit at 1-based input positions -1 and 0, off the
    # image: MATLAB's symmetric padding mirrors them to 0-based 1 and 0 (edge repeated), not clamps to 0.
    up = axis_weights(in_len=5, out_len=10, scale=2.0)
    assert up.indices[0].tolist()[:2] == [1, 0]


def test_constant_image_stays_constant() -> None:
    img = np.full((13, 17, 3), 0.37)
    for scale in (0.25, 1 / 3, 2.0, 4.0):
        np.testing.assert_allclose(imresize(img, scale), 0.37, atol=1e-12)


def test_scale_one_is_identity() -> None:
    img = np.random.default_rng(0).random((9, 11, 3))
    np.testing.assert_array_equal(imresize(img, 1.0), img)


def test_linear_ramp_is_reproduced_away_from_borders_on_upscale() -> None:
    # Cubic convolution reproduces linear functions exactly; only the mirrored border breaks it.
    ramp = np.tile(np.arange(20, dtype=np.float64), (6, 1))
    up = imresize(ramp, output_shape=(6, 40))
    x = (np.arange(40) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[:, 4:-4], np.tile(x, (6, 1))[:, 4:-4], atol=1e-12)


def test_gray_and_color_agree_per_channel() -> None:
    img = np.random.default_rng(1).random((12, 15, 3))
    both = imresize(img, 0.5)
    for c in range(3):
        np.testing.assert_array_equal(imresize(img[:, :, c], 0.5), both[:, :, c])


def test_output_shape_and_scale_agree_for_integer_factors() -> None:
    img = np.random.default_rng(2).random((16, 24, 3))
    np.testing.assert_allclose(imresize(img, 0.25), imresize(img, output_shape=(4, 6)), atol=1e-12)
    assert imresize(img, output_shape=(5, 7)).shape == (5, 7, 3)


def test_uint8_input_rounds_float_result() -> None:
    img = (np.random.default_rng(3).random((16, 16, 3)) * 255).astype(np.uint8)
    out = imresize(img, 0.5)
    assert out.dtype == np.uint8
    expected = np.clip(np.round(imresize(img.astype(np.float64), 0.5)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_uint8_overshoot_is_clipped() -> None:
    # A hard edge makes bicubic overshoot below 0 and above 255; uint8 must clip, not wrap.
    img = np.zeros((8, 8), dtype=np.uint8)
    img[:, 4:] = 255
    up = imresize(img, 4.0)
    assert imresize(img.astype(np.float64), 4.0).max() > 255
    assert up.max() == 255 and up.min() == 0


def test_bad_arguments_raise() -> None:
    img = np.zeros((4, 4))
    with pytest.raises(SRDeployError):
        imresize(img)
    with pytest.raises(SRDeployError):
        imresize(img, 0.5, output_shape=(2, 2))
    with pytest.raises(SRDeployError):
        imresize(img, -1.0)
    with pytest.raises(SRDeployError):
        imresize(np.zeros(4), 0.5)


def test_modcrop() -> None:
    img = np.zeros((10, 13, 3))
    assert modcrop(img, 4).shape == (8, 12, 3)
    assert modcrop(img[:, :, 0], 4).shape == (8, 12)
    with pytest.raises(SRDeployError):
        modcrop(np.zeros((3, 3)), 4)
