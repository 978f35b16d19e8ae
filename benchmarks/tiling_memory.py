"""Peak memory of tiled versus untiled x4 upscaling with the real imdn-b7 architecture (torch, CPU).

Each measurement runs in its own subprocess, so ``ru_maxrss`` (the kernel's peak resident set size,
which sees PyTorch's and oneDNN's native allocations that tracemalloc cannot) belongs to that one run.

    python benchmarks/tiling_memory.py                 # full: 4000x3000 LR tiled (several minutes on 2 cores)
    python benchmarks/tiling_memory.py --quick         # smoke run with small sizes

Writes benchmarks/results/tiling_memory.md (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass(frozen=True)
class Measurement:
    mode: str  # "baseline" (model built, nothing run), "untiled" or "tiled"
    lr_height: int
    lr_width: int
    tile: int
    overlap: int
    peak_rss_mib: float
    seconds: float
    tiles: int
    input_mib: float
    output_mib: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _child(mode: str, height: int, width: int, tile: int, overlap: int, seed: int) -> Measurement:
    import numpy as np
    import torch

    from sr_deploy.archs.registry import build_model, preset
    from sr_deploy.imaging.tiling import plan_axis, upscale_tiled

    model = build_model(preset("imdn-b7"), seed=seed).eval()
    lr = np.random.default_rng(seed).random((1, 3, height, width), dtype=np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    start = time.perf_counter()
    tiles = 0
    out_bytes = 0
    if mode == "untiled":
        out_bytes = run(lr).nbytes
        tiles = 1
    elif mode == "tiled":
        # uint8 output, quantized per tile: the full-size float output never exists.
        out_bytes = upscale_tiled(run, lr, scale=4, tile=tile, overlap=overlap, bit_depth=8).nbytes
        tiles = len(plan_axis(height, tile, overlap)) * len(plan_axis(width, tile, overlap))
    seconds = time.perf_counter() - start
    return Measurement(
        mode=mode,
        lr_height=height,
        lr_width=width,
        tile=tile if mode == "tiled" else 0,
        overlap=overlap if mode == "tiled" else 0,
        peak_rss_mib=round(_peak_rss_mib(), 1),
        seconds=round(seconds, 2),
        tiles=tiles,
        input_mib=round(lr.nbytes / MIB, 1),
        output_mib=round(out_bytes / MIB, 1),
    )


def _measure(mode: str, height: int, width: int, tile: int, overlap: int) -> Measurement:
    cmd = [sys.executable, __file__, "--child", mode, str(height), str(width), str(tile), str(overlap)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    m = Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"  {m.mode:8s} {m.lr_width}x{m.lr_height}: peak RSS {m.peak_rss_mib:.0f} MiB, {m.seconds:.1f} s", flush=True)
    return m


def _report(rows: list[Measurement], radius: int, threads: int, command: str) -> str:
    baseline = next(r for r in rows if r.mode == "baseline").peak_rss_mib
    untiled = sorted((r for r in rows if r.mode == "untiled"), key=lambda r: r.lr_height * r.lr_width)
    # Untiled peak grows linearly with LR pixels (64-channel feature maps at LR resolution): the slope
    # between the two largest untiled runs (fixed overheads cancel) extrapolates to the tiled sizes.
    small, big = untiled[-2], untiled[-1]
    mpx_small, mpx_big = small.lr_height * small.lr_width / 1e6, big.lr_height * big.lr_width / 1e6
    per_mpx = (big.peak_rss_mib - small.peak_rss_mib) / (mpx_big - mpx_small)
    lines = [
        "# Tiled upscaling: peak memory",
        "",
        f"Produced by `{command}` on {platform.processor() or platform.machine()}, {threads} torch threads,",
        "torch on CPU, imdn-b7 architecture (38 convs, random weights), x4, float32 input in [0, 1].",
        "Peak RSS is `ru_maxrss` of a fresh subprocess per row (includes the Python interpreter, torch and",
        f"the model: the `baseline` row, {baseline:.0f} MiB). Tiled runs use overlap = receptive radius",
        f"= {radius} LR pixels and write uint8 output tile by tile (`upscale_tiled(..., bit_depth=8)`).",
        "",
        "| mode | LR size (WxH) | tile / overlap | tiles | input MiB | output MiB | peak RSS MiB | above baseline MiB"
        " | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        tile = f"{r.tile} / {r.overlap}" if r.mode == "tiled" else "-"
        lines.append(
            f"| {r.mode} | {r.lr_width}x{r.lr_height} | {tile} | {r.tiles} | {r.input_mib:.1f} | {r.output_mib:.1f}"
            f" | {r.peak_rss_mib:.0f} | {r.peak_rss_mib - baseline:.0f} | {r.seconds:.1f} |"
        )
    lines += [
        "",
        f"Untiled peak RSS grows by about {per_mpx:.0f} MiB per LR megapixel (slope between the"
        f" {small.lr_width}x{small.lr_height} and {big.lr_width}x{big.lr_height} runs), so an untiled run of"
        " each tiled size here would need roughly:",
        "",
    ]
    for r in rows:
        if r.mode == "tiled":
            est = big.peak_rss_mib + per_mpx * (r.lr_height * r.lr_width / 1e6 - mpx_big)
            lines.append(
                f"- {r.lr_width}x{r.lr_height}: about {est / 1024:.1f} GiB untiled, versus"
                f" {r.peak_rss_mib / 1024:.2f} GiB measured tiled"
                f" ({r.peak_rss_mib - baseline - r.input_mib - r.output_mib:.0f} MiB above baseline, input and"
                " output)"
            )
    lines += [
        "",
        "What stays: the tiled peak minus baseline, input and output is the per-tile working set, which depends",
        "on the tile size and not on the image size; the input (float32) and output (uint8) arrays themselves",
        "grow with the image. The seconds column is wall time on a machine shared with other jobs: it is",
        "not a speed benchmark.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        mode, h, w, tile, overlap = sys.argv[2], *map(int, sys.argv[3:7])
        print(json.dumps(_child(mode, h, w, tile, overlap, seed=0).to_dict()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tiling_memory.md")
    args = parser.parse_args()

    import torch

    from sr_deploy.archs.registry import preset, receptive_radius
    from sr_deploy.fileio import write_text_atomic

    radius = receptive_radius(preset("imdn-b7"))
    tile = min(args.tile, 96) if args.quick else args.tile
    untiled_sizes = [(64, 64), (128, 96)] if args.quick else [(256, 256), (512, 384), (768, 576)]
    tiled_sizes = [(160, 120)] if args.quick else [(768, 576), (3000, 4000)]

    rows = [_measure("baseline", 64, 64, 0, 0)]
    rows += [_measure("untiled", h, w, 0, 0) for w, h in untiled_sizes]
    rows += [_measure("tiled", h, w, tile, radius) for w, h in tiled_sizes]
    command = "python benchmarks/tiling_memory.py" + (" --quick" if args.quick else "")
    if args.tile != 256:
        command += f" --tile {args.tile}"
    write_text_atomic(args.out, _report(rows, radius, torch.get_num_threads(), command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
