"""The backend registry: a backend is a plug-in. A fake one, passed in as a registry (nothing global is changed),
shows up in the kinds, the availability, make_backend, bench's rows and run, the report schema and the help."""

from __future__ import annotations

from collections.abc import Sequence

import jsonschema
import numpy as np
import pytest

from sr_deploy.archs.imdn import IMDN
from sr_deploy.bench.inputs import synthetic_images
from sr_deploy.bench.models import BenchModels
from sr_deploy.bench.report import report_schema
from sr_deploy.bench.rows import RowContext, RowPlan, backend_choices, plan_rows
from sr_deploy.bench.run import BenchSettings, run_bench
from sr_deploy.errors import SRDeployError
from sr_deploy.precision import PRECISIONS
from sr_deploy.runtime import factory
from sr_deploy.runtime.base import Backend, BackendInfo, Shape4, TimedOutput
from sr_deploy.runtime.registry import BackendDescriptor, BackendRequest, Registry, default_registry

ENV = {
    "cpu_model": "test cpu", "cpu_count": 2, "torch_threads": 2, "load_average": [0.0, 0.0, 0.0],
    "loaded_machine": False, "gpu": None, "versions": {"torch": "x", "onnxruntime": None, "tensorrt": None},
    "cudnn_benchmark": False,
}  # fmt: skip


class EchoBackend(Backend):
    """Nearest-neighbour x4 in a fixed time."""

    def __init__(self, precision: str) -> None:
        self._info = BackendInfo(name="echo", device="cpu", precision=precision)

    @property
    def info(self) -> BackendInfo:
        return self._info

    def prepare(self, max_shape: Shape4) -> None:
        pass

    def run_timed(self, lr: np.ndarray) -> TimedOutput:
        return TimedOutput(output=lr.repeat(4, axis=2).repeat(4, axis=3), forward_ms=2.0, end_to_end_ms=3.0)


def _echo(made: list[BackendRequest], reason: str | None = None) -> BackendDescriptor:
    def make(request: BackendRequest) -> Backend:
        made.append(request)
        return EchoBackend(request.precision)

    def rows(ctx: RowContext) -> Sequence[RowPlan]:
        return [RowPlan("echo-fp32", "Echo fp32", "echo", "fp32")]

    return BackendDescriptor(
        name="echo",
        summary="a test backend",
        precisions=("fp32", "bf16"),
        devices=("cpu",),
        available=lambda: reason,
        make=make,
        bench_rows=rows,
    )


def test_a_registered_backend_is_usable_everywhere(tiny_model: IMDN) -> None:
    made: list[BackendRequest] = []
    reg = Registry((_echo(made),))
    assert reg.kinds == ("auto", "echo") and "echo" in backend_choices(reg)
    assert factory.available_backends(reg) == {"echo": None}
    assert "echo (fp32/bf16)" in reg.backend_help() and "int8" not in reg.precision_help("(graph)")

    backend = factory.make_backend("echo", tiny_model, precision="bf16", device="cpu", registry=reg)
    assert backend.info.name == "echo" and made[-1].precision == "bf16" and made[-1].resolved_device == "cpu"
    # What the descriptor declares is checked for it, one line naming the flag.
    with pytest.raises(SRDeployError, match=r"^--precision fp16: the echo backend runs fp32, bf16$"):
        factory.make_backend("echo", tiny_model, precision="fp16", device="cpu", registry=reg)
    with pytest.raises(SRDeployError, match=r"^--device cuda: the echo backend runs on the CPU"):
        factory.make_backend("echo", tiny_model, device="cuda", registry=reg)
    with pytest.raises(SRDeployError, match=r"^--cuda-graphs: no backend uses CUDA graphs \(--backend echo\)$"):
        factory.make_backend("echo", tiny_model, device="cpu", cuda_graphs=True, registry=reg)

    assert [r.key for r in plan_rows("all", "fp32", best_precision="fp32", registry=reg)] == ["echo-fp32"]
    (single,) = plan_rows("echo", "bf16", best_precision="fp32", registry=reg)
    assert (single.kind, single.precision) == ("echo", "bf16")

    schema = report_schema(reg)
    assert "echo" in schema["properties"]["settings"]["properties"]["backend"]["enum"]
    assert schema["$defs"]["row"]["properties"]["kind"]["enum"] == ["auto", "echo"]
    assert "echo" not in report_schema()["$defs"]["row"]["properties"]["kind"]["enum"]
    assert "echo" not in default_registry().names  # nothing global was changed


def test_bench_runs_a_registered_backend_through_the_default_factory(tiny_model: IMDN) -> None:
    made: list[BackendRequest] = []
    reg = Registry((_echo(made),))
    models = BenchModels(
        deploy=tiny_model, clb=None, arch="tiny", weights_source="test", weights_sha256="", random_weights=True,
        params=1,
    )  # fmt: skip
    report = run_bench(
        synthetic_images(4, 6, 2, seed=0),
        models,
        BenchSettings(backend="all", warmup=0, repeat=1),
        inputs={"kind": "synthetic", "count": 2, "description": "two images"},
        environment=ENV,
        registry=reg,
    )
    assert [(r.plan.key, r.status) for r in report.rows] == [("echo-fp32", "ok")]
    assert len(made) == 1 and report.rows[0].challenge is not None and report.rows[0].challenge.mean_ms == 2.0
    jsonschema.validate(report.to_dict(), report_schema(reg))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report.to_dict(), report_schema())  # srdeploy's own schema knows no "echo"

    missing = Registry((_echo([], reason="echo is not installed"),))
    skipped = run_bench(
        synthetic_images(4, 6, 1, seed=0),
        models,
        BenchSettings(backend="all", warmup=0, repeat=1),
        inputs={"kind": "synthetic", "count": 1, "description": "one image"},
        environment=ENV,
        registry=missing,
    )
    assert [(r.status, r.reason) for r in skipped.rows] == [("skipped", "echo is not installed")]


def test_the_default_registry_derives_kinds_schema_and_precisions() -> None:
    reg = default_registry()
    assert reg.kinds == ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
    assert reg.precisions == PRECISIONS
    row = report_schema()["$defs"]["row"]["properties"]
    assert row["kind"]["enum"] == list(reg.kinds) and row["precision"]["enum"] == list(PRECISIONS)
    # Every row a backend contributes is one it can run.
    ctx = RowContext(best_precision="bf16", device="cuda:0", int8_graph="m.int8.onnx")
    for d in reg:
        assert all(r.kind == d.name and r.precision in d.precisions for r in d.bench_rows(ctx)), d.name


def test_registry_refuses_reserved_and_duplicate_names() -> None:
    echo = _echo([])
    with pytest.raises(ValueError, match="unique"):
        Registry((echo, echo))
    for name in ("auto", "all", ""):
        with pytest.raises(ValueError, match="reserved"):
            BackendDescriptor(name, "x", ("fp32",), ("cpu",), lambda: None, echo.make, echo.bench_rows)
    with pytest.raises(ValueError, match="precisions"):
        BackendDescriptor("x", "x", (), ("cpu",), lambda: None, echo.make, echo.bench_rows)
