"""Issue 14 on a machine without a GPU: every decision of the CUDA paths, with fakes in place of CUDA.

The LRU of captured graphs runs with a fake capture, torch.compile with a fake compiler; the option checks, the
bench plumbing and the one-line errors run as they are; benchmarks/gpu_check.py runs its dry run end to end.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.bench.measure import ImageResult, summarize_row
from sr_deploy.bench.rows import RowPlan, plan_rows
from sr_deploy.bench.run import BenchSettings, check_device_options
from sr_deploy.cli import main as cli_main
from sr_deploy.errors import MissingDependencyError, SRDeployError
from sr_deploy.runtime import factory
from sr_deploy.runtime.cuda_graphs import GraphedForward, LRUCache
from sr_deploy.runtime.ort_backend import gpu_present
from sr_deploy.runtime.torch_backend import (
    TorchBackend,
    TorchOptions,
    check_torch_options,
    cuda_bf16_support,
    grow_capacity,
)

NO_GPU = pytest.mark.skipif(gpu_present() or torch.cuda.is_available(), reason="checks a machine without a GPU")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny() -> IMDN:
    model = build_model(IMDNSpec(blocks=1, channels=8, distilled=2), seed=0).eval()
    assert isinstance(model, IMDN)
    return model


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    """benchmarks/gpu_check.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------- the graph LRU
def test_lru_keeps_the_most_recent_and_counts() -> None:
    made: list[str] = []

    def make(key: str) -> Callable[[], str]:
        def value() -> str:
            made.append(key)
            return key.upper()

        return value

    cache: LRUCache[str, str] = LRUCache(2)
    assert cache.get("a", make("a")) == ("A", True)
    assert cache.get("b", make("b")) == ("B", True)
    assert cache.get("a", make("a")) == ("A", False)  # a is now the most recent
    assert cache.get("c", make("c")) == ("C", True)  # evicts b, the least recent
    assert cache.keys() == ["a", "c"] and "b" not in cache and len(cache) == 2
    assert made == ["a", "b", "c"]
    assert cache.stats.to_dict() == {"hits": 1, "misses": 3, "evictions": 1}

    def boom() -> str:
        raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError):
        cache.get("d", boom)
    assert cache.keys() == ["a", "c"] and cache.stats.misses == 3  # a failed make changes nothing
    with pytest.raises(ValueError):
        LRUCache[str, str](0)


@dataclass
class FakeGraph:
    """What a CUDA graph does, eagerly: replay recomputes `static_out` in place from `static_in`."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    static_in: torch.Tensor
    static_out: torch.Tensor
    replays: int = 0

    def replay(self) -> None:
        self.replays += 1
        self.static_out.copy_(self.forward(self.static_in))


def fake_capture(
    captured: list[tuple[int, ...]],
) -> Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], FakeGraph]:
    def capture(forward: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor) -> FakeGraph:
        captured.append(tuple(example.shape))
        static_in = example.clone()
        return FakeGraph(forward, static_in, forward(static_in))

    return capture


def test_graphed_forward_replays_static_buffers_per_shape() -> None:
    captured: list[tuple[int, ...]] = []
    graphs = GraphedForward(lambda x: x * 2.0, fake_capture(captured), capacity=2)
    a1, a2 = torch.ones(1, 3, 4, 4), torch.full((1, 3, 4, 4), 3.0)
    g, new = graphs.load(a1)
    assert new and captured == [(1, 3, 4, 4)]
    g.replay()
    assert torch.equal(g.static_out, a1 * 2)
    g2, new = graphs.load(a2)  # same shape: no capture, the new input is copied into the static buffer
    assert g2 is g and not new and captured == [(1, 3, 4, 4)]
    g2.replay()
    assert torch.equal(g2.static_out, a2 * 2)
    graphs.load(torch.ones(1, 3, 5, 4))
    graphs.load(torch.ones(1, 3, 6, 4))  # a third shape evicts the least recently used (4x4)
    assert graphs.cached_shapes() == [(1, 3, 5, 4), (1, 3, 6, 4)]
    graphs.load(a1)
    assert captured[-1] == (1, 3, 4, 4) and graphs.stats.evictions == 2  # captured again after eviction
    graphs.clear()
    assert graphs.cached_shapes() == []


# ----------------------------------------------------------------------------------------------- options
def test_torch_options_are_checked_naming_the_flag() -> None:
    check_torch_options(TorchOptions(), "cpu")
    check_torch_options(TorchOptions(cuda_graphs=True), "cuda")
    check_torch_options(TorchOptions(compile_mode="default"), "cpu")
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: CUDA graphs need a CUDA device.*cpu"):
        check_torch_options(TorchOptions(cuda_graphs=True), "cpu")
    with pytest.raises(SRDeployError, match=r"^--compile 'reduce-overhead': expected one of default"):
        check_torch_options(TorchOptions(compile_mode="reduce-overhead"), "cuda")
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs with --compile"):
        check_torch_options(TorchOptions(cuda_graphs=True, compile_mode="default"), "cuda")
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: the graph cache must keep at least 1"):
        check_torch_options(TorchOptions(cuda_graphs=True, graph_cache=0), "cuda")


def test_machine_facts_are_plain_functions() -> None:
    assert cuda_bf16_support(True, "NVIDIA H200") is None
    reason = cuda_bf16_support(False, "Tesla V100")
    assert reason is not None and "Tesla V100" in reason and "is_bf16_supported" in reason
    assert grow_capacity(0, 10) == 1 << 20
    assert grow_capacity(1 << 20, 5) == 1 << 20  # enough: no reallocation
    assert grow_capacity(1 << 20, (1 << 20) + 1) == 2 << 20


def test_cuda_graphs_on_the_cpu_is_one_line(tiny: IMDN) -> None:
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: CUDA graphs need a CUDA device"):
        TorchBackend(tiny, options=TorchOptions(cuda_graphs=True))


def test_compiled_forward_runs_each_new_shape_before_the_timer(tiny: IMDN) -> None:
    compiled: list[str] = []
    calls: list[tuple[int, ...]] = []

    def fake_compiler(model: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        compiled.append(mode)

        def run(x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            out: torch.Tensor = model(x)
            return out

        return run

    backend = TorchBackend(tiny, options=TorchOptions(compile_mode="default"), compiler=fake_compiler)
    rng = np.random.default_rng(0)
    a, b = rng.random((1, 3, 6, 5), dtype=np.float32), rng.random((1, 3, 7, 5), dtype=np.float32)
    with torch.inference_mode():
        expected = tiny(torch.from_numpy(a)).numpy()
    out = backend.run_timed(a)
    assert np.abs(out.output - expected).max() <= 1e-6
    backend.run_timed(a)
    backend.run_timed(b)
    # One untimed call at the first sight of each shape, then the timed ones: 2 shapes, 3 timed calls.
    assert compiled == ["default"] and calls == [(1, 3, 6, 5)] * 3 + [(1, 3, 7, 5)] * 2
    info = backend.info.details
    assert info["compile"] == "default" and info["shape_setups"] == 2 and info["cuda_graphs"] is False
    backend.close()


def test_compile_failures_name_the_flag(tiny: IMDN) -> None:
    def broken(model: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        raise RuntimeError("no C++ compiler\nmore detail")

    with pytest.raises(SRDeployError, match=r"^--compile default: torch.compile failed \(RuntimeError: no C\+\+"):
        TorchBackend(tiny, options=TorchOptions(compile_mode="default"), compiler=broken)

    def lazy_broken(model: nn.Module, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("inductor exploded")

        return run

    backend = TorchBackend(tiny, options=TorchOptions(compile_mode="default"), compiler=lazy_broken)
    with pytest.raises(SRDeployError, match=r"^--compile default: torch.compile failed for input \(1, 3, 4, 4\)"):
        backend.run_timed(np.zeros((1, 3, 4, 4), dtype=np.float32))


# ----------------------------------------------------------------------------------------------- factory
def test_factory_refuses_options_the_backend_has_no_use_for(tiny: IMDN) -> None:
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: only the torch and tensorrt.*--backend openvino"):
        factory.make_backend("openvino", tiny, device="cpu", cuda_graphs=True)
    with pytest.raises(SRDeployError, match=r"^--compile: only the torch backend compiles \(--backend onnxruntime"):
        factory.make_backend("onnxruntime", tiny, device="cpu", compile_mode="default")
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: CUDA graphs need a CUDA device"):
        factory.make_backend("torch", tiny, device="cpu", cuda_graphs=True)
    with pytest.raises(SRDeployError, match=r"^--compile 'fast'"):
        factory.make_backend("torch", tiny, device="cpu", compile_mode="fast")


@NO_GPU
def test_factory_cuda_without_a_gpu_is_one_line(tiny: IMDN) -> None:
    with pytest.raises(MissingDependencyError, match=r"^--device cuda: no CUDA GPU"):
        factory.make_backend("torch", tiny, device="cuda", precision="fp16")
    with pytest.raises(MissingDependencyError, match=r"^--device cuda: no CUDA GPU"):
        factory.make_backend("auto", tiny, device="cuda")  # not "openvino runs on the CPU"


# ----------------------------------------------------------------------------------------------- bench plumbing
def test_plan_rows_add_graphs_and_compiled_rows_on_cuda_only() -> None:
    cpu = [r.key for r in plan_rows("all", "fp32", best_precision="bf16")]
    assert cpu == [r.key for r in plan_rows("all", "fp32", best_precision="bf16", device="cpu")]
    assert not any("graphs" in k or "compiled" in k for k in cpu)
    cuda = plan_rows("all", "fp32", best_precision="fp16", device="cuda:0")
    keys = [r.key for r in cuda]
    assert keys[keys.index("torch-best-fp16") + 1 : keys.index("torch-best-fp16") + 3] == [
        "torch-best-fp16-graphs",
        "torch-best-fp16-compiled",
    ]
    rows = {r.key: r for r in cuda}
    assert rows["torch-best-fp16-graphs"].cuda_graphs and rows["torch-best-fp16-compiled"].compile_mode == "default"
    single = plan_rows("torch", "fp16", best_precision="fp16", device="cuda", cuda_graphs=True)
    assert [(r.key, r.cuda_graphs) for r in single] == [("torch-fp16-graphs", True)]
    compiled = plan_rows("torch", "fp16", best_precision="fp16", compile_mode="max-autotune-no-cudagraphs")
    assert compiled[0].key == "torch-fp16-compiled" and "torch.compile" in compiled[0].title


def test_bench_settings_check_the_options() -> None:
    BenchSettings(backend="torch", cuda_graphs=True).validate()  # the device is checked later, once resolved
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: only the torch and tensorrt"):
        BenchSettings(backend="onnxruntime", cuda_graphs=True).validate()
    with pytest.raises(SRDeployError, match=r"^--compile: only the torch backend"):
        BenchSettings(backend="tensorrt", compile_mode="default").validate()
    with pytest.raises(SRDeployError, match=r"^--compile 'x'"):
        BenchSettings(compile_mode="x").validate()
    assert BenchSettings(compile_mode="default").to_dict()["compile"] == "default"


def test_device_checks_need_the_resolved_device() -> None:
    s = BenchSettings(device="cuda")
    with pytest.raises(MissingDependencyError, match=r"^--device cuda: no CUDA GPU is visible"):
        check_device_options(s, "cuda", gpu=False)
    check_device_options(s, "cuda", gpu=True)
    graphs = BenchSettings(cuda_graphs=True)
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: CUDA graphs need a CUDA device.*cpu"):
        check_device_options(graphs, "cpu", gpu=False)
    check_device_options(graphs, "cuda:0", gpu=True)
    with pytest.raises(SRDeployError, match=r"^--device 'gpu'"):
        check_device_options(BenchSettings(device="gpu"), "gpu", gpu=True)


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("srdeploy: error:") and "\n" not in err, err
    for n in needles:
        assert n in err, err
    return err


@NO_GPU
@pytest.mark.parametrize("backend", ["torch", "auto", "all", "tensorrt"])
def test_bench_device_cuda_without_a_gpu_is_one_line(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--synthetic", "4x4", "--count", "1", "--device", "cuda", "--backend", backend]
    assert cli_main(argv) == 2
    if backend == "tensorrt":
        _one_line_error(capsys)  # TensorRT's own absence may be said first
    else:
        _one_line_error(capsys, "--device cuda", "no CUDA GPU")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--cuda-graphs", "--device", "cpu"], ("--cuda-graphs", "CUDA device")),
        (["--compile", "fast"], ("--compile 'fast'",)),
        (["--compile", "default", "--backend", "onnxruntime"], ("--compile", "only the torch backend")),
        (["--cuda-graphs", "--compile", "default", "--device", "cpu"], ("--cuda-graphs with --compile",)),
    ],
)
def test_bench_option_mistakes_are_one_line(
    args: list[str], needles: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["bench", "--synthetic", "4x4", "--count", "1", *args]) == 2
    _one_line_error(capsys, *needles)


# ----------------------------------------------------------------------------------------------- gpu_check
def test_gpu_check_budget_and_order(gpu_check: ModuleType) -> None:
    g = gpu_check
    assert g.budget_refusal(10.0, 420.0, 100.0) is None
    why = g.budget_refusal(400.0, 420.0, 30.0)
    assert why is not None and "400 of 420 s" in why and "30 s" in why
    assert g.estimate_s("compile", {}) == g.FIRST_ESTIMATE_S["compile"]
    assert g.estimate_s("compile", {"compile": 12.0}) == 12.0
    jobs = [g.ArchJob("ntire:team26", "imdn", None, ""), g.ArchJob("ntire:rfdn", "rfdn", None, "")]
    tasks = g.order_tasks(jobs, [*g.TORCH_PATHS, *g.OTHER_PATHS])
    assert (tasks[0].job, tasks[0].path.key) == (0, "fp32-eager") and tasks[1].what == "peaks"
    keys = [(t.job, t.path.key) for t in tasks[2:]]
    assert len(keys) == len(set(keys)) == 2 * 9 - 1  # every path of every network once, fp32-eager of #0 already
    assert keys[-2:] == [(0, "fp16-compiled"), (1, "fp16-compiled")]  # compiling is last: the budget cuts it first
    assert keys.index((1, "fp16-graphs")) < keys.index((0, "tensorrt-fp32"))


def test_gpu_check_gates_follow_the_cpu_rules(gpu_check: ModuleType) -> None:
    g = gpu_check
    hr = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ref = [np.random.default_rng(1).random((1, 3, 16, 16)).astype(np.float32)]
    same = g.correctness("fp32", ref, ref, [hr])
    assert same.passed and same.max_abs == 0.0 and math.isinf(same.psnr_vs_cpu_db) and same.y_drop_db == 0.0
    off = [ref[0] + 2e-4]
    assert not g.correctness("fp32", off, ref, [hr]).passed  # the ONNX export's fp32 gate: 1e-4
    assert g.correctness("fp32", off, ref, [hr], tf32=True).passed  # TF32 is held to the fp16 gates
    names = [x.name for x in g.correctness("fp16", off, ref, [hr]).gates]
    assert names == ["finite outputs", "PSNR vs CPU fp32 (dB)", "mean Y-PSNR drop (dB)"]
    nan = [np.where(np.arange(ref[0].size).reshape(ref[0].shape) == 0, np.nan, ref[0]).astype(np.float32)]
    bad = g.correctness("bf16", nan, ref, [None])
    assert not bad.finite and not bad.passed and bad.failures()[0].startswith("finite outputs 0")
    bf16 = g.correctness("bf16", off, ref, [None])
    assert [x.name for x in bf16.gates] == ["finite outputs", "PSNR vs CPU fp32 (dB)"]  # no HR: output PSNR
    with pytest.raises(ValueError):
        g.correctness("fp32", [], [], [])


def _result(g: ModuleType, key: str, mean_ms: float, passed: bool = True, arch: str = "ntire:team26") -> Any:
    path = next(p for p in g.TORCH_PATHS if p.key == key)
    row = summarize_row(
        RowPlan(key, key, "torch", path.precision),
        [ImageResult("a", (4, 4), (16, 16), mean_ms, mean_ms, [mean_ms], [mean_ms])],
        backend_info={},
        timing={},
    )
    check = g.Correctness(1, True, 0.0, math.inf, None, None, None, None)
    check.gates = [g.Gate("x", 1.0, 0.0, ">=", passed)]
    return g.PathResult(arch, path, "ok", row=row, check=check)


def test_gpu_check_goals(gpu_check: ModuleType) -> None:
    g = gpu_check
    results = [_result(g, "fp32-eager", 6.0), _result(g, "fp16-graphs", 1.5), _result(g, "fp16", 1.0, passed=False)]
    goals = g.evaluate_goals(results, gpu=True)
    assert [x.status for x in goals] == ["PASS", "PASS", "FAIL"]
    assert goals[0].value.startswith("4.00x") and goals[1].value.startswith("1.500 ms (fp16-graphs)")
    assert "ntire:team26 fp16" in goals[2].value
    slow = g.evaluate_goals([_result(g, "fp32-eager", 6.0), _result(g, "fp16-graphs", 2.5)], gpu=True)
    assert [x.status for x in slow] == ["FAIL", "FAIL", "PASS"]
    off_gpu = g.evaluate_goals(results, gpu=False)
    assert [x.status for x in off_gpu][:2] == ["not measured", "not measured"]
    assert [x.status for x in g.evaluate_goals([], gpu=True)] == ["not measured"] * 3


def test_gpu_check_figures(gpu_check: ModuleType, tiny: IMDN) -> None:
    g = gpu_check
    cost = g.model_cost(tiny, (16, 16))
    assert cost.flop_for(32, 16) == pytest.approx(2 * 2.0 * cost.flops)
    assert cost.bytes_for(16, 16, 2) == 2 * (cost.conv_io_elems + cost.weight_elems)
    assert cost.weight_elems == sum(m.weight.numel() for m in tiny.modules() if isinstance(m, nn.Conv2d))
    assert g.slug("NVIDIA H200") == "gpu_nvidia_h200" and g.slug("NVIDIA GeForce RTX 3090 (x)") == (
        "gpu_nvidia_geforce_rtx_3090_x"
    )
    avail = {"tensorrt": "TensorRT is not installed", "pycuda": None, "onnxruntime-gpu": "no NVIDIA GPU is visible"}
    job = g.ArchJob("ntire:fmen", "fmen", None, "", fp16_refusal="--precision fp16: refused for fmen")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    trt = next(p for p in g.OTHER_PATHS if p.key == "tensorrt-fp16")
    ort = next(p for p in g.OTHER_PATHS if p.key == "ort-cuda-fp32")
    fp16 = next(p for p in g.TORCH_PATHS if p.key == "fp16")
    assert g.path_skip_reason(trt, cuda, avail, job) == "tensorrt: TensorRT is not installed"
    assert g.path_skip_reason(ort, cuda, avail, job) == "onnxruntime-gpu: no NVIDIA GPU is visible"
    assert g.path_skip_reason(fp16, cuda, avail, job) == "--precision fp16: refused for fmen"
    assert g.path_skip_reason(fp16, cpu, avail, job) == "needs CUDA (this run is on cpu)"
    assert g.path_skip_reason(g.FP32_EAGER, cpu, avail, job) is None


def test_gpu_check_finds_the_published_weights(gpu_check: ModuleType, tmp_path: Path) -> None:
    from sr_deploy.archs.registry import published_weights

    jobs = gpu_check.published_jobs(tmp_path)
    assert [j.name for j in jobs] == list(published_weights())
    assert jobs[0].name == "ntire:team26"  # the goals' network comes first
    assert all(j.weights is None and j.skip_reason and str(tmp_path) in j.skip_reason for j in jobs)
    shared = ROOT.parent / "shared" / "data" / "weights"
    if shared.is_dir():
        found = gpu_check.published_jobs(shared)
        assert all(j.weights is not None for j in found), [j.skip_reason for j in found]
        team26 = gpu_check.load_job(found[0])
        assert team26.model is not None and team26.skip_reason is None and team26.model.spec.name == "imdn-b7"


def test_gpu_check_refuses_a_pointless_run(gpu_check: ModuleType, tmp_path: Path) -> None:
    s = gpu_check.parse_args(["--device", "cpu", "--data", str(tmp_path / "none"), "--out", str(tmp_path)])
    with pytest.raises(SRDeployError, match=r"^missing --div2k .*--set5 .*--weights-dir"):
        gpu_check.check_settings(s)
    with pytest.raises(SRDeployError, match=r"^--paths: unknown fp8"):
        gpu_check.check_settings(gpu_check.parse_args(["--dry-run", "--paths", "fp8", "--out", str(tmp_path)]))
    assert gpu_check.parse_args(["--dry-run"]).out != gpu_check.RESULTS  # a dry run never writes results
    if not torch.cuda.is_available():
        with pytest.raises(SRDeployError, match=r"^--device cuda: no CUDA GPU"):
            gpu_check.check_settings(gpu_check.parse_args(["--out", str(tmp_path)]))


def test_gpu_check_dry_run_end_to_end(
    gpu_check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the dry run's single thread is put back
    md = (tmp_path / "gpu_dry_run_cpu.md").read_text()
    report = json.loads((tmp_path / "gpu_dry_run_cpu.json").read_text())
    assert "Dry run on the CPU" in md and "## Goals" in md and "## Definitions" in md
    assert report["dry_run"] is True and report["peaks"]["bf16_matmul_tflops"] > 0
    by_key = {r["path"]["key"]: r for r in report["results"]}
    assert by_key["fp32-eager"]["status"] == "ok" and by_key["fp32-eager"]["correctness"]["passed"] is True
    assert by_key["fp32-eager"]["challenge"]["images"] == 3
    assert by_key["fp16-graphs"]["status"] == "skipped" and "needs CUDA" in by_key["fp16-graphs"]["reason"]
    assert by_key["tensorrt-fp16"]["status"] == "skipped"
    assert [goal["status"] for goal in report["goals"]] == ["not measured", "not measured", "PASS"]
    out = capsys.readouterr().out
    assert "wrote" in out and "PASS: PSNR rules" in out


def test_gpu_check_deadline_stops_a_task_that_overruns(gpu_check: ModuleType) -> None:
    import time

    with pytest.raises(gpu_check.JobTimeout, match="time budget"), gpu_check.deadline(0.05):
        time.sleep(2.0)
    with gpu_check.deadline(5.0):
        pass  # disarmed on exit: nothing fires later
    time.sleep(0.01)
