"""`srdeploy bench`: the challenge's timing method and the budget verdict, for one backend or all side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sr_deploy.errors import SRDeployError

if TYPE_CHECKING:
    from sr_deploy.archs.spec import ArchSpec
    from sr_deploy.bench.inputs import BenchImage
    from sr_deploy.bench.measure import ProgressHook
    from sr_deploy.bench.models import BenchModels
    from sr_deploy.bench.render import Column
    from sr_deploy.bench.report import BenchReport
    from sr_deploy.bench.run import BenchSettings

#: Enough synthetic images for a stable mean without making a CPU run take minutes.
_DEFAULT_SYNTHETIC_COUNT = 10


def _check_synthetic_size(spec: ArchSpec, h: int, w: int) -> None:
    """Refuse, naming the flag, a synthetic size whose one image would not fit in memory (a MemoryError later)."""
    from sr_deploy.memory import DEFAULT_BUDGET_FRACTION, estimate_upscale, fmt_bytes, memory_budget

    budget = memory_budget()
    need = estimate_upscale(spec, h, w).total
    if budget is not None and need > budget:
        raise SRDeployError(
            f"--synthetic {h}x{w}: one image needs about {fmt_bytes(need)} to upscale with {spec.name}, above the "
            f"memory budget of {fmt_bytes(budget)} ({DEFAULT_BUDGET_FRACTION:.0%} of the memory free now); "
            "use a smaller size"
        )


def _inputs(
    input_dir: Path | None,
    hr_dir: Path | None,
    synthetic: str | None,
    count: int | None,
    seed: int,
    spec: ArchSpec,
) -> tuple[Sequence[BenchImage], dict[str, Any]]:
    """Decode the inputs (never timed; synthetic ones are made as they are timed) and describe them for the
    report."""
    from sr_deploy.archs.registry import arch_of
    from sr_deploy.bench.inputs import SyntheticImages, load_bench_images
    from sr_deploy.shapes import check_min_size, parse_hw

    scale = spec.scale
    if synthetic is not None:
        if input_dir is not None or hr_dir is not None:
            raise SRDeployError("--synthetic times generated inputs: give it without --input and --hr")
        h, w = parse_hw(synthetic, "--synthetic")
        count = _DEFAULT_SYNTHETIC_COUNT if count is None else count
        images: Sequence[BenchImage] = SyntheticImages(h, w, count, seed=seed)
        check_min_size(h, w, arch_of(spec).min_input_size, f"--synthetic {synthetic}", spec.name)
        _check_synthetic_size(spec, h, w)
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
    least = arch_of(spec).min_input_size
    for image in images:
        check_min_size(image.height, image.width, least, str(image.source or image.name), spec.name)
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


def summary_table(report: BenchReport, columns: tuple[Column, ...] | None = None) -> Table:
    """The backend table for the console, from the same column model (and cells) as the markdown table."""
    from rich.markup import escape

    from sr_deploy.bench.render import row_cells, table_columns

    cols = columns if columns is not None else table_columns(report)
    table = Table(title=escape(f"{report.model['arch']} x{report.model['scale']}: {report.inputs['description']}"))
    for c in cols:
        # min_width keeps "(dB, challenge)" whole when the table is squeezed: it says which PSNR the challenge
        # ranks by. Headers and cells are escaped: a "[" in a unit or a key is text, not rich markup.
        table.add_column(escape(c.header), justify=c.align, no_wrap=c.align == "left", min_width=11 if c.note else None)
    for r in report.rows:
        cells = [escape(cell) for cell in row_cells(report, r, cols)]
        if not r.ok:
            cells[1] = f"[dim]{cells[1]}[/dim]"
        table.add_row(*cells)
    return table


def _print_summary(report: BenchReport, console: Console) -> None:
    table = summary_table(report)
    console.print(table)
    # Reasons go below the table, unwrapped: they say what to install, and a narrow cell would mangle that.
    for r in report.rows:
        if not r.ok:
            console.print(f"{r.plan.key} {r.status}: {r.reason}", soft_wrap=True, highlight=False, markup=False)
    for note in report.notes:
        if note.startswith("No --weights"):
            continue  # already said on stderr before the run started
        console.print(f"note: {note}", soft_wrap=True, highlight=False)


def _backend_help() -> str:
    from sr_deploy.runtime.registry import default_registry

    return default_registry().backend_help("all (side by side)")


def _precision_help() -> str:
    from sr_deploy.runtime.registry import default_registry

    return default_registry().precision_help("with --onnx") + " Ignored by --backend all."


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
        backend: Annotated[str, typer.Option(help=_backend_help())] = "auto",
        precision: Annotated[str, typer.Option(help=_precision_help())] = "fp32",
        int8_onnx: Annotated[
            Path | None,
            typer.Option(
                "--onnx",
                help="The int8 Q/DQ graph (srdeploy quantize) for --precision int8; --backend all adds int8 rows.",
            ),
        ] = None,
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
        cuda_graphs: Annotated[
            bool,
            typer.Option(
                "--cuda-graphs",
                help="CUDA only (torch, tensorrt): replay one CUDA graph per input shape, captured outside the timer.",
            ),
        ] = False,
        compile_mode: Annotated[
            str | None,
            typer.Option(
                "--compile",
                help="torch only: torch.compile MODE (default or max-autotune-no-cudagraphs), compiled outside the "
                "timer.",
            ),
        ] = None,
        reference_dir: Annotated[
            Path | None,
            typer.Option(
                "--reference-dir",
                help="bf16 rows: folder with LR_bicubic_x4/ and HR/ for the bf16 accuracy gate. Default: "
                "$SRDEPLOY_SHARED/data/Set5, else shared/data/Set5 beside a source checkout, else seeded random "
                "inputs.",
            ),
        ] = None,
    ) -> int:
        """Time x4 upscaling the NTIRE 2022 ESR way (forward only, first image counted) against the budget."""
        from sr_deploy.bench.models import load_bench_models
        from sr_deploy.bench.render import render_markdown, require_matplotlib, write_plot
        from sr_deploy.bench.run import (
            BenchSettings,
            check_backend_available,
            check_device_options,
            random_weights_note,
            resolve_device,
        )
        from sr_deploy.fileio import (
            check_output_path,
            dumps_json,
            files_in,
            plot_format,
            refuse_overwriting_inputs,
            write_text_atomic,
        )
        from sr_deploy.references import check_reference_dir

        settings = BenchSettings(
            backend=backend,
            precision=precision,
            device=device,
            budget_ms=budget_ms,
            warmup=warmup,
            repeat=repeat,
            seed=seed,
            cuda_graphs=cuda_graphs,
            compile_mode=compile_mode,
            int8_onnx=str(int8_onnx) if int8_onnx is not None else None,
        )
        # Every cheap check first, so a typo never costs a benchmark's worth of waiting.
        settings.validate()
        check_device_options(settings, resolve_device(settings.device))
        for path, what in ((report, "--report"), (markdown, "--markdown"), (plot, "--plot")):
            if path is not None:
                check_output_path(path, what)
        if plot is not None:
            plot_format(plot, "--plot")
            require_matplotlib()
        if reference_dir is not None:
            check_reference_dir(reference_dir)
        read: list[tuple[str, str | Path | None]] = [("--weights", _weights_file(weights))]
        for folder, what in ((input_dir, "an --input image"), (hr_dir, "an --hr image")):
            read += [(what, f) for f in files_in(folder)]
        if reference_dir is not None:
            for folder in (reference_dir, reference_dir / "LR_bicubic_x4", reference_dir / "HR"):
                read += [("a --reference-dir image", f) for f in files_in(folder)]
        refuse_overwriting_inputs([("--report", report), ("--markdown", markdown), ("--plot", plot)], read)
        check_backend_available(backend)
        models = load_bench_models(weights, need_clb=backend == "all", seed=seed)
        images, inputs = _inputs(input_dir, hr_dir, synthetic, count, seed, models.deploy.spec)
        references = None
        if reference_dir is not None:
            from sr_deploy.export.onnx import load_reference_images

            references = load_reference_images(reference_dir, scale=models.deploy.spec.scale)

        # Wide enough for the table when stdout is a file or a pipe (rich would assume 80 columns there).
        out = Console(width=max(Console().width, 132))
        err = Console(stderr=True)
        if models.random_weights:
            note = random_weights_note(models.arch, models.weights_source)
            err.print(f"note: {note}", highlight=False, soft_wrap=True)
        result = _run_with_progress(images, models, settings, inputs, err, quiet, references)

        if report is not None:
            write_text_atomic(report, dumps_json(result.to_dict()), "--report")
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


def _weights_file(weights: str | None) -> Path | None:
    """The file --weights names (a named checkpoint's place in the cache); None for the seeded random model."""
    if weights is None:
        return None
    if not weights.startswith("ntire:"):
        return Path(weights)
    from sr_deploy.checkpoints import weights_path

    return weights_path(weights)


def _run_with_progress(
    images: Sequence[BenchImage],
    models: BenchModels,
    settings: BenchSettings,
    inputs: dict[str, Any],
    err: Console,
    quiet: bool,
    references: Sequence[Any] | None = None,
) -> BenchReport:
    """run_bench with a rich progress bar per backend row on stderr; where stderr is not a terminal (a CI log, a
    pipe), where the bar cannot draw, one line per finished row instead, so a long run is not silent. Nothing when
    quiet."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sr_deploy.bench.run import run_bench

    lines = not quiet and not err.is_terminal
    started: dict[str, float] = {}

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
                started[key] = time.perf_counter()
            bar.update(tasks[key], completed=done, description=f"{key} ({phase})")
            if lines and done == total:
                # Printed when a row ends, not when it starts: an error in a row stays the only stderr line.
                took = time.perf_counter() - started[key]
                err.print(f"bench: {key} measured ({total} runs, {took:.1f} s)", markup=False, highlight=False)

        progress: ProgressHook = hook
        return run_bench(images, models, settings, inputs=inputs, progress=progress, references=references)
