"""sr_deploy.bench: statistics, verdict, pairing, synthetic inputs, the measuring loop and the report.

Backends here are fakes with scripted times, so every figure is known in advance; no test asserts a real time.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
import torch

import sr_deploy.bench.run as bench_run
from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.bench.environment import foreign_cpu_load
from sr_deploy.bench.inputs import BenchImage, load_bench_images, synthetic_images
from sr_deploy.bench.measure import ImageResult, RowResult, finish_rows, jsonable, measure_backend, summarize_row
from sr_deploy.bench.models import BenchModels
from sr_deploy.bench.render import render_markdown, write_plot
from sr_deploy.bench.report import BenchReport, report_schema
from sr_deploy.bench.rows import BASELINE_ROW, RowPlan, plan_rows
from sr_deploy.bench.run import BenchSettings, run_bench
from sr_deploy.bench.stats import challenge_figures, speedup, throughput_mpix_s, time_stats
from sr_deploy.bench.verdict import make_verdict
from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.imaging import pairing
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput

TINY = IMDNSpec(blocks=2, channels=16, distilled=4)


class ScriptedBackend(Backend):
    """Nearest-neighbour x`scale` output; forward times from `times` in call order (cycled), e2e = forward + 1."""

    def __init__(self, times: list[float], *, scale: int = 4, device: str = "cpu", name: str = "fake") -> None:
        self._times: Iterator[float] = iter(times * 1000)
        self.scale = scale
        self.calls = 0
        self.prepared: Shape4 | None = None
        self.closed = False
        self._info = BackendInfo(name=name, device=device, precision="fp32", details={"cuda_graph": False})

    @property
    def info(self) -> BackendInfo:
        return self._info

    def prepare(self, max_shape: Shape4) -> None:
        self.prepared = max_shape

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        self.calls += 1
        out = lr.repeat(self.scale, axis=2).repeat(self.scale, axis=3)
        ms = next(self._times)
        return TimedOutput(output=out, forward_ms=ms, end_to_end_ms=ms + 1.0)

    def close(self) -> None:
        self.closed = True


class ModelBackend(Backend):
    """Runs a torch model on the CPU (real outputs for PSNR checks; its times are never asserted)."""

    def __init__(self, model: IMDN) -> None:
        self.model = model.eval()

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(name="torch-test", device="cpu", precision="fp32")

    def prepare(self, max_shape: Shape4) -> None:
        pass

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        with torch.inference_mode():
            out = self.model(torch.from_numpy(lr)).numpy()
        return TimedOutput(output=out, forward_ms=1.0, end_to_end_ms=1.0)


def _models(seed: int = 0) -> BenchModels:
    model = build_model(TINY, seed=seed).eval()
    return BenchModels(
        deploy=model, clb=model, arch=TINY.name, weights_source="test", weights_sha256="",
        random_weights=True, params=sum(p.numel() for p in model.parameters()),
    )  # fmt: skip


ENV: dict[str, Any] = {
    "cpu_model": "test cpu", "cpu_count": 2, "torch_threads": 2, "load_average": [0.0, 0.0, 0.0],
    "loaded_machine": False, "gpu": None, "versions": {"torch": "x", "onnxruntime": None, "tensorrt": None},
    "cudnn_benchmark": False,
}  # fmt: skip


def _validate(report: BenchReport) -> dict[str, Any]:
    # Round-trip through JSON first: the schema must hold for what is written, not for Python objects.
    d: dict[str, Any] = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    jsonschema.validate(d, report_schema())
    return d


# ------------------------------------------------------------------------------------------------ statistics


def test_time_stats_matches_definitions() -> None:
    samples = [1.0, 2.0, 3.0, 4.0, 100.0]
    s = time_stats(samples)
    assert s.count == 5
    assert s.mean_ms == pytest.approx(statistics.fmean(samples))
    assert s.median_ms == pytest.approx(statistics.median(samples))
    assert (s.min_ms, s.max_ms) == (1.0, 100.0)
    assert s.std_ms == pytest.approx(statistics.pstdev(samples))
    # Linear interpolation between order statistics: rank p/100 * (n - 1).
    assert s.p90_ms == pytest.approx(4.0 + 0.6 * 96.0)
    assert s.p99_ms == pytest.approx(4.0 + 0.96 * 96.0)


def test_time_stats_single_sample_and_bad_input() -> None:
    s = time_stats([7.5])
    assert (s.mean_ms, s.median_ms, s.p99_ms, s.std_ms) == (7.5, 7.5, 7.5, 0.0)
    with pytest.raises(ValueError):
        time_stats([])
    with pytest.raises(ValueError):
        time_stats([1.0, -1.0])
    with pytest.raises(ValueError):
        time_stats([1.0, math.nan])


def test_challenge_figures_count_the_cold_first_image() -> None:
    c = challenge_figures(["a", "b", "c"], [30.0, 10.0, 20.0])
    assert c.mean_ms == pytest.approx(20.0)  # (30 + 10 + 20) / 3: the first image is not dropped
    assert c.cold_first_ms == 30.0 and c.first_image == "a"
    assert c.mean_without_first_ms == pytest.approx(15.0)
    assert challenge_figures(["a"], [5.0]).mean_without_first_ms is None
    with pytest.raises(ValueError):
        challenge_figures(["a", "b"], [1.0])


def test_jsonable_makes_backend_details_strict_json() -> None:
    details = {"a": np.float32(1.5), "b": [math.inf, np.int64(3)], "c": Path("x.engine"), "d": {"e": math.nan}}
    assert jsonable(details) == {"a": 1.5, "b": [None, 3], "c": "x.engine", "d": {"e": None}}
    json.dumps(jsonable(details), allow_nan=False)


def test_foreign_cpu_load_is_a_cpu_count() -> None:
    load = foreign_cpu_load(0.05)
    assert load is None or load >= 0.0


def test_throughput_and_speedup() -> None:
    # 2 outputs of 1 MP each in 500 ms total -> 4 MP/s
    assert throughput_mpix_s([1_000_000, 1_000_000], [250.0, 250.0]) == pytest.approx(4.0)
    assert speedup(100.0, 25.0) == pytest.approx(4.0)
    assert speedup(None, 25.0) is None and speedup(100.0, None) is None


# --------------------------------------------------------------------------------------------------- verdict


def test_verdict_pass_fail_and_ratio() -> None:
    at = make_verdict(49.42, 49.42, label="x", device="cuda:0")
    assert at.passed and at.status == "PASS" and at.ratio == pytest.approx(1.0)  # the budget itself passes
    over = make_verdict(60.0, 40.0, label="x", device="cuda:0")
    assert not over.passed and over.status == "FAIL" and over.ratio == pytest.approx(1.5)
    assert "1.50x" in over.message and "FAIL" in over.message
    assert "GPU budget" not in over.message and not over.gpu_budget_on_cpu


def test_verdict_on_cpu_says_the_budget_is_a_gpu_budget() -> None:
    for mean in (10.0, 500.0):
        v = make_verdict(mean, 49.42, label="onnxruntime-cpu-fp32", device="cpu")
        assert v.gpu_budget_on_cpu
        assert "GPU budget" in v.message and "cpu" in v.message


@pytest.mark.parametrize("budget", [0.0, -1.0, math.inf, math.nan])
def test_verdict_rejects_bad_budgets(budget: float) -> None:
    with pytest.raises(SRDeployError, match="budget"):
        make_verdict(1.0, budget, label="x", device="cpu")


def test_finish_rows_speedup_and_headline() -> None:
    def row(key: str, times: list[float]) -> RowResult:
        imgs = [ImageResult(f"{i}", (2, 2), (8, 8), t, t + 1, [t], [t + 1]) for i, t in enumerate(times)]
        plan = RowPlan(key, key, "torch", "fp32")
        return summarize_row(plan, imgs, backend_info={"device": "cpu", "label": key}, timing={})

    rows = [row(BASELINE_ROW, [100.0, 100.0]), row("fast", [20.0, 30.0]), row("slow", [400.0, 400.0])]
    rows.append(RowResult(plan=RowPlan("gone", "gone", "tensorrt", "fp16"), status="skipped", reason="no GPU"))
    head = finish_rows(rows, budget_ms=49.42)
    assert head is not None and head.plan.key == "fast"
    assert rows[1].speedup == pytest.approx(4.0) and rows[2].speedup == pytest.approx(0.25)
    assert rows[1].verdict is not None and rows[1].verdict.passed
    assert rows[2].verdict is not None and not rows[2].verdict.passed
    assert rows[3].verdict is None and rows[3].speedup is None


# --------------------------------------------------------------------------------------------------- pairing


def test_pair_key_strips_only_a_scale_suffix() -> None:
    assert pairing.pair_key("0801x4") == "0801"
    assert pairing.pair_key("0801_x4") == "0801"
    assert pairing.pair_key("baby") == "baby"
    assert pairing.pair_key("box") == "box"


def test_pair_images_equal_names_and_div2k_suffix() -> None:
    lr = [Path("lr/0801x4.png"), Path("lr/0802x4.png"), Path("lr/baby.png")]
    hr = [Path("hr/0801.png"), Path("hr/0802.png"), Path("hr/baby.png")]
    pairs = pairing.pair_images(lr, hr)
    assert [(a.name, b.name) for a, b in pairs] == [
        ("0801x4.png", "0801.png"),
        ("0802x4.png", "0802.png"),
        ("baby.png", "baby.png"),
    ]


def test_pair_images_exact_name_wins_over_suffix() -> None:
    pairs = pairing.pair_images([Path("photox2.png")], [Path("photox2.png")])
    assert pairs[0][1].name == "photox2.png"


def test_pair_images_names_the_unpaired() -> None:
    with pytest.raises(SRDeployError) as e:
        pairing.pair_images([Path("a.png"), Path("b.png")], [Path("a.png"), Path("z.png")])
    msg = str(e.value)
    assert "b.png" in msg and "z.png" in msg and "\n" not in msg


def test_pair_images_rejects_ambiguity() -> None:
    with pytest.raises(SRDeployError, match="same name"):
        pairing.pair_images([Path("a.png")], [Path("a.png"), Path("a.jpg")])
    with pytest.raises(SRDeployError, match="several inputs"):
        pairing.pair_images([Path("0801.png"), Path("0801x4.png")], [Path("0801.png")])


def test_check_pair_scale_allows_modcrop_and_names_both_files() -> None:
    pairing.check_pair_scale("comic.png", (90, 62), "comic_hr.png", (361, 250), 4)  # Set14 comic: modcrop 1 and 2 px
    with pytest.raises(SRDeployError) as e:
        pairing.check_pair_scale("a.png", (10, 20), "a_hr.png", (20, 40), 4)
    msg = str(e.value)
    assert "a.png" in msg and "a_hr.png" in msg and "10x20" in msg and "20x40" in msg and "40x80" in msg


def _write(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_load_bench_images_pairs_and_checks_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "lr").mkdir()
    (tmp_path / "hr").mkdir()
    for name in ("0801", "0802"):
        _write(tmp_path / "lr" / f"{name}x4.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
        _write(tmp_path / "hr" / f"{name}.png", rng.integers(0, 256, (25, 21, 3), dtype=np.uint8))
    images = load_bench_images(tmp_path / "lr", tmp_path / "hr", scale=4)
    assert [(i.name, i.height, i.width) for i in images] == [("0801x4.png", 6, 5), ("0802x4.png", 6, 5)]
    assert images[0].hr_path == tmp_path / "hr" / "0801.png"
    _write(tmp_path / "hr" / "0802.png", rng.integers(0, 256, (24, 16, 3), dtype=np.uint8))
    with pytest.raises(SRDeployError, match="0802"):
        load_bench_images(tmp_path / "lr", tmp_path / "hr", scale=4)


# ------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_images_are_seeded_and_sized() -> None:
    a = synthetic_images(9, 13, 3, seed=1)
    b = synthetic_images(9, 13, 3, seed=1)
    c = synthetic_images(9, 13, 3, seed=2)
    assert len(a) == 3 and all(i.lr.shape == (9, 13, 3) and i.lr.dtype == np.uint8 for i in a)
    assert all(np.array_equal(x.lr, y.lr) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0].lr, c[0].lr)
    assert not np.array_equal(a[0].lr, a[1].lr)  # distinct images, not one repeated
    assert len({i.name for i in a}) == 3
    with pytest.raises(SRDeployError):
        synthetic_images(9, 13, 0, seed=0)


# ----------------------------------------------------------------------------------------------- row plans


def test_plan_rows_all_and_single() -> None:
    rows = plan_rows("all", "fp32", best_precision="bf16")
    assert [r.key for r in rows] == [
        "torch-clb-fp32", "torch-fp32", "torch-best-bf16", "onnxruntime-fp32", "onnxruntime-fp16",
        "openvino-fp32", "openvino-bf16", "tensorrt-fp32", "tensorrt-fp16",
    ]  # fmt: skip
    assert rows[0].model == "clb" and all(r.model == "deploy" for r in rows[1:])
    assert all(r.skip_reason is None for r in rows)
    no_fast = plan_rows("all", "fp32", best_precision="fp32")
    assert no_fast[2].skip_reason and "fp32" in no_fast[2].skip_reason
    assert [r.key for r in plan_rows("onnxruntime", "fp16", best_precision="bf16")] == ["onnxruntime-fp16"]
    with pytest.raises(SRDeployError, match="--backend"):
        plan_rows("cuda", "fp32", best_precision="fp32")
    with pytest.raises(SRDeployError, match="--precision"):
        plan_rows("torch", "int8", best_precision="fp32")


@pytest.mark.parametrize(
    ("kwargs", "flag"), [({"repeat": 0}, "--repeat"), ({"warmup": -1}, "--warmup"), ({"budget_ms": -5.0}, "budget")]
)
def test_settings_validate(kwargs: dict[str, Any], flag: str) -> None:
    with pytest.raises(SRDeployError, match=flag):
        BenchSettings(**kwargs).validate()


# ------------------------------------------------------------------------------------------------- measuring


def test_measure_backend_method() -> None:
    images = synthetic_images(4, 6, 3, seed=0)
    # cold pass: 50, 10, 30; warm-up: 2 calls (99, 99); warm passes: 1, 2, 3 then 4, 5, 6
    fake = ScriptedBackend([50.0, 10.0, 30.0, 99.0, 99.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    plan = RowPlan("fake-fp32", "fake", "torch", "fp32")
    calls: list[tuple[str, int, int]] = []
    row = measure_backend(
        fake, plan, images, warmup=2, repeat=2, scale=4, progress=lambda k, p, d, t: calls.append((p, d, t))
    )
    assert fake.calls == 3 + 2 + 6
    assert row.challenge is not None and row.challenge.mean_ms == pytest.approx(30.0)
    assert row.challenge.cold_first_ms == 50.0 and row.challenge.first_image == images[0].name
    assert [r.warm_forward_ms for r in row.images] == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert row.warm is not None and row.warm.count == 6 and row.warm.median_ms == pytest.approx(3.5)
    assert row.warm_end_to_end is not None and row.warm_end_to_end.median_ms == pytest.approx(4.5)
    assert row.images[0].sr_hw == (16, 24)
    # 6 outputs of 16x24 px in 21 ms
    assert row.throughput_mpix_s == pytest.approx(6 * 16 * 24 / 1e6 / 0.021)
    assert row.psnr_y_mean is None  # no HR loader
    assert [c[0] for c in calls] == ["cold"] * 3 + ["warm-up"] * 2 + ["warm"] * 6
    assert calls[-1][1:] == (11, 11)
    assert row.timing["forward_clock"] == "perf_counter_ns" and row.timing["forward_includes_copies"] is False


def test_psnr_comes_from_the_backends_output() -> None:
    rng = np.random.default_rng(3)
    lr = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    hr = rng.integers(0, 256, (49, 42, 3), dtype=np.uint8)  # 1 and 2 px of modcrop
    img = BenchImage(name="a.png", lr=lr, hr_path=Path("unused.png"))
    row = measure_backend(
        ScriptedBackend([1.0]), RowPlan("k", "k", "torch", "fp32"), [img],
        warmup=0, repeat=1, scale=4, hr_loader=lambda _: hr,
    )  # fmt: skip
    from sr_deploy.imaging.metrics import psnr

    sr = lr.repeat(4, axis=0).repeat(4, axis=1)
    expected = psnr(sr, hr[:48, :40], crop_border=4, y_channel=True)
    assert row.images[0].psnr_y == pytest.approx(expected, abs=1e-9)
    assert row.psnr_y_mean == pytest.approx(expected, abs=1e-9)
    # RGB beside Y: the challenge's own metric.
    expected_rgb = psnr(sr, hr[:48, :40], crop_border=4, y_channel=False)
    assert row.images[0].psnr_rgb == pytest.approx(expected_rgb, abs=1e-9) and expected_rgb != expected
    assert row.psnr_rgb_mean == pytest.approx(expected_rgb, abs=1e-9)


def _inputs(n: int) -> dict[str, Any]:
    return {"kind": "synthetic", "count": n, "description": f"{n} test images", "synthetic_hw": [4, 6]}


def test_reference_images_reach_the_default_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """--reference-dir's images go to the backend factory (the bf16 gate's inputs); without them it finds its own."""
    seen: list[Any] = []

    def make(plan: RowPlan, model: IMDN, device: str, sha: str, *, references: Any = None) -> Backend:
        seen.append(references)
        return ScriptedBackend([1.0])

    monkeypatch.setattr(bench_run, "_factory_maker", make)
    refs = [object()]
    for given in (refs, None):
        run_bench(
            synthetic_images(4, 6, 1, seed=0), _models(), BenchSettings(backend="torch", warmup=0, repeat=1),
            inputs=_inputs(1), availability=lambda: {"torch": None}, environment=ENV, references=given,
        )  # fmt: skip
    assert seen == [refs, None]


def test_run_bench_all_rows_skips_and_failures(tmp_path: Path) -> None:
    images = synthetic_images(4, 6, 2, seed=0)
    made: list[ScriptedBackend] = []
    per_kind = {"torch-clb-fp32": 300.0, "torch-fp32": 100.0, "onnxruntime-fp32": 40.0, "onnxruntime-fp16": 30.0}

    def make(plan: RowPlan, model: IMDN, device: str, sha: str) -> Backend:
        if plan.key not in per_kind:
            raise RuntimeError(f"{plan.key} exploded")
        fake = ScriptedBackend([per_kind[plan.key]], name=plan.kind)
        made.append(fake)
        return fake

    report = run_bench(
        images,
        _models(),
        BenchSettings(backend="all", warmup=1, repeat=2),
        inputs=_inputs(2),
        make=make,
        availability=lambda: {
            "torch": None,
            "onnxruntime": None,
            "openvino": "openvino is not installed",
            "tensorrt": "TensorRT is not installed",
        },
        environment=ENV,
    )
    status = {r.plan.key: (r.status, r.reason) for r in report.rows}
    assert status["tensorrt-fp16"] == ("skipped", "TensorRT is not installed")
    assert status["openvino-bf16"] == ("skipped", "openvino is not installed")
    assert status[next(k for k in status if k.startswith("torch-best"))][0] == "failed"
    assert report.headline == "onnxruntime-fp16"
    assert report.verdict is not None and report.verdict.passed
    rows = {r.plan.key: r for r in report.rows}
    assert rows["onnxruntime-fp32"].speedup == pytest.approx(2.5)
    assert rows["torch-clb-fp32"].speedup == pytest.approx(1 / 3)
    # torch and onnxruntime `prepare` is a warm-up forward: skipped so the first image stays cold.
    assert all(f.closed and f.prepared is None for f in made)
    assert all(r.timing["prepare_called"] is False for r in report.rows if r.ok)
    d = _validate(report)
    assert len(d["rows"]) == 9 and d["verdict"]["status"] == "PASS"
    md = render_markdown(report)
    assert "onnxruntime-fp16" not in md or "ONNX Runtime fp16" in md
    assert "TensorRT is not installed" in md and report.verdict.message in md
    plot = write_plot(report, tmp_path / "bench.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_bench_single_backend_not_available() -> None:
    with pytest.raises(MissingDependencyError, match=r"tensorrt.*pip install tensorrt"):
        run_bench(
            synthetic_images(4, 6, 1, seed=0),
            _models(),
            BenchSettings(backend="tensorrt"),
            inputs=_inputs(1),
            make=lambda *a: ScriptedBackend([1.0]),
            availability=lambda: {"torch": None, "tensorrt": "no GPU here; pip install tensorrt on a CUDA machine"},
            environment=ENV,
        )


def test_run_bench_single_backend_over_budget_report_validates() -> None:
    report = run_bench(
        synthetic_images(4, 6, 3, seed=0),
        _models(),
        BenchSettings(backend="torch", warmup=0, repeat=1, budget_ms=10.0),
        inputs=_inputs(3),
        make=lambda *a: ScriptedBackend([21.0, 5.0, 5.0]),
        availability=lambda: {"torch": None},
        environment=ENV,
    )
    assert report.verdict is not None and not report.verdict.passed
    assert report.verdict.ratio == pytest.approx(31.0 / 3.0 / 10.0)  # the cold first image is counted
    d = _validate(report)
    assert d["rows"][0]["challenge"]["cold_first_ms"] == 21.0
    assert any(n.startswith("No --weights") and "meaningless" in n for n in d["notes"])
    assert all(i["psnr_y"] is None for i in d["rows"][0]["images"])  # random weights: PSNR not shown


def test_prepare_is_called_for_backends_that_only_allocate() -> None:
    fake = ScriptedBackend([1.0], name="tensorrt")
    report = run_bench(
        [*synthetic_images(4, 6, 1, seed=0), *synthetic_images(5, 3, 1, seed=1)],
        _models(),
        BenchSettings(backend="tensorrt", warmup=0, repeat=1),
        inputs=_inputs(2),
        make=lambda *a: fake,
        availability=lambda: {"tensorrt": None},
        environment=ENV,
    )
    assert fake.prepared == (1, 3, 5, 6) and fake.closed  # the largest height and width over the set
    assert report.rows[0].timing["prepare_called"] is True


def test_auto_row_is_named_after_the_backend_it_chose() -> None:
    report = run_bench(
        synthetic_images(4, 6, 1, seed=0),
        _models(),
        BenchSettings(backend="auto", warmup=0, repeat=1),
        inputs=_inputs(1),
        make=lambda *a: ScriptedBackend([1.0], name="onnxruntime"),
        availability=lambda: {"torch": None, "onnxruntime": None, "tensorrt": "no GPU"},
        environment=ENV,
    )
    assert [r.plan.key for r in report.rows] == ["onnxruntime-fp32"] and report.headline == "onnxruntime-fp32"
    _validate(report)


def test_markdown_has_psnr_and_per_image_rows() -> None:
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    images = [BenchImage(name=f"im{i}.png", lr=hr[::4, ::4].copy(), hr_path=Path("x.png")) for i in range(2)]
    models = _models()
    models.random_weights = False
    report = run_bench(
        images,
        models,
        BenchSettings(backend="torch", warmup=0, repeat=1),
        inputs={"kind": "folder", "count": 2, "description": "two images"},
        make=lambda *a: ScriptedBackend([3.0]),
        availability=lambda: {"torch": None},
        hr_loader=lambda _: hr,
        environment=ENV,
    )
    md = render_markdown(report)
    assert "PSNR Y (dB)" in md and "| im0.png | 10x12 |" in md and "| im1.png | 10x12 |" in md
    assert report.rows[0].psnr_y_mean is not None and f"{report.rows[0].psnr_y_mean:.4f}" in md
    assert "PSNR RGB (dB, challenge)" in md and "test_demo.py ranks by it" in md
    assert report.rows[0].psnr_rgb_mean is not None and f"{report.rows[0].psnr_rgb_mean:.4f}" in md
    _validate(report)


def _one_image_report() -> BenchReport:
    """A torch run over one synthetic image with a scripted backend (1 ms forward)."""
    return run_bench(
        synthetic_images(4, 6, 1, seed=0),
        _models(),
        BenchSettings(backend="torch", warmup=0, repeat=1),
        inputs=_inputs(1),
        make=lambda *a: ScriptedBackend([1.0]),
        availability=lambda: {"torch": None},
        environment=ENV,
    )


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    report = _one_image_report()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `import matplotlib.figure` fail
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        write_plot(report, tmp_path / "p.png")
    assert not (tmp_path / "p.png").exists()


def test_report_schema_rejects_a_broken_report() -> None:
    report = _one_image_report()
    d = _validate(report)
    del d["rows"][0]["images"][0]["cold_forward_ms"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, report_schema())


def test_reference_psnr_on_set5_with_team26(shared: Path, team26_pth: Path, tmp_path: Path) -> None:
    """The whole PSNR path (load, pair, run, quantise, Y, border) reproduces the challenge's reference figures.

    Two of Set5's images (the smallest, one with a non-square LR) keep the test quick; each must match to 0.01 dB.
    """
    import shutil

    from sr_deploy.checkpoints import load_model

    model, loaded = load_model(team26_pth, form="plain")
    models = BenchModels(
        deploy=model, clb=None, arch=model.spec.name, weights_source=str(team26_pth),
        weights_sha256=loaded.sha256, random_weights=False, params=sum(p.numel() for p in model.parameters()),
    )  # fmt: skip
    data = shared / "data" / "Set5"
    for sub in ("LR_bicubic_x4", "HR"):
        (tmp_path / sub).mkdir()
        for name in ("butterfly.png", "woman.png"):
            shutil.copy(data / sub / name, tmp_path / sub / name)
    images = load_bench_images(tmp_path / "LR_bicubic_x4", tmp_path / "HR", scale=4)
    report = run_bench(
        images,
        models,
        BenchSettings(backend="torch", warmup=0, repeat=1),
        inputs={"kind": "folder", "count": len(images), "description": "Set5 subset"},
        make=lambda plan, m, *a: ModelBackend(m),
        availability=lambda: {"torch": None},
        environment=ENV,
    )
    ref = json.loads((shared / "data" / "reference_psnr.json").read_text())["results"]["Set5/team26_imdn_nb7.pth"]
    row = report.rows[0]
    assert [im.name for im in row.images] == ["butterfly.png", "woman.png"]
    for im in row.images:
        assert im.psnr_y == pytest.approx(ref["per_image"][im.name]["psnr_y"], abs=0.01)
        assert im.psnr_rgb == pytest.approx(ref["per_image"][im.name]["psnr_rgb"], abs=0.01)
    d = _validate(report)
    assert d["model"]["weights_sha256"] == loaded.sha256
