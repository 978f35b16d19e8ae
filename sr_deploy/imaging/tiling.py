"""Tiled upscaling: bounded memory and one fixed input shape, with results equal to the untiled run.

Why the result is exact. A convolutional SR network's output pixel depends only on LR pixels within
its receptive radius r (``Architecture.receptive_radius``), *and* on where the zero padding of
every conv layer sits. Inside a tile, a kept output pixel is therefore right when

* towards a neighbouring tile, at least r real LR pixels of context lie between it and the tile's
  edge (``overlap >= r``): then the per-layer zero padding at that edge never reaches it; and
* towards the image border, the tile's edge *is* the image border: the per-layer zero padding then
  falls exactly where the untiled run puts it.

The second condition is why edge tiles are not padded past the image: padding the input there, with
zeros, reflection or anything else, gives the first conv real outputs where the untiled run's second
conv sees zeros, and the outputs next to the border change. Instead the last tile along an axis is
shifted back so it ends at the border (it overlaps its neighbour more; the extra is discarded), so
every tile has the full ``tile x tile`` shape whenever the image is at least that large.

Only an image *smaller* than the tile along an axis needs padding to keep a fixed shape
(``pad_small=True``, replicate padding on the bottom/right). Output pixels within ``r * scale`` of that
padded border may then differ from an untiled run; the rest is exact. ``pad_small=False`` runs such an
image at its own size instead (exact, but the backend sees a new shape).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sr_deploy.archs.spec import TilingPolicy
from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import quantize


@dataclass(frozen=True)
class AxisTile:
    """One tile along one axis, in LR pixels: input ``[start, start + size)``, kept ``[keep_lo, keep_hi)``."""

    start: int
    size: int
    keep_lo: int
    keep_hi: int

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "size": self.size, "keep_lo": self.keep_lo, "keep_hi": self.keep_hi}


def check_tiling_policy(name: str, policy: TilingPolicy, min_size: int, tile: int, accept_inexact: bool) -> str:
    """Refuse tiling that the architecture's policy cannot honour; return the note to print for inexact tiling."""
    if tile < min_size:
        raise SRDeployError(f"--tile {tile}: {name} needs inputs of at least {min_size}x{min_size} LR pixels")
    if policy.exact:
        return ""
    if not accept_inexact:
        raise SRDeployError(
            f"--tile {tile}: {name} cannot be tiled exactly ({policy.reason}); "
            "pass --inexact-tiles to accept output that differs from the whole image, or use --tile 0"
        )
    measured = f"; measured: {policy.measured}" if policy.measured else ""
    return f"note: {name} is tiled inexactly, its output differs from the whole image's ({policy.reason}){measured}"


def check_tile_args(tile: int, overlap: int) -> None:
    """Raise the user-facing error for a tile size / overlap pair that cannot tile anything."""
    if tile <= 0:
        raise SRDeployError(f"--tile must be > 0, got {tile}")
    if overlap < 0:
        raise SRDeployError(f"--tile-overlap must be >= 0, got {overlap}")
    if tile < 2 * overlap + 1:
        raise SRDeployError(
            f"--tile {tile} is too small for --tile-overlap {overlap}: need tile >= 2 * overlap + 1 = {2 * overlap + 1}"
        )


def plan_axis(length: int, tile: int, overlap: int) -> list[AxisTile]:
    """Tiles covering ``[0, length)``: kept ranges partition it, >= `overlap` context on each inner side."""
    check_tile_args(tile, overlap)
    if length <= 0:
        raise SRDeployError(f"cannot tile an image axis of length {length}")
    if length <= tile:
        return [AxisTile(start=0, size=length, keep_lo=0, keep_hi=length)]
    stride = tile - 2 * overlap
    starts: list[int] = []
    s = 0
    while s + tile < length:
        starts.append(s)
        s += stride
    # The last tile ends at the image border (see the module note): it starts at most `stride` after
    # the previous one, so it still has >= overlap pixels of context before the previous tile's kept end.
    starts.append(length - tile)
    tiles: list[AxisTile] = []
    lo = 0
    for i, start in enumerate(starts):
        hi = length if i == len(starts) - 1 else start + tile - overlap
        tiles.append(AxisTile(start=start, size=tile, keep_lo=lo, keep_hi=hi))
        lo = hi
    return tiles


def upscale_tiled(
    run: Callable[[np.ndarray], np.ndarray],
    lr: np.ndarray,
    *,
    scale: int,
    tile: int,
    overlap: int,
    pad_small: bool = True,
    bit_depth: int | None = None,
) -> np.ndarray:
    """Upscale an NCHW float32 LR batch tile by tile with `run` (NCHW in, NCHW ``scale`` x larger out).

    `overlap` is the LR context kept on each inner side of a tile and discarded from its output;
    with ``overlap >= receptive_radius(spec)`` the result equals ``run(lr)`` exactly. Every call to
    `run` gets a ``N x C x tile x tile`` input when the image is at least `tile` in both axes (smaller
    axes are padded to `tile` when `pad_small`; see the module note). With `bit_depth` 8 or 16 each
    tile is quantized as it arrives (``quantize``) and the result is uint8/uint16, so a large image
    never holds a float copy of the full output; otherwise it has the backend's float dtype.
    """
    check_tile_args(tile, overlap)
    if lr.ndim != 4:
        raise SRDeployError(f"expected an NCHW input, got shape {lr.shape}")
    if scale < 1:
        raise SRDeployError(f"scale must be >= 1, got {scale}")
    n, _, h, w = lr.shape
    rows, cols = plan_axis(h, tile, overlap), plan_axis(w, tile, overlap)
    out: np.ndarray | None = None
    for ty in rows:
        for tx in cols:
            patch = lr[:, :, ty.start : ty.start + ty.size, tx.start : tx.start + tx.size]
            pad_h, pad_w = (tile - ty.size, tile - tx.size) if pad_small else (0, 0)
            if pad_h or pad_w:
                patch = np.pad(patch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
            result = np.asarray(run(np.ascontiguousarray(patch)))
            expected = (n, patch.shape[2] * scale, patch.shape[3] * scale)
            if (result.shape[0], *result.shape[2:]) != expected:
                raise SRDeployError(
                    f"tiled upscale: backend returned shape {result.shape} for a tile of shape {patch.shape};"
                    f" expected N={n} and {scale}x the spatial size"
                )
            y0, y1 = (ty.keep_lo - ty.start) * scale, (ty.keep_hi - ty.start) * scale
            x0, x1 = (tx.keep_lo - tx.start) * scale, (tx.keep_hi - tx.start) * scale
            kept = result[:, :, y0:y1, x0:x1]
            if bit_depth is not None:
                kept = quantize(kept, bit_depth)
            if out is None:
                out = np.empty((n, result.shape[1], h * scale, w * scale), dtype=kept.dtype)
            out[:, :, ty.keep_lo * scale : ty.keep_hi * scale, tx.keep_lo * scale : tx.keep_hi * scale] = kept
    assert out is not None  # plan_axis always returns at least one tile
    return out
