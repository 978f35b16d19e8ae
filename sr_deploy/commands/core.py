"""`srdeploy info` and `srdeploy fuse`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sr_deploy.errors import SRDeployError
from sr_deploy.shapes import parse_hw


def info_report(arch: str | None, weights: str | None, size: tuple[int, int]) -> dict[str, Any]:
    """Profiles of the training-time (CLB) and collapsed forms of an architecture or a checkpoint."""
    from sr_deploy.archs.registry import arch_of, build_model, preset
    from sr_deploy.checkpoints import load_weights
    from sr_deploy.fusion import collapse
    from sr_deploy.profile import profile_model

    if arch and weights:
        raise SRDeployError("--arch and --weights: give one, not both")
    source: dict[str, Any] = {}
    if weights:
        loaded = load_weights(weights)
        spec = loaded.spec
        source = loaded.to_dict()
    else:
        spec = preset(arch or "imdn-b7")
    architecture = arch_of(spec)
    train_spec = spec if spec.training_form else architecture.training_spec(spec)
    forms: dict[str, Any] = {}
    if train_spec is not None:
        train_model = build_model(train_spec, seed=0).eval()
        forms["training"] = profile_model(train_model, size).to_dict()
        forms["collapsed"] = profile_model(collapse(train_model), size).to_dict()
    else:
        forms["deploy"] = profile_model(build_model(spec, seed=0).eval(), size).to_dict()
    return {
        "arch": spec.name,
        "architecture": architecture.id,
        "spec": spec.to_dict(),
        "input_range": architecture.input_range,
        "tiling": architecture.tiling.to_dict(),
        "weights": source or None,
        "forms": forms,
    }


def _print_info(report: dict[str, Any], console: Console) -> None:
    hw = next(iter(report["forms"].values()))["input_hw"]
    table = Table(title=f"{report['arch']} at 1x3x{hw[0]}x{hw[1]} (NTIRE 2022 ESR counter)")
    for col in ("form", "arch", "params", "FLOPs [G]", "activations [M]", "convs"):
        table.add_column(col, justify="right" if col not in ("form", "arch") else "left")
    for form, p in report["forms"].items():
        table.add_row(
            form,
            p["arch"],
            f"{p['params']:,}",
            f"{p['flops'] / 1e9:.4f}",
            f"{p['activations'] / 1e6:.4f}",
            str(p["convs"]),
        )
    console.print(table)
    if report["weights"]:
        w = report["weights"]
        console.print(f"weights: {w['source']} ({w['format']}, sha256 {w['sha256'][:16]}...)")


def register(app: typer.Typer) -> None:
    @app.command("info")
    def info(
        arch: Annotated[
            str | None, typer.Option(help="Preset, e.g. imdn-b7, imdn-b7-clb, rfdn, rlfn, fmen (srdeploy info --list).")
        ] = None,
        weights: Annotated[str | None, typer.Option(help="A checkpoint (.safetensors, .pth or ntire:team26).")] = None,
        size: Annotated[str, typer.Option(help="LR input size HxW for FLOPs and activations.")] = "256x256",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Parameters, FLOPs, activations and conv count of the training-time and collapsed forms."""
        report = info_report(arch, weights, parse_hw(size, "--size"))
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            _print_info(report, Console())

    @app.command("fuse")
    def fuse(
        checkpoint: Annotated[str, typer.Argument(help="Training-time checkpoint (CLB form).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the collapsed weights.")],
        fmt: Annotated[
            str | None,
            typer.Option("--format", help="safetensors (ours, with spec) or ntire (.pth, challenge layout)."),
        ] = None,
        report: Annotated[Path | None, typer.Option(help="Write the proof as JSON here.")] = None,
    ) -> None:
        """Fold every 1x1 branch into its 3x3 conv, prove the result equal, and write it only if it is."""
        from sr_deploy.checkpoints import fuse_checkpoint

        r = fuse_checkpoint(checkpoint, output, output_format=fmt, report_path=report)
        eq = r.equivalence
        table = Table(title=f"fuse {r.arch_in} -> {r.arch_out}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("params before", f"{r.params_in:,}")
        table.add_row("params after", f"{r.params_out:,}")
        table.add_row("max abs error, float64", f"{eq['max_abs_f64']:.3e} (tol {eq['tol_f64']:g})")
        table.add_row("max abs error, float32", f"{eq['max_abs_f32']:.3e} (tol {eq['tol_f32']:g})")
        table.add_row("mean abs error, float32", f"{eq['mean_abs_f32']:.3e}")
        table.add_row("PSNR deploy vs train, float32", f"{eq['psnr_f32_db']:.1f} dB")
        table.add_row("proof input", "x".join(str(d) for d in eq["input_shape"]))
        Console().print(table)
        typer.echo(f"wrote {r.output} ({r.output_format})")
