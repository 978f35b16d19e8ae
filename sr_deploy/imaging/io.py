"""Reading and writing images with OpenCV: RGB order, 8/16-bit kept, alpha separate, EXIF orientation applied.

Everything the rest of the package sees is RGB (OpenCV's BGR stays inside this module), HxWx3, uint8
or uint16. Alpha is carried beside the colour so the network only ever sees three channels.
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# OpenCV's own log lines ("[ WARN:0@0.007] global grfmt_png.cpp ...") would land on stderr before our one-line
# error; the user's setting wins where there is one.
os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")

import cv2
import numpy as np
import numpy.typing as npt

from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import atomic_path, read_error

if os.environ["OPENCV_LOG_LEVEL"].upper() == "OFF":
    # cv2 may have been imported before this module set the variable; older builds lack the call.
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
from sr_deploy.imaging.resize import imresize, modcrop

#: File extensions `list_images` picks up and `write_image` accepts (lower case, with the dot).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Formats that can store 16-bit samples through OpenCV.
_SIXTEEN_BIT_EXTENSIONS = (".png", ".tif", ".tiff")
#: Formats that can store an alpha channel through OpenCV.
_ALPHA_EXTENSIONS = (".png", ".webp", ".tif", ".tiff")

_MAX_VALUE = {8: 255, 16: 65535}
_DTYPE = {8: np.uint8, 16: np.uint16}


@dataclass
class Image:
    """A decoded image: colour (RGB) and optional alpha, both HxW[x3] in the file's bit depth."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    path: Path

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "height": self.height,
            "width": self.width,
            "bit_depth": self.bit_depth,
            "alpha": self.alpha is not None,
        }


def _bit_depth_of(arr: np.ndarray, path: Path) -> int:
    if arr.dtype == np.uint8:
        return 8
    if arr.dtype == np.uint16:
        return 16
    raise SRDeployError(f"{path}: unsupported pixel type {arr.dtype}; expected 8- or 16-bit integer samples")


def _to_three_channels(arr: np.ndarray) -> np.ndarray:
    """BGR(A)/gray(+alpha) as decoded by OpenCV -> 3-channel BGR with alpha dropped."""
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] in (1, 2):
        return np.repeat(arr[:, :, :1], 3, axis=2)
    return arr[:, :, :3]


#: The eight EXIF orientations as array transforms, index = orientation - 1 (1 = as stored).
_DIHEDRAL: tuple[Callable[[np.ndarray], np.ndarray], ...] = (
    lambda a: a,
    lambda a: a[:, ::-1],
    lambda a: a[::-1, ::-1],
    lambda a: a[::-1, :],
    lambda a: np.swapaxes(a, 0, 1),
    lambda a: np.rot90(a, -1),
    lambda a: np.rot90(a, 2).swapaxes(0, 1),
    lambda a: np.rot90(a, 1),
)

_TIFF_HEADERS = ((b"II*\x00", "<"), (b"MM\x00*", ">"))


def _exif_orientation(data: bytes) -> int | None:
    """The EXIF Orientation (tag 0x0112 of IFD0) of the first TIFF/EXIF block found in `data`, if any.

    Container-agnostic on purpose: JPEG APP1, PNG eXIf, WebP EXIF and TIFF files all embed the same
    TIFF structure, so finding its header is enough. Only used to break ties (see `_orient_like`).
    """
    for magic, endian in _TIFF_HEADERS:
        pos = data.find(magic)
        while pos != -1:
            found = _orientation_at(data, pos, endian)
            if found is not None:
                return found
            pos = data.find(magic, pos + 1)
    return None


def _orientation_at(data: bytes, base: int, endian: str) -> int | None:
    try:
        (ifd,) = struct.unpack_from(endian + "I", data, base + 4)
        (count,) = struct.unpack_from(endian + "H", data, base + ifd)
        for i in range(min(count, 1000)):
            tag, typ, _, value = struct.unpack_from(endian + "HHIH", data, base + ifd + 2 + 12 * i)
            if tag == 0x0112 and typ == 3 and 1 <= value <= 8:
                return int(value)
    except struct.error:
        return None
    return None


def _orient_like(
    raw_colour: np.ndarray, oriented: np.ndarray, alpha: np.ndarray, data: bytes, path: Path
) -> np.ndarray:
    """Apply to `alpha` the EXIF transform OpenCV applied to the colour.

    OpenCV honours EXIF orientation only when it converts the colour (not with IMREAD_UNCHANGED, the
    only mode that keeps alpha) and does not report what it did. The transforms that map the stored
    colour onto OpenCV's oriented colour are exactly what it may have done, so alpha is bound to stay
    aligned with the colour. Flat or symmetric colour (a one-colour logo whose shape is all in alpha)
    matches several transforms; then the file's own EXIF orientation picks among them.
    """
    matches = [
        i
        for i, transform in enumerate(_DIHEDRAL)
        if (c := transform(raw_colour)).shape == oriented.shape and np.array_equal(c, oriented)
    ]
    if not matches:
        raise SRDeployError(f"{path}: could not match the alpha channel to the EXIF-oriented colour image")
    results = [_DIHEDRAL[i](alpha) for i in matches]
    if any(not np.array_equal(r, results[0]) for r in results[1:]):
        tagged = _exif_orientation(data)
        choice = tagged - 1 if tagged is not None and tagged - 1 in matches else matches[0]
        return np.ascontiguousarray(_DIHEDRAL[choice](alpha))
    return np.ascontiguousarray(results[0])


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Catch what C libraries write straight to file descriptor 2 (libpng's "libpng warning: iCCP: ..." and
    "libpng error: ..." bypass OpenCV's log level) and yield it as lines once the block ends, so a decode failure
    is our one line naming the file, with the library's reason inside it, and a harmless warning is not printed."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedded interpreter): nothing to catch
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += [x.strip() for x in sink.read().decode("utf-8", "replace").splitlines() if x.strip()]


def read_image(path: str | Path) -> Image:
    """Decode an image file (PNG, JPEG, BMP, WebP, TIFF) to RGB uint8/uint16 plus optional alpha.

    Gray images become three equal channels; EXIF orientation is applied to colour and alpha alike.
    """
    p = Path(path)
    if not p.is_file():
        raise SRDeployError(f"{p}: no such image file")
    # Read the bytes ourselves: cv2.imread fails silently on some non-ASCII paths, imdecode does not care.
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise read_error(e, p) from None
    if not data.size:
        raise SRDeployError(f"{p}: cannot decode image (the file is empty)")
    with _stderr_captured() as said:
        try:
            # UNCHANGED keeps 16-bit and alpha but ignores EXIF orientation; COLOR|ANYDEPTH honours it.
            raw = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
            oriented = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if raw is not None else None
        except cv2.error as e:
            raw = oriented = None
            said.append(str(e).strip().splitlines()[-1])
    if raw is None or oriented is None:
        why = said[-1] if said else "not a supported or valid image file"
        raise SRDeployError(f"{p}: cannot decode image ({why})")
    bit_depth = _bit_depth_of(oriented, p)
    alpha: np.ndarray | None = None
    if raw.ndim == 3 and raw.shape[2] in (2, 4):
        raw_alpha = raw[:, :, -1].astype(oriented.dtype, copy=False)
        colour = _to_three_channels(raw).astype(oriented.dtype)
        alpha = _orient_like(colour, oriented, raw_alpha, data.tobytes(), p)
    rgb = np.ascontiguousarray(cv2.cvtColor(oriented, cv2.COLOR_BGR2RGB))
    return Image(rgb=rgb, alpha=alpha, bit_depth=bit_depth, path=p)


def write_image(path: str | Path, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    """Encode RGB (+ optional alpha) to `path` atomically; the extension picks the format.

    uint8 or uint16 (PNG and TIFF only); alpha must match the colour's height, width and dtype, and
    needs PNG, WebP or TIFF. Returns the path written.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise SRDeployError(f"{p}: unsupported output extension {ext!r}; expected one of {IMAGE_EXTENSIONS}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SRDeployError(f"{p}: expected an HxWx3 RGB image to write, got shape {rgb.shape}")
    bit_depth = _bit_depth_of(rgb, p)
    if bit_depth == 16 and ext not in _SIXTEEN_BIT_EXTENSIONS:
        raise SRDeployError(f"{p}: {ext} cannot store 16-bit images; use .png or .tif")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if alpha is not None:
        if alpha.shape != rgb.shape[:2] or alpha.dtype != rgb.dtype:
            raise SRDeployError(
                f"{p}: alpha of shape {alpha.shape} ({alpha.dtype}) does not match the colour image"
                f" {rgb.shape} ({rgb.dtype})"
            )
        if ext not in _ALPHA_EXTENSIONS:
            raise SRDeployError(f"{p}: {ext} cannot store an alpha channel; use .png, .webp or .tif")
        bgr = np.dstack([bgr, alpha])
    # Encode in memory so the format follows the real extension while the atomic temp file keeps its own name.
    try:
        ok, buf = cv2.imencode(ext, bgr)
    except cv2.error as e:
        raise SRDeployError(f"{p}: cannot encode image ({str(e).strip().splitlines()[-1]})") from None
    if not ok:
        raise SRDeployError(f"{p}: OpenCV could not encode a {rgb.shape} {rgb.dtype} image as {ext}")
    with atomic_path(p, "image") as tmp:
        tmp.write_bytes(buf.tobytes())
    return p


def to_tensor_layout(rgb: np.ndarray) -> npt.NDArray[np.float32]:
    """HxWx3 uint8/uint16 RGB -> 1x3xHxW float32 in [0, 1] (divided by 255 or 65535)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SRDeployError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    if rgb.dtype not in (np.uint8, np.uint16):
        raise SRDeployError(f"expected uint8 or uint16 pixels, got dtype {rgb.dtype}")
    scale = np.float32(_MAX_VALUE[8 if rgb.dtype == np.uint8 else 16])
    chw = np.transpose(rgb, (2, 0, 1))[None].astype(np.float32)
    out: npt.NDArray[np.float32] = np.ascontiguousarray(chw / scale)
    return out


def quantize(x: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float in [0, 1] (any shape) -> uint8/uint16: clamp, times 255 or 65535, round half to even.

    The challenge's convention (``clamp(0, 1)``, ``* 255``, ``.round()``), computed in float32 like
    the challenge so results match it bit for bit.
    """
    if bit_depth not in _MAX_VALUE:
        raise SRDeployError(f"bit depth must be 8 or 16, got {bit_depth}")
    f = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) * np.float32(_MAX_VALUE[bit_depth])
    out: np.ndarray = np.round(f).astype(_DTYPE[bit_depth])
    return out


def from_model_output(nchw: np.ndarray, bit_depth: int) -> np.ndarray:
    """A 1x3xHxW (or 3xHxW) float model output -> HxWx3 RGB uint8/uint16 (see `quantize`)."""
    arr = np.asarray(nchw)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise SRDeployError(f"expected a batch of one image, got shape {arr.shape}")
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise SRDeployError(f"expected a 1x3xHxW model output, got shape {np.asarray(nchw).shape}")
    return np.ascontiguousarray(np.transpose(quantize(arr, bit_depth), (1, 2, 0)))


def to_uint8(rgb: np.ndarray) -> npt.NDArray[np.uint8]:
    """uint8 stays; uint16 is rounded to 8 bits (the PSNR protocol and training work on uint8 pixels)."""
    if rgb.dtype == np.uint8:
        return np.asarray(rgb, dtype=np.uint8)
    out: npt.NDArray[np.uint8] = np.round(rgb.astype(np.float64) / 257.0).astype(np.uint8)
    return out


def make_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB bicubic x1/scale of the modcropped uint8 HR in float, rounded to uint8: how DIV2K's LR were made.

    Rounded through float32 (`quantize`), which reproduces ../shared's LR_bicubic_x4 files bit for bit
    where float64 rounding differs at a few exact-half pixels.
    """
    lr = imresize(modcrop(hr, scale).astype(np.float64) / 255.0, scale=1.0 / scale)
    return quantize(lr, 8)


def upscale_alpha(alpha: np.ndarray, scale: int) -> np.ndarray:
    """Upscale an HxW uint8/uint16 alpha channel by `scale` with the MATLAB bicubic, same dtype out."""
    if alpha.ndim != 2:
        raise SRDeployError(f"expected an HxW alpha channel, got shape {alpha.shape}")
    if alpha.dtype not in (np.uint8, np.uint16):
        raise SRDeployError(f"expected uint8 or uint16 alpha, got dtype {alpha.dtype}")
    bit_depth = 8 if alpha.dtype == np.uint8 else 16
    unit = alpha.astype(np.float64) / _MAX_VALUE[bit_depth]
    up = imresize(unit, output_shape=(alpha.shape[0] * scale, alpha.shape[1] * scale))
    # float64 here (no model in the loop), so round in float64 rather than via the float32 `quantize`.
    out: np.ndarray = np.round(np.clip(up, 0.0, 1.0) * _MAX_VALUE[bit_depth]).astype(alpha.dtype)
    return out


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (by extension, case-insensitive), sorted by name."""
    d = Path(folder)
    if not d.exists():
        raise SRDeployError(f"{d}: no such folder")
    if not d.is_dir():
        raise SRDeployError(f"{d}: is a file, expected a folder of images")
    try:
        entries = sorted(d.iterdir())
    except OSError as e:
        raise read_error(e, d) from None
    images = [e for e in entries if e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        found = ", ".join(e.name for e in entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise SRDeployError(
            f"{d}: no images ({', '.join(IMAGE_EXTENSIONS)}) found; it contains {len(entries)} entries"
            + (f": {found}" if entries else "")
        )
    return images
