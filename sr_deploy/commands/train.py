"""`srdeploy train` and `srdeploy train-plot`: parse flags, call sr_deploy.train, print the outcome."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any

import typer

#: Exit codes of a run stopped by a signal (checkpoint saved): the shell's 128 + signal number convention,
#: so a job scheduler sees that the run is not finished and can requeue it with --resume.
STOP_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


def _default_run_dir(arch: str) -> Path:
    return Path("runs") / f"{arch}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _check_flags(*, seed: int | None, lr: float | None, **counts: int | None) -> None:
    """Numeric flags checked by name before anything runs (the config check says `seed`, the user typed --seed)."""
    from sr_deploy.errors import SRDeployError
    from sr_deploy.train.config import MAX_COUNT, MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise SRDeployError(f"--seed {seed}: expected 0..{MAX_SEED}")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise SRDeployError(f"--lr {lr}: expected a finite number > 0")
    for name, value in counts.items():
        least = 0 if name == "num_workers" else 1
        if value is not None and not least <= value <= MAX_COUNT:
            raise SRDeployError(f"--{name.replace('_', '-')} {value}: expected {least}..{MAX_COUNT}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""

    @app.command("train")
    def train_cmd(
        hr_dir: Annotated[
            list[Path] | None, typer.Option("--hr-dir", help="HR training images (repeat for several folders).")
        ] = None,
        lr_dir: Annotated[
            list[Path] | None,
            typer.Option(
                "--lr-dir",
                help="LR images paired with each --hr-dir in order (0001x4.png or 0001.png); "
                "default: made with the MATLAB bicubic and cached.",
            ),
        ] = None,
        val_hr_dir: Annotated[
            Path | None, typer.Option("--val-hr-dir", help="HR validation images (PSNR RGB, border = scale).")
        ] = None,
        config: Annotated[
            Path | None, typer.Option("--config", help="TOML config; missing keys keep the paper's defaults.")
        ] = None,
        run_dir: Annotated[
            Path | None, typer.Option("--run-dir", help="Run folder to create (default runs/<arch>-<time>).")
        ] = None,
        resume: Annotated[
            Path | None, typer.Option("--resume", help="Continue the run in this folder exactly where it stopped.")
        ] = None,
        init_from: Annotated[
            str | None,
            typer.Option(
                "--init-from", help="Start from these weights (plain or CLB .pth/.safetensors, ntire:team26)."
            ),
        ] = None,
        arch: Annotated[str | None, typer.Option("--arch", help="Architecture (default imdn-b7-clb).")] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed for init, shuffling and crops.")] = None,
        device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")] = None,
        amp: Annotated[str | None, typer.Option("--amp", help="Mixed precision: none, bf16 or fp16 (CUDA).")] = None,
        epochs: Annotated[int | None, typer.Option("--epochs", help="Epochs of every stage.")] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", help="Global batch of every stage (split over DDP ranks).")
        ] = None,
        lr: Annotated[float | None, typer.Option("--lr", help="Initial learning rate of every stage.")] = None,
        num_workers: Annotated[int | None, typer.Option("--num-workers", help="DataLoader workers.")] = None,
        val_every: Annotated[int | None, typer.Option("--val-every", help="Validate every N epochs.")] = None,
        checkpoint_every: Annotated[
            int | None, typer.Option("--checkpoint-every", help="Checkpoint every N epochs.")
        ] = None,
        keep_last: Annotated[int | None, typer.Option("--keep-last", help="Epoch snapshots to keep.")] = None,
        cache_dir: Annotated[
            Path | None,
            typer.Option("--cache-dir", help="Where made LR images and decoded arrays are cached."),
        ] = None,
        storage: Annotated[
            str | None,
            typer.Option("--storage", help="decoded (memory-mapped .npy cache, default), memory or png."),
        ] = None,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bar per epoch.")] = True,
    ) -> int:
        """Train the paper's two-stage recipe (or a TOML config); resumable, AMP and torchrun-aware."""
        from rich.console import Console

        from sr_deploy.errors import SRDeployError
        from sr_deploy.train.config import TrainConfig, load_config
        from sr_deploy.train.loop import StopRequest, handle_signals, resume_config, train

        _check_flags(
            seed=seed,
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            num_workers=num_workers,
            val_every=val_every,
            checkpoint_every=checkpoint_every,
            keep_last=keep_last,
        )
        console = Console(stderr=True)
        data_overrides: dict[str, Any] = {
            "hr_dirs": [str(p) for p in hr_dir] if hr_dir else None,
            "lr_dirs": [str(p) for p in lr_dir] if lr_dir else None,
            "val_hr_dir": str(val_hr_dir) if val_hr_dir else None,
            "cache_dir": str(cache_dir) if cache_dir else None,
            "num_workers": num_workers,
            "storage": storage,
            "device": device,
            "amp": amp,
        }
        recipe_overrides: dict[str, Any] = {
            "init_from": init_from,
            "seed": seed,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "val_every": val_every,
            "checkpoint_every": checkpoint_every,
            "keep_last": keep_last,
        }
        if resume is not None:
            if config is not None:
                raise SRDeployError("--resume uses the run's own config.toml; drop --config")
            cfg = resume_config(resume, arch=arch, **data_overrides, **recipe_overrides)
            folder = resume
        else:
            cfg = load_config(config) if config is not None else TrainConfig()
            cfg = cfg.with_overrides(arch=arch, **data_overrides, **recipe_overrides)
            folder = run_dir if run_dir is not None else _default_run_dir(cfg.arch)
        with handle_signals(StopRequest()) as stop:
            result = train(cfg, folder, resume=resume is not None, stop=stop, show_progress=progress, log=console.print)
        if not result.completed:
            return STOP_EXIT_CODES.get(result.stop_reason or "", 130)
        if result.rank == 0:
            typer.echo(f"last: {result.last}")
            typer.echo(f"best: {result.best}")
        return 0

    @app.command("train-plot")
    def train_plot_cmd(
        run_dir: Annotated[Path, typer.Argument(help="A run folder made by srdeploy train.")],
        output: Annotated[
            Path | None,
            typer.Option("-o", "--output", help="Plot to write: .png, .svg or .pdf (default RUN_DIR/curves.png)."),
        ] = None,
    ) -> None:
        """Draw the loss and validation PSNR curves of a run to a PNG (needs matplotlib)."""
        from sr_deploy.train.loop import plot_run

        typer.echo(str(plot_run(run_dir, output)))
