"""The images a bench run times: decoded up front (loading is never timed), from a folder or made up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.pairing import check_pair_scale, pair_images


@dataclass(frozen=True)
class BenchImage:
    """One low-resolution input, already decoded (loading is never timed), and its HR image if paired."""

    name: str
    lr: np.ndarray  # HxWx3 uint8 or uint16 RGB
    source: Path | None = None
    hr_path: Path | None = None

    @property
    def height(self) -> int:
        return int(self.lr.shape[0])

    @property
    def width(self) -> int:
        return int(self.lr.shape[1])


#: The most --synthetic images one run takes: the mean is stable long before, and every image keeps its own
#: timings in the report.
MAX_SYNTHETIC_COUNT = 10_000


class SyntheticImages(Sequence[BenchImage]):
    """`count` reproducible uniform-noise uint8 images, each made when it is asked for: a conv network's time does
    not depend on content, and 10,000 DIV2K-sized images made up front would take 5 GB."""

    def __init__(self, height: int, width: int, count: int, *, seed: int) -> None:
        if count < 1:
            raise SRDeployError(f"--count must be >= 1, got {count}")
        if count > MAX_SYNTHETIC_COUNT:
            raise SRDeployError(f"--count {count}: at most {MAX_SYNTHETIC_COUNT} synthetic images per run")
        if height < 1 or width < 1:
            raise SRDeployError(f"synthetic size must be at least 1x1, got {height}x{width}")
        self.height, self.width, self.n, self.seed = height, width, count, seed
        self._digits = max(3, len(str(count - 1)))

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> BenchImage: ...

    @overload
    def __getitem__(self, index: slice) -> list[BenchImage]: ...

    def __getitem__(self, index: int | slice) -> BenchImage | list[BenchImage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.n))]
        i = index + self.n if index < 0 else index
        if not 0 <= i < self.n:
            raise IndexError(index)
        # One generator per image, seeded by (seed, index): image i is the same whenever and however it is asked for.
        rng = np.random.default_rng([self.seed, i])
        return BenchImage(
            name=f"synthetic_{i:0{self._digits}d}_{self.height}x{self.width}",
            lr=rng.integers(0, 256, size=(self.height, self.width, 3), dtype=np.uint8),
        )


def synthetic_images(height: int, width: int, count: int, *, seed: int) -> list[BenchImage]:
    """`SyntheticImages` made all at once, for callers that want a list (small counts)."""
    return list(SyntheticImages(height, width, count, seed=seed))


def modcrop(hr: np.ndarray, lr_hw: tuple[int, int], scale: int) -> np.ndarray:
    """The top-left ``LR x scale`` part of an HR image, as the reference protocol's modcrop does."""
    return hr[: lr_hw[0] * scale, : lr_hw[1] * scale]


def load_bench_images(input_dir: Path, hr_dir: Path | None, *, scale: int) -> list[BenchImage]:
    """Decode every input (not timed) and, with `hr_dir`, pair and size-check the HR images up front.

    The HR images are decoded here only to check their size and dropped again (a DIV2K HR set would not fit
    comfortably in memory); the PSNR step reads each one again when it needs it.
    """
    from sr_deploy.imaging.io import list_images, read_image

    inputs = list_images(input_dir)
    if hr_dir is None:
        return [BenchImage(name=p.name, lr=read_image(p).rgb, source=p) for p in inputs]
    pairs = pair_images(inputs, list_images(hr_dir))
    images = []
    for lr_path, hr_path in pairs:
        lr = read_image(lr_path).rgb
        hr = read_image(hr_path).rgb
        check_pair_scale(lr_path.name, lr.shape[:2], hr_path.name, hr.shape[:2], scale)
        images.append(BenchImage(name=lr_path.name, lr=lr, source=lr_path, hr_path=hr_path))
    return images
