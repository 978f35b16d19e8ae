"""`srdeploy upscale`: files and folders in, upscaled images out, names kept, exact tiling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import (
    IMAGE_EXTENSIONS,
    from_model_output,
    read_image,
    to_tensor_layout,
    upscale_alpha,
    write_image,
)
from sr_deploy.imaging.tiling import check_tile_args, upscale_tiled

RunFn = Callable[[np.ndarray], np.ndarray]


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
    if not inputs:
        raise SRDeployError("no INPUT given: expected image files or folders")
    sources: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
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
) -> UpscaleReport:
    """Upscale every job; alpha is upscaled with bicubic and re-attached; failures are named, the rest go on."""
    if tile:
        check_tile_args(tile, overlap)
    report = UpscaleReport()
    for job in jobs:
        try:
            image = read_image(job.source)
            sr = upscale_array(run, image.rgb, image.bit_depth, scale=scale, tile=tile, overlap=overlap)
            alpha = upscale_alpha(image.alpha, scale) if image.alpha is not None else None
            write_image(job.target, sr, alpha)
            report.written.append(str(job.target))
        except SRDeployError as e:
            report.failures[str(job.source)] = str(e)
        if on_image is not None:
            on_image(job.source.name)
    return report
