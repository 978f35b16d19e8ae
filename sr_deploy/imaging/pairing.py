"""Pairing LR inputs with HR references by file name: equal stems, or DIV2K's ``0801x4.png`` ~ ``0801.png``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sr_deploy.errors import SRDeployError, name_list

_SCALE_SUFFIX = re.compile(r"^(?P<base>.+?)[_-]?x(?P<scale>\d+)$", re.IGNORECASE)

__all__ = ["check_pair_scale", "pair_images", "pair_key"]


def pair_key(stem: str) -> str:
    """The HR name an LR file stem stands for: DIV2K's ``0801x4`` -> ``0801``; other stems are unchanged."""
    m = _SCALE_SUFFIX.match(stem)
    return m.group("base") if m else stem


def pair_images(inputs: Sequence[Path], hrs: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pair each input with its HR image by file stem: equal stems, or DIV2K ``0801x4.png`` ~ ``0801.png``.

    Strict both ways, because a silently dropped image changes the set the mean is taken over: every input
    needs exactly one HR image and every HR image must be used. Raises SRDeployError naming the unpaired files.
    """
    by_stem: dict[str, Path] = {}
    duplicates: list[str] = []
    for hr in hrs:
        if hr.stem in by_stem:
            duplicates.append(f"{by_stem[hr.stem].name} and {hr.name}")
        by_stem[hr.stem] = hr
    if duplicates:
        raise SRDeployError(f"HR images with the same name but different extensions: {name_list(duplicates)}")
    pairs: list[tuple[Path, Path]] = []
    used: dict[str, Path] = {}
    unpaired: list[str] = []
    clashes: list[str] = []
    for lr in inputs:
        # An exact stem match wins, so an HR file genuinely named like "photox2" is not mistaken for a suffix.
        stem = lr.stem if lr.stem in by_stem else pair_key(lr.stem)
        match = by_stem.get(stem)
        if match is None:
            unpaired.append(lr.name)
            continue
        if stem in used:
            clashes.append(f"{used[stem].name} and {lr.name} -> {match.name}")
            continue
        used[stem] = lr
        pairs.append((lr, match))
    unused = [p.name for s, p in by_stem.items() if s not in used]
    problems = []
    if unpaired:
        problems.append(f"{len(unpaired)} input image(s) have no HR image: {name_list(unpaired)}")
    if clashes:
        problems.append(f"several inputs pair with one HR image: {name_list(clashes)}")
    if unused:
        problems.append(f"{len(unused)} HR image(s) match no input: {name_list(unused)}")
    if problems:
        raise SRDeployError(
            "inputs and HR images do not pair (by name, or DIV2K 0801x4.png ~ 0801.png): " + "; ".join(problems)
        )
    return pairs


def check_pair_scale(lr_name: str, lr_hw: tuple[int, int], hr_name: str, hr_hw: tuple[int, int], scale: int) -> None:
    """HR must be `scale` times the LR, up to the modcrop (``HR // scale == LR``) the PSNR protocol applies."""
    (lh, lw), (hh, hw) = lr_hw, hr_hw
    if (hh // scale, hw // scale) != (lh, lw):
        raise SRDeployError(
            f"HR {hr_name} is {hh}x{hw} but input {lr_name} is {lh}x{lw}: at x{scale} the HR image must be "
            f"{lh * scale}x{lw * scale} (up to {scale - 1} extra pixels that modcrop removes)"
        )
