from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sr_deploy.archs.imdn import IMDNSpec
from sr_deploy.archs.registry import build_model, receptive_radius
from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import read_image
from sr_deploy.upscale import plan_jobs, upscale_array, upscale_files

SPEC = IMDNSpec(blocks=1, channels=16, distilled=4, scale=2)


def _run():  # type: ignore[no-untyped-def]
    # float64: oneDNN picks float32 kernels by input shape, so float32 tiles may differ in the last bit.
    model = build_model(SPEC, seed=0).double().eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).double()).float().numpy()

    return run


def _img(h: int, w: int, seed: int, channels: int = 3, dtype: type = np.uint8) -> np.ndarray:
    hi = 256 if dtype == np.uint8 else 65536
    return np.random.default_rng(seed).integers(0, hi, (h, w, channels)).astype(dtype)


def test_plan_keeps_names_and_refuses_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "a.jpg"), _img(8, 8, 0))
    cv2.imwrite(str(src / "b.png"), _img(8, 8, 1))
    out = tmp_path / "out"
    jobs = plan_jobs([src], out, fmt="png", overwrite=False)
    assert [j.target.name for j in jobs] == ["a.png", "b.png"]
    assert [j.target.name for j in plan_jobs([src], out, fmt="same", overwrite=False)] == ["a.jpg", "b.png"]
    with pytest.raises(SRDeployError, match="overwrite an input"):
        plan_jobs([src / "b.png"], src, fmt="png", overwrite=True)
    out.mkdir()
    (out / "a.png").write_bytes(b"precious")
    with pytest.raises(SRDeployError, match="--overwrite"):
        plan_jobs([src], out, fmt="png", overwrite=False)
    assert (out / "a.png").read_bytes() == b"precious"
    with pytest.raises(SRDeployError, match="no such file"):
        plan_jobs([tmp_path / "missing.png"], out, fmt="png", overwrite=False)
    with pytest.raises(SRDeployError, match="--format"):
        plan_jobs([src], out, fmt="gif", overwrite=False)


@pytest.mark.parametrize(("h", "w", "tile"), [(37, 29, 24), (50, 41, 30), (20, 70, 32)])
def test_tiled_upscale_equals_untiled(h: int, w: int, tile: int) -> None:
    run = _run()
    rgb = _img(h, w, 3)
    r = receptive_radius(SPEC)
    whole = upscale_array(run, rgb, 8, scale=2, tile=None, overlap=0)
    tiled = upscale_array(run, rgb, 8, scale=2, tile=tile, overlap=r)
    assert tiled.shape == whole.shape == (2 * h, 2 * w, 3)
    assert int(np.abs(tiled.astype(int) - whole.astype(int)).max()) == 0


def test_too_small_overlap_shows_seams() -> None:
    """The exactness test above can fail: with no overlap the tile borders differ."""
    run = _run()
    rgb = _img(40, 40, 4)
    whole = upscale_array(run, rgb, 8, scale=2, tile=None, overlap=0)
    tiled = upscale_array(run, rgb, 8, scale=2, tile=20, overlap=0)
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() > 0


def test_alpha_and_16_bit_survive_and_failures_are_listed(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    rgba = _img(12, 10, 5, channels=4)
    cv2.imwrite(str(src / "rgba.png"), rgba)
    cv2.imwrite(str(src / "deep.png"), _img(12, 10, 6, dtype=np.uint16))
    (src / "corrupt.png").write_bytes(b"\x89PNG broken")
    jobs = plan_jobs([src], tmp_path / "out", fmt="png", overwrite=False)
    (tmp_path / "out").mkdir()
    report = upscale_files(_run(), jobs, scale=2, tile=8, overlap=receptive_radius(SPEC) // 2)
    assert sorted(Path(p).name for p in report.written) == ["deep.png", "rgba.png"]
    assert list(report.failures) == [str(src / "corrupt.png")]
    out_rgba = read_image(tmp_path / "out" / "rgba.png")
    assert out_rgba.alpha is not None and out_rgba.alpha.shape == (24, 20)
    assert out_rgba.rgb.shape == (24, 20, 3)
    deep = read_image(tmp_path / "out" / "deep.png")
    assert deep.bit_depth == 16 and deep.rgb.dtype == np.uint16
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["deep.png", "rgba.png"]
