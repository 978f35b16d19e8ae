"""`srdeploy quantize`: weights -> int8 Q/DQ ONNX graph, calibrated on LR crops, written only if it passes its gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sr_deploy.commands.progress import status

#: How many of the most sensitive layers the table shows (the JSON report has them all).
_TOP = 8


def _db(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _print_report(report: dict[str, Any], console: Console, reference_note: str) -> None:
    if report["sensitivities"]:
        table = Table(title="Sensitivity: Y-PSNR drop with only this layer quantized (ONNX Runtime)")
        table.add_column("layer")
        table.add_column("drop (dB)", justify="right")
        ranked = sorted(report["sensitivities"], key=lambda s: -(s["y_drop_db"] or 0.0))
        for s in ranked[:_TOP]:
            table.add_row(Text(s["layer"]), _db(s["y_drop_db"]))
        if len(ranked) > _TOP:
            table.add_row(Text(f"... {len(ranked) - _TOP} more (see --report)"), "")
        console.print(table)
    steps = Table(title="Layers left in floating point, and the gate's figures (worse runtime)")
    for col in ("float layers", "Y-PSNR drop (dB)", "brightness shift", "per runtime", "gate"):
        steps.add_column(col, justify="left" if col in ("float layers", "per runtime") else "right")
    for step in report["steps"]:
        gates = {g["name"]: g for g in step["gates"]}
        shift = next((g["value"] for n, g in gates.items() if n.startswith("mean brightness")), None)
        per = "; ".join(f"{s['runtime']} {_db(s['y_drop_db'])} dB" for s in step["scores"])
        steps.add_row(
            Text(", ".join(step["float_layers"]) or "none (every conv int8)"),
            _db(step["y_drop_db"]),
            "-" if shift is None else f"{shift:.3f}",
            Text(per),
            "pass" if step["passed"] else "FAIL",
        )
    console.print(steps)
    if reference_note:
        console.print(reference_note, markup=False, highlight=False, soft_wrap=True)
    calib = report["calibration"]
    console.print(
        f"calibration: {calib['count']} crops of {calib['crop']}x{calib['crop']} from {calib['folder']} "
        f"(sha256 {calib['sha256'][:16]}), {report['method']['calibration']}; fp32 mean Y-PSNR "
        f"{report['fp32_mean_y_psnr']:.4f} dB; {report['audit']['quantized_convs']} of {report['layers']} convs int8",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    floats = ", ".join(report["float_layers"]) or "none"
    console.print(
        f"wrote {report['path']} ({report['size_bytes'] / 1e6:.2f} MB, int8 Q/DQ, float layers: {floats}, "
        f"Y-PSNR drop {report['y_drop_db']:.4f} dB)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    @app.command("quantize")
    def quantize_cmd(
        weights: Annotated[str, typer.Option("--weights", help="Checkpoint (.safetensors, .pth or ntire:team26).")],
        calib_dir: Annotated[
            Path, typer.Option("--calib-dir", help="Folder of LR images whose crops calibrate the activations.")
        ],
        output: Annotated[Path, typer.Option("--output", "-o", help="The int8 .onnx file to write.")],
        calib_count: Annotated[int, typer.Option("--calib-count", help="Images to calibrate on (one crop each).")] = 32,
        crop: Annotated[int, typer.Option("--crop", help="Calibration crop size in LR pixels.")] = 96,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the image choice and crop positions.")] = 0,
        calibration: Annotated[
            str, typer.Option("--calibration", help="Activation ranges: percentile (default) or minmax.")
        ] = "percentile",
        percentile: Annotated[float, typer.Option("--percentile", help="Percentile of |activation| kept.")] = 99.99,
        max_float_layers: Annotated[
            int,
            typer.Option(
                "--max-float-layers", help="Most layers the gate search may leave in floating point (issue 13: 2)."
            ),
        ] = 2,
        reference_dir: Annotated[
            Path | None,
            typer.Option(
                "--reference-dir",
                help="Folder with LR_bicubic_x4/ and HR/ for the gate. Default: $SRDEPLOY_SHARED/data/Set5, else "
                "shared/data/Set5 beside a source checkout.",
            ),
        ] = None,
        openvino_gate: Annotated[
            bool,
            typer.Option("--openvino-gate/--no-openvino-gate", help="Hold the graph to the gate in OpenVINO too."),
        ] = True,
        report_path: Annotated[Path | None, typer.Option("--report", help="Write the full JSON report here.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Post-training int8 quantization into a Q/DQ ONNX graph for OpenVINO, ONNX Runtime and TensorRT.

        Written only if it passes the gate (mean Y-PSNR drop <= 0.10 dB against fp32, no NaN/Inf, brightness shift
        <= 0.5 levels); the most sensitive layers are left in floating point when needed, up to --max-float-layers.
        """
        from sr_deploy.errors import SRDeployError
        from sr_deploy.fileio import (
            check_output_path,
            dumps_json,
            files_in,
            refuse_overwriting_inputs,
            write_text_atomic,
        )
        from sr_deploy.references import HOW_TO_GIVE, check_reference_dir, find_reference_folder

        # Cheap checks first (no torch or onnx yet), so a typo costs no weight loading or calibration.
        check_output_path(output, "--output")
        if report_path is not None:
            check_output_path(report_path, "--report")
        if reference_dir is not None:
            check_reference_dir(reference_dir)
        read: list[tuple[str, str | Path | None]] = [("--weights", None if weights.startswith("ntire:") else weights)]
        read += [("a --calib-dir image", f) for f in files_in(calib_dir)]
        if reference_dir is not None:
            folders = (reference_dir, reference_dir / "LR_bicubic_x4", reference_dir / "HR")
            read += [("a --reference-dir image", f) for folder in folders for f in files_in(folder)]
        refuse_overwriting_inputs([("--output", output), ("--report", report_path)], read)
        with status("quantize") as step:
            step("loading torch, onnx and onnxruntime")
            from sr_deploy.checkpoints import load_model
            from sr_deploy.export.onnx import load_reference_images, require_weights_path
            from sr_deploy.export.quantize import (
                Int8Gates,
                QuantizeOptions,
                load_calibration_set,
                quantize_model,
            )

            options = QuantizeOptions(
                calib_count=calib_count,
                crop=crop,
                seed=seed,
                calibration=calibration,
                percentile=percentile,
                max_float_layers=max_float_layers,
                check_openvino=openvino_gate,
                gates=Int8Gates(),
            )
            options.validate()
            step(f"reading {calib_count} calibration images from {calib_dir}")
            calib = load_calibration_set(calib_dir, calib_count, crop, seed=seed)
            if not weights.startswith("ntire:"):
                require_weights_path(weights, "--weights")
            step(f"loading {weights}")
            model, loaded = load_model(weights, form="plain")
            choice = find_reference_folder(reference_dir, scale=model.spec.scale)
            if choice.folder is None:
                raise SRDeployError(
                    f"the int8 accuracy gate needs reference images with HR, none found ({choice.origin}): "
                    f"{HOW_TO_GIVE}"
                )
            refs = load_reference_images(choice.folder, scale=model.spec.scale)
            missing = [r.name for r in refs if r.hr is None]
            if missing:
                raise SRDeployError(
                    f"{choice.folder}: the int8 gate needs HR images, HR/ lacks {', '.join(missing[:3])}"
                )
            step("quantizing and searching (a few minutes for imdn-b7 on 2 cores)")
            report = quantize_model(
                model,
                output,
                calib,
                refs,
                weights_sha256=loaded.sha256,
                options=options,
                reference_label=f"{choice.folder.name} ({len(refs)} images, {choice.folder})",
                progress=step,
            )
        result = report.to_dict()
        result["reference_images"] = {"folder": str(choice.folder), "origin": choice.origin}
        if report_path is not None:
            write_text_atomic(report_path, dumps_json(result), "--report")
        if as_json:
            typer.echo(dumps_json(result), nl=False)
        else:
            _print_report(result, Console(width=max(Console().width, 110)), choice.describe())
