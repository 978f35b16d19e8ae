"""MATLAB-compatible bicubic ``imresize`` (antialiased when downscaling) and ``modcrop``.

This is the resize that made the DIV2K / Set5 / Set14 ``LR_bicubic`` images, so training pairs and
evaluation inputs made here match the published ones. It follows MATLAB's ``imresize.m``: Keys cubic
kernel (a = -0.5), kernel widened by 1/scale when shrinking, symmetric (mirrored) edge indices,
dimensions processed in order of increasing scale factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sr_deploy.errors import SRDeployError

#: Support of the bicubic kernel in input pixels at scale 1.
_KERNEL_WIDTH = 4.0


@dataclass(frozen=True)
class AxisWeights:
    """Per-output-pixel taps along one axis: ``out[i] = sum_p weights[i, p] * in[indices[i, p]]``."""

    weights: npt.NDArray[np.float64]  # (out_len, taps)
    indices: npt.NDArray[np.intp]  # (out_len, taps), already mirrored into [0, in_len)


def _cubic(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    absx = np.abs(x)
    absx2 = absx**2
    absx3 = absx**3
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    out: npt.NDArray[np.float64] = near + far
    return out


def axis_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> AxisWeights:
    """MATLAB ``contributions()``: the taps that map `in_len` samples to `out_len` at `scale`."""
    shrink = antialias and scale < 1
    # Shrinking widens the kernel so it low-passes at the output's Nyquist rate (MATLAB's antialiasing).
    width = _KERNEL_WIDTH / scale if shrink else _KERNEL_WIDTH
    x = np.arange(1, out_len + 1, dtype=np.float64)
    # Output pixel centre x maps to input coordinate u (1-based), aligning pixel edges, not centres.
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - idx
    weights = scale * _cubic(scale * dist) if shrink else _cubic(dist)
    weights = weights / weights.sum(axis=1, keepdims=True)
    # Symmetric padding: index 0 mirrors to 1, -1 to 2, in_len+1 to in_len (MATLAB's aux vector).
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    mirrored = aux[np.mod(idx.astype(np.intp) - 1, 2 * in_len)]
    # Drop tap columns that are zero for every output pixel, as MATLAB does (saves work, same result).
    keep = np.any(weights != 0, axis=0)
    return AxisWeights(weights=weights[:, keep], indices=mirrored[:, keep])


def _resize_axis(img: npt.NDArray[np.float64], axis: int, aw: AxisWeights) -> npt.NDArray[np.float64]:
    # Resized axis first and contiguous, so each tap is a gather of whole rows.
    moved = np.ascontiguousarray(np.moveaxis(img, axis, 0))
    flat = moved.reshape(moved.shape[0], -1)
    out = np.zeros((aw.weights.shape[0], flat.shape[1]), dtype=np.float64)
    tmp = np.empty_like(out)
    # One gather + multiply-add per tap (in MATLAB's order) keeps memory at two output-sized buffers;
    # gathering every tap at once would take taps times the output.
    for p in range(aw.weights.shape[1]):
        np.take(flat, aw.indices[:, p], axis=0, out=tmp)
        tmp *= aw.weights[:, p][:, None]
        out += tmp
    return np.moveaxis(out.reshape(aw.weights.shape[0], *moved.shape[1:]), 0, axis)


def output_size(in_shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size for a scale factor: ``ceil(scale * size)`` per axis."""
    return (math.ceil(scale * in_shape[0]), math.ceil(scale * in_shape[1]))


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    output_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Bicubic resize of an HxW or HxWxC image exactly as MATLAB's ``imresize(img, scale, 'bicubic')``.

    Give exactly one of `scale` (output size ``ceil(scale * size)``, kernel placed by `scale` itself)
    or `output_shape` ``(height, width)`` (per-axis scale = out / in). Float input is computed and
    returned as float64. uint8 input is computed in float64 and rounded back to uint8 with clipping
    once at the end. MATLAB's own integer path is believed to round after each axis pass, so uint8
    results may differ from it by one level; the published LR images were made from ``img / 255`` in
    float, which is the path to use for MATLAB-exact LR images.
    """
    if (scale is None) == (output_shape is None):
        raise SRDeployError("imresize: give exactly one of scale or output_shape")
    if img.ndim not in (2, 3) or img.shape[0] < 1 or img.shape[1] < 1:
        raise SRDeployError(f"imresize: expected an HxW or HxWxC image, got shape {img.shape}")
    in_hw = (int(img.shape[0]), int(img.shape[1]))
    if scale is not None:
        if not scale > 0:
            raise SRDeployError(f"imresize: scale must be > 0, got {scale}")
        out_hw = output_size(in_hw, scale)
        scales = (float(scale), float(scale))
    else:
        assert output_shape is not None
        out_hw = (int(output_shape[0]), int(output_shape[1]))
        if min(out_hw) < 1:
            raise SRDeployError(f"imresize: output_shape must be positive, got {output_shape}")
        scales = (out_hw[0] / in_hw[0], out_hw[1] / in_hw[1])

    is_uint8 = img.dtype == np.uint8
    if not (is_uint8 or np.issubdtype(img.dtype, np.floating)):
        raise SRDeployError(f"imresize: expected a uint8 or float image, got dtype {img.dtype}")
    out = img.astype(np.float64, copy=False)
    # MATLAB resizes the axis with the smaller scale first (stable: rows first on a tie), which does
    # the least work when shrinking; the order also matters for rounding, so keep MATLAB's.
    for axis in sorted((0, 1), key=lambda a: scales[a]):
        if out_hw[axis] == in_hw[axis] and scales[axis] == 1.0:
            continue
        out = _resize_axis(out, axis, axis_weights(in_hw[axis], out_hw[axis], scales[axis]))
    if is_uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom/right so height and width are multiples of `scale` (how HR test images are cut)."""
    if scale < 1:
        raise SRDeployError(f"modcrop: scale must be >= 1, got {scale}")
    h, w = img.shape[0], img.shape[1]
    h2, w2 = h - h % scale, w - w % scale
    if h2 == 0 or w2 == 0:
        raise SRDeployError(f"modcrop: image of shape {img.shape} is smaller than scale {scale}")
    return img[:h2, :w2, ...]
