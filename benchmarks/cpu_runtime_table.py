"""The `srdeploy bench --backend all` table on Set5 and Set14 with the team 26 weights, on this machine.

    python benchmarks/cpu_runtime_table.py                 # a few minutes on 2 cores
    python benchmarks/cpu_runtime_table.py --repeat 1      # quicker, fewer warm samples

Needs ../shared (Set5, Set14 and team26_imdn_nb7.pth); exits with a message when it is absent. Every row of a set
is measured in the same process on the same images, exactly as `srdeploy bench --backend all` does (this script
calls the same library function). The PSNR column comes from each backend's own output and must read
32.1949 / 28.6569 dB (Set5 / Set14, Y) for the fp32 rows: the challenge's reference figures.

Writes benchmarks/results/cpu_runtime_table.md, plus the full JSON reports and a plot per set beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sr_deploy.bench.environment import collect_environment
from sr_deploy.bench.inputs import load_bench_images
from sr_deploy.bench.models import load_bench_models
from sr_deploy.bench.render import describe_timing, render_markdown, write_plot
from sr_deploy.bench.report import BenchReport
from sr_deploy.bench.run import BenchSettings, run_bench
from sr_deploy.fileio import write_text_atomic

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SETS = ("Set5", "Set14")


def shared_dir() -> Path | None:
    env = os.environ.get("SRDEPLOY_SHARED")
    candidate = Path(env) if env else HERE.parent.parent / "shared"
    return candidate if (candidate / "data").is_dir() else None


def _median_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def summary_table(reports: dict[str, list[BenchReport]]) -> list[str]:
    """One row per backend, one column group per set: median over runs (range) of the challenge mean and warm
    median, and the PSNR (identical in every run: the outputs are deterministic)."""
    names = list(reports)
    head = ["backend"] + [f"{n} {c}" for n in names for c in ("challenge mean (ms)", "warm median (ms)", "PSNR Y")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = reports[names[0]][0]
    for i, row in enumerate(first.rows):
        cells = [row.plan.title]
        for n in names:
            runs = [rep.rows[i] for rep in reports[n]]
            ok = [r for r in runs if r.ok and r.challenge and r.warm]
            if not ok:
                cells += [runs[0].status, "", ""]
                continue
            means = [r.challenge.mean_ms for r in ok if r.challenge]
            warms = [r.warm.median_ms for r in ok if r.warm]
            psnr = ok[0].psnr_y_mean
            cells += [_median_range(means), _median_range(warms), f"{psnr:.4f}" if psnr is not None else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = {r.plan.key: r.reason for r in first.rows if not r.ok}
    if skipped:
        lines += ["", *[f"- {k}: {v}" for k, v in skipped.items()]]
    return lines


def median_run(runs: list[BenchReport]) -> BenchReport:
    """The run whose total challenge mean over its rows is the median: the one shown in full and plotted."""

    def total(rep: BenchReport) -> float:
        return sum(r.challenge.mean_ms for r in rep.rows if r.ok and r.challenge)

    ordered = sorted(runs, key=total)
    return ordered[(len(ordered) - 1) // 2]


def machine_line(env: dict[str, Any]) -> str:
    gpu = env.get("gpu")
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    return (
        f"Machine: {env['cpu_model']}, {env['cpu_count']} CPUs, torch threads {env['torch_threads']}, "
        + (f"GPU {gpu['name']} (cc {gpu['compute_capability']}, driver {gpu['driver']})" if gpu else "no GPU")
        + f"; before the run: load average {env['load_average']}, other processes busy on "
        f"{env.get('other_processes_cpus')} CPUs. Versions: {versions}."
    )


def _progress(key: str, phase: str, done: int, total: int) -> None:
    if done == total or done % 10 == 0:
        print(f"  {key}: {done}/{total} ({phase})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", type=int, default=3, help="full runs per set; the table gives their median (noise)")
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_runtime_table.md")
    args = ap.parse_args(argv)
    shared = shared_dir()
    weights = shared / "data" / "weights" / "team26_imdn_nb7.pth" if shared else None
    if shared is None or weights is None or not weights.is_file():
        print(
            "cpu_runtime_table: ../shared (Set5, Set14, team26 weights) is absent; nothing to measure", file=sys.stderr
        )
        return 2
    env = collect_environment()
    models = load_bench_models(str(weights), need_clb=True, seed=0)
    settings = BenchSettings(backend="all", device="cpu", warmup=args.warmup, repeat=args.repeat)
    reports: dict[str, list[BenchReport]] = {}
    stem = args.out.with_suffix("")
    for name in SETS:
        data = shared / "data" / name
        if not (data / "LR_bicubic_x4").is_dir():
            continue
        images = load_bench_images(data / "LR_bicubic_x4", data / "HR", scale=4)
        inputs = {
            "kind": "folder",
            "count": len(images),
            "description": f"{name} ({len(images)} images, x4 bicubic LR)",
            "input_dir": f"../shared/data/{name}/LR_bicubic_x4",
            "hr_dir": f"../shared/data/{name}/HR",
            "synthetic_hw": None,
        }
        runs = []
        for k in range(args.runs):
            print(f"{name}: {len(images)} images, run {k + 1}/{args.runs}", file=sys.stderr)
            # Each run collects its own environment, so every report records the load it was measured under.
            runs.append(run_bench(images, models, settings, inputs=inputs, progress=_progress))
        reports[name] = runs
        doc = {"runs": [r.to_dict() for r in runs]}
        write_text_atomic(f"{stem}_{name.lower()}.json", json.dumps(doc, indent=2, allow_nan=False) + "\n")
        write_plot(median_run(runs), Path(f"{stem}_{name.lower()}.png"))
    if not reports:
        print("cpu_runtime_table: no Set5 or Set14 under ../shared", file=sys.stderr)
        return 2
    first = next(iter(reports.values()))[0]
    headline = first.headline_row
    loads = [rep.environment.get("other_processes_cpus") for runs in reports.values() for rep in runs]
    lines = [
        "# CPU runtime table: `srdeploy bench --backend all`, team 26 weights (imdn-b7)",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        f"`python benchmarks/cpu_runtime_table.py --warmup {args.warmup} --repeat {args.repeat} --runs {args.runs}`."
        f" Each set was measured {args.runs} time(s) in full; the table gives the median over those runs and, in "
        "parentheses, their range.",
        "",
        machine_line(env),
        "",
        "Challenge mean: mean per-image forward time of one cold pass over the set, first image counted, no warm-up "
        "(NTIRE 2022 ESR's method). Warm median: after the warm-up, over every image of every timed pass. "
        + (describe_timing(headline.timing) if headline else ""),
        "",
        "The 49.42 ms budget is a GPU budget: these CPU times say how this machine does, not whether the model meets "
        "it.",
        "",
        *summary_table(reports),
        "",
    ]
    if any(rep.environment.get("loaded_machine") for runs in reports.values() for rep in runs):
        lines += [
            f"**Loaded machine:** other developers' jobs were running (CPUs kept busy by other processes at the start "
            f"of each run: {loads} of "
            f"{env['cpu_count']} CPUs), so absolute times are pessimistic and noisy, and the ranking of close rows "
            "may change on an idle machine.",
            "",
        ]
    for name, runs in reports.items():
        body = render_markdown(median_run(runs), title=f"{name}: the median run in full").replace("\n# ", "\n## ")
        lines += [body.replace("# ", "## ", 1) if body.startswith("# ") else body, ""]
        lines += [f"![{name}](cpu_runtime_table_{name.lower()}.png)", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "\n".join(lines))
    print("\n".join(summary_table(reports)))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
