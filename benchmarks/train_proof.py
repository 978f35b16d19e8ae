"""Proof that `srdeploy train` learns, on a CPU: issue 4, item 5.

(a) From scratch: a reduced config trained on ../shared's Set14 HR, validated on Set5, stopped by a
    wall-clock budget; reports the validation curve and Set5 Y-PSNR of the fused best weights against
    bicubic upscaling.
(b) Fine-tuning: `init_from` the published team26 checkpoint. Before any step the fused model's Set5
    Y-PSNR must equal the reference (32.1949 dB) to 0.001 dB; after a few hundred steps at a small learning
    rate it must not have dropped by more than 0.05 dB.

Both evaluate exactly as the challenge does (../shared/data/reference_psnr.json "protocol"): the published
LR_bicubic_x4 inputs, uint8 output, 4-pixel border, Y = MATLAB rgb2ycbcr luma.

Usage: python benchmarks/train_proof.py [--scratch-minutes 10] [--finetune-steps 300] [--finetune-lr 1e-5] [--work DIR]
Writes benchmarks/results/train_proof.md (+ train_proof_scratch.png, train_proof_finetune.png).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sr_deploy.checkpoints import load_model
from sr_deploy.fusion import collapse_verified
from sr_deploy.imaging.io import from_model_output, list_images, read_image, to_tensor_layout
from sr_deploy.imaging.metrics import psnr
from sr_deploy.imaging.resize import imresize, modcrop
from sr_deploy.train.config import DataConfig, StageConfig, TrainConfig
from sr_deploy.train.loop import StopRequest, plot_run, read_metrics, train

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class SetScore:
    psnr_rgb: float
    psnr_y: float

    def to_dict(self) -> dict[str, float]:
        return {"psnr_rgb": round(self.psnr_rgb, 4), "psnr_y": round(self.psnr_y, 4)}


def _proof_data(work: Path) -> DataConfig:
    """Train on Set14 HR, validate on Set5 HR, LR made with the MATLAB bicubic and kept in memory."""
    return DataConfig(
        hr_dirs=(str(SHARED / "Set14" / "HR"),),
        val_hr_dir=str(SHARED / "Set5" / "HR"),
        cache_dir=str(work / "lr_cache"),
        num_workers=0,
        storage="memory",
    )


def _pairs(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for hr_path in list_images(SHARED / name / "HR"):
        hr = modcrop(read_image(hr_path).rgb, 4)
        lr = read_image(SHARED / name / "LR_bicubic_x4" / hr_path.name).rgb
        out.append((lr, hr))
    return out


def score(model: torch.nn.Module | None, pairs: list[tuple[np.ndarray, np.ndarray]]) -> SetScore:
    """Mean PSNR over a set; `model` None scores MATLAB bicubic upscaling."""
    rgb, y = [], []
    for lr, hr in pairs:
        if model is None:
            up = imresize(lr.astype(np.float64) / 255.0, scale=4)
            sr = from_model_output(np.transpose(up, (2, 0, 1))[None], 8)
        else:
            with torch.no_grad():
                sr = from_model_output(model(torch.from_numpy(to_tensor_layout(lr))).numpy(), 8)
        rgb.append(psnr(sr, hr, crop_border=4, y_channel=False))
        y.append(psnr(sr, hr, crop_border=4, y_channel=True))
    return SetScore(float(np.mean(rgb)), float(np.mean(y)))


def fused_score(weights: Path | str, pairs: list[tuple[np.ndarray, np.ndarray]]) -> SetScore:
    """Load a CLB checkpoint, collapse it with the proof, and score the deploy-form model."""
    model, _ = load_model(weights, form="clb")
    fused, _ = collapse_verified(model)
    return score(fused.eval(), pairs)


def curve_table(run_dir: Path, max_rows: int = 16) -> str:
    """The validation curve, thinned to about `max_rows` evenly spaced rows (first, best and last always kept)."""
    rows = ["| epoch (all stages) | step | val PSNR RGB | val PSNR Y | mean train L1 |", "|---:|---:|---:|---:|---:|"]
    records = read_metrics(run_dir / "metrics.jsonl")
    loss_by_epoch = {r["global_epoch"]: r["loss"] for r in records if r["event"] == "epoch"}
    vals = [r for r in records if r["event"] == "val"]
    if not vals:
        return "(no validation yet)"
    best = max(range(len(vals)), key=lambda i: vals[i]["psnr_rgb"])
    keep = {round(i * (len(vals) - 1) / max(max_rows - 1, 1)) for i in range(max_rows)} | {0, best, len(vals) - 1}
    for i in sorted(keep):
        r = vals[i]
        loss = loss_by_epoch.get(r["global_epoch"])
        loss_text = f"{loss:.5f}" if loss is not None else "-"
        mark = " (best)" if i == best else ""
        rows.append(
            f"| {r['global_epoch']}{mark} | {r['step']} | {r['psnr_rgb']:.4f} | {r['psnr_y']:.4f} | {loss_text} |"
        )
    return "\n".join(rows)


def run_scratch(work: Path, minutes: float, log: Any) -> dict[str, Any]:
    cfg = TrainConfig(
        arch="imdn-b3-clb",
        model={"channels": 32, "distilled": 8},
        seed=0,
        device="cpu",
        val_every=2,
        checkpoint_every=5,
        log_every=10,
        data=_proof_data(work),
        stages=(
            StageConfig(
                name="stage1", lr_patch=24, crops_per_image=16, epochs=10_000, batch_size=16, lr=1e-3, milestones=()
            ),
        ),
    )
    run_dir = work / "scratch"
    started = time.monotonic()
    result = train(cfg, run_dir, stop=StopRequest(deadline=started + minutes * 60), log=log)
    elapsed = time.monotonic() - started
    pairs = _pairs("Set5")
    best = fused_score(run_dir / "best.safetensors", pairs)
    bicubic = score(None, pairs)
    shutil.copyfile(plot_run(run_dir), RESULTS / "train_proof_scratch.png")
    return {
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "elapsed_s": round(elapsed, 1),
        "steps": result.position["global_step"],
        "epochs": result.position["global_epoch"],
        "stop_reason": result.stop_reason,
        "set5_best_fused": best.to_dict(),
        "set5_bicubic": bicubic.to_dict(),
        "gain_y_db": round(best.psnr_y - bicubic.psnr_y, 4),
        "curve": curve_table(run_dir),
    }


def run_finetune(work: Path, steps: int, lr: float, minutes: float, log: Any) -> dict[str, Any]:
    weights = SHARED / "weights" / "team26_imdn_nb7.pth"
    reference = json.loads((SHARED / "reference_psnr.json").read_text())["results"]["Set5/team26_imdn_nb7.pth"]
    pairs = _pairs("Set5")
    before = fused_score(weights, pairs)  # load (plain) -> uncollapse to CLB -> collapse: the round trip
    cfg = TrainConfig(
        arch="imdn-b7-clb",
        seed=0,
        device="cpu",
        init_from=str(weights),
        val_every=2,
        val_at_start=True,
        checkpoint_every=2,
        log_every=10,
        data=_proof_data(work),
        stages=(
            StageConfig(
                name="finetune", lr_patch=32, crops_per_image=10, epochs=10_000, batch_size=4, lr=lr, milestones=()
            ),
        ),
    )
    run_dir = work / "finetune"
    started = time.monotonic()
    result = train(cfg, run_dir, stop=StopRequest(after_step=steps, deadline=started + minutes * 60), log=log)
    elapsed = time.monotonic() - started
    after = fused_score(run_dir / "last.safetensors", pairs)
    shutil.copyfile(plot_run(run_dir), RESULTS / "train_proof_finetune.png")
    ref_y = reference["mean"]["psnr_y"]
    return {
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "elapsed_s": round(elapsed, 1),
        "steps": result.position["global_step"],
        "stop_reason": result.stop_reason,
        "reference_y": ref_y,
        "before_fused": before.to_dict(),
        "before_minus_reference_y": round(before.psnr_y - ref_y, 5),
        "after_fused": after.to_dict(),
        "drop_y_db": round(before.psnr_y - after.psnr_y, 4),
        "pass_before": abs(before.psnr_y - ref_y) <= 0.001,
        "pass_after": before.psnr_y - after.psnr_y <= 0.05,
        "curve": curve_table(run_dir),
    }


def write_report(scratch: dict[str, Any] | None, fine: dict[str, Any] | None) -> Path:
    """Markdown + JSON. A part not run this time keeps its figures from the previous JSON."""
    previous_path = RESULTS / "train_proof.json"
    if previous_path.is_file():
        previous = json.loads(previous_path.read_text())
        scratch = scratch if scratch is not None else previous.get("scratch")
        fine = fine if fine is not None else previous.get("finetune")
    for part in (scratch, fine):
        # Re-read the curve while the run folder is still there (so a table format change re-renders).
        if part is not None and Path(part["run_dir"], "metrics.jsonl").is_file():
            part["curve"] = curve_table(Path(part["run_dir"]))
    commands = [f"`{p['command']}` ({p['when']})" for p in (scratch, fine) if p is not None]
    lines = [
        "# Training proof on the CPU (issue 4, item 5)",
        "",
        "Made by " + "; ".join(commands) + f" on a shared, busy 2-core CPU (no GPU), torch {torch.__version__}.",
        "Scores are the challenge protocol: ../shared's Set5 LR_bicubic_x4 inputs, uint8 output, 4-pixel border; "
        "weights are evaluated after `collapse_verified` (the deploy form `srdeploy fuse` writes).",
        "",
    ]
    if scratch is not None:
        c = scratch["config"]
        s = c["stages"][0]
        lines += [
            "## (a) From scratch: Set14 HR for training, Set5 for validation",
            "",
            f"Reduced config (a CPU cannot train the paper's recipe): arch `{c['arch']}` with "
            f"`model = {json.dumps(c['model'])}`, one stage of {s['lr_patch']}x{s['lr_patch']} LR crops, "
            f"{s['crops_per_image']} crops per image per epoch, batch {s['batch_size']}, Adam lr {s['lr']} (constant), "
            f"L1, flips + rotations; wall-clock budget {scratch['budget_min']} min.",
            "",
            f"- trained {scratch['steps']} steps / {scratch['epochs']} epochs in {scratch['elapsed_s']} s "
            f"(stopped: {scratch['stop_reason']})",
            f"- Set5 bicubic: **{scratch['set5_bicubic']['psnr_y']:.4f} dB Y** "
            f"({scratch['set5_bicubic']['psnr_rgb']:.4f} dB RGB)",
            f"- Set5 best checkpoint, fused: **{scratch['set5_best_fused']['psnr_y']:.4f} dB Y** "
            f"({scratch['set5_best_fused']['psnr_rgb']:.4f} dB RGB): **{scratch['gain_y_db']:+.4f} dB** over bicubic",
            "",
            "Validation curve (Set5, CLB training form, every 2 epochs, thinned); plot: `train_proof_scratch.png`",
            "",
            scratch["curve"],
            "",
        ]
    if fine is not None:
        c = fine["config"]
        s = c["stages"][0]
        lines += [
            "## (b) Fine-tuning from the published team26 weights",
            "",
            f"`init_from = team26_imdn_nb7.pth` (plain, uncollapsed to `{c['arch']}` with zero 1x1 branches); "
            f"training on Set14 HR, {s['lr_patch']}x{s['lr_patch']} LR crops, batch {s['batch_size']}, "
            f"Adam lr {s['lr']} (constant), L1.",
            "",
            "| | Set5 PSNR Y | Set5 PSNR RGB | check |",
            "|---|---:|---:|---|",
            f"| reference (reference_psnr.json) | {fine['reference_y']:.4f} | | |",
            f"| before any step, fused | {fine['before_fused']['psnr_y']:.4f} "
            f"| {fine['before_fused']['psnr_rgb']:.4f} | diff {fine['before_minus_reference_y']:+.5f} dB, <= 0.001: "
            f"**{'PASS' if fine['pass_before'] else 'FAIL'}** |",
            f"| after {fine['steps']} steps ({fine['elapsed_s']} s), fused | {fine['after_fused']['psnr_y']:.4f} "
            f"| {fine['after_fused']['psnr_rgb']:.4f} | drop {fine['drop_y_db']:+.4f} dB, <= 0.05: "
            f"**{'PASS' if fine['pass_after'] else 'FAIL'}** |",
            "",
            "Validation during fine-tuning (Set5, CLB form; epoch 0 is before any step); plot: "
            "`train_proof_finetune.png`",
            "",
            fine["curve"],
            "",
        ]
    out = RESULTS / "train_proof.md"
    out.write_text("\n".join(lines))
    (RESULTS / "train_proof.json").write_text(
        json.dumps({"scratch": scratch, "finetune": fine}, indent=2, default=str) + "\n"
    )
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scratch-minutes", type=float, default=10.0)
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--finetune-lr", type=float, default=1e-5)
    ap.add_argument("--finetune-minutes", type=float, default=15.0, help="safety cap on (b)")
    ap.add_argument("--skip", choices=["scratch", "finetune"], default=None)
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: a temporary folder)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 because on a shared, oversubscribed CPU OpenMP threads spin-waiting on each"
        " other make 2 threads several times slower than 1",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (SHARED / "Set5").is_dir():
        print(f"{SHARED} is absent: this benchmark needs ../shared's Set5, Set14 and weights", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="srdeploy-train-proof-"))
    work.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    stamp = {
        "command": " ".join(["python benchmarks/train_proof.py", *argv]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": torch.get_num_threads(),
    }
    fine = scratch = None
    if args.skip != "finetune":
        fine = run_finetune(work, args.finetune_steps, args.finetune_lr, args.finetune_minutes, log) | stamp
        log(f"finetune: {json.dumps({k: v for k, v in fine.items() if k not in ('config', 'curve')})}")
    if args.skip != "scratch":
        scratch = run_scratch(work, args.scratch_minutes, log) | stamp | {"budget_min": args.scratch_minutes}
        log(f"scratch: {json.dumps({k: v for k, v in scratch.items() if k not in ('config', 'curve')})}")
    print(write_report(scratch, fine))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
