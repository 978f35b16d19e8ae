"""`srdeploy eval` and `srdeploy upscale`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sr_deploy.archs.spec import ArchSpec
from sr_deploy.errors import SRDeployError
from sr_deploy.runtime.base import BACKEND_KINDS as BACKENDS
from sr_deploy.runtime.base import Backend


@contextmanager
def _progress(total: int, what: str) -> Iterator[Callable[[str], None]]:
    """A progress bar over images; yields the per-image callback."""
    with Progress(
        TextColumn(f"{what} [bold]{{task.fields[name]}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=total, name="")
        yield lambda name: progress.update(task, advance=1, name=name)


def _open_backend(kind: str, weights: str, scale: int | None) -> tuple[Backend, ArchSpec, str]:
    """(backend, spec, sha256) for the deploy form of `weights`."""
    from sr_deploy.checkpoints import load_model
    from sr_deploy.runtime.factory import graph_cache, make_backend

    if kind not in BACKENDS:
        raise SRDeployError(f"--backend {kind!r}: expected one of {', '.join(BACKENDS)}")
    model, loaded = load_model(weights, form="plain")
    if scale is not None and scale != model.spec.scale:
        raise SRDeployError(f"--scale {scale}: the weights {weights} are a x{model.spec.scale} model")
    backend = make_backend(kind, model, weights_sha256=loaded.sha256, work_dir=graph_cache())
    return backend, model.spec, loaded.sha256


def _failures_line(failures: dict[str, str]) -> str:
    named = [msg if Path(name).name in msg else f"{name}: {msg}" for name, msg in failures.items()]
    return f"{len(failures)} image(s) failed: " + "; ".join(named)


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_cmd(
        weights: Annotated[str, typer.Option(help="Weights: .safetensors, NTIRE .pth, or ntire:team26.")],
        hr_dir: Annotated[Path, typer.Option(help="Folder of HR images.")],
        lr_dir: Annotated[
            Path | None, typer.Option(help="Folder of LR images; without it LR is made with MATLAB bicubic.")
        ] = None,
        scale: Annotated[int | None, typer.Option(help="Expected scale (checked against the weights).")] = None,
        backend: Annotated[str, typer.Option(help="torch, onnxruntime, openvino, tensorrt or auto.")] = "torch",
        json_out: Annotated[Path | None, typer.Option("--json", help="Write the full report as JSON.")] = None,
    ) -> None:
        """PSNR (RGB, Y) and SSIM (Y) per image and on average, as the challenge computes them."""
        from sr_deploy.evaluate import EvalReport, evaluate, pair_eval_images
        from sr_deploy.fileio import check_output_path, write_text_atomic

        if json_out is not None:
            check_output_path(json_out, "--json")
        pairs = pair_eval_images(hr_dir, lr_dir)
        be, spec, sha = _open_backend(backend, weights, scale)
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
        with _progress(len(pairs), "eval") as tick:
            evaluate(be.run, pairs, report, on_image=tick)
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
            write_text_atomic(json_out, json.dumps(report.to_dict(), indent=2) + "\n", "--json")
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
        backend: Annotated[str, typer.Option(help="auto, torch, onnxruntime, openvino or tensorrt.")] = "auto",
        fmt: Annotated[str, typer.Option("--format", help="png, or same (keep each input's format).")] = "png",
        overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
        inexact_tiles: Annotated[
            bool,
            typer.Option(
                "--inexact-tiles",
                help="Accept tiles for an architecture whose output depends on the tile (RFDN, RLFN: ESA attention).",
            ),
        ] = False,
    ) -> None:
        """Upscale images, keeping their names; where the architecture allows, tiles give the whole image's result."""
        from sr_deploy.archs.registry import arch_of
        from sr_deploy.imaging.tiling import check_tile_args, check_tiling_policy
        from sr_deploy.upscale import plan_jobs, upscale_files

        if tile < 0:
            raise SRDeployError(f"--tile must be >= 0 (0 = no tiling), got {tile}")
        jobs = plan_jobs(inputs, output, fmt=fmt, overwrite=overwrite)
        be, spec, _ = _open_backend(backend, weights, None)
        architecture = arch_of(spec)
        scale, radius = spec.scale, architecture.receptive_radius(spec)
        overlap = radius if tile_overlap is None else tile_overlap
        if tile:
            note = check_tiling_policy(spec.name, architecture.tiling, architecture.min_input_size, tile, inexact_tiles)
            if note:
                Console(stderr=True).print(note, markup=False)
            check_tile_args(tile, overlap)
            if overlap < radius:
                Console(stderr=True).print(
                    f"note: --tile-overlap {overlap} is below the receptive radius {radius}; tiles will show seams"
                )
            be.prepare((1, 3, tile, tile))
        output.mkdir(exist_ok=True)
        with _progress(len(jobs), "upscale") as tick:
            report = upscale_files(
                be.run,
                jobs,
                scale=scale,
                tile=tile or None,
                overlap=overlap,
                on_image=tick,
            )
        be.close()
        for path in report.written:
            typer.echo(f"wrote {path}")
        if report.failures:
            raise SRDeployError(_failures_line(report.failures))
