"""`srdeploy train` and `srdeploy train-plot`: parse flags, call sr_deploy.train, print the outcome."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from sr_deploy.train.qat import QatOptions

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


@dataclass(frozen=True)
class QatFlags:
    """`srdeploy train --qat`'s flags, as typed (None: not given)."""

    init_from: str | None
    calib_dir: Path | None
    output: Path | None
    config: Path | None
    hr_dirs: tuple[Path, ...]
    lr_dirs: tuple[Path, ...]
    cache_dir: Path | None
    steps: int | None
    crop: int | None
    calib_count: int | None
    calib_crop: int | None
    percentile: float | None
    scale_lr: float | None
    float_layers: tuple[str, ...]
    seed: int | None
    lr: float | None
    batch_size: int | None
    device: str | None
    reference_dir: Path | None
    openvino_gate: bool
    save_weights: Path | None
    report: Path | None
    as_json: bool
    progress: bool


def _qat_options(f: QatFlags, cfg_seed: int, cfg_device: str) -> QatOptions:
    from sr_deploy.export.quantize import Int8Gates, QuantizeOptions
    from sr_deploy.train.qat import QatOptions

    q = QuantizeOptions()
    seed = f.seed if f.seed is not None else cfg_seed
    quantize = QuantizeOptions(
        calib_count=f.calib_count if f.calib_count is not None else q.calib_count,
        crop=f.calib_crop if f.calib_crop is not None else q.crop,
        seed=seed,
        percentile=f.percentile if f.percentile is not None else q.percentile,
        check_openvino=f.openvino_gate,
        gates=Int8Gates(),
    )
    d = QatOptions()
    return QatOptions(
        steps=f.steps if f.steps is not None else d.steps,
        lr=f.lr if f.lr is not None else d.lr,
        scale_lr=f.scale_lr if f.scale_lr is not None else d.scale_lr,
        batch_size=f.batch_size if f.batch_size is not None else d.batch_size,
        crop=f.crop if f.crop is not None else d.crop,
        seed=seed,
        device=f.device or cfg_device,
        float_layers=f.float_layers,
        quantize=quantize,
    )


def _qat_command(f: QatFlags) -> int:
    """Check every flag and file before loading anything, fine-tune, gate, write; print or write the report."""
    from rich.console import Console

    from sr_deploy.errors import SRDeployError
    from sr_deploy.fileio import check_output_path, dumps_json, files_in, refuse_overwriting_inputs, write_text_atomic
    from sr_deploy.references import HOW_TO_GIVE, check_reference_dir, find_reference_folder
    from sr_deploy.train.config import TrainConfig, load_config

    cfg = load_config(f.config) if f.config is not None else TrainConfig()
    init_from = f.init_from or cfg.init_from
    if init_from is None:
        raise SRDeployError("--qat needs --init-from (the weights to fine-tune and quantize)")
    if f.calib_dir is None:
        raise SRDeployError("--qat needs --calib-dir (a folder of LR images: the activation ranges start from them)")
    if f.output is None:
        raise SRDeployError("--qat needs --output / -o (the int8 .onnx file to write)")
    options = _qat_options(f, cfg.seed, cfg.device)
    options.validate()
    hr_dirs = f.hr_dirs or tuple(Path(d) for d in cfg.data.hr_dirs)
    lr_dirs = f.lr_dirs or tuple(Path(d) for d in cfg.data.lr_dirs)
    if lr_dirs and len(lr_dirs) != len(hr_dirs):
        raise SRDeployError(f"--lr-dir: give one LR folder per --hr-dir ({len(lr_dirs)} for {len(hr_dirs)})")
    outputs = [("--output", f.output), ("--report", f.report), ("--save-weights", f.save_weights)]
    for flag, path in outputs:
        if path is not None:
            check_output_path(path, flag)
    if f.reference_dir is not None:
        check_reference_dir(f.reference_dir)
    read: list[tuple[str, str | Path | None]] = [("--init-from", None if init_from.startswith("ntire:") else init_from)]
    read += [("a --calib-dir image", p) for p in files_in(f.calib_dir)]
    for flag, folders in (("--hr-dir", hr_dirs), ("--lr-dir", lr_dirs)):
        read += [(f"a {flag} image", p) for folder in folders for p in files_in(folder)]
    if f.reference_dir is not None:
        for folder in (f.reference_dir / "LR_bicubic_x4", f.reference_dir / "HR"):
            read += [("a --reference-dir image", p) for p in files_in(folder)]
    refuse_overwriting_inputs(outputs, read)

    from sr_deploy.checkpoints import load_model
    from sr_deploy.commands.progress import status
    from sr_deploy.export.onnx import load_reference_images, require_weights_path
    from sr_deploy.export.quantize import load_calibration_set
    from sr_deploy.train.qat import load_hr_pairs, load_lr_folder, qat_quantize

    if not init_from.startswith("ntire:"):
        if not Path(init_from).is_file():
            raise SRDeployError(f"--init-from {init_from}: no such weights file (.safetensors or .pth)")
        require_weights_path(init_from, "--init-from")
    with status("train --qat") as step:
        step(f"reading {options.quantize.calib_count} calibration images from {f.calib_dir}")
        calib = load_calibration_set(
            f.calib_dir, options.quantize.calib_count, options.quantize.crop, seed=options.seed
        )
        step(f"loading {init_from}")
        model, loaded = load_model(init_from, form="plain")
        scale = model.spec.scale
        if hr_dirs:
            cache = f.cache_dir or (Path(cfg.data.cache_dir) if cfg.data.cache_dir else None)
            data = load_hr_pairs(hr_dirs, lr_dirs, options.crop, scale, cache)
        else:
            data = load_lr_folder(f.calib_dir, options.crop, scale)
        choice = find_reference_folder(f.reference_dir, scale=scale)
        if choice.folder is None:
            raise SRDeployError(
                f"the int8 accuracy gate needs reference images with HR, none found ({choice.origin}): {HOW_TO_GIVE}"
            )
        refs = load_reference_images(choice.folder, scale=scale)
        missing = [r.name for r in refs if r.hr is None]
        if missing:
            raise SRDeployError(f"{choice.folder}: the int8 gate needs HR images, HR/ lacks {', '.join(missing[:3])}")
    with _StepBar(options.steps, f.progress) as bar:
        report = qat_quantize(
            model,
            f.output,
            data,
            calib,
            refs,
            weights_sha256=loaded.sha256,
            options=options,
            reference_label=f"{choice.folder.name} ({len(refs)} images, {choice.folder})",
            say=bar.say,
            progress=bar.advance,
        )
    if f.save_weights is not None and report.finetuned is not None:
        from sr_deploy.checkpoints import save_weights

        save_weights(
            report.finetuned,
            f.save_weights,
            source=f"{init_from} fine-tuned by srdeploy train --qat",
            source_sha256=loaded.sha256,
        )
    result = report.to_dict()
    result["reference_images"] = {"folder": str(choice.folder), "origin": choice.origin}
    if f.report is not None:
        write_text_atomic(f.report, dumps_json(result), "--report")
    if f.as_json:
        typer.echo(dumps_json(result), nl=False)
        return 0
    console = Console()
    for name, step_ in (("PTQ", result["ptq"]), ("QAT", result["qat"])):
        per = "; ".join(f"{s['runtime']} {s['y_drop_db']:.4f} dB" for s in step_["scores"])
        console.print(f"{name}: Y-PSNR drop {per}", markup=False, highlight=False, soft_wrap=True)
    floats = ", ".join(result["float_layers"]) or "none"
    console.print(
        f"fp32 mean Y-PSNR {result['fp32_mean_y_psnr']:.4f} dB (fine-tuned weights in fp32 "
        f"{result['finetuned_fp32_mean_y_psnr']:.4f} dB); wrote {result['path']} "
        f"({result['size_bytes'] / 1e6:.2f} MB, int8 Q/DQ, float layers: {floats})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


class _StepBar:
    """A rich progress bar over the fine-tuning steps on stderr (only on a terminal), with the phase before it."""

    def __init__(self, total: int, enabled: bool) -> None:
        from rich.console import Console

        self.total = total
        self.console = Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _StepBar:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.5f}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("qat", total=self.total, loss=math.nan)
        return self

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=message)

    def advance(self, step: int, total: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, total=total, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


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
        qat: Annotated[
            bool,
            typer.Option(
                "--qat", help="Quantization-aware training of --init-from, written as an int8 Q/DQ graph (-o)."
            ),
        ] = False,
        calib_dir: Annotated[
            Path | None,
            typer.Option(
                "--calib-dir", help="--qat: LR images; calibrate the scales and, without HR, the distillation crops."
            ),
        ] = None,
        output: Annotated[
            Path | None, typer.Option("--output", "-o", help="--qat: the int8 .onnx file to write.")
        ] = None,
        steps: Annotated[int | None, typer.Option("--steps", help="--qat: fine-tuning steps (default 300).")] = None,
        crop: Annotated[int | None, typer.Option("--crop", help="--qat: LR crop size (default 48).")] = None,
        calib_count: Annotated[
            int | None, typer.Option("--calib-count", help="--qat: calibration images (default 32).")
        ] = None,
        calib_crop: Annotated[
            int | None, typer.Option("--calib-crop", help="--qat: calibration crop size (default 96).")
        ] = None,
        percentile: Annotated[
            float | None, typer.Option("--percentile", help="--qat: calibration percentile (default 99.99).")
        ] = None,
        scale_lr: Annotated[
            float | None,
            typer.Option("--scale-lr", help="--qat: learning rate of the activation log-scales (default 1e-3)."),
        ] = None,
        float_layer: Annotated[
            list[str] | None,
            typer.Option(
                "--float-layer", help="--qat: leave this conv in floating point (repeatable, at most 2; e.g. model.0)."
            ),
        ] = None,
        reference_dir: Annotated[
            Path | None,
            typer.Option("--reference-dir", help="--qat: LR_bicubic_x4/ and HR/ for the gate (default: Set5)."),
        ] = None,
        openvino_gate: Annotated[
            bool,
            typer.Option("--openvino-gate/--no-openvino-gate", help="--qat: hold the graph to the gate in OpenVINO."),
        ] = True,
        save_weights: Annotated[
            Path | None,
            typer.Option("--save-weights", help="--qat: also write the fine-tuned float weights (.safetensors)."),
        ] = None,
        report_path: Annotated[
            Path | None, typer.Option("--report", help="--qat: write the full JSON report here.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="--qat: print the report as JSON.")] = False,
    ) -> int:
        """Train the paper's two-stage recipe (or a TOML config); resumable, AMP and torchrun-aware.

        With --qat: fine-tune --init-from with int8 fake quantization (distilled from itself on --calib-dir crops,
        or against HR from --hr-dir / the config) and write the int8 Q/DQ graph -o only if it passes the int8 gate.
        """
        from rich.console import Console

        from sr_deploy.errors import SRDeployError
        from sr_deploy.train.config import TrainConfig, load_config
        from sr_deploy.train.loop import StopRequest, handle_signals, resume_config, train

        qat_only = {
            "--calib-dir": calib_dir,
            "--output": output,
            "--steps": steps,
            "--crop": crop,
            "--calib-count": calib_count,
            "--calib-crop": calib_crop,
            "--percentile": percentile,
            "--scale-lr": scale_lr,
            "--float-layer": float_layer,
            "--reference-dir": reference_dir,
            "--save-weights": save_weights,
            "--report": report_path,
            "--json": as_json or None,
        }
        if not qat:
            given = [flag for flag, value in qat_only.items() if value is not None]
            if given:
                raise SRDeployError(f"{given[0]} is an option of --qat (quantization-aware training)")
        else:
            not_qat = {
                "--resume": resume,
                "--run-dir": run_dir,
                "--epochs": epochs,
                "--val-hr-dir": val_hr_dir,
                "--arch": arch,
                "--amp": amp,
                "--num-workers": num_workers,
                "--val-every": val_every,
                "--checkpoint-every": checkpoint_every,
                "--keep-last": keep_last,
                "--storage": storage,
            }
            given = [flag for flag, value in not_qat.items() if value is not None]
            if given:
                raise SRDeployError(f"{given[0]} is not used with --qat (it fine-tunes --init-from and writes -o)")
            _check_flags(seed=seed, lr=lr, batch_size=batch_size)
            return _qat_command(
                QatFlags(
                    init_from=init_from,
                    calib_dir=calib_dir,
                    output=output,
                    config=config,
                    hr_dirs=tuple(hr_dir or ()),
                    lr_dirs=tuple(lr_dir or ()),
                    cache_dir=cache_dir,
                    steps=steps,
                    crop=crop,
                    calib_count=calib_count,
                    calib_crop=calib_crop,
                    percentile=percentile,
                    scale_lr=scale_lr,
                    float_layers=tuple(float_layer or ()),
                    seed=seed,
                    lr=lr,
                    batch_size=batch_size,
                    device=device,
                    reference_dir=reference_dir,
                    openvino_gate=openvino_gate,
                    save_weights=save_weights,
                    report=report_path,
                    as_json=as_json,
                    progress=progress,
                )
            )
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
