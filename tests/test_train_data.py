"""Training data: pairing, the LR cache, crop-size filtering, sampling and aligned, augmented crops."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.errors import SRDeployError
from sr_deploy.imaging.io import make_lr, read_image, write_image
from sr_deploy.train.data import (
    CropDataset,
    CropSampler,
    Pair,
    SampleKey,
    build_loader,
    decoded_path,
    find_pairs,
    image_size,
    lr_cache_key,
    make_missing_lr,
    prepare_decoded,
    select_for_crop,
)


def _img(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write(folder: Path, name: str, img: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_image(folder / name, img)


def test_pairs_div2k_naming_and_plain_naming(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _write(hr, "0001.png", _img(40, 48, 0))
    _write(hr, "0002.png", _img(42, 50, 1))  # not a multiple of 4: HR is cut to LR * 4
    _write(lr, "0001x4.png", _img(10, 12, 2))
    _write(lr, "0002.png", _img(10, 12, 3))
    pairs = find_pairs([hr], [lr], 4)
    assert [(p.hr.name, p.lr.name, p.lr_size) for p in pairs] == [
        ("0001.png", "0001x4.png", (10, 12)),
        ("0002.png", "0002.png", (10, 12)),
    ]


def test_unpaired_lr_files_are_named(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _write(hr, "0001.png", _img(40, 48, 0))
    _write(hr, "0002.png", _img(40, 48, 0))
    _write(lr, "0001x4.png", _img(10, 12, 2))
    _write(lr, "0003x4.png", _img(10, 12, 2))
    with pytest.raises(SRDeployError) as e:
        find_pairs([hr], [lr], 4)
    msg = str(e.value)
    assert "no LR file" in msg
    assert "0002.png" in msg
    assert "0003x4.png" in msg
    assert "\n" not in msg


def test_lr_of_wrong_size_is_named(tmp_path: Path) -> None:
    hr, lr = tmp_path / "hr", tmp_path / "lr"
    _write(hr, "a.png", _img(40, 48, 0))
    _write(lr, "a.png", _img(20, 24, 0))  # an x2 LR in an x4 run
    with pytest.raises(SRDeployError, match=r"a\.png is 20x24, expected 10x12"):
        find_pairs([hr], [lr], 4)


def test_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SRDeployError, match="no images"):
        find_pairs([tmp_path / "empty"], [], 4, cache=tmp_path / "cache")
    with pytest.raises(SRDeployError, match="no such folder"):
        find_pairs([tmp_path / "missing"], [], 4, cache=tmp_path / "cache")


def test_lr_made_once_and_cached_by_file_and_scale(tmp_path: Path) -> None:
    hr_dir, cache = tmp_path / "hr", tmp_path / "cache"
    img = _img(41, 50, 0)
    hr_path = _write(hr_dir, "x.png", img)
    logs: list[str] = []
    (pair,) = find_pairs([hr_dir], [], 4, cache=cache, log=logs.append)
    assert pair.lr.parent == cache
    assert pair.lr_size == (10, 12)
    assert np.array_equal(read_image(pair.lr).rgb, make_lr(img, 4))
    assert any("made 1 LR" in m for m in logs)
    # Second time: read from the cache, nothing made.
    logs.clear()
    mtime = pair.lr.stat().st_mtime_ns
    (again,) = find_pairs([hr_dir], [], 4, cache=cache, log=logs.append)
    assert again.lr == pair.lr and again.lr.stat().st_mtime_ns == mtime
    assert not logs
    # The key follows scale and the file's identity (a rewrite changes mtime/size).
    assert lr_cache_key(hr_path, 4) != lr_cache_key(hr_path, 2)
    before = lr_cache_key(hr_path, 4)
    _write(hr_dir, "x.png", _img(44, 52, 1))
    os.utime(hr_path, ns=(1, 1))
    assert lr_cache_key(hr_path, 4) != before
    # A non-zero DDP rank never makes LR itself.
    with pytest.raises(SRDeployError, match="rank 0 should have made it"):
        find_pairs([hr_dir], [], 4, cache=cache, make_missing=False)


def test_make_lr_reproduces_the_published_set5_lr(shared: Path) -> None:
    hr = read_image(shared / "data" / "Set5" / "HR" / "baby.png").rgb
    lr = read_image(shared / "data" / "Set5" / "LR_bicubic_x4" / "baby.png").rgb
    assert np.array_equal(make_lr(hr, 4), lr)


def test_png_size_from_header(tmp_path: Path) -> None:
    p = _write(tmp_path, "a.png", _img(13, 17, 0))
    assert image_size(p) == (13, 17)
    j = _write(tmp_path, "a.jpg", _img(13, 17, 0))
    assert image_size(j) == (13, 17)


def _pair(h: int, w: int) -> Pair:
    return Pair(hr=Path(f"{h}x{w}.png"), lr=Path("l.png"), lr_size=(h, w))


def test_small_images_skipped_with_count_and_crop_larger_than_all() -> None:
    pairs = [_pair(10, 20), _pair(30, 30), _pair(40, 8)]
    logs: list[str] = []
    sel = select_for_crop(pairs, 16, logs.append)
    assert [p.lr_size for p in sel.pairs] == [(30, 30)]
    assert sel.skipped == 2
    assert logs == ["skipped 2 of 3 image(s) smaller than the 16x16 LR crop"]
    with pytest.raises(SRDeployError, match=r"LR crop 31x31 is larger than every training image .*30x30"):
        select_for_crop(pairs, 31)


def test_sampler_is_a_function_of_seed_stage_epoch() -> None:
    s = CropSampler(num_images=5, crops_per_image=3, seed=1, stage=0)
    s.set_epoch(0)
    first = list(s)
    assert len(first) == 15
    assert sorted(k.image for k in first) == sorted([i for i in range(5) for _ in range(3)])
    assert list(CropSampler(5, 3, 1, 0)) == first
    s.set_epoch(1)
    assert list(s) != first
    assert list(CropSampler(5, 3, 1, 1)) != first
    # Resuming part-way through an epoch yields exactly the rest of it.
    s.set_epoch(0, skip=4)
    assert list(s) == first[4:]
    assert len(s) == 11


def test_sampler_shards_like_distributed_sampler() -> None:
    shards = [list(CropSampler(5, 3, 1, 0, rank=r, world_size=4)) for r in range(4)]
    assert {len(s) for s in shards} == {4}  # 15 padded to 16
    entropies = [k.entropy for s in shards for k in s]
    assert len(set(entropies)) == 16
    single = list(CropSampler(5, 3, 1, 0))
    assert sorted(k.image for s in shards for k in s)[:15] != [] and {k.image for k in single} == set(range(5))
    with pytest.raises(ValueError, match="outside world size"):
        CropSampler(5, 3, 1, 0, rank=4, world_size=4)


def _nearest_pair(tmp_path: Path, h: int, w: int, seed: int) -> Pair:
    """An HR made of constant 4x4 cells, one per LR pixel: crops are aligned iff lr == hr[::4, ::4]."""
    lr = _img(h, w, seed)
    hr = np.repeat(np.repeat(lr, 4, axis=0), 4, axis=1)
    hr_path = _write(tmp_path / "hr", f"{seed}.png", hr)
    lr_path = _write(tmp_path / "lr", f"{seed}.png", lr)
    return Pair(hr=hr_path, lr=lr_path, lr_size=(h, w))


@pytest.mark.parametrize("storage", ["png", "memory", "decoded"])
def test_crops_are_aligned_under_every_augmentation(tmp_path: Path, storage: str) -> None:
    pairs = [_nearest_pair(tmp_path, 9, 11, 0), _nearest_pair(tmp_path, 12, 10, 1)]
    cache = tmp_path / "cache"
    prepare_decoded(pairs, cache)
    ds = CropDataset(pairs, 4, 5, augment=True, storage=storage, cache=cache)
    seen = set()
    for i in range(64):
        lr, hr = ds[SampleKey(i % 2, (0, 0, 0, i))]
        assert lr.dtype == torch.uint8 and tuple(lr.shape) == (3, 5, 5) and tuple(hr.shape) == (3, 20, 20)
        assert torch.equal(lr, hr[:, ::4, ::4])
        seen.add(hr.numpy().tobytes())
    assert len(seen) > 32  # positions and transforms vary
    # Same key, same crop.
    a, _ = ds[SampleKey(0, (3, 1, 4, 1))]
    b, _ = ds[SampleKey(0, (3, 1, 4, 1))]
    assert torch.equal(a, b)


def test_augmentation_draws_all_eight_transforms(tmp_path: Path) -> None:
    # A 1-pixel-larger-than-crop image has few positions; a crop equal to the image has one: then only the
    # dihedral transform varies, so counting distinct outputs counts transforms.
    pair = _nearest_pair(tmp_path, 4, 4, 5)
    ds = CropDataset([pair], 4, 4, augment=True)
    outs = {ds[SampleKey(0, (0, 0, 0, i))][1].numpy().tobytes() for i in range(200)}
    assert len(outs) == 8
    plain = CropDataset([pair], 4, 4, augment=False)
    assert len({plain[SampleKey(0, (0, 0, 0, i))][1].numpy().tobytes() for i in range(20)}) == 1


def test_loader_batches_do_not_depend_on_workers(tmp_path: Path) -> None:
    pairs = [_nearest_pair(tmp_path, 9, 11, i) for i in range(3)]
    ds = CropDataset(pairs, 4, 5)

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = CropSampler(3, 4, seed=2, stage=0)
        loader = build_loader(
            ds, sampler, batch_size=5, num_workers=workers, pin_memory=False, generator=torch.Generator().manual_seed(0)
        )
        return [lr for lr, _ in loader]

    zero, two = batches(0), batches(2)
    assert [b.shape[0] for b in zero] == [5, 5, 2]
    assert all(torch.equal(a, b) for a, b in zip(zero, two, strict=True))


def test_decoded_cache_is_written_once_and_read_memory_mapped(tmp_path: Path) -> None:
    pair = _nearest_pair(tmp_path, 6, 7, 0)
    cache = tmp_path / "cache"
    logs: list[str] = []
    prepare_decoded([pair], cache, logs.append)
    assert logs == [f"decoded 2 image(s) to {cache / 'decoded'} for memory-mapped crops"]
    arr = np.load(decoded_path(pair.hr, cache), mmap_mode="r")
    assert isinstance(arr, np.memmap) and np.array_equal(arr, read_image(pair.hr).rgb)
    logs.clear()
    prepare_decoded([pair], cache, logs.append)
    assert not logs
    with pytest.raises(ValueError, match="needs the cache folder"):
        CropDataset([pair], 4, 2, storage="decoded")


def test_lr_preparation_is_sharded_over_ranks(tmp_path: Path) -> None:
    hr = tmp_path / "hr"
    for i in range(5):
        _write(hr, f"{i}.png", _img(16, 20, i))
    _write(hr, "tiny.png", _img(3, 20, 9))  # below one LR pixel: never made
    cache = tmp_path / "cache"
    made = [make_missing_lr([hr], 4, cache, rank=r, world_size=2) for r in (0, 1)]
    assert made == [3, 2]  # 6 files; rank 0 takes 0,2,4 (tiny.png, index 5, is rank 1's and skipped)
    assert make_missing_lr([hr], 4, cache) == 0
    assert len(find_pairs([hr], [], 4, cache=cache, make_missing=False)) == 5
