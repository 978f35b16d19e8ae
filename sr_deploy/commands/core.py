"""`srdeploy info` and `srdeploy fuse`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sr_deploy.commands.progress import status
from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import dumps_json
from sr_deploy.shapes import parse_hw


def info_report(arch: str | None, weights: str | None, size: tuple[int, int]) -> dict[str, Any]:
    """Profiles of the training-time (CLB) and collapsed forms of an architecture or a checkpoint."""
    import torch

    from sr_deploy.archs.registry import arch_of, preset
    from sr_deploy.checkpoints import load_weights
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

    def counted(s: Any) -> dict[str, Any]:
        # Counting needs shapes only: the network is built on the meta device, so neither a large --size nor the
        # largest spec the bounds allow costs memory. The collapsed form is the network of the collapsed spec,
        # which is what the collapse builds (tests/test_cli_core.py checks the paper model's figures).
        with torch.device("meta"):
            model = architecture.build(s).eval()
        return profile_model(model, size).to_dict()

    if train_spec is not None:
        forms["training"] = counted(train_spec)
        forms["collapsed"] = counted(train_spec.collapsed())
    else:
        forms["deploy"] = counted(spec)
    return {
        "arch": spec.name,
        "architecture": architecture.id,
        "spec": spec.to_dict(),
        "input_range": architecture.input_range,
        "tiling": architecture.tiling.to_dict(),
        "receptive_radius": architecture.receptive_radius(spec),
        "descriptor": architecture.describe(),
        "weights": source or None,
        "forms": forms,
    }


def architectures_report() -> list[dict[str, Any]]:
    """Every registered architecture's descriptor: presets, published weights, input range, tiling, ONNX ops."""
    from sr_deploy.archs.registry import all_archs

    return [a.describe() for a in all_archs()]


def _print_architectures(archs: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="registered architectures")
    for col in ("id", "presets", "published weights", "input range", "tiling", "fp16"):
        table.add_column(col)
    for a in archs:
        table.add_row(
            a["id"],
            ", ".join(a["presets"]),
            ", ".join(a["published"]),
            f"[0, {a['input_range']:g}]",
            "exact" if a["tiling"]["exact"] else "inexact",
            "yes" if a["fp16"] == "supported" else "refused",
        )
    console.print(table, markup=False)


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
        list_archs: Annotated[bool, typer.Option("--list", help="List the registered architectures.")] = False,
    ) -> None:
        """Parameters, FLOPs, activations and conv count of the training-time and collapsed forms."""
        if list_archs:
            if arch or weights:
                raise SRDeployError("--list: give it alone, without --arch or --weights")
            archs = architectures_report()
            if as_json:
                typer.echo(dumps_json(archs), nl=False)
            else:
                _print_architectures(archs, Console())
            return
        hw = parse_hw(size, "--size")
        with status("info") as step:
            step("loading torch and profiling both forms")
            report = info_report(arch, weights, hw)
        if as_json:
            typer.echo(dumps_json(report), nl=False)
        else:
            _print_info(report, Console())

    @app.command("fuse")
    def fuse(
        checkpoint: Annotated[str, typer.Argument(help="Training-time checkpoint (CLB, RRRB, ECB form).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the collapsed weights.")],
        fmt: Annotated[
            str | None,
            typer.Option("--format", help="safetensors (ours, with spec) or ntire (.pth, challenge layout)."),
        ] = None,
        report: Annotated[Path | None, typer.Option(help="Write the proof and every merge as JSON here.")] = None,
        accept_border_error: Annotated[
            bool,
            typer.Option(
                "--accept-border-error",
                help="Fold blocks that are exact only inside the image (a biased 1x1 feeding a zero-padded 3x3); "
                "the report carries the border error and the proof holds beyond the receptive radius.",
            ),
        ] = False,
    ) -> None:
        """Fold every linear block into one conv, prove the result equal, and write it only if it is."""
        from sr_deploy.checkpoints import fuse_checkpoint

        r = fuse_checkpoint(
            checkpoint, output, output_format=fmt, report_path=report, accept_border_error=accept_border_error
        )
        console = Console()
        merges = r.collapse.get("merges", [])
        if merges:
            console.print(_merge_table(merges))
        eq = r.equivalence
        table = Table(title=f"fuse {r.arch_in} -> {r.arch_out}")
        table.add_column("")
        table.add_column("value", justify="right")
        table.add_row("params before", f"{r.params_in:,}")
        table.add_row("params after", f"{r.params_out:,}")
        table.add_row("max abs error, float64", f"{eq['max_abs_f64']:.3e} (tol {eq['tol_f64']:g})")
        table.add_row("max abs error, float32", f"{eq['max_abs_f32']:.3e} (tol {eq['tol_f32']:g})")
        table.add_row("mean abs error, float32", f"{eq['mean_abs_f32']:.3e}")
        psnr = eq["psnr_f32_db"]
        table.add_row(
            "PSNR deploy vs train, float32", f"{psnr:.1f} dB" if psnr is not None else f"inf ({eq['psnr_f32_note']})"
        )
        table.add_row("proof input", "x".join(str(d) for d in eq["input_shape"]))
        accepted = r.collapse.get("accepted_border_error_f64", 0.0)
        if accepted:
            table.add_row("accepted border error, float64 (per block)", f"{accepted:.3e}")
            table.add_row("max abs error with the border, float64", f"{eq['max_abs_f64_full']:.3e}")
            table.add_row("border left out of the proof", f"{eq['border_crop']} px per side")
        console.print(table)
        for note in r.collapse.get("notes", []):
            typer.echo(f"note: {note}")
        if r.note:
            typer.echo(r.note)
        typer.echo(f"wrote {r.output} ({r.output_format})")


def _merge_table(merges: list[dict[str, Any]]) -> Table:
    """One row per fused conv: what it was made of, its kernel, and the params it saves."""
    table = Table(title=f"{len(merges)} linear blocks folded")
    table.add_column("conv", overflow="fold")
    table.add_column("from", overflow="fold")
    for col in ("kernel", "params", "border error (f64)"):
        table.add_column(col, justify="right")
    for m in merges:
        ops = m["ops"]
        prefix = m["module"] + "."
        shown = ", ".join(op.removeprefix(prefix) for op in ops)
        border = f"{m['border_error_f64']:.1e}" + (" accepted" if m["border_accepted"] else "")
        table.add_row(
            m["module"],
            shown,
            "x".join(str(k) for k in m["kernel"]),
            f"{m['params_before']:,} -> {m['params_after']:,}",
            border,
        )
    return table
