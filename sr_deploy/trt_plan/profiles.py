"""Shapes and optimization profiles: which input shapes an engine accepts, from typed shapes or from the sizes of a
folder of images; and the default profile. Flag text becomes a shape here only when the command layer asks."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sr_deploy.errors import SRDeployError
from sr_deploy.shapes import parse_dims

Shape4 = tuple[int, int, int, int]


def parse_shape(text: str, flag: str = "shape") -> Shape4:
    """`1x3x64x64` -> (1, 3, 64, 64); anything else is the user's mistake, named by `flag`."""
    n, c, h, w = parse_dims(text, flag, 4)
    return n, c, h, w


def format_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimization profile for the image input: min <= opt <= max in every dimension."""

    min: Shape4
    opt: Shape4
    max: Shape4
    name: str = "all"  # "all", "landscape" or "portrait": which images it was made for

    def __post_init__(self) -> None:
        validate_profile(self.min, self.opt, self.max)

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max, strict=True))

    @property
    def box_area(self) -> int:
        """Number of (H, W) pairs the profile admits: how much TensorRT must be ready for."""
        return (self.max[2] - self.min[2] + 1) * (self.max[3] - self.min[3] + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShapeProfile:
        return cls(
            min=_shape4(d["min"]),
            opt=_shape4(d["opt"]),
            max=_shape4(d["max"]),
            name=str(d.get("name", "all")),
        )


def _shape4(values: Sequence[Any]) -> Shape4:
    if len(values) != 4:
        raise SRDeployError(f"shape {list(values)}: expected 4 dimensions (NCHW)")
    return (int(values[0]), int(values[1]), int(values[2]), int(values[3]))


def validate_profile(min_shape: Shape4, opt_shape: Shape4, max_shape: Shape4) -> None:
    """min <= opt <= max elementwise, same batch and channels (the model's input has a fixed N and C)."""
    for label, lo, hi in (("--min", min_shape, opt_shape), ("--opt", opt_shape, max_shape)):
        bad = [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if a > b]
        if bad:
            upper = "--opt" if label == "--min" else "--max"
            raise SRDeployError(
                f"{label} {format_shape(lo)} exceeds {upper} {format_shape(hi)} in dimension(s) "
                f"{', '.join('NCHW'[i] for i in bad)}; expected min <= opt <= max"
            )
    if not (min_shape[:2] == opt_shape[:2] == max_shape[:2]):
        raise SRDeployError(
            f"profile {format_shape(min_shape)} / {format_shape(opt_shape)} / {format_shape(max_shape)}: "
            "batch and channels must be equal in --min, --opt and --max"
        )


def profile_from_flags(min_text: str | None, opt_text: str | None, max_text: str | None) -> ShapeProfile:
    """The three shape flags; `--opt` alone means a static shape (min = opt = max)."""
    if opt_text is None:
        raise SRDeployError("--opt is required with --min/--max (or use --profile-from DIR)")
    opt = parse_shape(opt_text, "--opt")
    lo = parse_shape(min_text, "--min") if min_text is not None else opt
    hi = parse_shape(max_text, "--max") if max_text is not None else opt
    return ShapeProfile(min=lo, opt=opt, max=hi)


def check_profile_against_model(profile: ShapeProfile, model_input: Sequence[int | str | None]) -> None:
    """Shapes outside what the ONNX input allows (a fixed dimension that differs) are the user's mistake.

    `model_input` is the ONNX input's shape: ints for fixed dimensions, a name or None for dynamic ones.
    """
    if len(model_input) != 4:
        raise SRDeployError(f"ONNX input has {len(model_input)} dimensions; expected 4 (NCHW)")
    for i, dim in enumerate(model_input):
        if isinstance(dim, int) and dim > 0:
            for label, shape in (("--min", profile.min), ("--opt", profile.opt), ("--max", profile.max)):
                if shape[i] != dim:
                    raise SRDeployError(
                        f"{label} {format_shape(shape)}: the ONNX graph fixes dimension {'NCHW'[i]} to {dim}"
                    )


@dataclass(frozen=True)
class ProfilePlan:
    """The profile(s) to build, and why: one profile, or one per orientation when that covers the sizes
    better.
    """

    profiles: tuple[ShapeProfile, ...]
    reason: str

    def covers(self, shape: Sequence[int]) -> bool:
        return any(p.covers(shape) for p in self.profiles)

    def profile_for(self, shape: Sequence[int]) -> int:
        """Index of the smallest profile that covers `shape` (the runtime picks it per image)."""
        fits = [i for i, p in enumerate(self.profiles) if p.covers(shape)]
        if not fits:
            raise SRDeployError(f"input {format_shape(shape)} is outside every optimization profile of the engine")
        return min(fits, key=lambda i: self.profiles[i].box_area)

    @property
    def max_shape(self) -> Shape4:
        """Largest buffer any profile may need: per-dimension max over profiles (buffers are sized once)."""
        n, c = self.profiles[0].max[:2]
        h = max(p.max[2] for p in self.profiles)
        w = max(p.max[3] for p in self.profiles)
        return (n, c, h, w)

    def to_dict(self) -> dict[str, Any]:
        return {"profiles": [p.to_dict() for p in self.profiles], "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProfilePlan:
        return cls(tuple(ShapeProfile.from_dict(p) for p in d["profiles"]), str(d.get("reason", "")))


def check_profiles_min_size(plan: ProfilePlan, least: int, model: str) -> None:
    """Refuse a profile that admits inputs smaller than the network takes (ESA's pool needs 15x15 for RLFN/RFDN):
    TensorRT would fail deep inside the build, or the engine would fail at run time on those shapes."""
    for p in plan.profiles:
        if min(p.min[2], p.min[3]) < least:
            raise SRDeployError(
                f"--min {format_shape(p.min)}: {model} needs inputs of at least {least}x{least} (profile {p.name})"
            )


def _most_frequent(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """Most frequent (H, W); ties go to the larger area, then the larger H, so the choice is deterministic."""
    counts = Counter(sizes)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s[0]))


def _orientation_profile(
    sizes: Sequence[tuple[int, int]], batch: int, channels: int, name: str, both_orientations: bool
) -> ShapeProfile:
    if both_orientations:
        # Either side may be H or W: the box is square, so a rotated image still fits.
        lo = min(min(s) for s in sizes)
        hi = max(max(s) for s in sizes)
        min_hw, max_hw = (lo, lo), (hi, hi)
    else:
        min_hw = (min(s[0] for s in sizes), min(s[1] for s in sizes))
        max_hw = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    opt_hw = _most_frequent(sizes)
    return ShapeProfile(
        min=(batch, channels, *min_hw),
        opt=(batch, channels, *opt_hw),
        max=(batch, channels, *max_hw),
        name=name,
    )


def profiles_from_sizes(
    sizes: Sequence[tuple[int, int]],
    *,
    batch: int = 1,
    channels: int = 3,
    split: bool | None = None,
    split_ratio: float = 0.5,
) -> ProfilePlan:
    """Profile(s) covering images of `sizes` (H, W) in both orientations; the most frequent size is opt.

    `split=None` decides: one profile per orientation (landscape H <= W, portrait H > W) when their boxes
    together admit at most `split_ratio` of the single square profile's (H, W) pairs. That is when TensorRT
    has much less to be ready for, and the largest buffer shrinks from max_side^2 to max_H x max_W of each
    orientation.
    """
    if not sizes:
        raise SRDeployError("--profile-from: no images found to derive an optimization profile from")
    if any(h <= 0 or w <= 0 for h, w in sizes):
        raise SRDeployError("--profile-from: image sizes must be positive")
    single = _orientation_profile(sizes, batch, channels, "all", both_orientations=True)
    landscape = [s for s in sizes if s[0] <= s[1]]
    portrait = [s for s in sizes if s[0] > s[1]]
    if not landscape or not portrait:
        if split:
            raise SRDeployError("--split-orientation: all images have one orientation, nothing to split")
        return ProfilePlan((single,), "one profile: every image has the same orientation")
    split_profiles = (
        _orientation_profile(landscape, batch, channels, "landscape", both_orientations=False),
        _orientation_profile(portrait, batch, channels, "portrait", both_orientations=False),
    )
    split_area = sum(p.box_area for p in split_profiles)
    ratio = split_area / single.box_area
    if split is None:
        split = ratio <= split_ratio
    if split:
        return ProfilePlan(split_profiles, f"one profile per orientation: {ratio:.0%} of the single profile's sizes")
    return ProfilePlan((single,), f"one profile for both orientations (split would keep {ratio:.0%} of its sizes)")


#: Covers DIV2K's x4 LR validation images in both orientations (339..510 on a side), opt at the most common size.
DEFAULT_PROFILE = ShapeProfile(min=(1, 3, 64, 64), opt=(1, 3, 339, 510), max=(1, 3, 510, 510))


def default_profile_plan() -> ProfilePlan:
    return ProfilePlan((DEFAULT_PROFILE,), "default profile (DIV2K x4 LR sizes)")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image: from the PNG header when possible (fast), else by decoding with OpenCV."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(h), int(w)
    import cv2  # lazily: only non-PNG images need it

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise SRDeployError(f"--profile-from: {path} is not a readable image")
    return int(img.shape[0]), int(img.shape[1])


def image_sizes_in_folder(folder: Path) -> list[tuple[int, int]]:
    if not folder.is_dir():
        raise SRDeployError(f"--profile-from {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SRDeployError(f"--profile-from {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [read_image_size(p) for p in files]
