"""`srdeploy upscale`: files and folders in, upscaled images out, names kept, exact tiling."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import read_error
from sr_deploy.imaging.io import (
    IMAGE_EXTENSIONS,
    from_model_output,
    read_image,
    to_tensor_layout,
    upscale_alpha,
    write_image,
)
from sr_deploy.imaging.tiling import check_tile_args, upscale_tiled
from sr_deploy.shapes import check_min_size

RunFn = Callable[[np.ndarray], np.ndarray]
#: (input file, LR height, LR width) -> the tile side to upscale it with, or None for the whole image; raises
#: SRDeployError when the image can be done neither way (it is then a named failure, and the others go on).
TilePlanner = Callable[[Path, int, int], int | None]


@dataclass(frozen=True)
class UpscaleJob:
    source: Path
    target: Path


@dataclass
class UpscaleReport:
    written: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"written": list(self.written), "failures": dict(self.failures)}


def plan_jobs(inputs: Sequence[str | Path], out_dir: str | Path, *, fmt: str, overwrite: bool) -> list[UpscaleJob]:
    """Map every input file (folders expanded) to its output path, refusing to overwrite anything unasked."""
    if fmt not in ("png", "same"):
        raise SRDeployError(f"--format {fmt!r}: expected png or same")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SRDeployError(f"-o {out}: is a file, expected a folder")
    if not out.exists() and not out.parent.is_dir():
        raise SRDeployError(f"-o {out}: its parent folder {out.parent} does not exist")
    # Checked now, not when the first image is done: an upscale of a folder can take hours.
    writable = out if out.exists() else out.parent
    if not os.access(writable, os.W_OK | os.X_OK):
        raise SRDeployError(f"-o {out}: cannot write to the folder {writable} (permission denied or read-only)")
    if not inputs:
        raise SRDeployError("no INPUT given: expected image files or folders")
    sources: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            try:
                found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            except OSError as e:
                raise read_error(e, p) from None
            if not found:
                raise SRDeployError(f"{p}: folder has no images ({', '.join(IMAGE_EXTENSIONS)})")
            sources.extend(found)
        elif p.is_file():
            sources.append(p)
        else:
            raise SRDeployError(f"{p}: no such file or folder")
    jobs: list[UpscaleJob] = []
    seen: dict[Path, Path] = {}
    resolved_inputs = {s.resolve() for s in sources}
    for src in sources:
        name = src.name if fmt == "same" else src.with_suffix(".png").name
        target = out / name
        if target.resolve() in seen:
            raise SRDeployError(f"{src} and {seen[target.resolve()]} would both be written to {target}")
        seen[target.resolve()] = src
        if target.resolve() in resolved_inputs:
            raise SRDeployError(f"{target}: would overwrite an input image; choose another -o folder")
        if target.exists() and not overwrite:
            raise SRDeployError(f"{target}: already exists; pass --overwrite to replace it")
        jobs.append(UpscaleJob(src, target))
    return jobs


def upscale_array(
    run: RunFn, rgb: np.ndarray, bit_depth: int, *, scale: int, tile: int | None, overlap: int
) -> np.ndarray:
    """One RGB image (uint8/uint16 HxWx3) through the network, whole or tiled; same bit depth out."""
    lr = to_tensor_layout(rgb)
    if tile:
        # An image smaller than the tile runs at its own size: padding it would change the border pixels,
        # and the dynamic-shape backends take the new shape without a rebuild.
        out = upscale_tiled(run, lr, scale=scale, tile=tile, overlap=overlap, bit_depth=bit_depth, pad_small=False)
        return np.ascontiguousarray(np.transpose(out[0], (1, 2, 0)))
    return from_model_output(run(lr), bit_depth)


def upscale_files(
    run: RunFn,
    jobs: Sequence[UpscaleJob],
    *,
    scale: int,
    tile: int | None,
    overlap: int,
    on_image: Callable[[str], None] | None = None,
    plan_tile: TilePlanner | None = None,
    min_size: tuple[int, str] = (1, ""),
) -> UpscaleReport:
    """Upscale every job; alpha is upscaled with bicubic and re-attached; failures are named, the rest go on.

    Without `tile`, `plan_tile` (when given) chooses per image whether it is done whole or in tiles (an image too
    large for memory). `min_size` is the architecture's smallest input and its name: a smaller image is a failure."""
    if tile:
        check_tile_args(tile, overlap)
    report = UpscaleReport()
    for job in jobs:
        try:
            image = read_image(job.source)
            check_min_size(image.height, image.width, min_size[0], str(job.source), min_size[1])
            this_tile = tile or (plan_tile(job.source, image.height, image.width) if plan_tile else None)
            sr = upscale_array(run, image.rgb, image.bit_depth, scale=scale, tile=this_tile, overlap=overlap)
            alpha = upscale_alpha(image.alpha, scale) if image.alpha is not None else None
            write_image(job.target, sr, alpha)
            report.written.append(str(job.target))
        except SRDeployError as e:
            report.failures[str(job.source)] = str(e)
        except MemoryError:
            report.failures[str(job.source)] = (
                "out of memory; use --tile N, or a smaller --memory-budget to tile sooner"
            )
        if on_image is not None:
            on_image(job.source.name)
    return report
