"""`srdeploy bench` end to end through sr_deploy.cli.main, with a scripted backend in place of the factory.

The backend factory is replaced by a fake whose times are fixed numbers, so the verdict and the exit code are
known in advance; no test asserts a real time.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import numpy as np
import pytest
from rich.console import Console
from rich.table import Table
from strict_json import load_strict

import sr_deploy.bench.run as bench_run
from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.bench.inputs import synthetic_images
from sr_deploy.bench.models import load_bench_models
from sr_deploy.bench.render import Column, render_markdown
from sr_deploy.bench.report import BenchReport, report_schema
from sr_deploy.bench.rows import RowPlan
from sr_deploy.bench.run import BenchSettings, run_bench
from sr_deploy.cli import main
from sr_deploy.commands.bench import summary_table
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput

TINY = IMDNSpec(blocks=2, channels=16, distilled=4)


class FixedBackend(Backend):
    """Nearest-neighbour x4 output in a fixed time per call."""

    def __init__(self, ms: float, kind: str) -> None:
        self.ms = ms
        self._info = BackendInfo(name=kind, device="cpu", precision="fp32")

    @property
    def info(self) -> BackendInfo:
        return self._info

    def prepare(self, max_shape: Shape4) -> None:
        pass

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        return TimedOutput(output=lr.repeat(4, axis=2).repeat(4, axis=3), forward_ms=self.ms, end_to_end_ms=self.ms)


@pytest.fixture
def fake_factory(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Route run_bench's default factory to FixedBackend; `state["ms"]` sets the time, tensorrt is missing."""
    state: dict[str, Any] = {"ms": 10.0, "made": []}

    def make(plan: RowPlan, model: IMDN, device: str, sha: str) -> Backend:
        state["made"].append((plan.key, model.spec.name, sha))
        return FixedBackend(state["ms"], plan.kind)

    def availability() -> dict[str, str | None]:
        return {"torch": None, "onnxruntime": None, "tensorrt": "TensorRT is not installed (pip install tensorrt)"}

    monkeypatch.setattr(bench_run, "_factory_maker", make)
    monkeypatch.setattr(bench_run, "_factory_availability", availability)
    return state


def _write(path: Path, shape: tuple[int, int], seed: int) -> None:
    rgb = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), rgb)


@pytest.fixture
def lr_hr(tmp_path: Path) -> tuple[Path, Path]:
    lr, hr = tmp_path / "lr", tmp_path / "hr"
    lr.mkdir()
    hr.mkdir()
    for i, name in enumerate(("0801", "0802")):
        _write(lr / f"{name}x4.png", (6, 5), i)
        _write(hr / f"{name}.png", (24, 20), 10 + i)
    return lr, hr


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("srdeploy: error:"), err
    assert "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_synthetic_writes_report_markdown_plot(
    fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    rc = main([
        "bench", "--synthetic", "8x12", "--count", "3", "--warmup", "1", "--repeat", "2",
        "--report", str(out), "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png"), "-q",
    ])  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "PASS" in stdout and "GPU budget" in stdout  # the fake runs on "cpu": the honest note is there
    d = load_strict(out)
    jsonschema.validate(d, report_schema())
    assert d["inputs"]["kind"] == "synthetic" and d["inputs"]["synthetic_hw"] == [8, 12]
    assert [len(i["warm_forward_ms"]) for i in d["rows"][0]["images"]] == [2, 2, 2]
    assert d["model"]["random_weights"] is True and d["model"]["arch"] == "imdn-b7"
    assert (tmp_path / "r.md").read_text().startswith("# srdeploy bench")
    assert (tmp_path / "r.png").stat().st_size > 0


def test_fail_over_budget_sets_exit_code(fake_factory: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    fake_factory["ms"] = 100.0
    args = ["bench", "--synthetic", "4x4", "--count", "2", "--repeat", "1", "--warmup", "0", "-q"]
    assert main(args) == 0  # FAIL is reported but is not an error unless asked
    assert "FAIL" in capsys.readouterr().out
    assert main([*args, "--fail-over-budget"]) == 1
    assert main([*args, "--fail-over-budget", "--budget-ms", "100"]) == 0


def test_backend_all_table(fake_factory: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "all.json"
    rc = main(["bench", "--synthetic", "4x4", "--count", "2", "--repeat", "1", "--backend", "all",
               "--report", str(out)])  # fmt: skip
    assert rc == 0
    d = load_strict(out)
    jsonschema.validate(d, report_schema())
    rows = {r["key"]: r for r in d["rows"]}
    assert rows["tensorrt-fp32"]["status"] == "skipped" and "pip install tensorrt" in rows["tensorrt-fp32"]["reason"]
    assert rows["torch-clb-fp32"]["status"] == "ok"
    assert ("torch-clb-fp32", "imdn-b7-clb", "") in fake_factory["made"]  # the training-time model is timed
    assert "TensorRT is not installed" in capsys.readouterr().out


def test_hr_pairs_and_psnr_with_weights(fake_factory: dict[str, Any], lr_hr: tuple[Path, Path], tmp_path: Path) -> None:
    from sr_deploy.checkpoints import save_weights

    weights = save_weights(build_model(TINY, seed=0), tmp_path / "tiny.safetensors")
    out = tmp_path / "r.json"
    lr, hr = lr_hr
    rc = main(["bench", "--input", str(lr), "--hr", str(hr), "--weights", str(weights), "--repeat", "1",
               "--report", str(out), "-q"])  # fmt: skip
    assert rc == 0
    d = load_strict(out)
    jsonschema.validate(d, report_schema())
    assert [i["name"] for i in d["rows"][0]["images"]] == ["0801x4.png", "0802x4.png"]
    assert all(isinstance(i["psnr_y"], float) for i in d["rows"][0]["images"])
    assert all(isinstance(i["psnr_rgb"], float) and i["psnr_rgb"] != i["psnr_y"] for i in d["rows"][0]["images"])
    assert isinstance(d["rows"][0]["psnr_rgb_mean"], float)
    assert len(d["model"]["weights_sha256"]) == 64 and d["model"]["random_weights"] is False


def test_hr_without_weights_does_not_show_psnr(
    fake_factory: dict[str, Any], lr_hr: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lr, hr = lr_hr
    out = tmp_path / "r.json"
    assert main(["bench", "--input", str(lr), "--hr", str(hr), "--repeat", "1", "--report", str(out)]) == 0
    d = load_strict(out)
    assert all(i["psnr_y"] is None and i["psnr_rgb"] is None for i in d["rows"][0]["images"])
    err = capsys.readouterr().err
    assert "meaningless" in err
    # stderr is not a terminal here (no progress bar can draw): one line per finished row instead.
    assert "bench: auto-fp32 measured (" in err


def test_team26_on_set5_shows_rgb_and_y(
    shared: Path, team26_pth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The challenge's metric (RGB) beside Y, as ../shared/data/reference_psnr.json has them."""
    ref = load_strict(shared / "data" / "reference_psnr.json")["results"]["Set5/team26_imdn_nb7.pth"]["mean"]
    assert (ref["psnr_rgb"], ref["psnr_y"]) == (30.3025, 32.1949)
    data = shared / "data" / "Set5"
    out = tmp_path / "r.json"
    rc = main(["bench", "--weights", str(team26_pth), "--input", str(data / "LR_bicubic_x4"), "--hr", str(data / "HR"),
               "--backend", "torch", "--warmup", "0", "--repeat", "1", "--report", str(out)])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "PSNR RGB" in printed and "challenge)" in printed and "30.3025" in printed and "32.1949" in printed
    row = load_strict(out)["rows"][0]
    assert round(row["psnr_rgb_mean"], 4) == 30.3025 and round(row["psnr_y_mean"], 4) == 32.1949


def test_reference_dir_that_points_nowhere(
    fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "no-such-set"
    assert main(["bench", "--synthetic", "4x4", "--count", "1", "--reference-dir", str(nowhere)]) == 2
    _one_line_error(capsys, f"--reference-dir {nowhere}: no such folder")
    assert fake_factory["made"] == []


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_input_folder(fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--input", str(tmp_path / "nope")]) == 2
    _one_line_error(capsys, "nope")


def test_empty_input_folder(fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--input", str(tmp_path)]) == 2
    _one_line_error(capsys, "no images")


def test_folder_without_images_lists_what_it_found(
    fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "weights.pth").write_bytes(b"x")
    assert main(["bench", "--input", str(tmp_path)]) == 2
    _one_line_error(capsys, "notes.txt", "weights.pth")


def test_hr_that_does_not_pair(
    fake_factory: dict[str, Any], lr_hr: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lr, hr = lr_hr
    (hr / "0802.png").rename(hr / "0999.png")
    assert main(["bench", "--input", str(lr), "--hr", str(hr)]) == 2
    _one_line_error(capsys, "0802x4.png", "0999.png")


def test_hr_of_the_wrong_scale(
    fake_factory: dict[str, Any], lr_hr: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lr, hr = lr_hr
    _write(hr / "0802.png", (12, 10), 0)  # x2, not x4
    assert main(["bench", "--input", str(lr), "--hr", str(hr)]) == 2
    _one_line_error(capsys, "0802.png", "0802x4.png", "12x10", "6x5", "x4")


def test_backend_not_available(fake_factory: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--synthetic", "4x4", "--count", "1", "--backend", "tensorrt"]) == 2
    _one_line_error(capsys, "tensorrt", "not installed")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--repeat", "0"], "--repeat"),
        (["--repeat", "-2"], "--repeat"),
        (["--budget-ms", "-1"], "--budget-ms"),
        (["--budget-ms", "0"], "--budget-ms"),
        (["--warmup", "-1"], "--warmup"),
        (["--backend", "cuda"], "--backend"),
        (["--precision", "int8"], "--precision"),
        (["--synthetic", "12"], "--synthetic"),
        (["--count", "0"], "--count"),
    ],
)
def test_bad_flags(
    fake_factory: dict[str, Any], args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [] if "--synthetic" in args else ["--synthetic", "4x4"]
    assert main(["bench", *base, *args]) == 2
    _one_line_error(capsys, needle)


def test_report_folder_missing(
    fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no" / "r.json"
    assert main(["bench", "--synthetic", "4x4", "--count", "1", "--report", str(missing)]) == 2
    _one_line_error(capsys, "--report", str(tmp_path / "no"))
    assert fake_factory["made"] == []  # rejected before anything ran


def test_plot_without_matplotlib_fails_before_running(
    fake_factory: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert main(["bench", "--synthetic", "4x4", "--count", "1", "--plot", str(tmp_path / "p.png")]) == 2
    _one_line_error(capsys, "matplotlib", "pip install")
    assert fake_factory["made"] == []


def test_no_input_at_all(fake_factory: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    _one_line_error(capsys, "--input", "--synthetic")


def test_count_without_synthetic(
    fake_factory: dict[str, Any], lr_hr: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--input", str(lr_hr[0]), "--count", "3"]) == 2
    _one_line_error(capsys, "--count")


def test_plot_needs_nothing_beyond_the_main_install() -> None:
    """`bench --plot` after the README's `pip install -e .`: matplotlib is a core dependency, not an extra."""
    import re
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10 only
        import tomli as tomllib

    repo = Path(__file__).resolve().parents[1]
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(re.match(r"matplotlib\b", d) for d in deps), deps
    readme = (repo / "README.md").read_text()
    main_job = next(line for line in readme.splitlines() if "pip install" in line and "srdeploy bench" in line)
    assert "pip install -e . " in main_job  # the main job installs the core dependencies, matplotlib among them


def _all_rows_report() -> BenchReport:
    """--backend all with fixed times: one PSNR-less table with a speed-up column and skipped rows."""
    return run_bench(
        synthetic_images(4, 6, 2, seed=0),
        load_bench_models(None, need_clb=True, seed=0),
        BenchSettings(backend="all", warmup=0, repeat=1),
        inputs={"kind": "synthetic", "count": 2, "description": "two [test] images"},
        make=lambda plan, *_: FixedBackend(5.0 if plan.kind == "onnxruntime" else 10.0, plan.kind),
        availability=lambda: {"torch": None, "onnxruntime": None, "openvino": "no", "tensorrt": "no GPU [here]"},
        environment={"versions": {}},
    )


def _console_lines(table: Table) -> list[list[str]]:
    """The console table as a user sees it, split into cells (wide enough that nothing wraps)."""
    out = io.StringIO()
    Console(file=out, width=400, color_system=None).print(table)
    return [[c.strip() for c in line.strip()[1:-1].split(line.strip()[0])] for line in out.getvalue().splitlines()
            if line.strip()[:1] in ("┃", "│")]  # fmt: skip


def _markdown_lines(md: str) -> list[list[str]]:
    table = md.split("\n\n")[next(i for i, part in enumerate(md.split("\n\n")) if part.startswith("| backend"))]
    return [[c.strip() for c in line.strip()[1:-1].split("|")] for line in table.splitlines() if "---|" not in line]


def test_console_and_markdown_tables_share_one_column_model() -> None:
    report = _all_rows_report()
    console = _console_lines(summary_table(report))
    md = _markdown_lines(render_markdown(report))
    assert console[0] == md[0]  # the same headers, units included
    assert "warm p90 (ms)" in md[0] and not any("p99" in h for h in md[0]) and "speed-up" in md[0]
    assert console[1:] == md[1:] and len(md) == len(report.rows) + 1  # every row's cells agree
    skipped = next(line for line in md if line[0].startswith("tensorrt-fp32"))
    assert skipped[1] == "skipped" and "no GPU [here]" in render_markdown(report)  # the reason is below the table


def test_console_table_keeps_brackets_as_text() -> None:
    """rich markup in a unit or a cell is shown as written, not interpreted."""
    report = _all_rows_report()
    columns = (Column("backend", "", lambda r: r.plan.key, align="left"), Column("odd", "[b]", lambda r: "[red]x"))
    console = _console_lines(summary_table(report, columns))
    assert console[0] == ["backend", "odd ([b])"]
    assert console[1][1] == "[red]x"
