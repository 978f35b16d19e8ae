"""Tiled upscaling: the tile plan, fixed tile shapes, and exact equality with the untiled network."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from sr_deploy.archs.imdn import IMDNSpec
from sr_deploy.archs.registry import build_model, receptive_radius
from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import quantize
from sr_deploy.imaging.tiling import plan_axis, upscale_tiled

SPEC = IMDNSpec(blocks=2, channels=16, distilled=4)
SCALE = SPEC.scale
Run = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def radius() -> int:
    return receptive_radius(SPEC)


@pytest.fixture(scope="module")
def run64() -> Run:
    """The tiny network in float64: PyTorch's CPU float64 conv is not shape-dependent, so tiles are bit-exact."""
    model = build_model(SPEC, seed=0).eval().double()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    return run


@pytest.fixture
def run32_reference_conv() -> Iterator[Run]:
    """The tiny network in float32 with oneDNN off (its kernels are picked per input shape, see the report)."""
    model = build_model(SPEC, seed=0).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    with warnings.catch_warnings():
        # Toggling oneDNN also re-sets its TF32 flag, which warns about Intel GPUs on CPU-only builds.
        warnings.simplefilter("ignore", UserWarning)
        with torch.backends.mkldnn.flags(enabled=False):
            yield run


def _lr(h: int, w: int, seed: int, dtype: type = np.float64, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, h, w)).astype(dtype)


# ---------------------------------------------------------------- the plan


@pytest.mark.parametrize("length", [1, 7, 20, 21, 22, 40, 41, 57, 100, 257])
@pytest.mark.parametrize(("tile", "overlap"), [(21, 10), (22, 5), (32, 0), (40, 11), (1, 0)])
def test_plan_partitions_with_context(length: int, tile: int, overlap: int) -> None:
    tiles = plan_axis(length, tile, overlap)
    assert tiles[0].keep_lo == 0 and tiles[-1].keep_hi == length
    for prev, cur in itertools.pairwise(tiles):
        assert prev.keep_hi == cur.keep_lo
    for t in tiles:
        assert t.start >= 0 and t.start + t.size <= length
        assert t.size == min(tile, length)
        assert t.start <= t.keep_lo < t.keep_hi <= t.start + t.size
        # Inner sides keep `overlap` pixels of real context; image borders coincide with tile borders.
        assert t.keep_lo == 0 or t.keep_lo - t.start >= overlap
        assert t.keep_hi == length or t.start + t.size - t.keep_hi >= overlap


@pytest.mark.parametrize(("tile", "overlap", "flag"), [(0, 0, "--tile"), (-4, 0, "--tile"), (20, 10, "--tile-overlap")])
def test_bad_tile_arguments_name_the_flags(tile: int, overlap: int, flag: str) -> None:
    with pytest.raises(SRDeployError, match=flag):
        upscale_tiled(lambda x: x, _lr(8, 8, 0), scale=1, tile=tile, overlap=overlap)


def test_negative_overlap_rejected() -> None:
    with pytest.raises(SRDeployError, match="--tile-overlap"):
        plan_axis(10, 4, -1)


# ---------------------------------------------------------------- the receptive radius


def test_receptive_radius_is_right_and_tight(run64: Run, radius: int) -> None:
    size, p = 2 * radius + 9, radius + 4
    lr = _lr(size, size, 1)
    base = run64(lr)
    bumped = lr.copy()
    bumped[0, :, p, p] += 0.5
    changed = np.abs(run64(bumped) - base).sum(axis=(0, 1)) > 0
    rows, cols = np.nonzero(changed)
    # LR pixel p is HR block [p*s, (p+1)*s); its influence must reach exactly `radius` LR pixels out.
    lo, hi = (p - radius) * SCALE, (p + radius + 1) * SCALE - 1
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (lo, hi, lo, hi)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize(("h", "w", "tile"), [(50, 61, 30), (37, 45, 30), (64, 64, 32), (30, 30, 30), (29, 70, 29)])
def test_tiled_equals_untiled_bit_for_bit(run64: Run, radius: int, h: int, w: int, tile: int) -> None:
    lr = _lr(h, w, h * w)
    tiled = upscale_tiled(run64, lr, scale=SCALE, tile=tile, overlap=radius)
    assert tiled.dtype == np.float64
    np.testing.assert_array_equal(tiled, run64(lr))


def test_every_tile_has_the_fixed_shape(run64: Run, radius: int) -> None:
    shapes: list[tuple[int, ...]] = []

    def recording(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return run64(x)

    upscale_tiled(recording, _lr(47, 59, 2), scale=SCALE, tile=34, overlap=radius)
    assert len(shapes) > 4
    assert set(shapes) == {(1, 3, 34, 34)}


def test_batch_of_two(run64: Run, radius: int) -> None:
    lr = _lr(40, 44, 3, n=2)
    np.testing.assert_array_equal(upscale_tiled(run64, lr, scale=SCALE, tile=32, overlap=radius), run64(lr))


def test_overlap_below_radius_is_not_exact(run64: Run, radius: int) -> None:
    # Shows the exactness tests above can fail: one pixel less context than the radius shows up.
    lr = _lr(50, 50, 4)
    tiled = upscale_tiled(run64, lr, scale=SCALE, tile=30, overlap=radius - 1)
    assert np.abs(tiled - run64(lr)).max() > 0


def test_float32_uint8_output_is_exact(run32_reference_conv: Run, radius: int) -> None:
    lr = _lr(45, 52, 5, dtype=np.float32)
    full = run32_reference_conv(lr)
    tiled = upscale_tiled(run32_reference_conv, lr, scale=SCALE, tile=28, overlap=radius)
    assert tiled.dtype == np.float32
    np.testing.assert_array_equal(tiled, full)
    as_uint8 = upscale_tiled(run32_reference_conv, lr, scale=SCALE, tile=28, overlap=radius, bit_depth=8)
    assert as_uint8.dtype == np.uint8
    np.testing.assert_array_equal(as_uint8, quantize(full, 8))


# ---------------------------------------------------------------- images smaller than a tile


def test_small_image_unpadded_is_exact(run64: Run, radius: int) -> None:
    shapes: list[tuple[int, ...]] = []

    def recording(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return run64(x)

    lr = _lr(9, 13, 6)
    out = upscale_tiled(recording, lr, scale=SCALE, tile=32, overlap=radius, pad_small=False)
    np.testing.assert_array_equal(out, run64(lr))
    assert shapes == [(1, 3, 9, 13)]


def test_small_image_padded_keeps_shape_and_differs_only_near_the_padded_border(run64: Run, radius: int) -> None:
    shapes: list[tuple[int, ...]] = []

    def recording(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        return run64(x)

    h, w, tile = 30, 70, 40  # rows smaller than a tile (padded), columns tiled normally
    lr = _lr(h, w, 7)
    out = upscale_tiled(recording, lr, scale=SCALE, tile=tile, overlap=radius, pad_small=True)
    assert out.shape == (1, 3, h * SCALE, w * SCALE)
    assert set(shapes) == {(1, 3, tile, tile)}
    full = run64(lr)
    safe = (h - radius) * SCALE  # rows farther than the radius from the padded bottom border
    np.testing.assert_array_equal(out[:, :, :safe], full[:, :, :safe])


def test_wrong_backend_output_shape_raises(radius: int) -> None:
    with pytest.raises(SRDeployError, match="backend returned shape"):
        upscale_tiled(lambda x: x, _lr(30, 30, 0), scale=SCALE, tile=25, overlap=radius)
