"""OpenVINO int8 against bf16 and fp32 on this CPU, with the int8 matmul peak, in one run (issue 13, item 5).

    python benchmarks/int8_cpu.py                                  # quantizes team26 first (about 2 minutes)
    python benchmarks/int8_cpu.py --int8-onnx team26.int8.onnx     # an int8 graph from `srdeploy quantize`

Measures, in this one process with the same thread count:
- the matmul peak of OpenVINO's CPU plugin in fp32, bf16 and int8 (an n x n x n MatMul; int8 from a Q/DQ graph,
  so it runs the same int8 GEMM kernels as the network), best of the rounds;
- team26 through the srdeploy OpenVINO backend in fp32, bf16 (after its accuracy gate) and int8 (the Q/DQ graph, which
  passed its gate when it was written), at 1x3x256x256 and 1x3x339x510, forward-only;
- achieved GOP/s (2 x conv multiply-accumulates) and the share of the same precision's matmul peak;
- int8 time / bf16 time, best-to-best and paired (median over rounds of the ratio within a round).

Rounds interleave every path, so a busy neighbour slows them alike; the load average before and after is recorded.
Needs ../shared (team26's weights and Set5) or --int8-onnx with --weights. Writes benchmarks/results/int8_cpu.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from sr_deploy import __version__
from sr_deploy.checkpoints import load_model
from sr_deploy.export.onnx import default_reference_folder, load_reference_images
from sr_deploy.export.quantize import (
    Fp32Reference,
    QuantizeOptions,
    check_int8_graph,
    fp32_reference,
    load_calibration_set,
    quantize_model,
    score,
)
from sr_deploy.fileio import write_text_atomic
from sr_deploy.profile import profile_model
from sr_deploy.runtime.base import Backend
from sr_deploy.runtime.factory import make_backend
from sr_deploy.runtime.ov_backend import openvino_status
from sr_deploy.runtime.torch_backend import physical_cores

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = ((256, 256), (339, 510))
GOAL = 0.5  # int8 at most half the bf16 time
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


@dataclass
class PathResult:
    path: str
    precision: str
    size: str
    forward_ms: list[float] = field(default_factory=list)

    def best(self) -> float:
        return min(self.forward_ms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def matmul_graph(n: int, precision: str) -> bytes:
    """y = x @ w, n x n; int8: x through a per-tensor Q/DQ pair and w an int8 constant behind a per-column DQ."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
    if precision != "int8":
        inits = [numpy_helper.from_array(rng.random((n, n), dtype=np.float32), "w")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    else:
        inits = [
            numpy_helper.from_array(np.array(0.01, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
            numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "w"),
            numpy_helper.from_array(np.full(n, 0.01, np.float32), "ws"),
            numpy_helper.from_array(np.zeros(n, np.int8), "wz"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
            helper.make_node("MatMul", ["xd", "wd"], ["y"]),
        ]
    graph = helper.make_graph(nodes, f"matmul-{precision}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    data: bytes = model.SerializeToString()
    return data


class OvMatmul:
    """The n^3 MatMul compiled by OpenVINO's CPU plugin in `precision`, checked to run in it."""

    def __init__(self, n: int, precision: str, threads: int) -> None:
        import openvino as ov

        from sr_deploy.runtime.ov_backend import runtime_precisions

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": threads}
        config.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
        self.compiled = core.compile_model(core.read_model(matmul_graph(n, precision), b""), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.x = np.random.default_rng(1).random((n, n), dtype=np.float32)
        self.n = n
        self.kernels = runtime_precisions(self.compiled, "FullyConnected") or runtime_precisions(
            self.compiled, "MatMul"
        )

    @property
    def gop(self) -> float:
        return 2.0 * self.n**3 / 1e9

    def __call__(self) -> float:
        t0 = time.perf_counter_ns()
        self.request.infer({0: self.x}, share_inputs=True)
        return (time.perf_counter_ns() - t0) / 1e6


def run_rounds(paths: dict[str, tuple[str, Callable[[], float]]], size: str, reps: int) -> dict[str, PathResult]:
    results = {name: PathResult(name, precision, size) for name, (precision, _) in paths.items()}
    for _, run in paths.values():
        run()  # warm-up (and OpenVINO's compile for this shape), outside the timings
    for _ in range(reps):
        for name, (_, run) in paths.items():  # interleaved: a noisy neighbour hits every path alike
            results[name].forward_ms.append(run())
        print(".", end="", flush=True)
    print()
    return results


def backend_timer(backend: Backend, x: np.ndarray) -> Callable[[], float]:
    return lambda: backend.run_timed(x).forward_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int8-onnx", type=Path, default=None, help="int8 graph (default: quantize team26 now)")
    parser.add_argument("--weights", default=None, help="default: team26 from ../shared")
    parser.add_argument("--reps", type=int, default=7, help="timed rounds per path and size")
    parser.add_argument("--matmul-n", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--out", type=Path, default=RESULTS / "int8_cpu.md")
    args = parser.parse_args(argv)
    if openvino_status() is not None:
        print(f"int8_cpu: {openvino_status()}", file=sys.stderr)
        return 2
    threads = args.threads or physical_cores()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    set5 = default_reference_folder()
    shared = set5.parent.parent if set5 is not None else None
    weights = args.weights or (str(shared / "data" / "weights" / "team26_imdn_nb7.pth") if shared else None)
    if weights is None or set5 is None:
        print("int8_cpu: needs team26's weights and Set5 (../shared or $SRDEPLOY_SHARED)", file=sys.stderr)
        return 2
    model, loaded = load_model(weights, form="plain")
    refs = load_reference_images(set5, scale=model.spec.scale)
    with tempfile.TemporaryDirectory(prefix="srdeploy-int8-bench-") as tmp:
        work = Path(tmp)
        int8_path = args.int8_onnx
        quantize_seconds = None
        if int8_path is None:
            assert shared is not None
            int8_path = work / "team26.int8.onnx"
            options = QuantizeOptions()
            calib = load_calibration_set(
                shared / "data" / "DIV2K_test_LR_bicubic_x4", options.calib_count, options.crop, seed=options.seed
            )
            print("quantizing (the gate runs inside; nothing is written unless it passes) ...", flush=True)
            t0 = time.perf_counter()
            quantize_model(model, int8_path, calib, refs, weights_sha256=loaded.sha256, options=options)
            quantize_seconds = time.perf_counter() - t0
        graph = check_int8_graph(int8_path, model.spec, loaded.sha256)
        report = _measure(args, threads, model, loaded.sha256, graph.path, work, refs)
    report.update(
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        load_before=load_before,
        load_after=" ".join(f"{v:.2f}" for v in os.getloadavg()),
        weights=Path(weights).name,
        int8_graph=graph.to_dict() | {"given": args.int8_onnx is not None, "quantize_seconds": quantize_seconds},
        threads=threads,
        reps=args.reps,
        matmul_n=args.matmul_n,
        versions={"srdeploy": __version__, "openvino": _ov_version(), "onnxruntime": _ort_version()},
    )
    md = render(report)
    write_text_atomic(args.out, md)
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    print(md)
    return 0


def _measure(
    args: argparse.Namespace,
    threads: int,
    model: Any,
    sha: str,
    int8_path: Path,
    work: Path,
    refs: list[Any],
) -> dict[str, Any]:
    common: dict[str, Any] = {"device": "cpu", "weights_sha256": sha}
    backends: dict[str, Backend] = {
        "OpenVINO fp32": make_backend("openvino", model, precision="fp32", work_dir=work, **common),
        # make_backend runs the bf16 accuracy gate (Set5) before handing the backend out.
        "OpenVINO bf16": make_backend("openvino", model, precision="bf16", work_dir=work, **common),
        "OpenVINO int8": make_backend("openvino", model, precision="int8", int8_graph=int8_path, **common),
    }
    precision_of = {"OpenVINO fp32": "fp32", "OpenVINO bf16": "bf16", "OpenVINO int8": "int8"}
    peaks = {p: OvMatmul(args.matmul_n, p, threads) for p in ("fp32", "bf16", "int8")}
    results: list[PathResult] = []
    gop: dict[str, float] = {}
    for hw in SIZES:
        size = f"1x3x{hw[0]}x{hw[1]}"
        gop[size] = 2 * profile_model(model, hw).macs / 1e9
        x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
        paths: dict[str, tuple[str, Callable[[], float]]] = {f"matmul {p} (peak)": (p, mm) for p, mm in peaks.items()}
        paths.update({name: (precision_of[name], backend_timer(b, x)) for name, b in backends.items()})
        print(size, end=" ", flush=True)
        results += run_rounds(paths, size, args.reps).values()
    mm_gop = 2.0 * args.matmul_n**3 / 1e9
    peak_gops: dict[str, float] = {}
    for r in results:
        if r.path.startswith("matmul"):
            peak_gops[r.precision] = max(peak_gops.get(r.precision, 0.0), mm_gop / (r.best() / 1e3))
    # Accuracy in the same run: the int8 backend itself on Set5 against ONNX Runtime fp32.
    from sr_deploy.export.onnx import build_onnx_model

    reference: Fp32Reference = fp32_reference(build_onnx_model(model).SerializeToString(), refs, model.spec.scale)
    int8_score = score(backends["OpenVINO int8"].run, "openvino int8", refs, reference, model.spec.scale)
    details = {name: b.info.details for name, b in backends.items()}
    for b in backends.values():
        b.close()
    return {
        "peaks_gops": peak_gops,
        "peak_kernels": {p: mm.kernels for p, mm in peaks.items()},
        "gop": gop,
        "results": [r.to_dict() for r in results],
        "int8_set5": int8_score.to_dict(),
        "fp32_set5_y_psnr": reference.mean_y_psnr,
        "backend_details": details,
    }


def _result(report: dict[str, Any], path: str, size: str) -> dict[str, Any]:
    return next(r for r in report["results"] if r["path"] == path and r["size"] == size)


def render(report: dict[str, Any]) -> str:
    peaks = report["peaks_gops"]
    g = report["int8_graph"]
    s5 = report["int8_set5"]
    floats = ", ".join(g["float_layers"]) or "none"
    lines = [
        "# OpenVINO int8 against bf16 and fp32, and the int8 matmul peak (issue 13, item 5)",
        "",
        f"Generated {report['created_utc']} by `python benchmarks/int8_cpu.py --reps {report['reps']}"
        + (" --int8-onnx ...`" if g["given"] else "`")
        + ".",
        "",
        f"- Threads: {report['threads']} (OpenVINO inference threads). Load average before / after: "
        f"{report['load_before']} / {report['load_after']}: anything above the thread count means other work shared "
        "the cores, and every figure is slower; the paired ratios are the ones that survive that.",
        f"- Versions: srdeploy {report['versions']['srdeploy']}, openvino {report['versions']['openvino']}, "
        f"onnxruntime {report['versions']['onnxruntime']}. Weights: {report['weights']}.",
        f"- int8 graph: float layers {floats}; calibration sha256 {g['calibration_sha256'][:16]}; gate when written: "
        f"Y-PSNR drop {g['y_drop_db']:.4f} dB."
        + (f" Quantized in this run in {g['quantize_seconds']:.0f} s." if g.get("quantize_seconds") else ""),
        f"- int8 accuracy in this run (the OpenVINO int8 backend on Set5): mean Y-PSNR {s5['mean_y_psnr']:.4f} dB "
        f"against fp32 {report['fp32_set5_y_psnr']:.4f} dB, drop {s5['y_drop_db']:.4f} dB (gate <= 0.10), "
        f"brightness shift {s5['brightness_shift']:.3f} levels (gate <= 0.5), finite: {s5['finite']}.",
        f"- Matmul peaks ({report['matmul_n']}^3 through OpenVINO's CPU plugin, best of the rounds): "
        + ", ".join(f"{p} {v:.0f} GOP/s ({report['peak_kernels'][p]})" for p, v in peaks.items())
        + ".",
        "- Network work: " + ", ".join(f"{s}: {v:.1f} GOP" for s, v in report["gop"].items()) + " (2 x conv MACs).",
        "",
        "| path | size | best (s) | median (s) | GOP/s | % of its precision's matmul peak |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        if r["path"].startswith("matmul"):
            continue
        best = min(r["forward_ms"]) / 1e3
        rate = report["gop"][r["size"]] / best
        lines.append(
            f"| {r['path']} | {r['size']} | {best:.3f} | {statistics.median(r['forward_ms']) / 1e3:.3f} | "
            f"{rate:.0f} | {100 * rate / peaks[r['precision']]:.0f}% |"
        )
    lines += ["", "## int8 against bf16 (goal: int8 time <= 0.5 x bf16 time, with the gate passed)", ""]
    for hw in SIZES:
        size = f"1x3x{hw[0]}x{hw[1]}"
        i8, b16 = _result(report, "OpenVINO int8", size), _result(report, "OpenVINO bf16", size)
        best = min(i8["forward_ms"]) / min(b16["forward_ms"])
        paired = statistics.median(a / b for a, b in zip(i8["forward_ms"], b16["forward_ms"], strict=True))
        met = max(best, paired) <= GOAL
        lines.append(
            f"- {size}: int8 / bf16 = {best:.2f} best-to-best, {paired:.2f} paired: **{'met' if met else 'NOT met'}**."
        )
    convs = report["backend_details"]["OpenVINO int8"].get("convolutions_by_precision")
    lines += [
        "",
        f"OpenVINO's runtime model of the int8 graph: convolutions by precision {convs} (the split-free rewrite makes "
        "one conv per Split piece, so there are more than the graph's 38).",
        "",
    ]
    return "\n".join(lines)


def _ov_version() -> str:
    import openvino as ov

    return str(getattr(ov, "__version__", "unknown"))


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


if __name__ == "__main__":
    sys.exit(main())
