"""What a report looks like to a reader: the one column model of the backend table (the console table of
``srdeploy bench`` and the markdown table are both made from it), the markdown summary and the plot."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sr_deploy.bench.measure import RowResult
from sr_deploy.bench.report import BenchReport
from sr_deploy.bench.verdict import DEFAULT_BUDGET_MS
from sr_deploy.errors import MissingDependencyError

#: What a cell shows where there is no figure.
MISSING = "–"


def _ms(x: float | None) -> str:
    return MISSING if x is None else f"{x:.2f}"


def _fmt(x: float | None, spec: str) -> str:
    return MISSING if x is None or not math.isfinite(x) else format(x, spec)


@dataclass(frozen=True)
class Column:
    """One column of the backend table, whatever renders it. `value` formats a row that ran; a row that did not
    shows its status in the second column and nothing after."""

    name: str
    unit: str
    value: Callable[[RowResult], str]
    align: Literal["left", "right"] = "right"
    #: Said after the unit in the header, e.g. which PSNR the challenge ranked by.
    note: str = ""

    @property
    def header(self) -> str:
        inside = ", ".join(x for x in (self.unit, self.note) if x)
        return f"{self.name} ({inside})" if inside else self.name


def _verdict(r: RowResult) -> str:
    return f"{r.verdict.status} ({r.verdict.ratio:.2f}x)" if r.verdict else MISSING


def _speedup(r: RowResult) -> str:
    return _fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else "")


#: The table's columns, in order. Warm spread is p90, not p99: with the default 3 passes over 10 images a p99 is
#: the slowest run or next to it (the max); p99 and max stay in the JSON and the headline row's line.
TIMING_COLUMNS: tuple[Column, ...] = (
    Column("backend", "", lambda r: r.plan.key, align="left"),
    Column("challenge mean", "ms", lambda r: _ms(r.challenge.mean_ms if r.challenge else None)),
    Column("cold first", "ms", lambda r: _ms(r.challenge.cold_first_ms if r.challenge else None)),
    Column("warm median", "ms", lambda r: _ms(r.warm.median_ms if r.warm else None)),
    Column("warm p90", "ms", lambda r: _ms(r.warm.p90_ms if r.warm else None)),
    Column("end-to-end median", "ms", lambda r: _ms(r.warm_end_to_end.median_ms if r.warm_end_to_end else None)),
    Column("throughput", "MP/s", lambda r: _fmt(r.throughput_mpix_s, ".2f")),
)
#: Shown only when some row has one: the speed-up is over the challenge's way (torch eager fp32), which only
#: ``--backend all`` measures.
SPEEDUP_COLUMN = Column("speed-up", "", _speedup)
VERDICT_COLUMN = Column("verdict", "", _verdict)
#: Shown only when some row has a PSNR (HR images and real weights).
PSNR_COLUMNS: tuple[Column, ...] = (
    Column("PSNR RGB", "dB", lambda r: _fmt(r.psnr_rgb_mean, ".4f"), note="challenge"),
    Column("PSNR Y", "dB", lambda r: _fmt(r.psnr_y_mean, ".4f")),
)


def table_columns(report: BenchReport) -> tuple[Column, ...]:
    """The columns `report`'s table shows, for the console and the markdown alike."""
    speedup = (SPEEDUP_COLUMN,) if any(r.speedup is not None for r in report.rows) else ()
    psnr = PSNR_COLUMNS if any(r.psnr_y_mean is not None for r in report.rows) else ()
    return (*TIMING_COLUMNS, *speedup, VERDICT_COLUMN, *psnr)


def row_cells(report: BenchReport, row: RowResult, columns: tuple[Column, ...]) -> list[str]:
    """One row's cells under `columns` (plain text): the figures, or for a row that did not run its status."""
    name = columns[0].value(row) + (" (headline)" if row.plan.key == report.headline and len(report.rows) > 1 else "")
    if not row.ok:
        return [name, row.status] + [""] * (len(columns) - 2)
    return [name] + [c.value(row) for c in columns[1:]]


def describe_timing(timing: dict[str, Any]) -> str:
    """The timing settings in words, as trtexec users will compare them."""
    parts = [
        f"Forward timed with {timing.get('forward_clock', '?')}, copies excluded"
        f" (end-to-end includes them); CUDA graphs {'on' if timing.get('cuda_graph') else 'off'}",
        "prepare() (buffers, or OpenVINO's per-shape compile; no forward) done before the cold pass"
        if timing.get("prepare_called")
        else "prepare() not called (it runs a warm-up forward), so the first image is cold",
    ]
    if timing.get("engine_key"):
        parts.append(f"engine key {timing['engine_key']}")
    return "; ".join(parts) + "."


def render_markdown(report: BenchReport, *, title: str = "srdeploy bench") -> str:
    """A readable summary of the report: verdict, the backend table, the machine, per-image times."""
    env = report.environment
    s = report.settings
    lines = [f"# {title}", ""]
    v = report.verdict
    lines += [f"**{v.message}**" if v else "**No backend ran: no verdict.**", ""]
    lines += [
        f"- Model: {report.model.get('arch')} ({report.model.get('params'):,} params), weights "
        f"{report.model.get('weights_source')}"
        + (f" sha256 `{report.model['weights_sha256']}`" if report.model.get("weights_sha256") else ""),
        f"- Inputs: {report.inputs.get('description', report.inputs.get('kind'))}",
        f"- Method: challenge mean = mean forward time of one cold pass (first image counted, no warm-up); "
        f"warm = {s.get('repeat')} timed pass(es) after {s.get('warmup')} warm-up call(s); "
        f"budget {s.get('budget_ms')} ms",
        f"- Machine: {env.get('cpu_model')} ({env.get('cpu_count')} CPUs, torch threads {env.get('torch_threads')})"
        + (
            f"; GPU {env['gpu']['name']} (cc {env['gpu']['compute_capability']}, driver {env['gpu']['driver']})"
            if env.get("gpu")
            else "; no GPU"
        )
        + f"; load average {env.get('load_average')}",
        "- Versions: " + ", ".join(f"{k} {v_}" for k, v_ in env.get("versions", {}).items() if v_),
        "",
    ]
    columns = table_columns(report)
    lines += ["| " + " | ".join(c.header for c in columns) + " |", "|" + "---|" * len(columns)]
    for r in report.rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in row_cells(report, r, columns)) + " |")
    lines.append("")
    # Below the table: what each key stands for, and why a row did not run (a narrow cell would mangle that).
    for r in report.rows:
        lines.append(f"- `{r.plan.key}`: {r.plan.title}" + ("" if r.ok else f"; {r.status}: {r.reason}"))
    show_psnr = PSNR_COLUMNS[0] in columns
    lines.append("")
    hr = report.headline_row
    if hr is not None and hr.warm is not None:
        lines += [
            f"Warm statistics of the headline row ({hr.plan.title}): median {_ms(hr.warm.median_ms)}, "
            f"p90 {_ms(hr.warm.p90_ms)}, p99 {_ms(hr.warm.p99_ms)}, max {_ms(hr.warm.max_ms)}, "
            f"std {_ms(hr.warm.std_ms)} ms over {hr.warm.count} runs. {describe_timing(hr.timing)}",
            "",
            "| image | LR | cold forward (ms) | warm median (ms) | end-to-end cold (ms) |"
            + ("".join(f" {c.header} |" for c in PSNR_COLUMNS) if show_psnr else ""),
            "|---|---|---|---|---|" + ("---|---|" if show_psnr else ""),
        ]
        for im in hr.images:
            med = float(np.median(im.warm_forward_ms)) if im.warm_forward_ms else None
            row = (
                f"| {im.name} | {im.lr_hw[0]}x{im.lr_hw[1]} | {_ms(im.cold_forward_ms)} | {_ms(med)} | "
                f"{_ms(im.cold_end_to_end_ms)} |"
            )
            lines.append(row + (f" {_fmt(im.psnr_rgb, '.4f')} | {_fmt(im.psnr_y, '.4f')} |" if show_psnr else ""))
        lines.append("")
    for n in report.notes:
        lines.append(f"- {n}")
    lines += ["", f"_Generated {report.created_utc} by srdeploy {env.get('versions', {}).get('srdeploy')}._", ""]
    return "\n".join(lines)


def require_matplotlib() -> None:
    """Raise (one line, how to install it) unless matplotlib can draw here; cheap enough to check before a run."""
    import importlib

    try:
        for module in ("matplotlib.figure", "matplotlib.backends.backend_agg"):
            importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib (a dependency of srdeploy), which is missing here: pip install matplotlib"
        ) from None


def write_plot(report: BenchReport, path: Path) -> Path:
    """Bar chart of each row's challenge mean and warm median, with the budget as a horizontal line."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sr_deploy.fileio import atomic_path, plot_format

    ran = [r for r in report.rows if r.ok and r.challenge is not None and r.warm is not None]
    budget = float(report.settings.get("budget_ms", DEFAULT_BUDGET_MS))
    # Figure + Agg canvas rather than pyplot: no global figure state, no display backend needed.
    fig = Figure(figsize=(max(6.0, 1.3 * len(ran) + 3), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = np.arange(len(ran))
    cold = [r.challenge.mean_ms for r in ran if r.challenge]
    warm = [r.warm.median_ms for r in ran if r.warm]
    ax.bar(xs - 0.2, cold, width=0.4, label="challenge mean (cold pass)", color="#4472c4")
    ax.bar(xs + 0.2, warm, width=0.4, label="warm median", color="#a5a5a5")
    ax.axhline(budget, color="#c00000", linestyle="--", label=f"budget {budget:g} ms")
    # The PSNRs go under each row's name: a second axis in dB would suggest a trade-off the bars do not show.
    labels = [
        r.plan.key
        + (
            f"\nRGB {r.psnr_rgb_mean:.4f} / Y {r.psnr_y_mean:.4f} dB"
            if r.psnr_rgb_mean is not None and r.psnr_y_mean is not None
            else ""
        )
        for r in ran
    ]
    ax.set_xticks(xs, labels, rotation=20, ha="right")
    ax.set_ylabel("forward time per image (ms)")
    if any(r.psnr_rgb_mean is not None for r in ran):
        ax.set_xlabel("PSNR: RGB is the challenge's metric (NTIRE 2022 ESR ranks by it), Y beside it", fontsize=8)
    if ran and max(cold + warm) > 20 * budget:
        ax.set_yscale("log")  # keep the budget line visible next to CPU times tens of times larger
    device = str(report.settings.get("resolved_device", ""))
    ax.set_title(
        # Two lines: a folder path in the description would otherwise run off the figure.
        f"{report.model.get('arch')} x{report.model.get('scale')} on {device}\n{report.inputs.get('description', '')}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    with atomic_path(path, "--plot") as tmp:
        fig.savefig(tmp, format=plot_format(path, "--plot"), dpi=120)
    return path
