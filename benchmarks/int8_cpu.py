"""OpenVINO int8 against bf16 and fp32 on this CPU, with the int8 conv peak, in one run (issue 13, item 5).

    python benchmarks/int8_cpu.py                                  # quantizes team26 first (about 2 minutes)
    python benchmarks/int8_cpu.py --int8-onnx team26.int8.onnx     # an int8 graph from `srdeploy quantize` or QAT

Measures, in this one process with the same thread count:
- team26 through the srdeploy OpenVINO backend in fp32, bf16 (after its accuracy gate) and int8 (the Q/DQ graph, which
  passed its gate when it was written; the float remainder in f32, as gated), and the same int8 graph with its float
  remainder in bf16, at 1x3x256x256 and 1x3x339x510, forward-only;
- the conv peaks of OpenVINO's CPU plugin in bf16 and int8: a chain of 3x3 convs at the network's width (the shapes
  the network really runs) and at 256 channels (where the int8 kernels come nearest their best), int8 with srdeploy's
  Q/DQ placement, so the same int8 kernels run;
- achieved GOP/s (2 x conv multiply-accumulates) and the share of the same precision's wide conv peak;
- int8 time / bf16 time, best-to-best and paired (median over rounds of the ratio within a round);
- OpenVINO's own per-layer profile of each graph: which layers take the time;
- the accuracy of both int8 paths on Set5.

Rounds interleave every path, so a busy neighbour slows them alike; the load average before and after is recorded.
Needs ../shared (team26's weights and Set5) or --int8-onnx with --weights. Writes benchmarks/results/int8_cpu.md
and .json.
"""

from __future__ import annotations

import argparse
import json
import math
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
CHAIN_DEPTH = 6
PEAK_CHANNELS = 256  # wide enough that the int8 kernels run near their best
PEAK_HW = (128, 128)
BF16_REMAINDER = "OpenVINO int8, bf16 remainder"
F32_REMAINDER = "OpenVINO int8, f32 remainder"
PRECISION_OF = {"OpenVINO fp32": "fp32", "OpenVINO bf16": "bf16", F32_REMAINDER: "int8", BF16_REMAINDER: "int8"}


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


def conv_chain_graph(channels: int, hw: tuple[int, int], precision: str, depth: int = CHAIN_DEPTH) -> bytes:
    """`depth` 3x3 convs, `channels` -> `channels`, padded, at 1 x channels x H x W. int8: each conv's input through a
    per-tensor symmetric Q/DQ pair and its weights int8 behind a per-channel DQ, the placement of srdeploy's graphs,
    so the CPU plugin runs the same int8 conv kernels as in the network."""
    rng = np.random.default_rng(0)
    shape = [1, channels, *hw]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    inits = [
        numpy_helper.from_array(np.array(0.02, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z"),
        numpy_helper.from_array(np.full(channels, 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
    ]
    nodes = []
    cur = "x"
    for i in range(depth):
        w = rng.integers(-127, 128, (channels, channels, 3, 3)).astype(np.int8)
        inits.append(numpy_helper.from_array(np.zeros(channels, np.float32), f"b{i}"))
        if precision == "int8":
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes += [
                helper.make_node("QuantizeLinear", [cur, "s", "z"], [f"q{i}"]),
                helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"]),
                helper.make_node("DequantizeLinear", [f"w{i}", "ws", "wz"], [f"wd{i}"], axis=0),
            ]
            conv_in, weight = f"d{i}", f"wd{i}"
        else:
            inits.append(numpy_helper.from_array((w * 0.01).astype(np.float32), f"w{i}"))
            conv_in, weight = cur, f"w{i}"
        out = "y" if i == depth - 1 else f"c{i}"
        nodes.append(helper.make_node("Conv", [conv_in, weight, f"b{i}"], [out], pads=[1, 1, 1, 1]))
        cur = out
    graph = helper.make_graph(nodes, f"conv-chain-{precision}", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    data: bytes = model.SerializeToString()
    return data


class OvGraph:
    """A graph compiled by OpenVINO's CPU plugin for one input shape, with the remainder hint `hint` (what the
    graph leaves in floating point computes in); `kernels` is what its convs really run in."""

    def __init__(self, data: bytes, shape: tuple[int, ...], hint: str, threads: int, profile: bool = False) -> None:
        import openvino as ov

        from sr_deploy.runtime.ov_backend import runtime_precisions

        core = ov.Core()
        model = core.read_model(data, b"")
        model.reshape({model.inputs[0]: ov.PartialShape(list(shape))})
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads}
        config.update({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "PERF_COUNT": profile})
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.x = np.random.default_rng(1).random(shape, dtype=np.float32)
        self.kernels = runtime_precisions(self.compiled)

    def __call__(self) -> float:
        t0 = time.perf_counter_ns()
        self.request.infer({0: self.x}, share_inputs=True)
        return (time.perf_counter_ns() - t0) / 1e6

    def layer_times_ms(self) -> dict[str, float]:
        """OpenVINO's own per-layer times of the last inference, summed by layer type (needs profile=True)."""
        out: dict[str, float] = {}
        for info in self.request.profiling_info:
            ms = info.real_time.total_seconds() * 1e3
            if ms > 0:
                out[info.node_type] = out.get(info.node_type, 0.0) + ms
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def layer_profile(data: bytes, shape: tuple[int, ...], hint: str, threads: int, rounds: int = 3) -> dict[str, float]:
    """Per layer type, the least time over `rounds` profiled inferences (profiling slows each a little, so these
    explain where time goes; the timings above are taken without it)."""
    graph = OvGraph(data, shape, hint, threads, profile=True)
    graph()
    best: dict[str, float] = {}
    for _ in range(rounds):
        graph()
        for kind, ms in graph.layer_times_ms().items():
            best[kind] = min(best.get(kind, math.inf), ms)
    return best


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
    parser.add_argument("--width", type=int, default=64, help="the network's feature width (team26: 64)")
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
        int8_graph=graph.to_dict()
        | {
            "given": args.int8_onnx is not None,
            "given_name": args.int8_onnx.name if args.int8_onnx else None,
            "quantize_seconds": quantize_seconds,
        },
        threads=threads,
        reps=args.reps,
        width=args.width,
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
    from sr_deploy.runtime.graph_rewrite import split_free_bytes
    from sr_deploy.runtime.ov_backend import OpenVinoBackend

    common: dict[str, Any] = {"device": "cpu", "weights_sha256": sha}
    backends: dict[str, Backend] = {
        "OpenVINO fp32": make_backend("openvino", model, precision="fp32", work_dir=work, **common),
        # make_backend runs the bf16 accuracy gate (Set5) before handing the backend out.
        "OpenVINO bf16": make_backend("openvino", model, precision="bf16", work_dir=work, **common),
        # Both remainders, whichever the graph's recorded verdict lets `--backend openvino` pick (reported).
        F32_REMAINDER: OpenVinoBackend(int8_path, precision="int8", int8_remainder="fp32"),
        BF16_REMAINDER: OpenVinoBackend(int8_path, precision="int8", int8_remainder="bf16"),
    }
    picked = make_backend("openvino", model, precision="int8", int8_graph=int8_path, **common)
    picked_hint = picked.info.details["compute_precision_hint"]
    picked.close()
    fp32_graph = split_free_bytes(next(work.glob("*-fp32-*.onnx")))
    int8_graph = split_free_bytes(int8_path)
    results: list[PathResult] = []
    gop: dict[str, float] = {}
    chain_gop: dict[str, float] = {}
    width = args.width
    for hw in SIZES:
        size = f"1x3x{hw[0]}x{hw[1]}"
        gop[size] = 2 * profile_model(model, hw).macs / 1e9
        x = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
        paths: dict[str, tuple[str, Callable[[], float]]] = {
            name: (PRECISION_OF[name], backend_timer(b, x)) for name, b in backends.items()
        }
        for c, chw in ((width, hw), (PEAK_CHANNELS, PEAK_HW)):
            chain_gop[chain_name(c, chw, "")] = CHAIN_DEPTH * 2 * c * c * 9 * chw[0] * chw[1] / 1e9
            for p in ("bf16", "int8"):
                paths[chain_name(c, chw, p)] = (p, OvGraph(conv_chain_graph(c, chw, p), (1, c, *chw), "bf16", threads))
        print(size, end=" ", flush=True)
        results += run_rounds(paths, size, args.reps).values()
    # Where the time goes, by OpenVINO's own per-layer profile, at the first size.
    shape = (1, 3, *SIZES[0])
    profiles = {
        "bf16": layer_profile(fp32_graph, shape, "bf16", threads),
        "int8": layer_profile(int8_graph, shape, "f32", threads),
        "int8, bf16 remainder": layer_profile(int8_graph, shape, "bf16", threads),
    }
    # Accuracy in the same run, on Set5 against ONNX Runtime fp32: the int8 backend, and the bf16 remainder.
    from sr_deploy.export.onnx import build_onnx_model

    reference: Fp32Reference = fp32_reference(build_onnx_model(model).SerializeToString(), refs, model.spec.scale)
    int8_score = score(backends[F32_REMAINDER].run, "openvino int8", refs, reference, model.spec.scale)
    remainder_score = score(backends[BF16_REMAINDER].run, BF16_REMAINDER, refs, reference, model.spec.scale)
    details = {name: b.info.details for name, b in backends.items()}
    for b in backends.values():
        b.close()
    return {
        "gop": gop,
        "chain_gop": chain_gop,
        "results": [r.to_dict() for r in results],
        "layer_profiles_ms": profiles,
        "int8_set5": int8_score.to_dict(),
        "int8_bf16_remainder_set5": remainder_score.to_dict(),
        "fp32_set5_y_psnr": reference.mean_y_psnr,
        "backend_details": details,
        "backend_picks": {"f32": F32_REMAINDER, "bf16": BF16_REMAINDER}[picked_hint],
    }


def chain_name(channels: int, hw: tuple[int, int], precision: str) -> str:
    return f"{CHAIN_DEPTH} convs 3x3 {channels}->{channels} at {hw[0]}x{hw[1]}" + (f" {precision}" if precision else "")


def _result(report: dict[str, Any], path: str, size: str) -> dict[str, Any]:
    return next(r for r in report["results"] if r["path"] == path and r["size"] == size)


def _best(report: dict[str, Any], path: str, size: str) -> float:
    return float(min(_result(report, path, size)["forward_ms"]))


def _ratio(report: dict[str, Any], a: str, b: str, size: str) -> tuple[float, float]:
    """a / b, best-to-best and paired (median over rounds of the ratio within a round)."""
    ra, rb = _result(report, a, size)["forward_ms"], _result(report, b, size)["forward_ms"]
    return min(ra) / min(rb), statistics.median(x / y for x, y in zip(ra, rb, strict=True))


def _conv_ms(profile: dict[str, float]) -> float:
    return sum(ms for kind, ms in profile.items() if kind == "Convolution")


def render(report: dict[str, Any]) -> str:
    g = report["int8_graph"]
    s5, r5 = report["int8_set5"], report["int8_bf16_remainder_set5"]
    floats = ", ".join(g["float_layers"]) or "none"
    fp32_y = report["fp32_set5_y_psnr"]
    width = report["width"]

    def acc(name: str, s: dict[str, Any]) -> str:
        return (
            f"{name}: mean Y-PSNR {s['mean_y_psnr']:.4f} dB, drop {s['y_drop_db']:.4f} dB (gate <= 0.10), brightness "
            f"shift {s['brightness_shift']:.3f} levels (gate <= 0.5), finite: {s['finite']}"
        )

    lines = [
        "# OpenVINO int8 against bf16 and fp32, and the int8 conv peak (issue 13, item 5)",
        "",
        f"Generated {report['created_utc']} by `python benchmarks/int8_cpu.py --reps {report['reps']}"
        + (f" --int8-onnx {g['given_name']}`" if g["given"] else "`")
        + ".",
        "",
        f"- Threads: {report['threads']} (OpenVINO inference threads). Load average before / after: "
        f"{report['load_before']} / {report['load_after']}: anything above the thread count means other work shared "
        "the cores, and every figure is slower; the paired ratios are the ones that survive that.",
        f"- Versions: srdeploy {report['versions']['srdeploy']}, openvino {report['versions']['openvino']}, "
        f"onnxruntime {report['versions']['onnxruntime']}. Weights: {report['weights']}.",
        f"- int8 graph: method {g['method']}, float layers {floats}; gate when written: Y-PSNR drop "
        f"{g['y_drop_db']:.4f} dB; bf16 remainder passed the gate when written: {g['bf16_remainder_passed']}, so "
        f"`--backend openvino --precision int8` runs the {report['backend_picks']!r} path."
        + (f" Quantized in this run in {g['quantize_seconds']:.0f} s." if g.get("quantize_seconds") else ""),
        f"- Accuracy in this run, Set5 against fp32 {fp32_y:.4f} dB: "
        + acc("the int8 graph with its float remainder in f32", s5)
        + "; "
        + acc("the same graph with the float remainder in bf16", r5)
        + ".",
        "- Network work: " + ", ".join(f"{s}: {v:.1f} GOP" for s, v in report["gop"].items()) + " (2 x conv MACs).",
        f"- Conv peaks, measured in the same rounds: a chain of {CHAIN_DEPTH} 3x3 convs at the network's width "
        f"({width} channels, at each size's HxW) and at {PEAK_CHANNELS} channels ({PEAK_HW[0]}x{PEAK_HW[1]}), bf16 and "
        "int8 (int8 with srdeploy's Q/DQ placement).",
        "",
        "| path | size | best (s) | median (s) | GOP/s | % of its precision's conv peak |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for hw in SIZES:
        size = f"1x3x{hw[0]}x{hw[1]}"
        peak = {
            p: report["chain_gop"][chain_name(PEAK_CHANNELS, PEAK_HW, "")]
            / _best(report, chain_name(PEAK_CHANNELS, PEAK_HW, p), size)
            * 1e3
            for p in ("bf16", "int8")
        }
        peak["fp32"] = math.nan
        for r in report["results"]:
            if r["size"] != size:
                continue
            best = min(r["forward_ms"]) / 1e3
            work = report["chain_gop"].get(r["path"].rsplit(" ", 1)[0], report["gop"][size])
            rate = work / best
            share = 100 * rate / peak[r["precision"]]
            lines.append(
                f"| {r['path']} | {size} | {best:.3f} | {statistics.median(r['forward_ms']) / 1e3:.3f} | "
                f"{rate:.0f} | {'' if math.isnan(share) else f'{share:.0f}%'} |"
            )
    lines += ["", "## int8 against bf16 (goal: int8 time <= 0.5 x bf16 time, with the gate passed)", ""]
    for hw in SIZES:
        size = f"1x3x{hw[0]}x{hw[1]}"
        for name in (F32_REMAINDER, BF16_REMAINDER):
            best, paired = _ratio(report, name, "OpenVINO bf16", size)
            met = max(best, paired) <= GOAL
            lines.append(
                f"- {size}, {name}: int8 / bf16 = {best:.2f} best-to-best, {paired:.2f} paired: "
                f"**{'met' if met else 'NOT met'}**."
            )
        for c, chw in ((width, hw), (PEAK_CHANNELS, PEAK_HW)):
            best, paired = _ratio(report, chain_name(c, chw, "int8"), chain_name(c, chw, "bf16"), size)
            lines.append(
                f"- {size}, conv chain alone, {c} channels at {chw[0]}x{chw[1]}: int8 / bf16 = {best:.2f} "
                f"best-to-best, {paired:.2f} paired."
            )
    prof = report["layer_profiles_ms"]
    lines += [
        "",
        f"## Where the time goes (OpenVINO's per-layer profile, 1x3x{SIZES[0][0]}x{SIZES[0][1]}, least of 3)",
        "",
        "| layer type | " + " | ".join(prof) + " |",
        "|---|" + "---:|" * len(prof),
    ]
    kinds = sorted({k for p in prof.values() for k in p}, key=lambda k: -max(p.get(k, 0.0) for p in prof.values()))
    for kind in kinds:
        lines.append(f"| {kind} | " + " | ".join(f"{p.get(kind, 0.0):.1f}" for p in prof.values()) + " |")
    lines.append("| **total** | " + " | ".join(f"**{sum(p.values()):.1f}**" for p in prof.values()) + " |")
    conv_ratio = _conv_ms(prof["int8"]) / _conv_ms(prof["bf16"])
    lines += [
        "",
        f"The int8 graph's convolutions alone take {conv_ratio:.2f} x the bf16 graph's convolutions "
        "(the same network, the same kernels family, OpenVINO's own layer times).",
    ]
    convs = report["backend_details"][F32_REMAINDER].get("convolutions_by_precision")
    lines += [
        "",
        f"OpenVINO's runtime model of the int8 graph: convolutions by precision {convs} (the split-free rewrite makes "
        "one conv per Split piece, so there are more than the graph's convs).",
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
