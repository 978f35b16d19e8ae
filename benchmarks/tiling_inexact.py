"""How far tiled output is from the whole image for architectures whose tiling is not exact (ESA: RFDN, RLFN).

    python benchmarks/tiling_inexact.py            # Set14, kept tile cores of 32 and 96 LR pixels, a few minutes

For every registered architecture with published weights under ../shared/data/weights, every Set14 image is upscaled
whole and tiled (overlap = the architecture's receptive radius r, as `srdeploy upscale --tile N` does; N = core + 2r,
so each tile keeps a core of that many pixels; an image smaller than a tile runs at its own size, as upscale does),
in torch fp32.
Reported: mean PSNR against HR (RGB and Y) whole and tiled, the tiled output's PSNR against the whole image's, and the
largest uint8 difference. Exact architectures are included as the control: their tiled output must be identical.

Writes benchmarks/results/tiling_inexact.md and .json. Needs ../shared (or $SRDEPLOY_SHARED).
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

import numpy as np
import torch

from sr_deploy.archs.registry import all_archs, arch_of
from sr_deploy.checkpoints import load_model
from sr_deploy.fileio import write_text_atomic
from sr_deploy.imaging.io import read_image, to_tensor_layout
from sr_deploy.imaging.metrics import psnr
from sr_deploy.imaging.resize import modcrop
from sr_deploy.imaging.tiling import upscale_tiled

HERE = Path(__file__).resolve().parent


def shared_dir() -> Path | None:
    env = os.environ.get("SRDEPLOY_SHARED")
    candidate = Path(env) if env else HERE.parent.parent / "shared"
    return candidate if (candidate / "data").is_dir() else None


def to_uint8(out: np.ndarray) -> np.ndarray:
    rgb: np.ndarray = np.round(np.clip(out[0].transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    return rgb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="32,96", help="kept LR pixels per tile; the tile is core + 2 x radius")
    ap.add_argument("--set", default="Set14")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tiling_inexact.md")
    args = ap.parse_args(argv)
    shared = shared_dir()
    if shared is None:
        print("tiling_inexact: ../shared is absent; nothing to measure", file=sys.stderr)
        return 2
    data = shared / "data" / args.set
    cores = [int(t) for t in args.cores.split(",")]
    names = sorted(p.name for p in (data / "HR").glob("*.png"))
    rows: list[dict[str, Any]] = []
    for arch in all_archs():
        for pw in arch.published[:1]:
            path = shared / "data" / "weights" / pw.filename
            if not path.is_file():
                continue
            model, _ = load_model(str(path), form="plain")
            radius = arch_of(model.spec).receptive_radius(model.spec)

            def run(x: np.ndarray, m: torch.nn.Module = model) -> np.ndarray:
                with torch.inference_mode():
                    out: np.ndarray = m(torch.from_numpy(np.ascontiguousarray(x))).numpy()
                return out

            tiles = [c + 2 * radius for c in cores]
            per_tile: dict[int, dict[str, list[float]]] = {
                t: {"rgb": [], "y": [], "vs_whole": [], "max": []} for t in tiles
            }
            whole_rgb, whole_y = [], []
            for name in names:
                lr = to_tensor_layout(read_image(data / "LR_bicubic_x4" / name).rgb)
                hr = modcrop(read_image(data / "HR" / name).rgb, 4)
                whole = to_uint8(run(lr))
                whole_rgb.append(psnr(whole, hr, crop_border=4, y_channel=False))
                whole_y.append(psnr(whole, hr, crop_border=4, y_channel=True))
                for t in tiles:
                    tiled = to_uint8(upscale_tiled(run, lr, scale=4, tile=t, overlap=radius, pad_small=False))
                    d = per_tile[t]
                    d["rgb"].append(psnr(tiled, hr, crop_border=4, y_channel=False))
                    d["y"].append(psnr(tiled, hr, crop_border=4, y_channel=True))
                    d["vs_whole"].append(psnr(tiled, whole, crop_border=0, y_channel=False))
                    d["max"].append(float(np.abs(tiled.astype(int) - whole.astype(int)).max()))
            for t, d in per_tile.items():
                if not d["rgb"]:
                    continue
                rows.append(
                    {
                        "weights": pw.name,
                        "arch": model.spec.name,
                        "exact": arch.tiling.exact,
                        "radius": radius,
                        "tile": t,
                        "whole_rgb": statistics.fmean(whole_rgb),
                        "whole_y": statistics.fmean(whole_y),
                        "tiled_rgb": statistics.fmean(d["rgb"]),
                        "tiled_y": statistics.fmean(d["y"]),
                        "tiled_vs_whole_db": min(d["vs_whole"]),
                        "max_diff_levels": max(d["max"]),
                    }
                )
                print(rows[-1], file=sys.stderr)
    head = (
        "| weights | arch | tiling | overlap | tile | whole RGB / Y | tiled RGB / Y | worst tiled vs whole [dB] | "
        "max diff [levels] |"
    )
    lines = [
        f"# Tiled against whole-image output on {args.set}",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        f"`{' '.join(['python benchmarks/tiling_inexact.py', *(argv if argv is not None else sys.argv[1:])])}`."
        " torch fp32 on the CPU; overlap = the receptive radius of the local path; PSNR x4, 4-pixel border; "
        "'worst tiled vs whole' is the lowest per-image PSNR of the tiled uint8 output against the whole image's "
        "(inf = identical).",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for r in rows:
        vs = "inf (identical)" if r["tiled_vs_whole_db"] == float("inf") else f"{r['tiled_vs_whole_db']:.2f}"
        lines.append(
            f"| {r['weights']} | {r['arch']} | {'exact' if r['exact'] else 'inexact'} | {r['radius']} | {r['tile']} | "
            f"{r['whole_rgb']:.4f} / {r['whole_y']:.4f} | {r['tiled_rgb']:.4f} / {r['tiled_y']:.4f} | {vs} | "
            f"{r['max_diff_levels']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    clean = [{k: (None if isinstance(v, float) and v == float("inf") else v) for k, v in r.items()} for r in rows]
    write_text_atomic(args.out.with_suffix(".json"), json.dumps({"rows": clean}, indent=2, allow_nan=False) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
