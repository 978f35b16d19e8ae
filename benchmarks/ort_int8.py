"""ONNX Runtime's int8 paths against OpenVINO's, in one run (issue 13, item 3: why the ONNX Runtime int8 backend runs
srdeploy's graph with float kernels rather than QLinearConv).

    python benchmarks/ort_int8.py --int8-onnx team26.qat.int8.onnx    # a graph from `srdeploy quantize` or QAT

ONNX Runtime fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv only where a conv's output is
quantized too. srdeploy's graph quantizes conv inputs only (what TensorRT's explicit quantization wants), so ONNX
Runtime runs it with float kernels on the dequantized values. To see what QLinearConv would give, this script also
quantizes the fp32 graph with ONNX Runtime's own placement (every tensor it can, conv outputs included; min/max on
8 crops; not gated, not TensorRT's placement) and times, interleaved round by round at 1x3x256x256 and 1x3x339x510:
ONNX Runtime fp32, ONNX Runtime on srdeploy's int8 graph, ONNX Runtime on the QLinearConv graph, and OpenVINO bf16
and int8 (the backend's own choice of float remainder). Also the Set5 accuracy of the QLinearConv graph, so that a
speed is never quoted without it. Writes benchmarks/results/ort_int8.md and .json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from int8_cpu import RESULTS, SIZES, PathResult, backend_timer, run_rounds

from sr_deploy.checkpoints import load_model
from sr_deploy.export.onnx import build_onnx_model, default_reference_folder, load_reference_images
from sr_deploy.export.quantize import check_int8_graph, fp32_reference, load_calibration_set, ort_runner, score
from sr_deploy.fileio import dumps_json, write_text_atomic
from sr_deploy.runtime.base import Backend
from sr_deploy.runtime.factory import make_backend
from sr_deploy.runtime.torch_backend import physical_cores


def qlinear_graph(fp32_path: Path, out: Path, calib_dir: Path) -> Path:
    """ONNX Runtime's own QDQ quantization of the fp32 graph: int8 symmetric, per-channel weights, every quantizable
    tensor (so conv outputs too, which is what lets it fuse QLinearConv)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    crops = load_calibration_set(calib_dir, 8, 64, seed=0).crops

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter([{"lr": c} for c in crops])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        str(fp32_path),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    return out


class OrtTimer:
    """One ONNX Runtime session on the CPU, `threads` intra-op threads; what it fused is kept (`fused_ops`)."""

    def __init__(self, path: Path, threads: int, optimized: Path) -> None:
        import onnx
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.optimized_model_filepath = str(optimized)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops: dict[str, int] = {}
        for node in onnx.load(str(optimized)).graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        self.fused_ops = dict(sorted(ops.items(), key=lambda kv: -kv[1]))

    def timer(self, x: np.ndarray) -> Callable[[], float]:
        import time

        def run() -> float:
            t0 = time.perf_counter_ns()
            self.session.run(None, {"lr": x})
            return (time.perf_counter_ns() - t0) / 1e6

        return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8-onnx", type=Path, required=True, help="an int8 graph from srdeploy quantize or QAT")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "ort_int8.md")
    args = parser.parse_args(argv)
    set5 = default_reference_folder()
    if set5 is None:
        print("ort_int8: needs ../shared (team26's weights, Set5, the DIV2K test LR images)", file=sys.stderr)
        return 2
    data = set5.parent
    threads = physical_cores()
    model, loaded = load_model(str(data / "weights" / "team26_imdn_nb7.pth"), form="plain")
    graph = check_int8_graph(args.int8_onnx, model.spec, loaded.sha256)
    refs = load_reference_images(set5, scale=model.spec.scale)
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="srdeploy-ort-int8-") as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        fp32_path.write_bytes(build_onnx_model(model).SerializeToString())
        qlinear = qlinear_graph(fp32_path, work / "qlinear.onnx", data / "DIV2K_test_LR_bicubic_x4")
        ort_paths = {"ONNX Runtime fp32": fp32_path, "ONNX Runtime, srdeploy's int8 graph": graph.path}
        ort_paths["ONNX Runtime, QLinearConv graph"] = qlinear
        sessions = {name: OrtTimer(p, threads, work / f"opt{i}.onnx") for i, (name, p) in enumerate(ort_paths.items())}
        common: dict[str, Any] = {"device": "cpu", "weights_sha256": loaded.sha256}
        ov: dict[str, Backend] = {
            "OpenVINO bf16": make_backend("openvino", model, precision="bf16", work_dir=work, **common),
            "OpenVINO int8": make_backend("openvino", model, precision="int8", int8_graph=graph.path, **common),
        }
        precision = {name: ("fp32" if "fp32" in name else "int8") for name in sessions} | {
            "OpenVINO bf16": "bf16",
            "OpenVINO int8": "int8",
        }
        results: list[PathResult] = []
        for hw in SIZES:
            size = f"1x3x{hw[0]}x{hw[1]}"
            x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
            paths = {name: (precision[name], s.timer(x)) for name, s in sessions.items()}
            paths |= {name: (precision[name], backend_timer(b, x)) for name, b in ov.items()}
            print(size, end=" ", flush=True)
            results += run_rounds(paths, size, args.reps).values()
        reference = fp32_reference(fp32_path.read_bytes(), refs, model.spec.scale)
        accuracy = {
            "ONNX Runtime, QLinearConv graph": score(ort_runner(qlinear.read_bytes()), "qlinear", refs, reference, 4),
            "ONNX Runtime, srdeploy's int8 graph": score(
                ort_runner(graph.path.read_bytes()), "ours", refs, reference, 4
            ),
        }
        report = {
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/ort_int8.py "
            + " ".join(argv if argv is not None else [f"--int8-onnx {args.int8_onnx.name}", f"--reps {args.reps}"]),
            "threads": threads,
            "load_before": load_before,
            "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            "int8_graph": graph.to_dict(),
            "openvino_int8_hint": ov["OpenVINO int8"].info.details["compute_precision_hint"],
            "fused_ops": {name: s.fused_ops for name, s in sessions.items()},
            "results": [r.to_dict() for r in results],
            "accuracy_set5": {name: s.to_dict() for name, s in accuracy.items()},
            "fp32_set5_y_psnr": reference.mean_y_psnr,
        }
        for b in ov.values():
            b.close()
    md = render(report)
    write_text_atomic(args.out, md, "--out")
    write_text_atomic(args.out.with_suffix(".json"), dumps_json(report), "--out")
    print(md)
    return 0


def render(report: dict[str, Any]) -> str:
    lines = [
        "# ONNX Runtime's int8 paths against OpenVINO (issue 13, item 3)",
        "",
        f"Generated {report['created_utc']} by `{report['command']}`; {report['threads']} threads, load average "
        f"{report['load_before']} before, {report['load_after']} after. OpenVINO int8 runs its float remainder as "
        f"the graph's recorded verdict says ({report['openvino_int8_hint']}).",
        "",
        "| path | size | best (s) | median (s) | / OpenVINO bf16 (paired) |",
        "|---|---|---:|---:|---:|",
    ]
    by = {(r["path"], r["size"]): r["forward_ms"] for r in report["results"]}
    for r in report["results"]:
        base = by[("OpenVINO bf16", r["size"])]
        paired = statistics.median(a / b for a, b in zip(r["forward_ms"], base, strict=True))
        lines.append(
            f"| {r['path']} | {r['size']} | {min(r['forward_ms']) / 1e3:.3f} | "
            f"{statistics.median(r['forward_ms']) / 1e3:.3f} | {paired:.2f} |"
        )
    fp32 = report["fp32_set5_y_psnr"]
    lines += ["", f"Set5 mean Y-PSNR, fp32 {fp32:.4f} dB (the gate allows a 0.10 dB drop, 0.5 levels of shift):", ""]
    for name, s in report["accuracy_set5"].items():
        lines.append(
            f"- {name}: {s['mean_y_psnr']:.4f} dB, drop {s['y_drop_db']:.4f} dB, brightness shift "
            f"{s['brightness_shift']:.3f} levels."
        )
    lines += ["", "What ONNX Runtime made of each graph (its optimized graph's most frequent ops):", ""]
    for name, ops in report["fused_ops"].items():
        lines.append(f"- {name}: " + ", ".join(f"{op} {n}" for op, n in list(ops.items())[:6]))
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
