"""The training loop on a tiny model: both stages, exact resume, checkpoints `fuse` accepts, bad input."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from strict_json import load_strict, loads_strict

from sr_deploy.archs.imdn import IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.checkpoints import fuse_checkpoint, load_model, save_ntire
from sr_deploy.errors import Interrupted, MissingDependencyError, SRDeployError
from sr_deploy.fusion import collapse_verified
from sr_deploy.imaging.io import write_image
from sr_deploy.train.config import DataConfig, StageConfig, TrainConfig
from sr_deploy.train.loop import (
    StopRequest,
    handle_signals,
    plot_run,
    read_metrics,
    resume_config,
    setup_distributed,
    train,
)

TINY = {"channels": 16, "distilled": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny convs gain nothing from threads, and on a busy CPU OpenMP threads spin-waiting on each other
    # make every step many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _smooth(h: int, w: int, seed: int) -> np.ndarray:
    # Smooth images (so there is something to learn), from a seeded low-resolution noise field.
    rng = np.random.default_rng(seed)
    small = rng.random((h // 8 + 2, w // 8 + 2, 3))
    ys, xs = np.linspace(0, small.shape[0] - 1, h), np.linspace(0, small.shape[1] - 1, w)
    img = small[ys.astype(int)][:, xs.astype(int)]
    return (img * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train_images")
    (root / "hr").mkdir()
    for i, (h, w) in enumerate([(48, 40), (40, 52), (44, 44), (24, 28)]):  # the last is too small for stage 2
        write_image(root / "hr" / f"{i:04d}.png", _smooth(h, w, i))
    (root / "val").mkdir()
    write_image(root / "val" / "v.png", _smooth(36, 32, 9))
    return root


def tiny_config(images: Path, **kw: object) -> TrainConfig:
    cfg = TrainConfig(
        arch="imdn-b2-clb",
        model=dict(TINY),
        seed=3,
        device="cpu",
        val_every=1,
        checkpoint_every=1,
        keep_last=2,
        log_every=1,
        data=DataConfig(
            hr_dirs=(str(images / "hr"),),
            val_hr_dir=str(images / "val"),
            cache_dir=str(images / "cache"),
            num_workers=0,
        ),
        stages=(
            StageConfig(name="s1", lr_patch=4, crops_per_image=2, epochs=2, batch_size=3, lr=1e-3, milestones=(1,)),
            StageConfig(name="s2", lr_patch=8, crops_per_image=2, epochs=2, batch_size=2, lr=1e-3, milestones=(1,)),
        ),
    )
    return cfg.with_overrides(**kw)


@pytest.fixture(scope="module")
def full_run(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "full"
    result = train(tiny_config(images), run)
    assert result.completed
    return run


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_metrics_log_writes_a_diverged_loss_as_null_with_the_reason(tmp_path: Path) -> None:
    from sr_deploy.train.loop import MetricsLog

    log = MetricsLog(tmp_path / "m.jsonl", enabled=True)
    log.write("epoch", step=3, loss=math.nan, psnr_rgb=math.inf, lr=1e-4)
    record = loads_strict((tmp_path / "m.jsonl").read_text())
    assert record["loss"] is None and record["loss_note"] == "not a number"
    assert record["psnr_rgb"] is None and record["psnr_rgb_note"] == "inf" and record["lr"] == 1e-4


def test_both_stages_run_and_fill_the_run_folder(full_run: Path) -> None:
    for name in ("config.toml", "run.json", "metrics.jsonl", "state.pt", "best.safetensors", "last.safetensors"):
        assert (full_run / name).is_file(), name
    assert load_strict(full_run / "run.json")["arch"] == "imdn-b2-c16-d4-x4-clb"
    for line in (full_run / "metrics.jsonl").read_text().splitlines():
        loads_strict(line)  # every line is JSON that JSON.parse reads: no NaN, no Infinity
    snapshots = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    assert snapshots == ["s02-e00001.safetensors", "s02-e00002.safetensors"]  # keep_last = 2
    records = read_metrics(full_run / "metrics.jsonl")
    events = [r["event"] for r in records]
    assert events[0] == "start" and events[-1] == "done"
    epochs = [(r["stage"], r["epoch"]) for r in records if r["event"] == "epoch"]
    assert epochs == [(1, 1), (1, 2), (2, 1), (2, 2)]
    # Stage 1: 4 images x 2 crops = 8 samples, batch 3 -> 3 steps/epoch. Stage 2 skips the small image:
    # 3 x 2 = 6 samples, batch 2 -> 3 steps/epoch.
    stages = [r for r in records if r["event"] == "stage"]
    assert [(s["images"], s["skipped"]) for s in stages] == [(4, 0), (3, 1)]
    assert records[-1]["step"] == 12
    vals = [r for r in records if r["event"] == "val"]
    assert len(vals) == 4
    best = max(vals, key=lambda r: r["psnr_rgb"])
    meta_best = load_model(full_run / "best.safetensors")[1].provenance
    assert float(meta_best["val_psnr_rgb"]) == pytest.approx(best["psnr_rgb"])
    # The learning rate followed MultiStepLR per epoch: milestone 1, gamma 0.5.
    assert [r["lr"] for r in records if r["event"] == "epoch"] == [1e-3, 5e-4, 1e-3, 5e-4]


def test_training_changes_the_weights_and_stays_clb(full_run: Path, images: Path) -> None:
    init = build_model(tiny_config(images).spec(), seed=3).state_dict()
    last = _weights(full_run / "last.safetensors")
    assert set(last) == set(init)
    assert any(not torch.equal(last[k], init[k]) for k in init)
    # The 1x1 branches trained too (they start random, but they must have moved).
    key = "model.1.sub.0.conv1.0.branches.1.weight"
    assert not torch.equal(last[key], init[key])


def test_checkpoints_are_what_fuse_takes(full_run: Path, tmp_path: Path) -> None:
    for name in ("best.safetensors", "last.safetensors"):
        model, weights = load_model(full_run / name, form="clb")
        assert weights.format == "srdeploy" and model.spec.clb
        _, report = collapse_verified(model)
        assert report.passed
        plain, _ = load_model(full_run / name, form="plain")
        assert not plain.spec.clb
        fuse_report = fuse_checkpoint(full_run / name, tmp_path / f"fused-{name}")
        assert fuse_report.arch_out == "imdn-b2-c16-d4-x4"


def test_interrupted_and_resumed_run_is_bit_identical(full_run: Path, images: Path, tmp_path: Path) -> None:
    run = tmp_path / "interrupted"
    cfg = tiny_config(images)
    # Stop mid-epoch in stage 1, at a stage boundary, and mid-epoch in stage 2, resuming each time.
    stops = [2, 6, 8, None]
    for i, after in enumerate(stops):
        resumed = i > 0
        result = train(resume_config(run) if resumed else cfg, run, resume=resumed, stop=StopRequest(after_step=after))
        assert result.completed == (after is None)
        if after is not None:
            assert result.position["global_step"] == after
    a, b = _weights(full_run / "last.safetensors"), _weights(run / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = _weights(full_run / "best.safetensors"), _weights(run / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    # The metrics log reads like one run: the same epochs and validations, each once.
    def trace(folder: Path) -> list[tuple[object, ...]]:
        records = read_metrics(folder / "metrics.jsonl")
        keep = {"epoch", "val", "step"}
        return [(r["event"], r["step"], r.get("loss"), r.get("psnr_rgb")) for r in records if r["event"] in keep]

    assert trace(run) == trace(full_run)


def test_hard_kill_after_a_stage_end_checkpoint_resumes_exactly(
    full_run: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed (no chance to save) just after stage 1's final checkpoint continues with stage 2."""
    import shutil

    from sr_deploy.train import loop

    run, saved = tmp_path / "killed", tmp_path / "saved"
    original = loop._Run.checkpoint

    def checkpoint_then_copy(self: loop._Run, *args: object, **kw: bool) -> None:
        original(self, *args, **kw)  # type: ignore[arg-type]
        if self.pos.stage == 0 and self.pos.epoch == 2 and not saved.exists():
            shutil.copytree(run, saved)

    monkeypatch.setattr(loop._Run, "checkpoint", checkpoint_then_copy)
    train(tiny_config(images), run)
    monkeypatch.undo()
    # What the kill left: stage 1's last checkpoint, plus log lines of stage 2 that must be dropped.
    shutil.copyfile(run / "metrics.jsonl", saved / "metrics.jsonl")
    result = train(resume_config(saved), saved, resume=True)
    assert result.completed and result.position["global_step"] == 12
    a, b = _weights(full_run / "last.safetensors"), _weights(saved / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(saved / "metrics.jsonl") if r["event"] == "step"]
    assert steps == list(range(1, 13))


def test_resuming_a_finished_run_changes_nothing(full_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    result = train(resume_config(copy), copy, resume=True)
    assert result.completed and result.position["global_step"] == 12
    a, b = _weights(full_run / "last.safetensors"), _weights(copy / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_metrics_logged_after_the_checkpoint(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "crashed"
    train(tiny_config(images), run, stop=StopRequest(after_step=2))
    with open(run / "metrics.jsonl", "a") as f:  # what a hard kill after the checkpoint leaves behind
        f.write(json.dumps({"event": "step", "step": 99, "loss": 1.0}) + "\n" + '{"event": "st')
    train(resume_config(run), run, resume=True, stop=StopRequest(after_step=3))
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if r["event"] == "step"]
    assert steps == [1, 2, 3]


def test_resume_errors(images: Path, full_run: Path, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(SRDeployError, match="not a run folder"):
        resume_config(tmp_path / "plain")
    with pytest.raises(SRDeployError, match="no such run folder"):
        resume_config(tmp_path / "missing")
    with pytest.raises(SRDeployError, match=r"made with arch imdn-b2-c16-d4-x4-clb, not imdn-b7-clb"):
        resume_config(full_run, arch="imdn-b7-clb")
    with pytest.raises(SRDeployError, match="epochs cannot be changed"):
        resume_config(full_run, epochs=9)
    # A config edited to another arch after the fact is caught against run.json.
    other = tiny_config(images).with_overrides(arch="imdn-b3-clb")
    with pytest.raises(SRDeployError, match=r"made with arch imdn-b2-c16-d4-x4-clb, not imdn-b3-c16-d4-x4-clb"):
        train(other, full_run, resume=True)
    with pytest.raises(SRDeployError, match="already holds a run"):
        train(tiny_config(images), full_run)


def test_bad_data_fails_before_a_run_folder_exists(images: Path, tmp_path: Path) -> None:
    cfg = tiny_config(images).with_overrides(lr_patch=64)
    with pytest.raises(SRDeployError, match="LR crop 64x64 is larger than every training image"):
        train(cfg, tmp_path / "r")
    assert not (tmp_path / "r").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SRDeployError, match="no images"):
        train(tiny_config(images).with_overrides(hr_dirs=[str(tmp_path / "empty")]), tmp_path / "r")
    with pytest.raises(SRDeployError, match="amp fp16 needs --device cuda"):
        train(tiny_config(images).with_overrides(amp="fp16"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_init_from_plain_weights_starts_from_the_same_function(images: Path, tmp_path: Path) -> None:
    plain = build_model(IMDNSpec(blocks=2, **TINY), seed=11).eval()
    pth = save_ntire(plain, tmp_path / "plain.pth")
    run = tmp_path / "ft"
    cfg = tiny_config(images).with_overrides(init_from=str(pth), val_at_start=True, epochs=1)
    train(cfg, run, stop=StopRequest(after_step=1))
    first_val = next(r for r in read_metrics(run / "metrics.jsonl") if r["event"] == "val")
    assert first_val["step"] == 0
    # The validation before any step scores the published function itself.
    from sr_deploy.train.data import load_validation
    from sr_deploy.train.loop import validate

    expected = validate(plain, load_validation(images / "val", 4, images / "cache"), torch.device("cpu"), 4)
    assert first_val["psnr_rgb"] == pytest.approx(expected.psnr_rgb, abs=1e-6)
    with pytest.raises(SRDeployError, match="the run trains imdn-b3-c16-d4-x4-clb"):
        train(cfg.with_overrides(arch="imdn-b3-clb"), tmp_path / "ft2")
    # Resuming needs only the run folder: the init weights may be gone by then.
    pth.unlink()
    assert train(resume_config(run), run, resume=True, stop=StopRequest(after_step=2)).position["global_step"] == 2


def test_bf16_autocast_runs_on_cpu(images: Path, tmp_path: Path) -> None:
    cfg = tiny_config(images).with_overrides(amp="bf16", epochs=1)
    result = train(cfg, tmp_path / "bf16", stop=StopRequest(after_step=2))
    assert result.position["global_step"] == 2
    w = _weights(tmp_path / "bf16" / "last.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in w.values())


def test_signals_request_a_stop_and_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with handle_signals(StopRequest()) as stop:
        # Before training steps begin there is nothing to save: the signal stops the command at once, as an
        # exception (so temporary files and the run lock are released), which `srdeploy` turns into exit 143 / 130.
        with pytest.raises(Interrupted) as e:
            os.kill(os.getpid(), signal.SIGTERM)
        assert e.value.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        stop.armed = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason == "SIGTERM"
        assert stop.requested(0)
    assert signal.getsignal(signal.SIGTERM) is before


def test_setup_distributed_single_process_and_device_errors() -> None:
    ctx = setup_distributed("cpu", env={})
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.device.type) == (0, 1, True, "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="no CUDA device"):
            setup_distributed("cuda", env={})


def test_plot_writes_a_png(full_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    out = plot_run(full_run, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        plot_run(full_run, tmp_path / "again.png")
