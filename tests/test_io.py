"""Image I/O: formats, bit depth, gray, alpha, EXIF orientation, atomic writes, tensor layout."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import (
    from_model_output,
    list_images,
    quantize,
    read_image,
    to_tensor_layout,
    upscale_alpha,
    write_image,
)


def _rgb(h: int, w: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.random.default_rng(seed).integers(0, top + 1, size=(h, w, 3)).astype(dtype)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff", ".webp"])
def test_lossless_round_trip_8bit(tmp_path: Path, ext: str) -> None:
    rgb = _rgb(13, 17)
    p = write_image(tmp_path / f"img{ext}", rgb)
    img = read_image(p)
    assert img.bit_depth == 8 and img.alpha is None and img.path == p
    np.testing.assert_array_equal(img.rgb, rgb)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_keeps_precision(tmp_path: Path, ext: str) -> None:
    rgb = _rgb(9, 11, np.uint16)
    img = read_image(write_image(tmp_path / f"img{ext}", rgb))
    assert img.bit_depth == 16 and img.rgb.dtype == np.uint16
    np.testing.assert_array_equal(img.rgb, rgb)


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = 40
    img = read_image(write_image(tmp_path / "img.JPG", rgb))
    assert img.rgb.shape == rgb.shape
    assert np.abs(img.rgb.astype(int) - rgb).max() <= 3


def test_channel_order_on_disk_is_standard(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    write_image(tmp_path / "red.png", rgb)
    bgr = cv2.imread(str(tmp_path / "red.png"), cv2.IMREAD_UNCHANGED)
    assert bgr[0, 0].tolist() == [0, 0, 255]


def test_gray_becomes_three_channels(tmp_path: Path) -> None:
    for dtype in (np.uint8, np.uint16):
        gray = _rgb(7, 5, dtype)[..., 0]
        p = tmp_path / f"gray{np.dtype(dtype).itemsize}.png"
        assert cv2.imwrite(str(p), gray)
        img = read_image(p)
        assert img.rgb.shape == (7, 5, 3) and img.rgb.dtype == dtype
        for c in range(3):
            np.testing.assert_array_equal(img.rgb[..., c], gray)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_kept_separately(tmp_path: Path, dtype: type) -> None:
    rgb = _rgb(6, 8, dtype, seed=1)
    alpha = _rgb(6, 8, dtype, seed=2)[..., 0]
    img = read_image(write_image(tmp_path / "rgba.png", rgb, alpha))
    assert img.alpha is not None and img.alpha.dtype == dtype
    np.testing.assert_array_equal(img.rgb, rgb)
    np.testing.assert_array_equal(img.alpha, alpha)


# ---------------------------------------------------------------- EXIF orientation


def _exif_tiff(orientation: int) -> bytes:
    """A minimal little-endian EXIF/TIFF block with one IFD entry: Orientation (0x0112, SHORT)."""
    entry = struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + entry + struct.pack("<I", 0)


def _jpeg_with_orientation(bgr: np.ndarray, orientation: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    payload = b"Exif\x00\x00" + _exif_tiff(orientation)
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    data = buf.tobytes()
    return data[:2] + app1 + data[2:]  # APP1 right after SOI


def _png_with_orientation(bgra: np.ndarray, orientation: int) -> bytes:
    ok, buf = cv2.imencode(".png", bgra)
    assert ok
    body = _exif_tiff(orientation)
    crc = zlib.crc32(b"eXIf" + body) & 0xFFFFFFFF
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", crc)
    data = buf.tobytes()
    return data[:33] + chunk + data[33:]  # after the 8-byte signature and the 25-byte IHDR chunk


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    # A white block top-left on black; orientation 6 means "rotate 90 degrees clockwise to display",
    # which puts the block top-right of a portrait image.
    bgr = np.zeros((40, 80, 3), dtype=np.uint8)
    bgr[:16, :16] = 255
    p = tmp_path / "rot.jpg"
    p.write_bytes(_jpeg_with_orientation(bgr, 6))
    img = read_image(p)
    assert img.rgb.shape == (80, 40, 3)
    assert img.rgb[:16, -16:].mean() > 200
    assert img.rgb[-16:, :16].mean() < 50 and img.rgb[:16, :16].mean() < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_alpha_follows_orientation_of_colour(tmp_path: Path, orientation: int) -> None:
    # Alpha equal to the red channel stays equal to it only if both got the same transform.
    rng = np.random.default_rng(orientation)
    bgra = rng.integers(0, 256, size=(10, 14, 4), dtype=np.uint8)
    bgra[..., 3] = bgra[..., 2]
    p = tmp_path / "rot.png"
    p.write_bytes(_png_with_orientation(bgra, orientation))
    img = read_image(p)
    assert img.alpha is not None
    # OpenCV's own oriented decode decides whether this OpenCV honours PNG eXIf; we must agree with it.
    assert img.rgb.shape == cv2.imread(str(p), cv2.IMREAD_COLOR).shape
    np.testing.assert_array_equal(img.alpha, img.rgb[..., 0])


@pytest.mark.parametrize("orientation", [2, 3, 6, 7])
def test_alpha_of_flat_colour_image_uses_the_exif_tag(tmp_path: Path, orientation: int) -> None:
    # One flat colour on a square canvas: every transform maps the colour onto itself, so only the
    # EXIF tag can say how to turn the alpha. Compare with the same transform applied to a colour
    # image that has content (which OpenCV orients itself).
    alpha = np.random.default_rng(0).integers(0, 256, size=(12, 12), dtype=np.uint8)
    flat = np.dstack([np.full((12, 12, 3), 90, dtype=np.uint8), alpha])
    probe = np.dstack([cv2.cvtColor(alpha, cv2.COLOR_GRAY2BGR), alpha])
    (tmp_path / "flat.png").write_bytes(_png_with_orientation(flat, orientation))
    (tmp_path / "probe.png").write_bytes(_png_with_orientation(probe, orientation))
    probe_img = read_image(tmp_path / "probe.png")
    flat_img = read_image(tmp_path / "flat.png")
    assert flat_img.alpha is not None
    np.testing.assert_array_equal(flat_img.alpha, probe_img.rgb[..., 0])


# ---------------------------------------------------------------- errors


def test_missing_and_undecodable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SRDeployError, match=re.escape("nothere.png")):
        read_image(tmp_path / "nothere.png")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(SRDeployError, match=re.escape("broken.png")):
        read_image(bad)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(SRDeployError, match=re.escape("empty.jpg")):
        read_image(empty)


def test_write_rejects_what_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(SRDeployError, match="16-bit"):
        write_image(tmp_path / "a.jpg", _rgb(4, 4, np.uint16))
    with pytest.raises(SRDeployError, match="alpha"):
        write_image(tmp_path / "a.jpg", _rgb(4, 4), _rgb(4, 4)[..., 0])
    with pytest.raises(SRDeployError, match="alpha"):
        write_image(tmp_path / "a.png", _rgb(4, 4), _rgb(4, 5)[..., 0])
    with pytest.raises(SRDeployError, match=r"\.gif"):
        write_image(tmp_path / "a.gif", _rgb(4, 4))
    with pytest.raises(SRDeployError, match="does not exist"):
        write_image(tmp_path / "no" / "a.png", _rgb(4, 4))
    with pytest.raises(SRDeployError, match="float32"):
        write_image(tmp_path / "a.png", _rgb(4, 4).astype(np.float32))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    write_image(target, _rgb(4, 4, seed=1))
    before = target.read_bytes()
    with pytest.raises(SRDeployError):
        write_image(target, _rgb(4, 4, np.uint16).astype(np.float32))
    assert target.read_bytes() == before
    write_image(target, _rgb(4, 4, seed=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
    np.testing.assert_array_equal(read_image(target).rgb, _rgb(4, 4, seed=2))


# ---------------------------------------------------------------- tensor layout


@pytest.mark.parametrize(("dtype", "bits"), [(np.uint8, 8), (np.uint16, 16)])
def test_tensor_layout_round_trip(dtype: type, bits: int) -> None:
    rgb = _rgb(5, 7, dtype)
    t = to_tensor_layout(rgb)
    assert t.shape == (1, 3, 5, 7) and t.dtype == np.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    np.testing.assert_array_equal(t[0, 1], rgb[..., 1].astype(np.float32) / np.float32(2**bits - 1))
    back = from_model_output(t, bits)
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, rgb)


def test_model_output_is_clamped_and_rounded_like_the_challenge() -> None:
    out = np.array([-0.3, 0.0, 0.2, 1.0, 1.7], dtype=np.float32).reshape(1, 1, 1, 5).repeat(3, axis=1)
    img = from_model_output(out, 8)
    assert img.shape == (1, 5, 3)
    expected = np.round(np.clip(out, 0, 1) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(img[0, :, 0], expected[0, 0, 0])
    assert img[0, :, 0].tolist()[0] == 0 and img[0, :, 0].tolist()[-1] == 255
    np.testing.assert_array_equal(quantize(out, 8), expected)


def test_model_output_shape_checked() -> None:
    with pytest.raises(SRDeployError):
        from_model_output(np.zeros((2, 3, 4, 4), dtype=np.float32), 8)
    with pytest.raises(SRDeployError):
        from_model_output(np.zeros((1, 4, 4, 4), dtype=np.float32), 8)
    with pytest.raises(SRDeployError):
        from_model_output(np.zeros((1, 3, 4, 4), dtype=np.float32), 12)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_upscale_alpha(dtype: type) -> None:
    top = np.iinfo(dtype).max
    flat = np.full((5, 6), top // 3, dtype=dtype)
    up = upscale_alpha(flat, 4)
    assert up.shape == (20, 24) and up.dtype == dtype
    np.testing.assert_array_equal(up, flat[0, 0])
    edge = np.zeros((6, 6), dtype=dtype)
    edge[:, 3:] = top
    up = upscale_alpha(edge, 2)
    assert up.min() == 0 and up.max() == top  # overshoot clipped, not wrapped


# ---------------------------------------------------------------- listing


def test_list_images_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.webp", "notes.txt", "d.tiff"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp", "d.tiff"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(SRDeployError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "readme.txt").write_bytes(b"x")
    with pytest.raises(SRDeployError, match=r"readme\.txt"):
        list_images(tmp_path)
    with pytest.raises(SRDeployError, match="expected a folder"):
        list_images(tmp_path / "readme.txt")
