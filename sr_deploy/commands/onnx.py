"""`srdeploy export-onnx`: weights -> verified ONNX graph (FP32 or FP16)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sr_deploy.commands.progress import status
from sr_deploy.shapes import parse_hw


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}" if abs(value) < 1e-2 else f"{value:.{digits}f}"


def _gate_value(g: dict[str, Any]) -> str:
    if g["rule"] == "is":
        return "yes" if g["value"] else "no"
    # null in the report is an infinite PSNR (identical outputs): JSON cannot hold inf.
    return _fmt(g["value"]) if g["value"] is not None else "inf"


def _gate_text(g: dict[str, Any]) -> str:
    if g["rule"] == "is":  # a yes/no check: no "1.0000 >= 1"
        rule = "must be yes" if g["threshold"] else "must be no"
    else:
        rule = f"{g['rule']} {g['threshold']:g}"
    # The fp16 gates take the worse of two runtimes: name the one that gave the value shown.
    worse = f" (worse: {g['source']})" if g.get("source") else ""
    return f"{rule}: {'pass' if g['passed'] else 'FAIL'}{worse}"


def _print_report(report: dict[str, Any], console: Console, reference_note: str) -> None:
    v = report["verification"]
    casts = ", ".join(f"{c['from']}->{c['to']}" for c in report["casts"]) or "none"
    if v is not None:
        # Names go in as Text, not str: rich would take the unit "[dB]" for markup and drop it.
        table = Table(title=f"ONNX Runtime vs torch fp32 on {v['inputs']}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("gate", justify="right")
        rows: list[tuple[str, float | None]] = [
            ("max abs error, ONNX Runtime", v["max_abs"]),
            ("mean abs error, ONNX Runtime", v["mean_abs"]),
            ("PSNR ONNX Runtime vs fp32 [dB]", v["psnr_db"] if v["psnr_db"] is not None else math.inf),
        ]
        if v["psnr_db_torch_half"] is not None or v.get("psnr_db_torch_half_note"):
            half = v["psnr_db_torch_half"]
            rows.append(("PSNR torch half vs fp32 [dB]", half if half is not None else math.inf))
        if v["y_psnr_torch_fp32"] is not None:
            rows += [
                ("mean Y-PSNR torch fp32 [dB]", v["y_psnr_torch_fp32"]),
                ("mean Y-PSNR ONNX Runtime [dB]", v["y_psnr_onnx"]),
            ]
        if v["y_psnr_torch_half"] is not None:
            rows.append(("mean Y-PSNR torch half [dB]", v["y_psnr_torch_half"]))
        for name, value in rows:
            table.add_row(Text(name), _fmt(value), "")
        for g in v["gates"]:
            table.add_row(Text(g["name"]), _gate_value(g), Text(_gate_text(g)))
        console.print(table)
    if reference_note:
        console.print(reference_note, markup=False, highlight=False, soft_wrap=True)
    # Last: the file exists only because every check above passed.
    console.print(
        f"wrote {report['path']} ({report['size_bytes'] / 1e6:.2f} MB, {report['precision']}, I/O {report['io']}, "
        f"opset {report['opset']}, casts: {casts})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def _weights_file(weights: str) -> Path | None:
    """The file --weights names (a named checkpoint's place in the cache), without importing torch for it."""
    if not weights.startswith("ntire:"):
        return Path(weights)
    from sr_deploy.checkpoints import weights_path

    return weights_path(weights)


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
        reference_dir: Annotated[
            Path | None,
            typer.Option(
                "--reference-dir",
                help="Folder with LR_bicubic_x4/ (and HR/) images to verify on. Default: $SRDEPLOY_SHARED/data/Set5, "
                "else shared/data/Set5 beside a source checkout; without them, seeded random inputs (the output "
                "says so).",
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Export weights to ONNX, verify it in ONNX Runtime against torch, and write it only if the gates pass."""
        from sr_deploy.fileio import check_output_path, dumps_json, files_in, refuse_overwriting_inputs
        from sr_deploy.references import check_reference_dir, find_reference_folder

        # Cheap checks first (no torch or onnx yet), so a typo costs no weight loading or tracing.
        static_hw = parse_hw(static, "--static") if static is not None else None
        check_output_path(output, "--output")
        if reference_dir is not None:
            check_reference_dir(reference_dir)
        read: list[tuple[str, str | Path | None]] = [("--weights", _weights_file(weights))]
        if reference_dir is not None:
            folders = (reference_dir, reference_dir / "LR_bicubic_x4", reference_dir / "HR")
            read += [("a --reference-dir image", f) for folder in folders for f in files_in(folder)]
        refuse_overwriting_inputs([("--output", output)], read)
        with status("export-onnx") as step:
            step("loading torch and onnx")
            from sr_deploy.checkpoints import load_model
            from sr_deploy.export.onnx import (
                DEFAULT_OPSET,
                check_export_args,
                export_onnx,
                load_reference_images,
                require_weights_path,
            )
            from sr_deploy.precision import parse_precision

            opset_n = opset if opset is not None else DEFAULT_OPSET
            check_export_args(precision, io, opset_n, static_hw)
            if not weights.startswith("ntire:"):
                require_weights_path(weights, "--weights")
            step(f"loading {weights}")
            model, loaded = load_model(weights, form="plain")
            choice = find_reference_folder(reference_dir, scale=model.spec.scale)
            folder = choice.folder
            refs = load_reference_images(folder, scale=model.spec.scale) if folder is not None else None
            step(f"exporting {precision} and verifying it in ONNX Runtime against torch (about a minute for imdn-b7)")
            report = export_onnx(
                model,
                output,
                precision=parse_precision(precision),  # checked above
                io=parse_precision(io, "--io"),
                opset=opset_n,
                static_hw=static_hw,
                keep_last_conv_fp32=keep_last_fp32,
                weights_sha256=loaded.sha256,
                references=refs,
                reference_label=f"{folder.name} ({len(refs)} images)" if folder is not None and refs else "",
            )
        result = report.to_dict()
        if as_json:
            result["reference_images"] = {"folder": str(folder) if folder else None, "origin": choice.origin}
            typer.echo(dumps_json(result), nl=False)
        else:
            # Wide enough for the gate column when stdout is a file or a pipe (rich would assume 80 columns there).
            _print_report(result, Console(width=max(Console().width, 100)), choice.describe())
