"""`srdeploy export-onnx`: weights -> verified ONNX graph (FP32 or FP16)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from sr_deploy.shapes import parse_hw


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"


def _print_report(report: dict[str, Any], console: Console) -> None:
    v = report["verification"]
    casts = ", ".join(f"{c['from']}->{c['to']}" for c in report["casts"]) or "none"
    console.print(
        f"wrote {report['path']} ({report['size_bytes'] / 1e6:.2f} MB, {report['precision']}, I/O {report['io']}, "
        f"opset {report['opset']}, casts: {casts})"
    )
    if v is None:
        return
    table = Table(title=f"ONNX Runtime vs torch fp32 on {v['inputs']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("gate", justify="right")
    gates = {g["name"]: g for g in v["gates"]}
    rows: list[tuple[str, float | None]] = [
        ("max abs error", v["max_abs"]),
        ("mean abs error", v["mean_abs"]),
        ("PSNR vs fp32 [dB]", v["psnr_db"]),
    ]
    if v["psnr_db_torch_half"] is not None:
        rows.append(("PSNR torch half vs fp32 [dB]", v["psnr_db_torch_half"]))
    if v["y_psnr_torch_fp32"] is not None:
        rows += [("mean Y-PSNR torch fp32 [dB]", v["y_psnr_torch_fp32"]), ("mean Y-PSNR ONNX [dB]", v["y_psnr_onnx"])]
    if v["y_psnr_torch_half"] is not None:
        rows.append(("mean Y-PSNR torch half [dB]", v["y_psnr_torch_half"]))
    for name, value in rows:
        table.add_row(name, _fmt(value), "")
    for g in gates.values():
        table.add_row(
            g["name"], _fmt(g["value"]), f"{g['rule']} {g['threshold']:g}: {'pass' if g['passed'] else 'FAIL'}"
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("export-onnx")
    def export_onnx_cmd(
        weights: Annotated[str, typer.Option("--weights", help="Checkpoint (.safetensors, .pth or ntire:team26).")],
        output: Annotated[Path, typer.Option("--output", "-o", help="The .onnx file to write.")],
        precision: Annotated[str, typer.Option(help="fp32, or fp16 (weights and compute in half).")] = "fp32",
        io: Annotated[str, typer.Option("--io", help="Input/output type: fp32 (casts at the boundary) or fp16.")] = (
            "fp32"
        ),
        opset: Annotated[int | None, typer.Option(help="ONNX opset (default 18, min 17).")] = None,
        static: Annotated[
            str | None, typer.Option("--static", help="Fixed input size HxW (batch 1) instead of dynamic shapes.")
        ] = None,
        keep_last_fp32: Annotated[
            bool, typer.Option("--keep-last-fp32", help="FP16: keep the final upsampler conv in FP32.")
        ] = False,
        verify_set: Annotated[
            Path | None,
            typer.Option(
                "--verify-set",
                help="Folder with LR_bicubic_x4/ (and HR/) images to verify on; default ../shared Set5 when present, "
                "else random inputs.",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Export weights to ONNX, verify it in ONNX Runtime against torch, and write it only if the gates pass."""
        from sr_deploy.checkpoints import load_model
        from sr_deploy.export.onnx import (
            DEFAULT_OPSET,
            Precision,
            check_export_args,
            default_reference_folder,
            export_onnx,
            load_reference_images,
            require_weights_path,
        )
        from sr_deploy.fileio import check_output_path

        # Cheap checks first, so a typo costs no weight loading or tracing.
        static_hw = parse_hw(static, "--static") if static is not None else None
        opset_n = opset if opset is not None else DEFAULT_OPSET
        check_export_args(precision, io, opset_n, static_hw)
        check_output_path(output, "--output")
        if not weights.startswith("ntire:"):
            require_weights_path(weights, "--weights")
        folder = verify_set if verify_set is not None else default_reference_folder()
        model, loaded = load_model(weights, form="plain")
        refs = load_reference_images(folder, scale=model.spec.scale) if folder is not None else None
        report = export_onnx(
            model,
            output,
            precision=cast(Precision, precision),  # checked above
            io=cast(Precision, io),
            opset=opset_n,
            static_hw=static_hw,
            keep_last_conv_fp32=keep_last_fp32,
            weights_sha256=loaded.sha256,
            references=refs,
            reference_label=f"{folder.name} ({len(refs)} images)" if folder is not None and refs else "",
        )
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
        else:
            _print_report(report.to_dict(), Console())
