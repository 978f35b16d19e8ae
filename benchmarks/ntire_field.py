"""The NTIRE 2022 Efficient SR field on this machine: one row per registered architecture with published weights.

    python benchmarks/ntire_field.py               # the challenge's 100 test inputs; ~15 min on 2 cores
    python benchmarks/ntire_field.py --count 20    # quicker: the first 20 test inputs

For each of team26, the IMDN baseline, RFDN, RLFN and FMEN (whatever the registry lists with weights present under
../shared/data/weights):
- the NTIRE counter's params, FLOPs, activations and convs at 1x3x256x256 (``sr_deploy.profile``);
- Set5 and Set14 mean PSNR, RGB (the challenge's metric) and Y, through the CPU default backend in fp32;
- the challenge-method time (one cold pass, first image counted, no warm-up, forward only, mean per image) on
  ../shared/data/DIV2K_test_LR_bicubic_x4 with the CPU default (``--backend auto``) in fp32 and in bf16.

The networks are timed side by side: for every image, each network runs once before the next image, so a change in
machine load hits every row alike; each time is also given as a ratio to team26's in the same run.

Writes benchmarks/results/ntire_field.md and .json. Needs ../shared (or $SRDEPLOY_SHARED).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sr_deploy.archs.base import SRNet
from sr_deploy.archs.registry import all_archs
from sr_deploy.bench.environment import collect_environment
from sr_deploy.checkpoints import load_model
from sr_deploy.errors import SRDeployError
from sr_deploy.evaluate import EvalReport, evaluate, pair_eval_images
from sr_deploy.fileio import write_text_atomic
from sr_deploy.imaging.io import list_images, read_image, to_tensor_layout
from sr_deploy.profile import profile_model
from sr_deploy.runtime.base import Backend
from sr_deploy.runtime.factory import make_backend

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REFERENCE = "team26"
#: The challenge's published GPU runtimes (NTIRE 2022 ESR report, organizers' Titan Xp), where the issue quotes them.
PUBLISHED_GPU_MS = {"team26": 48.86, "rlfn": 27.11}


def shared_dir() -> Path | None:
    env = os.environ.get("SRDEPLOY_SHARED")
    candidate = Path(env) if env else HERE.parent.parent / "shared"
    return candidate if (candidate / "data").is_dir() else None


@dataclass
class FieldRow:
    key: str
    weights: str
    arch: str
    architecture: str
    input_range: float
    params: int
    flops_g: float
    activations_m: float
    convs: int
    psnr: dict[str, dict[str, float]] = field(default_factory=dict)
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    backend: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    def mean_ms(self, precision: str) -> float | None:
        t = self.times_ms.get(precision)
        return statistics.fmean(t) if t else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["challenge_mean_ms"] = {p: self.mean_ms(p) for p in self.times_ms}
        return d


def _key(weights_name: str) -> str:
    return weights_name.removeprefix("ntire:")


def _psnr_on(model_run: Any, data: Path, arch: str, scale: int) -> dict[str, float]:
    pairs = pair_eval_images(data / "HR", data / "LR_bicubic_x4")
    report = EvalReport("", "", arch, "auto", scale, scale, "folder")
    evaluate(model_run, pairs, report)
    if report.failures:
        raise SRDeployError(f"{data}: {report.failures}")
    return {"rgb": report.mean("psnr_rgb"), "y": report.mean("psnr_y")}


def _backend(model: SRNet, precision: str, sha: str) -> Backend:
    return make_backend("auto", model, precision=precision, device="cpu", weights_sha256=sha)


def _time_side_by_side(
    backends: dict[str, Backend], images: list[np.ndarray], rows: dict[str, FieldRow], precision: str
) -> None:
    for be in backends.values():
        if be.info.name == "openvino":
            # OpenVINO compiles per shape without running a forward: outside the timer, and the first image stays cold.
            for shape in sorted({(x.shape[0], x.shape[1], x.shape[2], x.shape[3]) for x in images}):
                be.prepare(shape)
    for i, x in enumerate(images):
        for key, be in backends.items():
            rows[key].times_ms.setdefault(precision, []).append(float(be.run_timed(x).forward_ms))
        if (i + 1) % 10 == 0 or i + 1 == len(images):
            print(f"  {precision}: {i + 1}/{len(images)} images", file=sys.stderr)


def _ratio(row: FieldRow, ref: FieldRow | None, precision: str) -> str:
    a, b = row.mean_ms(precision), ref.mean_ms(precision) if ref else None
    return f"{a / b:.2f}" if a and b else "–"


def render(rows: dict[str, FieldRow], env: dict[str, Any], count: int, argv: list[str]) -> str:
    ref = rows.get(REFERENCE)
    head = (
        "| weights | arch | params | FLOPs [G] | act. [M] | convs | Set5 RGB / Y | Set14 RGB / Y | fp32 mean [ms] | "
        "ratio | bf16 mean [ms] | ratio | published GPU ratio |"
    )
    lines = [
        "# The NTIRE 2022 ESR field on this CPU",
        "",
        f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} by "
        f"`python benchmarks/ntire_field.py {' '.join(argv)}`.".replace(" `.", "`."),
        "",
        f"Machine: {env['cpu_model']}, {env['cpu_count']} CPUs; load before the run: other processes busy on "
        f"{env.get('other_processes_cpus')} CPUs.",
        "",
        "Counter: the NTIRE 2022 ESR counter at 1x3x256x256. PSNR: mean over the set, x4, 4-pixel border, RGB "
        "(the challenge's metric) / Y, through the CPU default backend in fp32. Times: the challenge's method (one "
        f"cold pass over the first {count} of the 100 DIV2K test LR inputs, first image counted, no warm-up, "
        "forward only, mean per image) with `--backend auto` on the CPU; the networks ran side by side, image by "
        "image. Ratio: to team26 in the same run.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for key, r in rows.items():
        p5, p14 = r.psnr.get("Set5", {}), r.psnr.get("Set14", {})
        gpu = PUBLISHED_GPU_MS.get(key)
        gpu_ratio = f"{gpu / PUBLISHED_GPU_MS[REFERENCE]:.2f} ({gpu} ms)" if gpu else "–"
        cells = [
            key,
            r.arch,
            f"{r.params:,}",
            f"{r.flops_g:.4f}",
            f"{r.activations_m:.4f}",
            str(r.convs),
            f"{p5.get('rgb', float('nan')):.4f} / {p5.get('y', float('nan')):.4f}",
            f"{p14.get('rgb', float('nan')):.4f} / {p14.get('y', float('nan')):.4f}",
        ]
        for prec in ("fp32", "bf16"):
            mean = r.mean_ms(prec)
            cells += [f"{mean:.1f}", _ratio(r, ref, prec)] if mean is not None else [r.refused.get(prec, "–"), "–"]
        cells.append(gpu_ratio)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Backends: "
        + "; ".join(f"{k}: {', '.join(f'{p} {b}' for p, b in r.backend.items())}" for k, r in rows.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100, help="how many of the 100 DIV2K test inputs to time")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--out", type=Path, default=RESULTS / "ntire_field.md")
    args = ap.parse_args(argv)
    shared = shared_dir()
    if shared is None:
        print("ntire_field: ../shared is absent (set SRDEPLOY_SHARED); nothing to measure", file=sys.stderr)
        return 2
    data = shared / "data"
    models: dict[str, tuple[SRNet, str]] = {}
    rows: dict[str, FieldRow] = {}
    for arch in all_archs():
        for pw in arch.published:
            path = data / "weights" / pw.filename
            if not path.is_file():
                continue
            key = _key(pw.name)
            model, loaded = load_model(str(path), form="plain")
            prof = profile_model(model, (256, 256))
            rows[key] = FieldRow(
                key=key,
                weights=pw.filename,
                arch=model.spec.name,
                architecture=arch.id,
                input_range=arch.input_range,
                params=prof.params,
                flops_g=prof.flops / 1e9,
                activations_m=prof.activations / 1e6,
                convs=prof.convs,
            )
            models[key] = (model, loaded.sha256)
    env = collect_environment()
    for key, (model, sha) in models.items():
        be = _backend(model, "fp32", sha)
        for name in ("Set5", "Set14"):
            rows[key].psnr[name] = _psnr_on(be.run, data / name, model.spec.name, model.spec.scale)
        print(f"{key}: Set5 {rows[key].psnr['Set5']}, Set14 {rows[key].psnr['Set14']}", file=sys.stderr)
    paths = list_images(data / "DIV2K_test_LR_bicubic_x4")[: args.count]
    images = [to_tensor_layout(read_image(p).rgb) for p in paths]
    for prec in args.precisions.split(","):
        backends: dict[str, Backend] = {}
        for key, (model, sha) in models.items():
            try:
                backends[key] = _backend(model, prec, sha)
                rows[key].backend[prec] = backends[key].info.label
            except SRDeployError as e:
                rows[key].refused[prec] = f"refused: {e}"
        _time_side_by_side(backends, images, rows, prec)
    text = render(rows, env, len(images), argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, text)
    doc = {"environment": env, "count": len(images), "rows": {k: r.to_dict() for k, r in rows.items()}}
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(doc, indent=2, allow_nan=False) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
