"""`srdeploy bench`: the challenge's timing method and the budget verdict, for one backend or all side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sr_deploy.errors import SRDeployError

if TYPE_CHECKING:
    from sr_deploy.bench import BenchImage, BenchModels, BenchReport, BenchSettings, ProgressHook

#: Enough synthetic images for a stable mean without making a CPU run take minutes.
_DEFAULT_SYNTHETIC_COUNT = 10


def _inputs(
    input_dir: Path | None, hr_dir: Path | None, synthetic: str | None, count: int | None, seed: int, scale: int
) -> tuple[list[BenchImage], dict[str, Any]]:
    """Decode the inputs (never timed) and describe them for the report."""
    from sr_deploy.bench import load_bench_images, synthetic_images
    from sr_deploy.shapes import parse_hw

    if synthetic is not None:
        if input_dir is not None or hr_dir is not None:
            raise SRDeployError("--synthetic times generated inputs: give it without --input and --hr")
        h, w = parse_hw(synthetic, "--synthetic")
        count = _DEFAULT_SYNTHETIC_COUNT if count is None else count
        images = synthetic_images(h, w, count, seed=seed)
        desc = f"{count} synthetic {h}x{w} image(s), seed {seed}"
        return images, {
            "kind": "synthetic",
            "count": count,
            "description": desc,
            "input_dir": None,
            "hr_dir": None,
            "synthetic_hw": [h, w],
        }
    if count is not None:
        raise SRDeployError("--count goes with --synthetic HxW")
    if input_dir is None:
        raise SRDeployError("give --input DIR (a folder of LR images) or --synthetic HxW --count N")
    images = load_bench_images(input_dir, hr_dir, scale=scale)
    sizes = sorted({(i.height, i.width) for i in images})
    size_text = f"{sizes[0][0]}x{sizes[0][1]}" if len(sizes) == 1 else f"{len(sizes)} sizes"
    desc = f"{len(images)} image(s) from {input_dir} ({size_text})" + (f", HR from {hr_dir}" if hr_dir else "")
    return images, {
        "kind": "folder",
        "count": len(images),
        "description": desc,
        "input_dir": str(input_dir),
        "hr_dir": str(hr_dir) if hr_dir else None,
        "synthetic_hw": None,
    }


def _print_summary(report: BenchReport, console: Console) -> None:
    show_psnr = any(r.psnr_y_mean is not None for r in report.rows)
    table = Table(title=f"{report.model['arch']} x{report.model['scale']}: {report.inputs['description']}")
    cols = [
        "backend",
        "challenge mean ms",
        "cold first ms",
        "warm median ms",
        "warm p99 ms",
        "e2e median ms",
        "MP/s",
        "speed-up",
        "verdict",
    ] + (["PSNR Y dB"] if show_psnr else [])
    # The speed-up is over the challenge's way (torch eager fp32), which only `--backend all` measures.
    keep = [c != "speed-up" or any(r.speedup is not None for r in report.rows) for c in cols]
    cols = [c for c, k in zip(cols, keep, strict=True) if k]
    for c in cols:
        table.add_column(c, justify="left" if c == "backend" else "right", no_wrap=c == "backend")
    for r in report.rows:
        if not r.ok or r.challenge is None or r.warm is None or r.warm_end_to_end is None:
            table.add_row(r.plan.key, f"[dim]{r.status}[/dim]", *[""] * (len(cols) - 2))
            continue
        cells = [
            r.plan.key,
            f"{r.challenge.mean_ms:.2f}",
            f"{r.challenge.cold_first_ms:.2f}",
            f"{r.warm.median_ms:.2f}",
            f"{r.warm.p99_ms:.2f}",
            f"{r.warm_end_to_end.median_ms:.2f}",
            f"{r.throughput_mpix_s:.2f}" if r.throughput_mpix_s is not None else "",
            f"{r.speedup:.2f}x" if r.speedup is not None else "",
            f"{r.verdict.status} {r.verdict.ratio:.2f}x" if r.verdict else "",
        ] + ([f"{r.psnr_y_mean:.4f}" if r.psnr_y_mean is not None else ""] if show_psnr else [])
        table.add_row(*[c for c, k in zip(cells, keep, strict=True) if k])
    console.print(table)
    # Reasons go below the table, unwrapped: they say what to install, and a narrow cell would mangle that.
    for r in report.rows:
        if not r.ok:
            console.print(f"{r.plan.key} {r.status}: {r.reason}", soft_wrap=True, highlight=False, markup=False)
    for note in report.notes:
        if note.startswith("No --weights"):
            continue  # already said on stderr before the run started
        console.print(f"note: {note}", soft_wrap=True, highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        input_dir: Annotated[
            Path | None,
            typer.Option("--input", help="Folder of LR images (x4 inputs), e.g. DIV2K_valid_LR_bicubic/X4."),
        ] = None,
        hr_dir: Annotated[
            Path | None, typer.Option("--hr", help="Folder of HR images paired by name (0801x4.png ~ 0801.png): PSNR.")
        ] = None,
        weights: Annotated[
            str | None, typer.Option(help="Checkpoint (.safetensors, .pth, ntire:team26); default: random imdn-b7.")
        ] = None,
        backend: Annotated[
            str, typer.Option(help="auto, torch, onnxruntime, openvino, tensorrt, or all (side by side).")
        ] = "auto",
        precision: Annotated[str, typer.Option(help="fp32, fp16 or bf16 (ignored by --backend all).")] = "fp32",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        budget_ms: Annotated[float, typer.Option(help="Runtime budget for the challenge mean, in ms.")] = 49.42,
        warmup: Annotated[int, typer.Option(help="Untimed calls before the warm passes.")] = 3,
        repeat: Annotated[int, typer.Option(help="Timed warm passes over the whole set.")] = 3,
        synthetic: Annotated[
            str | None, typer.Option(help="Time generated HxW inputs instead of a folder, e.g. 339x510 (DIV2K LR).")
        ] = None,
        count: Annotated[
            int | None, typer.Option(help=f"Number of --synthetic images (default {_DEFAULT_SYNTHETIC_COUNT}).")
        ] = None,
        seed: Annotated[int, typer.Option(help="Seed of the synthetic inputs and of the random weights.")] = 0,
        report: Annotated[Path | None, typer.Option("--report", help="Write the full JSON report here.")] = None,
        markdown: Annotated[Path | None, typer.Option(help="Write a markdown summary here.")] = None,
        plot: Annotated[Path | None, typer.Option(help="Write a bar chart (PNG) with the budget line here.")] = None,
        fail_over_budget: Annotated[
            bool, typer.Option("--fail-over-budget", help="Exit with code 1 when the verdict is FAIL.")
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
    ) -> int:
        """Time x4 upscaling the NTIRE 2022 ESR way (forward only, first image counted) against the budget."""
        from sr_deploy.bench import (
            BenchSettings,
            check_backend_available,
            load_bench_models,
            random_weights_note,
            render_markdown,
            require_matplotlib,
            write_plot,
        )
        from sr_deploy.fileio import check_output_path, write_text_atomic

        settings = BenchSettings(
            backend=backend,
            precision=precision,
            device=device,
            budget_ms=budget_ms,
            warmup=warmup,
            repeat=repeat,
            seed=seed,
        )
        # Every cheap check first, so a typo never costs a benchmark's worth of waiting.
        settings.validate()
        for path, what in ((report, "--report"), (markdown, "--markdown"), (plot, "--plot")):
            if path is not None:
                check_output_path(path, what)
        if plot is not None:
            require_matplotlib()
        check_backend_available(backend)
        models = load_bench_models(weights, need_clb=backend == "all", seed=seed)
        images, inputs = _inputs(input_dir, hr_dir, synthetic, count, seed, models.deploy.spec.scale)

        # Wide enough for the table when stdout is a file or a pipe (rich would assume 80 columns there).
        out = Console(width=max(Console().width, 132))
        err = Console(stderr=True)
        if models.random_weights:
            note = random_weights_note(models.arch, models.weights_source)
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
        result = _run_with_progress(images, models, settings, inputs, err, quiet)

        if report is not None:
            write_text_atomic(report, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", "--report")
        if markdown is not None:
            write_text_atomic(markdown, render_markdown(result), "--markdown")
        if plot is not None:
            write_plot(result, plot)
        if not quiet:
            _print_summary(result, out)
        verdict = result.verdict
        if verdict is None:
            raise SRDeployError(
                "no backend could run here: " + "; ".join(f"{r.plan.key}: {r.reason}" for r in result.rows)
            )
        typer.echo(verdict.message)
        return 1 if fail_over_budget and not verdict.passed else 0


def _run_with_progress(
    images: list[BenchImage],
    models: BenchModels,
    settings: BenchSettings,
    inputs: dict[str, Any],
    err: Console,
    quiet: bool,
) -> BenchReport:
    """run_bench with a rich progress bar per backend row on stderr (nothing when quiet or not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sr_deploy.bench import run_bench

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=quiet,
    ) as bar:
        tasks: dict[str, Any] = {}

        def hook(key: str, phase: str, done: int, total: int) -> None:
            if key not in tasks:
                tasks[key] = bar.add_task(key, total=total)
            bar.update(tasks[key], completed=done, description=f"{key} ({phase})")

        progress: ProgressHook = hook
        return run_bench(images, models, settings, inputs=inputs, progress=progress)
