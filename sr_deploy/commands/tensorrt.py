"""`srdeploy export-trt`: turn the flags' text into typed values, call sr_deploy.export.tensorrt.export_trt with the
runtime's engine opener, print a table per engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from sr_deploy.export.tensorrt import BuildResult
    from sr_deploy.trt_plan.profiles import ShapeProfile


def _fraction(value: float) -> str:
    return f"{value:.1%}"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def results_table(results: list[BuildResult]) -> Table:
    """One row per engine: what it really is (audited), how big, how long it took, how close to ONNX Runtime."""
    table = Table(title="TensorRT engines")
    # int8 engines: how many convolutions really compute on int8 data (the audit's figure); shown only when built.
    int8 = any(r.sidecar.audit.requested == "int8" for r in results)
    cols = ["precision", "FP16 tensors", *(["INT8 convs"] if int8 else []), "size", "build", "max abs"]
    for col in (*cols, "PSNR vs FP32", "NaN/Inf", "engine"):
        table.add_column(col, justify="left" if col in ("precision", "engine") else "right")
    for r in results:
        s = r.sidecar
        gate = s.gate
        psnr = "-" if gate is None else ("identical" if gate.psnr_db == float("inf") else f"{gate.psnr_db:.2f} dB")
        convs = f"{s.audit.int8_conv_layers}/{s.audit.conv_layers}" if s.audit.requested == "int8" else "-"
        table.add_row(
            f"{r.precision} ({s.key.route})",
            _fraction(s.audit.fp16_tensor_fraction),
            *([convs] if int8 else []),
            _size(s.engine_bytes),
            f"cached ({s.build_seconds:.1f} s)" if r.reused else f"{s.build_seconds:.1f} s",
            "-" if gate is None else f"{gate.max_abs:.2e}",
            psnr,
            "-" if gate is None else str(gate.nonfinite),
            str(r.engine_path),
        )
    return table


def profile_from_shape_flags(min_text: str | None, opt_text: str | None, max_text: str | None) -> ShapeProfile | None:
    """--min/--opt/--max as one profile; None when none is given (the profile then comes from elsewhere)."""
    from sr_deploy.trt_plan.profiles import profile_from_flags

    if min_text is None and opt_text is None and max_text is None:
        return None
    return profile_from_flags(min_text, opt_text, max_text)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""

    @app.command("export-trt")
    def export_trt_cmd(
        onnx: Annotated[
            Path | None, typer.Option("--onnx", help="ONNX graph (FP32; an FP16 export beside it is found).")
        ] = None,
        onnx_fp16: Annotated[
            Path | None, typer.Option("--onnx-fp16", help="FP16 ONNX graph for fp16 engines (default: beside --onnx).")
        ] = None,
        weights: Annotated[
            str | None, typer.Option("--weights", help="Weights to export the ONNX graphs from first.")
        ] = None,
        precision: Annotated[
            str, typer.Option("--precision", help="fp32, fp16, both, or int8 (with --onnx-int8).")
        ] = "both",
        onnx_int8: Annotated[
            Path | None,
            typer.Option("--onnx-int8", help="int8 Q/DQ graph (srdeploy quantize) for --precision int8."),
        ] = None,
        route: Annotated[
            str | None,
            typer.Option("--route", help="fp16 route: strongly-typed (default) or builder-flag (TensorRT 10 only)."),
        ] = None,
        min_shape: Annotated[str | None, typer.Option("--min", help="Smallest input, NxCxHxW.")] = None,
        opt_shape: Annotated[str | None, typer.Option("--opt", help="Input to tune for, NxCxHxW.")] = None,
        max_shape: Annotated[str | None, typer.Option("--max", help="Largest input, NxCxHxW.")] = None,
        profile_from: Annotated[
            Path | None, typer.Option("--profile-from", help="Derive the profile(s) from these images' sizes.")
        ] = None,
        split_orientation: Annotated[
            bool | None,
            typer.Option(
                "--split-orientation/--one-profile",
                help="With --profile-from: one profile per orientation, or one for all (default: whichever fits).",
            ),
        ] = None,
        engines_dir: Annotated[Path, typer.Option("--engines-dir", help="Where engines and sidecars go.")] = Path(
            "engines"
        ),
        workspace_gb: Annotated[float, typer.Option("--workspace-gb", help="Builder workspace limit, GiB.")] = 4.0,
        opt_level: Annotated[int, typer.Option("--opt-level", help="Builder optimization level 0..5.")] = 3,
        rebuild: Annotated[bool, typer.Option("--rebuild", help="Build even if a matching engine is cached.")] = False,
        fp32_max_abs: Annotated[
            float, typer.Option("--fp32-max-abs", help="Gate: FP32 engine max abs error vs ONNX Runtime.")
        ] = 1e-3,
        fp16_min_psnr: Annotated[
            float, typer.Option("--fp16-min-psnr", help="Gate: FP16 engine PSNR vs ONNX Runtime FP32, dB.")
        ] = 45.0,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No build progress bar.")] = False,
    ) -> None:
        """Build TensorRT engines (FP32/FP16/INT8), audit their real precision, gate them against ONNX Runtime.

        Engines are cached as ENGINES_DIR/<model>-<precision>-<gpu>-trt<version>.engine with a JSON sidecar;
        a matching engine is reused, a stale one rebuilt with the reason printed.
        """
        from sr_deploy.export.tensorrt import BuildOptions, ExportTrtRequest, export_trt
        from sr_deploy.runtime.trt_backend import TensorRTBackend
        from sr_deploy.trt_plan.gate import GateThresholds
        from sr_deploy.trt_plan.versions import expand_precisions, parse_route

        console = Console()
        options = BuildOptions(
            engines_dir=engines_dir,
            workspace_gb=workspace_gb,
            opt_level=opt_level,
            rebuild=rebuild,
            route=None if route is None else parse_route(route),
            thresholds=GateThresholds(fp32_max_abs=fp32_max_abs, fp16_min_psnr_db=fp16_min_psnr),
            progress=not no_progress,
        )
        request = ExportTrtRequest(
            onnx=onnx,
            onnx_fp16=onnx_fp16,
            weights=weights,
            precisions=expand_precisions(precision),
            profile=profile_from_shape_flags(min_shape, opt_shape, max_shape),
            profile_from=profile_from,
            split_orientation=split_orientation,
            options=options,
            onnx_int8=onnx_int8,
        )
        results = export_trt(request, TensorRTBackend.from_serialized, console)
        for r in results:
            if r.rebuild_reasons:
                console.print(f"{r.engine_path.name}: rebuilt because {'; '.join(r.rebuild_reasons)}")
            for warning in r.sidecar.audit.warnings:
                console.print(f"[yellow]{r.engine_path.name}: {warning}[/yellow]")
        console.print(results_table(results))
