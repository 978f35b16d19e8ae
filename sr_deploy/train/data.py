"""Training data: HR/LR pairs, the on-disk LR cache, random crops with augmentation, and the DataLoader.

Randomness is counter-based, not stateful: the shuffle of an epoch is a function of (seed, stage, epoch)
and each crop's position and augmentation a function of (seed, stage, epoch, position in the epoch). So a
run resumed mid-epoch continues with exactly the crops it would have seen, whatever the number of
workers or processes, and no worker RNG state has to be captured.
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from sr_deploy.errors import SRDeployError, name_list

log = logging.getLogger(__name__)

#: Bumped when the way LR images are made changes, so stale cache entries are never reused.
LR_CACHE_VERSION = 1

Log = Callable[[str], None]


@dataclass(frozen=True)
class Pair:
    """One training image: its HR file, its LR file (given, or made and cached), and the LR size."""

    hr: Path
    lr: Path
    lr_size: tuple[int, int]  # (height, width); the HR used is the top-left (h * scale, w * scale)

    def to_dict(self) -> dict[str, Any]:
        return {"hr": str(self.hr), "lr": str(self.lr), "lr_size": list(self.lr_size)}


@dataclass(frozen=True)
class CropSelection:
    """Images that fit a crop size, and how many did not."""

    pairs: tuple[Pair, ...]
    skipped: int
    lr_patch: int

    def to_dict(self) -> dict[str, Any]:
        return {"images": len(self.pairs), "skipped": self.skipped, "lr_patch": self.lr_patch}


# --- reading ----------------------------------------------------------------------------------------------


def read_rgb8(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB (16-bit images are scaled to 8 bits; alpha is dropped)."""
    from sr_deploy.imaging.io import read_image, to_uint8

    return np.ascontiguousarray(to_uint8(read_image(path).rgb))


def _png_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR without decoding it; None if not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width); PNG headers are read directly so scanning DIV2K does not decode 800 images."""
    size = _png_size(path)
    if size is not None:
        return size
    rgb = read_rgb8(path)
    return int(rgb.shape[0]), int(rgb.shape[1])


def list_images(folder: str | Path) -> list[Path]:
    from sr_deploy.imaging.io import list_images as _list

    return _list(folder)


# --- pairing and the LR cache -----------------------------------------------------------------------------


def _lr_candidates(hr: Path, scale: int) -> tuple[str, ...]:
    # DIV2K / Flickr2K name LR files 0001x4.png; other sets keep the HR name.
    return (f"{hr.stem}x{scale}", hr.stem)


def pair_with_lr_dir(hr_files: Sequence[Path], lr_dir: Path, scale: int) -> list[Pair]:
    """Pair each HR file with `lr_dir`'s 0001x4.png or 0001.png; every mismatch is named in one error."""
    lr_files = list_images(lr_dir)
    by_stem = {p.stem: p for p in lr_files}
    pairs: list[Pair] = []
    missing: list[str] = []
    wrong_size: list[str] = []
    used: set[Path] = set()
    for hr in hr_files:
        lr = next((by_stem[s] for s in _lr_candidates(hr, scale) if s in by_stem), None)
        if lr is None:
            missing.append(hr.name)
            continue
        used.add(lr)
        hr_h, hr_w = image_size(hr)
        lr_h, lr_w = image_size(lr)
        # DIV2K's LR is floor(HR / scale): the HR is cut to LR * scale (modcrop), never padded.
        if hr_h // scale != lr_h or hr_w // scale != lr_w:
            wrong_size.append(f"{lr.name} is {lr_h}x{lr_w}, expected {hr_h // scale}x{hr_w // scale} for {hr.name}")
            continue
        pairs.append(Pair(hr=hr, lr=lr, lr_size=(lr_h, lr_w)))
    unpaired = sorted(p.name for p in lr_files if p not in used)
    problems = []
    if missing:
        wanted = "/".join(f"<name>{suffix}" for suffix in (f"x{scale}", ""))
        problems.append(f"no LR file ({wanted}) for HR {name_list(missing, 5)}")
    if wrong_size:
        problems.append("size mismatch: " + name_list(wrong_size, 3))
    if problems:
        extra = f"; LR files without an HR partner: {name_list(unpaired, 5)}" if unpaired else ""
        raise SRDeployError(f"LR folder {lr_dir} does not pair with its HR folder: " + "; ".join(problems) + extra)
    return pairs


def _file_key(path: Path, tag: str) -> str:
    # Identity of a file's current content without reading it: moved, touched or rewritten -> new key.
    st = path.stat()
    ident = f"{path.resolve()}\0{st.st_mtime_ns}\0{st.st_size}\0{tag}"
    return hashlib.sha256(ident.encode("utf-8")).hexdigest()[:32]


def lr_cache_key(hr: Path, scale: int) -> str:
    """Cache file name of the LR made from `hr` at `scale`."""
    return _file_key(hr, f"x{scale}\0v{LR_CACHE_VERSION}") + ".png"


def decoded_path(image: Path, cache: Path) -> Path:
    """Where `image` decoded to an HxWx3 uint8 .npy lives in `cache`."""
    return cache / "decoded" / (_file_key(image, f"decoded\0v{LR_CACHE_VERSION}") + ".npy")


def ensure_decoded(image: Path, cache: Path) -> bool:
    """Decode `image` into the cache unless it is there; True if it was written (atomically)."""
    from sr_deploy.fileio import atomic_path

    target = decoded_path(image, cache)
    if target.is_file():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, "decoded image") as tmp, open(tmp, "wb") as f:
        np.save(f, read_rgb8(image))
    return True


def prepare_decoded(pairs: Sequence[Pair], cache: Path, log: Log | None = None) -> None:
    """Decode every HR and LR once (rank 0, before training) for memory-mapped crops."""
    made = sum(ensure_decoded(path, cache) for pair in pairs for path in (pair.hr, pair.lr))
    if made and log is not None:
        log(f"decoded {made} image(s) to {cache / 'decoded'} for memory-mapped crops")


def default_cache_dir() -> Path:
    from sr_deploy.checkpoints import cache_dir

    return cache_dir() / "train"


def cached_lr(hr: Path, scale: int, cache: Path) -> Path:
    """The LR file for `hr`, made once and kept in `cache` (written atomically, so safe across processes)."""
    from sr_deploy.imaging.io import make_lr, write_image

    path = cache / lr_cache_key(hr, scale)
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        write_image(path, make_lr(read_rgb8(hr), scale))
    return path


def make_missing_lr(
    hr_dirs: Sequence[str | Path], scale: int, cache: Path, *, rank: int = 0, world_size: int = 1
) -> int:
    """Make the LR of every `world_size`-th HR image, starting at `rank`, that is not cached; returns how many."""
    made = 0
    files = [f for d in hr_dirs for f in list_images(d)]
    for i, hr in enumerate(files):
        if i % world_size != rank or (cache / lr_cache_key(hr, scale)).is_file():
            continue
        h, w = image_size(hr)
        if h >= scale and w >= scale:
            cached_lr(hr, scale, cache)
            made += 1
    return made


def find_pairs(
    hr_dirs: Sequence[str | Path],
    lr_dirs: Sequence[str | Path],
    scale: int,
    *,
    cache: Path | None = None,
    log: Log | None = None,
    make_missing: bool = True,
) -> list[Pair]:
    """Every HR image of every folder with its LR. Without LR folders, LR are made (once) into `cache`.

    With `make_missing` False (non-zero DDP ranks) the cache is only read: rank 0 fills it first.
    """
    if not hr_dirs:
        raise SRDeployError("no HR folder given (--hr-dir)")
    if lr_dirs and len(lr_dirs) != len(hr_dirs):
        raise SRDeployError(f"give one LR folder per HR folder: {len(lr_dirs)} LR for {len(hr_dirs)} HR")
    cache = cache or default_cache_dir()
    pairs: list[Pair] = []
    for i, hr_dir in enumerate(hr_dirs):
        hr_files = list_images(hr_dir)
        if lr_dirs:
            pairs += pair_with_lr_dir(hr_files, Path(lr_dirs[i]), scale)
            continue
        made = 0
        for hr in hr_files:
            h, w = image_size(hr)
            if h < scale or w < scale:
                continue  # too small for even one LR pixel; counted with the crop-size skips
            lr_path = cache / lr_cache_key(hr, scale)
            if not lr_path.is_file():
                if not make_missing:
                    raise SRDeployError(f"LR cache {lr_path} for {hr} is missing (rank 0 should have made it)")
                made += 1
            pairs.append(Pair(hr=hr, lr=cached_lr(hr, scale, cache), lr_size=(h // scale, w // scale)))
        if log is not None and made:
            log(f"made {made} LR image(s) x{scale} for {hr_dir} (cached in {cache})")
    return pairs


def select_for_crop(pairs: Sequence[Pair], lr_patch: int, log: Log | None = None) -> CropSelection:
    """Images at least `lr_patch` LR pixels each way; smaller ones are skipped (padding hurt in the paper)."""
    kept = tuple(p for p in pairs if min(p.lr_size) >= lr_patch)
    skipped = len(pairs) - len(kept)
    if not kept:
        largest = max((p.lr_size for p in pairs), key=min, default=(0, 0))
        raise SRDeployError(
            f"LR crop {lr_patch}x{lr_patch} is larger than every training image "
            f"({len(pairs)} images; the largest LR is {largest[0]}x{largest[1]})"
        )
    if skipped and log is not None:
        log(f"skipped {skipped} of {len(pairs)} image(s) smaller than the {lr_patch}x{lr_patch} LR crop")
    return CropSelection(pairs=kept, skipped=skipped, lr_patch=lr_patch)


# --- sampling ---------------------------------------------------------------------------------------------


class SampleKey(NamedTuple):
    """What the sampler hands the dataset: which image, and the entropy for its crop and augmentation."""

    image: int
    entropy: tuple[int, ...]


@dataclass
class CropSampler(Sampler[SampleKey]):
    """Shuffles `crops_per_image` draws of every image per epoch; shards them across DDP ranks.

    Does the job of torch's DistributedSampler (pad to a multiple of the world size, take every
    world-th sample) but yields keys whose randomness depends only on (seed, stage, epoch, position),
    and can start part-way into an epoch (`skip`) for an exact resume.
    """

    num_images: int
    crops_per_image: int
    seed: int
    stage: int
    rank: int = 0
    world_size: int = 1
    epoch: int = 0
    skip: int = 0  # samples of this rank's share already consumed this epoch
    _keys: list[SampleKey] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    @property
    def per_rank(self) -> int:
        total = self.num_images * self.crops_per_image
        return -(-total // self.world_size)

    def keys(self) -> list[SampleKey]:
        """This rank's keys for the current epoch, before `skip`."""
        total = self.num_images * self.crops_per_image
        rng = np.random.default_rng([self.seed, self.stage, self.epoch])
        order = rng.permutation(total).tolist()
        padded = order + order[: self.per_rank * self.world_size - total]
        mine = range(self.rank, len(padded), self.world_size)
        return [SampleKey(padded[i] // self.crops_per_image, (self.seed, self.stage, self.epoch, i)) for i in mine]

    def __iter__(self) -> Iterator[SampleKey]:
        return iter(self.keys()[self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip


# --- the dataset ------------------------------------------------------------------------------------------


def augment(lr: np.ndarray, hr: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> tuple[np.ndarray, ...]:
    """The same flip/flip/transpose on both crops: the 8 dihedral transforms, i.e. flips + 90-degree turns."""
    out = []
    for img in (lr, hr):
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1, :]
        if transpose:
            img = img.transpose(1, 0, 2)
        out.append(np.ascontiguousarray(img))
    return tuple(out)


class CropDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random LR crop + the matching HR crop, as uint8 CHW tensors (scaled to [0, 1] on the device).

    uint8 keeps host-to-device traffic and pinned memory four times smaller than float32. `storage` is
    "decoded" (memory-mapped .npy files that `prepare_decoded` wrote to `cache`), "memory" (decoded into RAM
    here) or "png" (decoded for every crop).
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        scale: int,
        lr_patch: int,
        *,
        augment: bool = True,
        storage: str = "png",
        cache: Path | None = None,
    ) -> None:
        if storage == "decoded" and cache is None:
            raise ValueError("storage 'decoded' needs the cache folder")
        self.pairs = list(pairs)
        self.scale = scale
        self.lr_patch = lr_patch
        self.augment = augment
        self.storage = storage
        self.cache = cache
        self._images: list[tuple[np.ndarray, np.ndarray]] | None = None
        if storage == "memory":
            self._images = [self._load(i) for i in range(len(self.pairs))]

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, path: Path) -> np.ndarray:
        if self.storage == "decoded":
            assert self.cache is not None
            # Opening a memory map is cheap; the crop below touches only the rows it needs.
            decoded = decoded_path(path, self.cache)
            if not decoded.is_file():
                raise SRDeployError(
                    f"{path}: no decoded copy in {decoded.parent} (was the file changed during the run?)"
                )
            arr: np.ndarray = np.load(decoded, mmap_mode="r")
            return arr
        return read_rgb8(path)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[i]
        lr = self._read(pair.lr)
        hr = self._read(pair.hr)
        h, w = pair.lr_size
        if lr.shape[:2] != (h, w) or hr.shape[0] < h * self.scale or hr.shape[1] < w * self.scale:
            raise SRDeployError(f"{pair.hr} / {pair.lr}: image sizes changed since the run started")
        return lr, hr[: h * self.scale, : w * self.scale]

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        lr, hr = self._images[key.image] if self._images is not None else self._load(key.image)
        rng = np.random.default_rng(list(key.entropy))
        p, s = self.lr_patch, self.scale
        y = int(rng.integers(0, lr.shape[0] - p + 1))
        x = int(rng.integers(0, lr.shape[1] - p + 1))
        lr_crop = lr[y : y + p, x : x + p]
        hr_crop = hr[y * s : (y + p) * s, x * s : (x + p) * s]
        flips = rng.random(3) < 0.5
        if self.augment:
            lr_crop, hr_crop = augment(lr_crop, hr_crop, bool(flips[0]), bool(flips[1]), bool(flips[2]))
        return _to_chw(lr_crop), _to_chw(hr_crop)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _worker_init(worker_id: int) -> None:
    import random
    import signal

    # Ctrl-C reaches the whole process group: a worker dying of it would make the main process fail while
    # it finishes its step and saves. The main process decides when to stop; workers go when it does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Crops draw from per-sample generators, so this only makes any other numpy/random use reproducible.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset: CropDataset,
    sampler: CropSampler,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    generator: torch.Generator,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader over `sampler`'s keys; `generator` seeds the workers' base seed reproducibly."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=generator,
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )


# --- validation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValImage:
    name: str
    lr: np.ndarray  # HxWx3 uint8
    hr: np.ndarray  # (H*scale)x(W*scale)x3 uint8, modcropped


def load_validation(folder: str | Path, scale: int, cache: Path | None = None) -> list[ValImage]:
    """Validation pairs from HR images: modcrop, then LR made (and cached) with the MATLAB bicubic."""
    from sr_deploy.imaging.resize import modcrop

    cache = cache or default_cache_dir()
    out = []
    for hr_path in list_images(folder):
        hr = modcrop(read_rgb8(hr_path), scale)
        lr = read_rgb8(cached_lr(hr_path, scale, cache))
        out.append(ValImage(name=hr_path.name, lr=lr, hr=np.ascontiguousarray(hr)))
    return out
