"""Quantization-aware training of team26 on a CPU: issue 13, item 2.

Distillation from the fp32 team26 (its own outputs are the targets) on random LR crops of the 100 DIV2K test LR
images; the activation scales start from PTQ's calibration (32 crops of 96x96 of the same folder, percentile
99.99), so step 0 is the PTQ graph with every conv int8. The gate is PTQ's: Set5 mean Y-PSNR may drop at most
0.10 dB against the fp32 ORIGINAL weights, no NaN/Inf, no brightness shift beyond 0.5 levels, the worse of ONNX
Runtime and OpenVINO. Set5 is never trained on.

Usage: python benchmarks/qat_team26.py [--steps 160] [--batch-size 8] [--crop 48] [--lr 3e-5] [--out PATH]
                                       [--float-layer NAME] [--include EARLIER.json] [--render-only]
Writes benchmarks/results/qat_team26.md and .json; the int8 graph (only if it passes) to --out. Each run is kept in
the results beside the earlier ones (a run with the same command replaces its old entry).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from sr_deploy.checkpoints import load_model
from sr_deploy.errors import GateFailedError
from sr_deploy.export.onnx import load_reference_images
from sr_deploy.export.quantize import QuantizeOptions, load_calibration_set
from sr_deploy.fileio import dumps_json, write_text_atomic
from sr_deploy.train.qat import QatOptions, load_lr_folder, qat_quantize

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


def _runtime_rows(step: dict[str, Any]) -> list[str]:
    return [
        f"| {s['runtime']} | {s['mean_y_psnr']:.4f} | {s['y_drop_db']:.4f} | {s['brightness_shift']:.3f} |"
        for s in step["scores"]
    ]


def _gate_text(g: dict[str, Any]) -> str:
    if isinstance(g["value"], bool):
        return f"{g['name']}: {'yes' if g['value'] else 'NO'}"
    return f"{g['name']} {g['value']:.4f} {g['rule']} {g['threshold']:g} ({'pass' if g['passed'] else 'FAIL'})"


def _run_markdown(result: dict[str, Any]) -> list[str]:
    o = result["options"]
    floats = ", ".join(o.get("float_layers", [])) or "none"
    lines = [
        f"## `{result['command']}`",
        "",
        f"{result['date']}, {result['machine']}. Layers left in floating point: {floats}. Distillation from fp32 "
        f"team26 on random {o['crop']}x{o['crop']} LR crops of {result['data']['images']} DIV2K test LR images "
        f"(sha256 {result['data']['sha256'][:16]}); {o['steps']} steps of batch {o['batch_size']}, Adam lr {o['lr']:g} "
        f"(activation log-scales {o['scale_lr']:g}), seed {o['seed']}.",
        "",
    ]
    if result.get("report"):
        r = result["report"]
        ptq = r.get("ptq") or r["ptq_all_convs"]
        lines += [
            f"Result: **written** ({r['path']}); Q/DQ audit ok: {r['audit']['ok']}, "
            f"{r['audit']['quantized_convs']} of {r['audit']['quantized_convs'] + r['audit']['float_convs']} convs "
            "int8.",
            "",
            "| | mean Y-PSNR (dB) |",
            "|---|---:|",
            f"| fp32, original weights (the reference) | {r['fp32_mean_y_psnr']:.4f} |",
            f"| fp32, fine-tuned weights | {r['finetuned_fp32_mean_y_psnr']:.4f} |",
            "",
            "| int8 graph, runtime | mean Y-PSNR (dB) | drop vs fp32 (dB) | brightness shift (levels) |",
            "|---|---:|---:|---:|",
        ]
        lines += [row.replace("| ", "| PTQ (same layers), ", 1) for row in _runtime_rows(ptq)]
        lines += [row.replace("| ", "| QAT, ", 1) for row in _runtime_rows(r["qat"])]
        lines += [
            "",
            "Gate (worse runtime): " + "; ".join(_gate_text(g) for g in r["gates"]),
            "",
            f"Loss (L1 vs teacher): first tenth {r['fine_tune']['first_loss']:.6f}, last tenth "
            f"{r['fine_tune']['last_loss']:.6f}.",
        ]
    else:
        lines += [f"Result: **not written**: {result['error']}"]
    lines += ["", "Time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()), ""]
    return lines


def _markdown(runs: list[dict[str, Any]], floor: dict[str, Any] | None) -> str:
    lines = [
        "# Quantization-aware training of team26 (issue 13, item 2)",
        "",
        "Gate: Set5 (never trained on) mean Y-PSNR drop <= 0.10 dB against the fp32 ORIGINAL weights, no NaN/Inf, "
        "brightness shift <= 0.5 levels, the worse of ONNX Runtime and OpenVINO. Activation scales start from PTQ's "
        "calibration (32 crops of 96x96 of the same DIV2K folder, percentile 99.99), so step 0 is the PTQ graph of "
        "the same layers; the PTQ rows are that graph.",
        "",
        "The conv that reads the image reads it centred on zero (`centre_image_convs`: Sub 0.5, Pad with -0.5, the "
        "centre folded into the bias), so symmetric int8 keeps all 8 of the image's bits. PTQ of the same weights "
        "with the search (`srdeploy quantize`, README) then passes with every conv int8.",
        "",
    ]
    if floor is not None:
        lines += [
            f"The image input alone, quantized as the graph quantizes it, with every conv in fp32 (Set5 mean Y-PSNR, "
            f"fp32 {floor['fp32_mean_y_psnr']:.4f} dB): centred on zero (scale 0.5/127, what the graph does) "
            f"{floor['centred_y_drop_db']:.4f} dB; as [0, 1] (scale 1/127: 7 of the image's 8 bits, what the graph did "
            f"before centring) {floor['y_drop_db']:.4f} dB, half of the 0.10 dB budget before any conv.",
            "",
        ]
    for run in runs:
        lines += _run_markdown(run)
    return "\n".join(lines)


def input_quantization_floor(weights: Path, reference_dir: Path) -> dict[str, Any]:
    """Set5 mean Y-PSNR of the fp32 model with only its input image quantized, int8 symmetric: centred on zero
    (scale 0.5/127, as the graph does) and as [0, 1] (scale 1/127: 7 of the image's 8 bits): what every-conv-int8
    loses before any conv."""
    from sr_deploy.compare import psnr_vs_hr

    model, _ = load_model(weights, form="plain")
    refs = load_reference_images(reference_dir, scale=model.spec.scale)
    fp32: list[float] = []
    quantized: list[float] = []
    centred: list[float] = []
    with torch.no_grad():
        for r in refs:
            assert r.hr is not None
            x = torch.from_numpy(r.lr)
            q = torch.fake_quantize_per_tensor_affine(x, 1.0 / 127, 0, -128, 127)
            c = torch.fake_quantize_per_tensor_affine(x - 0.5, 0.5 / 127, 0, -128, 127) + 0.5
            fp32.append(psnr_vs_hr(model(x).numpy(), r.hr, model.spec.scale).y_db)
            quantized.append(psnr_vs_hr(model(q).numpy(), r.hr, model.spec.scale).y_db)
            centred.append(psnr_vs_hr(model(c).numpy(), r.hr, model.spec.scale).y_db)
    a, b, m = (sum(v) / len(v) for v in (fp32, quantized, centred))
    return {
        "fp32_mean_y_psnr": a,
        "input_int8_mean_y_psnr": b,
        "y_drop_db": a - b,
        "centred_input_int8_mean_y_psnr": m,
        "centred_y_drop_db": a - m,
        "images": len(refs),
    }


def _load_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of a results file (an old single-run file is one run)."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    runs: list[dict[str, Any]] = data.get("runs", [data])
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--crop", type=int, default=48)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--scale-lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/qat/team26.qat.int8.onnx"))
    ap.add_argument("--float-layer", action="append", default=[], help="leave this conv in floating point")
    ap.add_argument("--include", type=Path, action="append", default=[], help="earlier results to keep beside")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    args = ap.parse_args(argv)
    weights = SHARED / "weights" / "team26_imdn_nb7.pth"
    if args.render_only:
        runs = _load_runs(RESULTS / "qat_team26.json")
        floor = input_quantization_floor(weights, SHARED / "Set5")
        write_text_atomic(RESULTS / "qat_team26.json", dumps_json({"input_floor": floor, "runs": runs}), "results")
        write_text_atomic(RESULTS / "qat_team26.md", _markdown(runs, floor), "results")
        return 0
    lr_dir = SHARED / "DIV2K_test_LR_bicubic_x4"
    if not weights.is_file() or not lr_dir.is_dir():
        print(f"needs {weights} and {lr_dir} (../shared)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    def progress(step: int, total: int, loss: float) -> None:
        if step % 10 == 0 or step == total:
            say(f"step {step}/{total} loss {loss:.6f}")

    model, loaded = load_model(weights, form="plain")
    qopts = QuantizeOptions(seed=args.seed)
    options = QatOptions(
        steps=args.steps,
        lr=args.lr,
        scale_lr=args.scale_lr,
        batch_size=args.batch_size,
        crop=args.crop,
        seed=args.seed,
        float_layers=tuple(args.float_layer),
        quantize=qopts,
    )
    calib = load_calibration_set(lr_dir, qopts.calib_count, qopts.crop, seed=args.seed)
    data = load_lr_folder(lr_dir, args.crop, model.spec.scale)
    refs = load_reference_images(SHARED / "Set5", scale=model.spec.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": "python benchmarks/qat_team26.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"CPU, {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} at the start",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "weights_sha256": loaded.sha256,
        "options": options.to_dict(),
        "data": data.to_dict(),
        "calibration": calib.to_dict(),
    }
    try:
        report = qat_quantize(
            model,
            args.out,
            data,
            calib,
            refs,
            weights_sha256=loaded.sha256,
            options=options,
            reference_label=f"Set5 ({len(refs)} images)",
            say=say,
            progress=progress,
        )
        result["report"] = report.to_dict()
        result["seconds"] = report.seconds
    except GateFailedError as e:
        result["error"] = str(e)
        result["seconds"] = {"total": time.perf_counter() - t0}
    say(result.get("error") or f"wrote {args.out}")
    runs = [r for path in args.include for r in _load_runs(path)] + _load_runs(RESULTS / "qat_team26.json")
    by_command = {run["command"]: run for run in [*runs, json.loads(json.dumps(result))]}
    kept = list(by_command.values())
    floor = input_quantization_floor(weights, SHARED / "Set5")
    write_text_atomic(RESULTS / "qat_team26.json", dumps_json({"input_floor": floor, "runs": kept}), "results")
    write_text_atomic(RESULTS / "qat_team26.md", _markdown(kept, floor), "results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
