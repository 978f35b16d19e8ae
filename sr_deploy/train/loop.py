"""The training loop: stages, validation, checkpoints, exact resume, AMP, DDP, and the metrics log.

A run folder holds:

- ``config.toml``     the full config (the paper's defaults plus what the user changed)
- ``run.json``        what the folder is (format tag, arch, spec): `--resume` checks it
- ``metrics.jsonl``   one JSON object per line: step, epoch, val, checkpoint, start/resume/stop events
- ``state.pt``        the resume state: model, optimizer, scheduler, scaler, stage/epoch/step, RNG states
- ``last.safetensors`` / ``best.safetensors``  CLB training form in our format; `srdeploy fuse` takes them
- ``checkpoints/``    the last K epoch snapshots (safetensors)

Every file is written to a temporary name and renamed, so an interrupted write never leaves half a file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sr_deploy import __version__
from sr_deploy.archs.base import SRNet, check_state_dict
from sr_deploy.archs.registry import arch_of, build_model, spec_from_dict
from sr_deploy.archs.spec import ArchSpec
from sr_deploy.errors import Interrupted, MissingDependencyError, SRDeployError
from sr_deploy.fileio import (
    atomic_path,
    check_output_path,
    plot_format,
    read_error,
    write_error,
    write_text_atomic,
)
from sr_deploy.train.config import StageConfig, TrainConfig, load_config
from sr_deploy.train.data import (
    CropDataset,
    CropSampler,
    Pair,
    ValImage,
    build_loader,
    default_cache_dir,
    find_pairs,
    load_validation,
    make_missing_lr,
    prepare_decoded,
    select_for_crop,
)

RUN_FORMAT = "srdeploy-train-run"
STATE_FORMAT = "srdeploy-train-state"
STATE_VERSION = 1

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --- the run folder ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def state(self) -> Path:
        return self.root / "state.pt"

    @property
    def best(self) -> Path:
        return self.root / "best.safetensors"

    @property
    def last(self) -> Path:
        return self.root / "last.safetensors"

    @property
    def snapshots(self) -> Path:
        return self.root / "checkpoints"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def snapshot(self, stage: int, epoch: int) -> Path:
        # Zero-padded so that name order is (stage, epoch) order, which pruning relies on.
        return self.snapshots / f"s{stage + 1:02d}-e{epoch:05d}.safetensors"


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    """run.json of a run folder; a folder that is not one is an error that says so."""
    paths = RunPaths(Path(run_dir))
    if paths.root.exists() and not paths.root.is_dir():
        raise SRDeployError(f"{paths.root}: is a file, expected a run folder")
    if not paths.root.is_dir():
        raise SRDeployError(f"{paths.root}: no such run folder")
    if not paths.run_json.is_file():
        raise SRDeployError(f"{paths.root}: not a run folder (no run.json; was it made by srdeploy train?)")
    try:
        info = json.loads(paths.run_json.read_text(encoding="utf-8"))
    except OSError as e:
        raise read_error(e, paths.run_json) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SRDeployError(f"{paths.run_json}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise SRDeployError(f"{paths.run_json}: not an srdeploy run description (format is not {RUN_FORMAT})")
    return info


def resume_config(run_dir: str | Path, *, arch: str | None = None, **overrides: Any) -> TrainConfig:
    """The config a run was started with, for `--resume`.

    Only options that do not change the recipe may be overridden (device, amp, workers, data folders if
    they moved); asking for another arch is an error naming both.
    """
    info = read_run_info(run_dir)
    paths = RunPaths(Path(run_dir))
    if not paths.state.is_file():
        raise SRDeployError(
            f"{paths.root}: the run never reached a checkpoint (no state.pt), so there is nothing to resume; start it "
            f"again in the same folder: srdeploy train --config {paths.config} --run-dir {paths.root}"
        )
    cfg = load_config(paths.config)
    if arch is not None and arch != info.get("arch") and arch != cfg.arch:
        raise SRDeployError(f"{paths.root} was made with arch {info.get('arch')}, not {arch}")
    allowed = {"device", "amp", "num_workers", "hr_dirs", "lr_dirs", "val_hr_dir", "cache_dir", "storage"}
    changed = sorted(k for k, v in overrides.items() if v is not None and k not in allowed)
    if changed:
        raise SRDeployError(
            f"--resume continues the run's own recipe; {changed[0]} cannot be changed "
            f"(allowed: {', '.join(sorted(allowed))}); start a new run with --init-from instead"
        )
    return cfg.with_overrides(**overrides)


# --- devices and processes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MissingDependencyError(
                "--device cuda: no CUDA device visible to PyTorch (install a CUDA build of torch or use --device cpu)"
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup_distributed(device: str, env: dict[str, str] | None = None) -> DistContext:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        # Ranks wait at barriers while others prepare data or rank 0 validates on large images: allow that
        # rather than the default 10-30 minutes, which a first run over DIV2K + Flickr2K can exceed.
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2))
        here = True
    return DistContext(rank, world, local_rank, dev, initialized_here=here)


# --- stopping on signals ----------------------------------------------------------------------------------


class StopRequest:
    """Set by SIGINT/SIGTERM, after a given step, or at a wall-clock deadline; checked after every step.

    `deadline` is a `time.monotonic()` value (a wall-clock budget for benchmarks and batch-job limits).
    """

    def __init__(self, after_step: int | None = None, deadline: float | None = None) -> None:
        self.reason: str | None = None
        self.after_step = after_step
        self.deadline = deadline
        #: set once training steps begin; before that (data preparation, rendezvous) there is nothing to
        #: save, so a signal acts at once instead of waiting for a first step.
        self.armed = False

    def request(self, reason: str) -> None:
        self.reason = reason

    def requested(self, global_step: int) -> bool:
        if self.reason is None:
            if self.after_step is not None and global_step >= self.after_step:
                self.reason = f"stop requested after step {self.after_step}"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.reason = "wall-clock budget reached"
        return self.reason is not None


@contextlib.contextmanager
def handle_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """SIGINT/SIGTERM finish the current step, save and exit; a second SIGINT aborts at once.

    Before `stop.armed` (data preparation, process-group setup) they abort at once: nothing to save yet.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if not stop.armed or (stop.reason is not None and signum == signal.SIGINT):
            # `srdeploy` prints one line for it and exits 130 / 143; temporary files and the lock are released.
            raise Interrupted(signum)
        stop.request(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --- metrics log ------------------------------------------------------------------------------------------


class MetricsLog:
    """Appends JSON lines (rank 0 only); on resume, drops lines past the checkpoint being resumed."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        record = _strict_record({"event": event, "time": round(time.time(), 3), **fields})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """Forget what was logged after `step` (a crash after the last checkpoint): it will be redone."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= step]
        text = "".join(json.dumps(_strict_record(r), allow_nan=False) + "\n" for r in keep)
        write_text_atomic(self.path, text, "metrics log")


def _strict_record(record: dict[str, Any]) -> dict[str, Any]:
    """A diverged loss (NaN) or an infinite PSNR is not JSON: null, with the reason in ``<key>_note``."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            out[key] = None
            out[f"{key}_note"] = "not a number" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        else:
            out[key] = value
    return out


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a hard kill; everything before it is intact
    return out


# --- validation -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValResult:
    psnr_rgb: float
    psnr_y: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"psnr_rgb": self.psnr_rgb, "psnr_y": self.psnr_y, "images": self.images}


def validate(model: nn.Module, images: list[ValImage], device: torch.device, scale: int) -> ValResult:
    """Mean PSNR on whole images as the challenge computes it: float32 output, clamp, x255, round, border=scale."""
    from sr_deploy.compare import psnr_vs_hr
    from sr_deploy.imaging.io import from_model_output, to_tensor_layout

    was_training = model.training
    model.eval()
    rgb, y = [], []
    with torch.no_grad():
        for img in images:
            x = torch.from_numpy(to_tensor_layout(img.lr)).to(device)
            out = model(x).float().cpu().numpy()
            vs_hr = psnr_vs_hr(from_model_output(out, 8), img.hr, scale)
            rgb.append(vs_hr.rgb_db)
            y.append(vs_hr.y_db)
    model.train(was_training)
    return ValResult(psnr_rgb=float(np.mean(rgb)), psnr_y=float(np.mean(y)), images=len(images))


# --- state ------------------------------------------------------------------------------------------------


@dataclass
class Position:
    """Where the run is: stage index, epochs done in it, steps done in the current epoch, steps overall."""

    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    global_epoch: int = 0  # epochs done over all stages, for plotting
    epoch_loss_sum: float = 0.0
    epoch_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Best:
    psnr_rgb: float = -math.inf
    stage: int = -1
    epoch: int = -1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    completed: bool
    stop_reason: str | None
    position: dict[str, Any]
    best_psnr_rgb: float | None
    last: Path | None
    best: Path | None
    rank: int = 0  # under torchrun every process returns a result; rank 0's is the one to report

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "rank": self.rank,
            "completed": self.completed,
            "stop_reason": self.stop_reason,
            "position": dict(self.position),
            "best_psnr_rgb": self.best_psnr_rgb,
            "last": str(self.last) if self.last else None,
            "best": str(self.best) if self.best else None,
        }


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def load_state(path: Path, spec: ArchSpec) -> dict[str, Any]:
    """The resume state, checked to belong to a run of `spec`."""
    # MultiStepLR keeps its milestones in a Counter; allow exactly that besides plain tensors and containers.
    try:
        with torch.serialization.safe_globals([Counter]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file; all mean the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SRDeployError(f"{path}: not a readable training state ({first})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise SRDeployError(f"{path}: not an srdeploy training state")
    # Everything below is read from the file: check it before anything is built from it.
    for key in ("spec", "position", "best", "model", "rng", "optimizer", "scheduler", "scaler"):
        if not isinstance(state.get(key), dict):
            raise SRDeployError(f"{path}: damaged training state ({key!r} is missing or not a mapping)")
    saved = spec_from_dict(state["spec"], str(path))
    if saved != spec:
        raise SRDeployError(f"{path}: state was made with arch {saved.name}, the run's config says {spec.name}")
    for key, kind in (("position", Position), ("best", Best)):
        try:
            kind(**state[key])
        except TypeError:
            raise SRDeployError(f"{path}: damaged training state ({key!r} has unexpected fields)") from None
    model = state["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        raise SRDeployError(f"{path}: damaged training state (its model is not a mapping of names to tensors)")
    check_state_dict(arch_of(saved), saved, model, str(path))
    return state


def _finished(state: dict[str, Any], cfg: TrainConfig) -> bool:
    """Whether a state was saved at the end of the run's last stage: nothing is left to resume."""
    pos = state["position"]
    last = len(cfg.stages) - 1
    return bool(
        pos.get("stage", 0) >= last and pos.get("epoch", 0) >= cfg.stages[last].epochs and not pos.get("step_in_epoch")
    )


def _finished_result(state: dict[str, Any], paths: RunPaths, ctx: DistContext) -> TrainResult:
    best = state["best"].get("psnr_rgb")
    return TrainResult(
        run_dir=paths.root,
        completed=True,
        stop_reason=None,
        position=dict(state["position"]),
        best_psnr_rgb=best if isinstance(best, float) and math.isfinite(best) else None,
        last=paths.last if paths.last.is_file() else None,
        best=paths.best if paths.best.is_file() else None,
        rank=ctx.rank,
    )


class RunLock:
    """An exclusive lock on a run folder (``flock`` on its ``.lock``), so two `srdeploy train` cannot mix their
    files in one folder. The file keeps the holder's pid for the other's message; the kernel drops the lock when
    the holder exits, however it exits, so a crashed run never leaves a stale lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = RunPaths(root).lock
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, self.root, "--run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise write_error(e, self.path, "--run-dir") from None
            raise SRDeployError(
                f"{self.root}: another srdeploy train (pid {holder}) is using this run folder; wait for it to end "
                "or pick another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# --- the loop ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything one training process holds; methods each do one part of the loop."""

    cfg: TrainConfig
    spec: ArchSpec
    paths: RunPaths
    ctx: DistContext
    stop: StopRequest
    log: Log
    show_progress: bool
    model: SRNet
    pairs: list[Pair]
    val_images: list[ValImage]
    metrics: MetricsLog
    cache: Path
    pos: Position = field(default_factory=Position)
    best: Best = field(default_factory=Best)
    source: str = ""

    # -- setup

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def amp_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)

    def wrap(self) -> nn.Module:
        if not self.ctx.distributed:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.cuda else None
        return DistributedDataParallel(self.model, device_ids=ids)

    # -- checkpoints

    def save_weights(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        from sr_deploy.checkpoints import save_weights

        meta = {
            "train_run": str(self.paths.root),
            "train_stage": str(self.pos.stage + 1),
            "train_epoch": str(self.pos.epoch),
            "train_step": str(self.pos.global_step),
        }
        meta.update({k: str(v) for k, v in (extra or {}).items()})
        save_weights(self.model, path, source=self.source, extra=meta)

    def save_state(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        loader_gen_state: torch.Tensor,
    ) -> None:
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "srdeploy_version": __version__,
            "arch": self.spec.name,
            "spec": self.spec.to_dict(),
            "position": self.pos.to_dict(),
            "best": self.best.to_dict(),
            "model": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(self.device),
            "loader_generator": loader_gen_state,
        }
        with atomic_path(self.paths.state, "training state") as tmp:
            torch.save(state, tmp)

    def checkpoint(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        loader_gen_state: torch.Tensor,
        *,
        snapshot: bool,
    ) -> None:
        """Resume state + last.safetensors (+ an epoch snapshot, pruned to the last K). Rank 0 only."""
        if self.ctx.is_main:
            self.save_state(optimizer, scheduler, scaler, loader_gen_state)
            self.save_weights(self.paths.last)
            if snapshot:
                self.paths.snapshots.mkdir(exist_ok=True)
                self.save_weights(self.paths.snapshot(self.pos.stage, self.pos.epoch))
                for old in sorted(self.paths.snapshots.glob("s*-e*.safetensors"))[: -self.cfg.keep_last]:
                    old.unlink()
            self.metrics.write(
                "checkpoint",
                step=self.pos.global_step,
                stage=self.pos.stage + 1,
                epochs_done=self.pos.epoch,
                step_in_epoch=self.pos.step_in_epoch,
            )
        self.ctx.barrier()

    # -- validation

    def run_validation(self) -> ValResult | None:
        """Validate once (rank 0) and keep best.safetensors; other ranks wait."""
        result = None
        if self.ctx.is_main and self.val_images:
            result = validate(self.model, self.val_images, self.device, self.spec.scale)
            improved = result.psnr_rgb > self.best.psnr_rgb
            if improved:
                self.best = Best(result.psnr_rgb, self.pos.stage, self.pos.epoch)
                self.save_weights(self.paths.best, {"val_psnr_rgb": result.psnr_rgb, "val_psnr_y": result.psnr_y})
            self.metrics.write(
                "val",
                step=self.pos.global_step,
                stage=self.pos.stage + 1,
                epoch=self.pos.epoch,
                global_epoch=self.pos.global_epoch,
                best=improved,
                **result.to_dict(),
            )
            self.log(
                f"val {self.cfg.stages[self.pos.stage].name} epoch {self.pos.epoch}: "
                f"PSNR {result.psnr_rgb:.4f} dB RGB, {result.psnr_y:.4f} dB Y" + (" (best)" if improved else "")
            )
        self.ctx.barrier()
        return result

    # -- one stage

    def run_stage(self, stage_idx: int, state: dict[str, Any] | None) -> bool:
        """Train one stage from `self.pos`; True when it completed, False when stopped."""
        stage = self.cfg.stages[stage_idx]
        per_rank_batch = stage.batch_size // self.ctx.world_size
        selection = select_for_crop(self.pairs, stage.lr_patch, self.log if self.ctx.is_main else None)
        if state is None:  # a resumed stage logged this when it began
            self.metrics.write("stage", step=self.pos.global_step, stage=stage_idx + 1, **selection.to_dict())
        dataset = CropDataset(
            selection.pairs,
            self.spec.scale,
            stage.lr_patch,
            augment=self.cfg.data.augment,
            storage=self.cfg.data.storage,
            cache=self.cache,
        )
        optimizer = torch.optim.Adam(
            self.model.parameters(), lr=stage.lr, betas=stage.betas, eps=stage.eps, weight_decay=stage.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(stage.milestones), gamma=stage.gamma)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.amp == "fp16")
        # One generator per stage, seeded from the run seed: it only feeds the workers' base seed.
        generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + stage_idx)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            generator.set_state(state["loader_generator"])
        sampler = CropSampler(
            len(selection.pairs),
            stage.crops_per_image,
            self.cfg.seed,
            stage_idx,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        net = self.wrap()
        net.train()
        for epoch in range(self.pos.epoch, stage.epochs):
            self.pos.epoch = epoch
            # A stop after an epoch's last step resumes with nothing left of it but its end (val, checkpoint);
            # the last batch may be short, hence the min.
            sampler.set_epoch(epoch, skip=min(self.pos.step_in_epoch * per_rank_batch, sampler.per_rank))
            gen_state = generator.get_state()  # as at the epoch's start, so a resume redraws the same seeds
            loader = build_loader(
                dataset,
                sampler,
                batch_size=per_rank_batch,
                num_workers=self.cfg.data.num_workers,
                pin_memory=self.cuda,
                generator=generator,
            )
            stopped = self.run_epoch(stage, net, loader, optimizer, scaler, epoch)
            if stopped:
                self.checkpoint(optimizer, scheduler, scaler, gen_state, snapshot=False)
                return False
            lr_used = optimizer.param_groups[0]["lr"]
            scheduler.step()
            self.end_epoch(lr_used)
            last = epoch + 1 == stage.epochs
            if last or (epoch + 1) % self.cfg.val_every == 0:
                self.run_validation()
            if last or (epoch + 1) % self.cfg.checkpoint_every == 0:
                self.checkpoint(optimizer, scheduler, scaler, generator.get_state(), snapshot=True)
        return True

    def end_epoch(self, lr_used: float) -> None:
        mean = self.pos.epoch_loss_sum / max(self.pos.epoch_samples, 1)
        self.pos.epoch += 1
        self.pos.global_epoch += 1
        self.pos.step_in_epoch = 0
        self.metrics.write(
            "epoch",
            step=self.pos.global_step,
            stage=self.pos.stage + 1,
            epoch=self.pos.epoch,
            global_epoch=self.pos.global_epoch,
            loss=mean,
            lr=lr_used,
        )
        self.pos.epoch_loss_sum = 0.0
        self.pos.epoch_samples = 0

    def run_epoch(
        self,
        stage: StageConfig,
        net: nn.Module,
        loader: torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]],
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        epoch: int,
    ) -> bool:
        """Steps until the epoch ends (False) or a stop is requested (True, after finishing the step)."""
        amp_dtype = self.amp_dtype()
        memory_format = torch.channels_last if self.cuda and self.cfg.channels_last else torch.contiguous_format
        lr = optimizer.param_groups[0]["lr"]
        total_steps = self.pos.step_in_epoch + len(loader)
        bar = _EpochBar(
            f"{stage.name} {epoch + 1}/{stage.epochs}", total_steps, self.pos.step_in_epoch, self.show_progress
        )
        started = time.perf_counter()
        samples_here = 0
        with bar:
            for lr_u8, hr_u8 in loader:
                x = lr_u8.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=memory_format)
                y = hr_u8.to(self.device, non_blocking=True).float().div_(255)
                with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    out = net(x)
                loss = F.l1_loss(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.step(optimizer)
                scaler.update()
                loss_value = float(loss.detach())
                n = int(x.shape[0]) * self.ctx.world_size
                self.pos.global_step += 1
                self.pos.step_in_epoch += 1
                self.pos.epoch_loss_sum += loss_value * n
                self.pos.epoch_samples += n
                samples_here += n
                ips = samples_here / max(time.perf_counter() - started, 1e-9)
                bar.advance(loss_value, lr, ips)
                if self.pos.global_step % self.cfg.log_every == 0:
                    self.metrics.write(
                        "step",
                        step=self.pos.global_step,
                        stage=self.pos.stage + 1,
                        epoch=epoch + 1,
                        loss=loss_value,
                        lr=lr,
                        images_per_s=ips,
                    )
                if self._stop_agreed():
                    return True
        return False

    def _stop_agreed(self) -> bool:
        """Whether any rank was asked to stop: all ranks must stop after the same step or DDP hangs."""
        wanted = self.stop.requested(self.pos.global_step)
        if not self.ctx.distributed:
            return wanted
        flag = torch.tensor([1.0 if wanted else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0 and self.stop.reason is None:
            self.stop.request("stop requested on another rank")
        return bool(flag.item() > 0)


class _EpochBar:
    """A rich progress bar for one epoch: loss, learning rate, images per second."""

    def __init__(self, title: str, total: int, done: int, enabled: bool) -> None:
        self.enabled = enabled
        self.title = title
        self.total = total
        self.done = done
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _EpochBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.5f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.1f} img/s"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                self.title, total=self.total, completed=self.done, loss=math.nan, lr=0.0, ips=0.0
            )
        return self

    def advance(self, loss: float, lr: float, ips: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=loss, lr=lr, ips=ips)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


# --- entry points -----------------------------------------------------------------------------------------


def _init_model(cfg: TrainConfig, spec: ArchSpec) -> tuple[SRNet, str]:
    """A seeded random init, or `init_from` converted to the run's CLB form (exact: zero 1x1 branches)."""
    if cfg.init_from is None:
        return build_model(spec, seed=cfg.seed), ""
    from sr_deploy.checkpoints import load_model

    model, loaded = load_model(cfg.init_from, form="clb" if spec.training_form else "plain")
    if model.spec != spec:
        raise SRDeployError(
            f"--init-from {cfg.init_from}: weights are {model.spec.name} ({loaded.spec.name} as stored), "
            f"the run trains {spec.name}"
        )
    return model, f"{cfg.init_from} (sha256 {loaded.sha256})"


def _check_runtime(cfg: TrainConfig, ctx: DistContext) -> None:
    if cfg.amp == "fp16" and ctx.device.type != "cuda":
        raise SRDeployError("--amp fp16 needs --device cuda (use --amp bf16 or none on the CPU)")
    for i, s in enumerate(cfg.stages):
        if s.batch_size % ctx.world_size:
            raise SRDeployError(
                f"stages[{i}].batch_size {s.batch_size} is the global batch and must divide by the "
                f"{ctx.world_size} processes"
            )


def _check_run_dir(paths: RunPaths) -> None:
    """Refuse a --run-dir that is a file, or that holds a run with something to lose (a checkpoint or weights)."""
    if paths.root.exists() and not paths.root.is_dir():
        raise SRDeployError(f"--run-dir {paths.root}: is a file, expected a folder (new, or made by srdeploy train)")
    if paths.run_json.exists() and (paths.state.exists() or paths.last.exists() or paths.best.exists()):
        raise SRDeployError(
            f"{paths.root} already holds a run; continue it with --resume {paths.root} or pick another --run-dir"
        )


def _make_run_dir(paths: RunPaths) -> None:
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, paths.root, "--run-dir") from None
    if not os.access(paths.root, os.W_OK | os.X_OK):
        raise SRDeployError(f"--run-dir {paths.root}: cannot write to it (permission denied or read-only)")


def _start_folder(cfg: TrainConfig, spec: ArchSpec, paths: RunPaths) -> None:
    # A run that never reached a checkpoint (`_check_run_dir` let it through) starts over: its log goes too.
    with contextlib.suppress(FileNotFoundError):
        paths.metrics.unlink()
    cfg.save(paths.config)
    info = {
        "format": RUN_FORMAT,
        "arch": spec.name,
        "spec": spec.to_dict(),
        "srdeploy_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(paths.run_json, json.dumps(info, indent=2) + "\n", "run description")


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop: StopRequest | None = None,
    show_progress: bool = False,
    log: Log | None = None,
    env: dict[str, str] | None = None,
) -> TrainResult:
    """Train (or, with `resume`, continue) the run in `run_dir`. Under torchrun every rank calls this."""
    cfg = cfg.validate()
    spec = cfg.spec()
    ctx = setup_distributed(cfg.device, env)
    try:
        _check_runtime(cfg, ctx)
        return _train(cfg, spec, RunPaths(Path(run_dir)), ctx, resume, stop or StopRequest(), show_progress, log)
    finally:
        if ctx.initialized_here and dist.is_initialized():
            # The DDP wrapper and the loop's objects hold the process group and sit in reference cycles. Left to
            # interpreter exit, gloo's threads can be torn down while joinable ("terminate called without an
            # active exception", SIGABRT on about 1 in 50 torchrun runs). Free them now, then destroy the group.
            gc.collect()
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    spec: ArchSpec,
    paths: RunPaths,
    ctx: DistContext,
    resume: bool,
    stop: StopRequest,
    show_progress: bool,
    log: Log | None,
) -> TrainResult:
    held: list[RunLock] = []  # the run folder's lock once taken (rank 0), released however the run ends
    try:
        return _train_in(cfg, spec, paths, ctx, resume, stop, show_progress, log, held)
    finally:
        for lock in held:
            lock.release()


def _train_in(
    cfg: TrainConfig,
    spec: ArchSpec,
    paths: RunPaths,
    ctx: DistContext,
    resume: bool,
    stop: StopRequest,
    show_progress: bool,
    log: Log | None,
    held: list[RunLock],
) -> TrainResult:
    say = (log or _quiet) if ctx.is_main else _quiet
    state: dict[str, Any] | None = None
    if resume:
        info = read_run_info(paths.root)
        if info.get("arch") != spec.name:
            raise SRDeployError(f"{paths.root} was made with arch {info.get('arch')}, not {spec.name}")
        if ctx.is_main:
            held.append(RunLock(paths.root).acquire())  # before reading a state another process may be writing
        state = load_state(paths.state, spec)
        if _finished(state, cfg):
            # Nothing to do and nothing written: a scheduler that requeues a finished job gets success again.
            say(
                f"{paths.root}: the run is already finished (all {len(cfg.stages)} stage(s), "
                f"{state['position'].get('global_step')} steps); nothing to resume"
            )
            return _finished_result(state, paths, ctx)
    else:
        _check_run_dir(paths)

    # Everything that can be wrong with the data or the weights fails here, before a run folder exists
    # and before stage 1 runs for days only for stage 2 to find its crop larger than every image.
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    scale = spec.scale
    # Every rank makes its share of the missing LR / decoded files (the first DDP run on DIV2K + Flickr2K
    # has about 3,500 images to prepare), then all read the complete cache. Every rank runs the same checks,
    # so bad input fails on all of them at once instead of leaving some waiting at a barrier.
    if not cfg.data.lr_dirs:
        made = make_missing_lr(cfg.data.hr_dirs, scale, cache, rank=ctx.rank, world_size=ctx.world_size)
        if made:
            say(f"made {made} LR image(s) x{scale} with the MATLAB bicubic (cached in {cache})")
    ctx.barrier()
    pairs = find_pairs(cfg.data.hr_dirs, cfg.data.lr_dirs, scale, cache=cache, make_missing=False)
    for stage in cfg.stages:
        select_for_crop(pairs, stage.lr_patch)
    if cfg.data.storage == "decoded":
        prepare_decoded(pairs[ctx.rank :: ctx.world_size], cache, say)
    ctx.barrier()
    val_images = load_validation(cfg.data.val_hr_dir, scale, cache) if cfg.data.val_hr_dir and ctx.is_main else []
    # On resume the weights come from the state; the init file is not needed (it may have moved since).
    model, source = _init_model(cfg, spec) if state is None else (build_model(spec), cfg.init_from or "")

    if not resume and ctx.is_main:
        # Only now, with every check passed, does the folder appear; the lock is held until the run ends.
        _make_run_dir(paths)
        held.append(RunLock(paths.root).acquire())
        _check_run_dir(paths)  # again, under the lock: another run may have started here meanwhile
        _start_folder(cfg, spec, paths)
    ctx.barrier()
    metrics = MetricsLog(paths.metrics, ctx.is_main)
    run = _Run(
        cfg, spec, paths, ctx, stop, say, show_progress and ctx.is_main, model, pairs, val_images, metrics, cache
    )
    run.source = source
    if state is not None:
        model.load_state_dict(state["model"])
        run.pos = Position(**state["position"])
        run.best = Best(**state["best"])
        _set_rng_state(state["rng"], ctx.device)
        metrics.truncate_after(run.pos.global_step)
        metrics.write("resume", step=run.pos.global_step, stage=run.pos.stage + 1, epoch=run.pos.epoch)
        # A checkpoint at a stage's end continues with the next stage's fresh optimizer.
        if run.pos.epoch >= cfg.stages[run.pos.stage].epochs and run.pos.step_in_epoch == 0:
            run.pos = replace(run.pos, stage=run.pos.stage + 1, epoch=0)
            state = None
        say(
            f"resuming {paths.root} in stage {run.pos.stage + 1}, epoch {run.pos.epoch + 1}, "
            f"after step {run.pos.global_step}"
        )
    else:
        metrics.write("start", step=0, arch=spec.name, config=cfg.to_dict(), world_size=ctx.world_size)
    model.to(ctx.device)
    if ctx.device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    if state is None and run.pos.global_step == 0 and cfg.val_at_start:
        run.run_validation()

    stop.armed = True
    for stage_idx in range(run.pos.stage, len(cfg.stages)):
        run.pos.stage = stage_idx
        if not run.run_stage(stage_idx, state):
            say(
                f"stopped ({stop.reason}) in stage {stage_idx + 1}, epoch {run.pos.epoch + 1}, after step "
                f"{run.pos.global_step}; checkpoint saved. Continue with: srdeploy train --resume {paths.root}"
            )
            metrics.write("stopped", step=run.pos.global_step, reason=stop.reason)
            return _result(run, completed=False)
        state = None
        run.pos = replace(run.pos, epoch=0, step_in_epoch=0)
        if stage_idx + 1 < len(cfg.stages):
            run.pos.stage = stage_idx + 1

    if ctx.is_main and not val_images:
        # No validation set: "best" cannot be chosen, so it is the final weights (and says so).
        run.save_weights(paths.best, {"selected_by": "last (no validation set)"})
    metrics.write("done", step=run.pos.global_step)
    say(f"done: {paths.last}" + (f", best {paths.best} ({run.best.psnr_rgb:.4f} dB)" if val_images else ""))
    ctx.barrier()
    return _result(run, completed=True)


def _result(run: _Run, completed: bool) -> TrainResult:
    best_psnr = run.best.psnr_rgb if math.isfinite(run.best.psnr_rgb) else None
    return TrainResult(
        run_dir=run.paths.root,
        completed=completed,
        stop_reason=run.stop.reason,
        position=run.pos.to_dict(),
        best_psnr_rgb=best_psnr,
        last=run.paths.last if run.paths.last.is_file() else None,
        best=run.paths.best if run.paths.best.is_file() else None,
        rank=run.ctx.rank,
    )


# --- plotting ---------------------------------------------------------------------------------------------


def plot_run(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Loss and validation PSNR curves of a run as a PNG (default RUN_DIR/curves.png)."""
    paths = RunPaths(Path(run_dir))
    read_run_info(paths.root)
    out = Path(output) if output is not None else paths.root / "curves.png"
    # Before the plot is drawn: -o RUN/config.toml would leave a run that can no longer resume.
    check_output_path(out, "-o")
    fmt = plot_format(out, "-o")
    if not paths.metrics.is_file():
        raise SRDeployError(f"{paths.root}: no metrics.jsonl yet (has the run taken a step?)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "train-plot needs matplotlib (a dependency of srdeploy), which is missing here: pip install matplotlib"
        ) from None
    try:
        records = read_metrics(paths.metrics)
    except OSError as e:
        raise read_error(e, paths.metrics) from None
    epochs = [r for r in records if r["event"] == "epoch"]
    vals = [r for r in records if r["event"] == "val"]
    if not epochs and not vals:
        raise SRDeployError(f"{paths.metrics}: no finished epoch or validation to plot yet")
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["global_epoch"] for r in epochs], [r["loss"] for r in epochs], label="train L1 (epoch mean)")
    ax_loss.set_xlabel("epoch (all stages)")
    ax_loss.set_ylabel("L1 loss")
    ax_loss.set_yscale("log")
    ax_psnr.plot([r["global_epoch"] for r in vals], [r["psnr_rgb"] for r in vals], "o-", label="RGB")
    ax_psnr.plot([r["global_epoch"] for r in vals], [r["psnr_y"] for r in vals], "s--", label="Y")
    ax_psnr.set_xlabel("epoch (all stages)")
    ax_psnr.set_ylabel("validation PSNR (dB)")
    # Mark where each stage after the first begins.
    starts = sorted({r["global_epoch"] - r["epoch"] for r in epochs if r["stage"] > 1})
    for ax in (ax_loss, ax_psnr):
        for x in starts:
            ax.axvline(x, color="gray", linestyle=":", linewidth=1)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{paths.root.name}")
    fig.tight_layout()
    try:
        with atomic_path(out, "-o") as tmp:
            fig.savefig(tmp, format=fmt, dpi=110)
    finally:
        plt.close(fig)
    return out
