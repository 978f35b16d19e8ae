"""`srdeploy eval` and `srdeploy upscale`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sr_deploy.errors import SRDeployError

if TYPE_CHECKING:  # imported where used: --help must not pay for numpy, torch or the runtimes
    from sr_deploy.archs.spec import ArchSpec
    from sr_deploy.runtime.base import Backend


@contextmanager
def _progress(total: int, what: str) -> Iterator[tuple[Callable[[str], None], Callable[[str], None]]]:
    """A progress bar over images; yields the per-image callback and a printer of notes above the bar. Only on a
    terminal: elsewhere (a log, a pipe) the bar would leave an empty line before an error's one line."""
    console = Console(stderr=True)
    with Progress(
        TextColumn(f"{what} [bold]{{task.fields[name]}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(what, total=total, name="")

        def note(text: str) -> None:
            progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

        yield (lambda name: progress.update(task, advance=1, name=name)), note


_INT8_NOTE = "(with --onnx, the graph srdeploy quantize wrote)"
_ONNX_HELP = "--precision int8: the int8 Q/DQ graph (made for these weights by srdeploy quantize)."


def _open_backend(
    kind: str, weights: str, scale: int | None, precision: str = "fp32", onnx: Path | None = None
) -> tuple[Backend, ArchSpec, str]:
    """(backend, spec, sha256) for the deploy form of `weights`; `onnx` is the int8 graph for --precision int8."""
    from sr_deploy.runtime.registry import default_registry

    default_registry().check_kind(kind)  # before loading any weights
    from sr_deploy.checkpoints import load_model
    from sr_deploy.runtime.factory import graph_cache, make_backend

    model, loaded = load_model(weights, form="plain")
    if scale is not None and scale != model.spec.scale:
        raise SRDeployError(f"--scale {scale}: the weights {weights} are a x{model.spec.scale} model")
    backend = make_backend(
        kind, model, precision=precision, weights_sha256=loaded.sha256, work_dir=graph_cache(), int8_graph=onnx
    )
    return backend, model.spec, loaded.sha256


def _budget_words(budget: int, given: bool) -> str:
    from sr_deploy.memory import DEFAULT_BUDGET_FRACTION, fmt_bytes

    if given:
        return f"the --memory-budget of {fmt_bytes(budget)}"
    return f"the memory budget of {fmt_bytes(budget)} ({DEFAULT_BUDGET_FRACTION:.0%} of the memory free now)"


def _check_tile_fits(spec: ArchSpec, tile: int, overlap: int, budget: int | None, given: bool) -> None:
    """Refuse a --tile whose one tile would not fit in memory, naming the flag (a 999999 tile is a MemoryError)."""
    from sr_deploy.archs.registry import arch_of
    from sr_deploy.memory import estimate_upscale, fmt_bytes, pick_tile

    if budget is None:
        return
    need = estimate_upscale(spec, tile, tile).total
    if need <= budget:
        return
    fits = pick_tile(spec, budget, overlap=overlap, min_size=arch_of(spec).min_input_size, longest=tile)
    hint = f"use --tile {fits} or less" if fits else "no tile fits: free memory first"
    raise SRDeployError(
        f"--tile {tile}: one {tile}x{tile} tile needs about {fmt_bytes(need)} to upscale, above "
        f"{_budget_words(budget, given)}; {hint}"
    )


def _tile_planner(
    spec: ArchSpec, overlap: int, budget: int | None, inexact_ok: bool, say: Callable[[str], None]
) -> Callable[[Path, int, int], int | None] | None:
    """Without --tile: whole images while they fit `budget`; a larger one is tiled (and said so), or refused with
    the estimate and the flags to use where the architecture cannot tile exactly."""
    from sr_deploy.archs.registry import arch_of
    from sr_deploy.memory import estimate_upscale, fmt_bytes, pick_tile

    if budget is None:  # the free memory is unknown here: no basis for a plan, upscale as asked
        return None
    architecture = arch_of(spec)

    def plan(source: Path, height: int, width: int) -> int | None:
        need = estimate_upscale(spec, height, width).total
        if need <= budget:
            return None
        words = f"the whole {height}x{width} image needs about {fmt_bytes(need)} to upscale, above {fmt_bytes(budget)}"
        side = pick_tile(
            spec, budget, overlap=overlap, min_size=architecture.min_input_size, longest=max(height, width)
        )
        if side is None:
            raise SRDeployError(
                f"{source.name}: {words}, and no tile fits either; free memory or raise --memory-budget"
            )
        if not architecture.tiling.exact and not inexact_ok:
            raise SRDeployError(
                f"{source.name}: {words}, and {spec.name} cannot be tiled exactly ({architecture.tiling.reason}); "
                f"pass --tile {side} --inexact-tiles to accept tiles, or a larger --memory-budget"
            )
        exact = "exact" if architecture.tiling.exact else "inexact: --inexact-tiles"
        say(f"note: {source.name}: {words}: upscaling it in {side}x{side} tiles ({exact}; --memory-budget to change)")
        return side

    return plan


def _failures_line(failures: dict[str, str]) -> str:
    named = [msg if Path(name).name in msg else f"{name}: {msg}" for name, msg in failures.items()]
    return f"{len(failures)} image(s) failed: " + "; ".join(named)


def _backend_help() -> str:
    from sr_deploy.runtime.registry import default_registry

    return default_registry().backend_help()


def _precision_help() -> str:
    from sr_deploy.runtime.registry import default_registry

    return default_registry().precision_help(_INT8_NOTE)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        weights: Annotated[str, typer.Option(help="Weights: .safetensors, NTIRE .pth, or ntire:team26.")],
        hr_dir: Annotated[Path, typer.Option(help="Folder of HR images.")],
        lr_dir: Annotated[
            Path | None, typer.Option(help="Folder of LR images; without it LR is made with MATLAB bicubic.")
        ] = None,
        scale: Annotated[int | None, typer.Option(help="Expected scale (checked against the weights).")] = None,
        backend: Annotated[str, typer.Option(help=_backend_help())] = "auto",
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
        precision: Annotated[str, typer.Option(help=_precision_help())] = "fp32",
        onnx: Annotated[Path | None, typer.Option("--onnx", help=_ONNX_HELP)] = None,
    ) -> None:
        """PSNR (RGB, Y) and SSIM (Y) per image and on average, as the challenge computes them."""
        from sr_deploy.archs.registry import arch_of
        from sr_deploy.checkpoints import weights_path
        from sr_deploy.evaluate import EvalReport, evaluate, pair_eval_images
        from sr_deploy.fileio import check_output_path, dumps_json, refuse_overwriting_inputs, write_text_atomic

        # Every check on --json before the images are scored: a report that cannot be written is known now.
        if json_out is not None:
            check_output_path(json_out, "--json")
        pairs = pair_eval_images(hr_dir, lr_dir)
        read = [("--weights", weights_path(weights))]
        read += [("an HR image", p.hr) for p in pairs] + [("an LR image", p.lr) for p in pairs]
        refuse_overwriting_inputs([("--json", json_out)], read)
        be, spec, sha = _open_backend(backend, weights, scale, precision, onnx)
        arch, sc = spec.name, spec.scale
        report = EvalReport(
            weights=weights,
            weights_sha256=sha,
            arch=arch,
            backend=be.info.label,
            scale=sc,
            crop_border=sc,
            lr_source="folder" if lr_dir else "bicubic",
        )
        with _progress(len(pairs), "eval") as (tick, _):
            evaluate(be.run, pairs, report, on_image=tick, min_size=arch_of(spec).min_input_size)
        be.close()
        table = Table(title=f"{arch} x{sc} on {hr_dir} ({report.backend}, LR: {report.lr_source}, border {sc})")
        for col in ("image", "PSNR RGB", "PSNR Y", "SSIM Y"):
            table.add_column(col, justify="left" if col == "image" else "right")
        for s in report.images:
            table.add_row(s.name, f"{s.psnr_rgb:.4f}", f"{s.psnr_y:.4f}", f"{s.ssim_y:.4f}")
        table.add_section()
        table.add_row(
            "mean", f"{report.mean('psnr_rgb'):.4f}", f"{report.mean('psnr_y'):.4f}", f"{report.mean('ssim_y'):.4f}"
        )
        Console().print(table)
        if json_out is not None:
            write_text_atomic(json_out, dumps_json(report.to_dict()), "--json")
        if report.failures:
            raise SRDeployError(_failures_line(report.failures))

    @app.command("upscale")
    def upscale_cmd(
        inputs: Annotated[list[Path], typer.Argument(help="Image files and/or folders.")],
        weights: Annotated[str, typer.Option(help="Weights: .safetensors, NTIRE .pth, or ntire:team26.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (created if missing).")],
        tile: Annotated[int, typer.Option(help="Tile size in LR pixels; 0 = whole image.")] = 0,
        tile_overlap: Annotated[
            int | None, typer.Option(help="LR overlap per side; default: the model's receptive radius (exact).")
        ] = None,
        backend: Annotated[str, typer.Option(help=_backend_help())] = "auto",
        fmt: Annotated[str, typer.Option("--format", help="png, or same (keep each input's format).")] = "png",
        precision: Annotated[str, typer.Option(help=_precision_help())] = "fp32",
        onnx: Annotated[Path | None, typer.Option("--onnx", help=_ONNX_HELP)] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
        inexact_tiles: Annotated[
            bool,
            typer.Option(
                "--inexact-tiles",
                help="Accept tiles for an architecture whose output depends on the tile (RFDN, RLFN: ESA attention).",
            ),
        ] = False,
        memory_budget: Annotated[
            str | None,
            typer.Option(
                "--memory-budget",
                help="Memory to plan for, e.g. 8G (default: half of what is free now). Without --tile, an image "
                "whose whole upscale needs more is tiled (said on stderr), or refused where tiles are not exact.",
            ),
        ] = None,
    ) -> None:
        """Upscale images, keeping their names; where the architecture allows, tiles give the whole image's result."""
        from sr_deploy.archs.registry import arch_of
        from sr_deploy.imaging.tiling import check_tile_args, check_tiling_policy
        from sr_deploy.memory import memory_budget as budget_of
        from sr_deploy.upscale import plan_jobs, upscale_files

        if tile < 0:
            raise SRDeployError(f"--tile must be >= 0 (0 = no tiling), got {tile}")
        budget = budget_of(memory_budget)
        jobs = plan_jobs(inputs, output, fmt=fmt, overwrite=overwrite)
        be, spec, _ = _open_backend(backend, weights, None, precision, onnx)
        architecture = arch_of(spec)
        scale, radius = spec.scale, architecture.receptive_radius(spec)
        overlap = radius if tile_overlap is None else tile_overlap
        if tile:
            note = check_tiling_policy(spec.name, architecture.tiling, architecture.min_input_size, tile, inexact_tiles)
            check_tile_args(tile, overlap)
            _check_tile_fits(spec, tile, overlap, budget, memory_budget is not None)
            if note:
                Console(stderr=True, soft_wrap=True).print(note, markup=False)
            if overlap < radius:
                Console(stderr=True).print(
                    f"note: --tile-overlap {overlap} is below the receptive radius {radius}; tiles will show seams"
                )
            be.prepare((1, 3, tile, tile))
        try:
            output.mkdir(exist_ok=True)
        except OSError as e:
            from sr_deploy.fileio import write_error

            raise write_error(e, output, "-o") from None
        with _progress(len(jobs), "upscale") as (tick, say):
            planner = None if tile else _tile_planner(spec, overlap, budget, inexact_tiles, say)
            report = upscale_files(
                be.run,
                jobs,
                scale=scale,
                tile=tile or None,
                overlap=overlap,
                on_image=tick,
                plan_tile=planner,
                min_size=(architecture.min_input_size, spec.name),
            )
        be.close()
        for path in report.written:
            typer.echo(f"wrote {path}")
        if report.failures:
            raise SRDeployError(_failures_line(report.failures))
