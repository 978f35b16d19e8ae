"""What the collapse saves: each training form against its collapsed form, params and CPU time, side by side.

    python benchmarks/collapse_cost.py              # ~1 minute (one thread)
    python benchmarks/collapse_cost.py --reps 1     # smoke run

For imdn-b7-clb, imdn-b7-rrrb, imdn-b7-ecb and fmen-rrrb (seeded weights): build the training form, collapse it
(``sr_deploy.fusion.collapse_with_report``), then time torch eager fp32 forwards on one 1x3x128x128 input on the
CPU. All eight models are timed in the same process, interleaved round by round with the order rotated (so drift
and load from other processes hit every model alike), after one warm-up call each. The figure is the median over
rounds. Writes benchmarks/results/collapse_cost.md (or --out) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from sr_deploy.archs.registry import build_model, preset
from sr_deploy.bench.environment import collect_environment
from sr_deploy.fileio import write_text_atomic
from sr_deploy.fusion import CollapseReport, collapse_with_report

RESULTS = Path(__file__).resolve().parent / "results"
FORMS = ("imdn-b7-clb", "imdn-b7-rrrb", "imdn-b7-ecb", "fmen-rrrb")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def time_interleaved(models: dict[str, nn.Module], size: int, reps: int) -> dict[str, list[float]]:
    """Seconds per forward, one sample per model per round."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    out: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)  # warm-up: steady-state speed, not first-call allocation
        names = list(models)
        for r in range(reps):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                t0 = time.perf_counter()
                models[name](x)
                out[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}/{reps}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="interleaved rounds (one forward per model per round)")
    ap.add_argument("--size", type=int, default=128, help="LR input height and width")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 by default because on a shared 2-core machine two threads spin-wait on each other "
        "and the figures would measure that (measured here: 2-7x slower under load)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "collapse_cost.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = collect_environment()

    models: dict[str, nn.Module] = {}
    reports: dict[str, CollapseReport] = {}
    collapse_s: dict[str, float] = {}
    for form in FORMS:
        train = build_model(preset(form), seed=0).eval()
        t0 = time.perf_counter()
        deploy, report = collapse_with_report(train)
        collapse_s[form] = time.perf_counter() - t0
        models[f"{form} (training)"] = train
        models[f"{form} (collapsed)"] = deploy
        reports[form] = report
    times = time_interleaved(models, args.size, args.reps)

    lines = [
        "# What the collapse saves",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        f"`python benchmarks/collapse_cost.py --reps {args.reps} --size {args.size} --threads {args.threads}`.",
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, load average "
        f"before the run {env['load_average']}"
        + (" (busy: other processes held CPUs, so times include sharing)" if env["loaded_machine"] else "")
        + f"; torch {torch.__version__}.",
        "",
        f"Torch eager fp32 on the CPU, one 1x3x{args.size}x{args.size} input, median of {args.reps} interleaved "
        "rounds (one forward per model per round, order rotated, after a warm-up call each). Seeded weights; "
        "each collapsed form is the deploy network (imdn-b7: team26's layout; fmen: team03's).",
        "",
        "| training form | params (training) | params (collapsed) | CPU time training [s] | CPU time collapsed [s] "
        "| speed-up | folds | collapse took [s] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for form in FORMS:
        t_train = statistics.median(times[f"{form} (training)"])
        t_dep = statistics.median(times[f"{form} (collapsed)"])
        r = reports[form]
        lines.append(
            f"| {form} | {r.params_before:,} | {r.params_after:,} | {t_train:.3f} | {t_dep:.3f} | "
            f"{t_train / t_dep:.2f}x | {len(r.merges)} | {collapse_s[form]:.1f} |"
        )
    lines += [
        "",
        "All four collapse to 3x3 convs only (every fold's kernel is 3x3); the three imdn-b7 forms give the same "
        "deploy network (790,496 params), so the block types cost the same at inference and differ only in "
        "training cost. `collapse took` is the fold alone (tracing, float64 probing and the per-block border check), "
        "without the end-to-end proof that `srdeploy fuse` adds.",
        "",
    ]
    write_text_atomic(args.out, "\n".join(lines), "--out")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
