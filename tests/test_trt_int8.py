"""TensorRT int8 (issue 13, item 4): the explicit-precision plan on 10.x and 11.x, the inspector's INT8 audit, the gate.

Pure logic and fixtures only: TensorRT is not needed (the thin layer is type-checked by tools/typecheck_trt.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from sr_deploy.errors import SRDeployError
from sr_deploy.trt_plan.engine_key import engine_filename, model_name_from_onnx
from sr_deploy.trt_plan.gate import GateThresholds, accuracy_gate
from sr_deploy.trt_plan.inspector import (
    InspectorReport,
    PrecisionAudit,
    audit_int8,
    audit_precision,
    parse_inspector_json,
)
from sr_deploy.trt_plan.profiles import ProfilePlan
from sr_deploy.trt_plan.versions import expand_precisions, parse_trt_version, plan_precision

if TYPE_CHECKING:
    from sr_deploy.export.tensorrt import EngineUnderTest
    from sr_deploy.precision import Precision

FIXTURES = Path(__file__).parent / "fixtures" / "trt"
V10 = parse_trt_version("10.13.0.35")
V11 = parse_trt_version("11.4.0")


def _no_engine(blob: bytes, profiles: ProfilePlan, precision: Precision, *, source: str) -> EngineUnderTest:
    raise AssertionError("an engine was opened before the request was checked")


def _report(name: str) -> InspectorReport:
    return parse_inspector_json((FIXTURES / name).read_text())


# ---------------------------------------------------------------------------------------------- the plan
def test_int8_on_11_is_strongly_typed_from_the_qdq_graph_with_no_flag_at_all() -> None:
    plan = plan_precision("int8", V11)
    assert plan.route == "strongly-typed" and plan.strongly_typed
    assert plan.network_flags == ()  # 11.x: strong typing is always on; STRONGLY_TYPED would be ignored
    assert not plan.set_int8_flag and not plan.set_fp16_flag
    assert plan.onnx_graph == "int8" and plan.clear_tf32_flag
    with pytest.raises(SRDeployError, match=r"removed BuilderFlag.INT8 .*--route strongly-typed"):
        plan_precision("int8", V11, "builder-flag")


def test_int8_on_10_defaults_to_strong_typing_and_keeps_the_documented_flag_route() -> None:
    plan = plan_precision("int8", V10)
    assert plan.network_flags == ("STRONGLY_TYPED",) and not plan.set_int8_flag and plan.strongly_typed
    legacy = plan_precision("int8", V10, "builder-flag")
    assert legacy.set_int8_flag and legacy.network_flags == () and not legacy.strongly_typed
    assert legacy.onnx_graph == "int8" and not legacy.set_fp16_flag
    assert legacy.to_dict()["set_int8_flag"] is True
    with pytest.raises(SRDeployError, match="--route 'plain'"):
        plan_precision("int8", V10, "plain")


def test_int8_is_a_precision_of_its_own_everywhere_it_is_named() -> None:
    assert expand_precisions("int8") == ("int8",)
    assert expand_precisions("both") == ("fp32", "fp16")  # "both" stays the float pair
    with pytest.raises(SRDeployError, match=r"--precision 'int4': expected one of fp32, fp16, int8, both"):
        expand_precisions("int4")
    # A shared precision word TensorRT does not build here is refused by the plan, naming the flag.
    with pytest.raises(SRDeployError, match=r"--precision 'bf16': expected one of fp32, fp16, int8$"):
        plan_precision("bf16", V11)
    assert model_name_from_onnx(Path("team26.int8.onnx")) == "team26"
    assert "-int8-" in engine_filename("team26", "int8", "NVIDIA H200", V11)


# ---------------------------------------------------------------------------------------------- the audit
@pytest.mark.parametrize("layout", ["10x", "11x"])
def test_the_audit_counts_int8_convolutions_in_both_layouts(layout: str) -> None:
    report = _report(f"inspector_{layout}_int8.json")
    assert report.layout == layout.replace("x", ".x")
    assert len(report.conv_layers) == 6 and report.int8_conv_layers == 5
    audit = audit_int8(report, expected_int8_convs=5)
    assert audit.ok and audit.actual == "mixed" and not audit.warnings
    assert "5 of 6 convolutions on int8 data (1 in floating point)" in audit.message
    assert audit.io_dtypes == {"lr": "fp32", "sr": "fp32"}
    assert audit_precision(report, "int8") == audit_int8(report)


@pytest.mark.parametrize("name", ["inspector_10x_fp16.json", "inspector_11x_fp16.json", "inspector_11x_fp32.json"])
def test_an_int8_engine_that_is_not_is_refused(name: str) -> None:
    audit = audit_int8(_report(name))
    assert not audit.ok and audit.int8_conv_layers == 0
    assert "none of the" in audit.message and "floating-point engine" in audit.message
    assert audit.actual in ("fp16", "fp32")


def test_fewer_int8_convolutions_than_the_graph_quantizes_is_a_warning() -> None:
    audit = audit_int8(_report("inspector_11x_int8.json"), expected_int8_convs=37)
    assert audit.ok and audit.warnings == ("5 convolutions in int8, the Q/DQ graph quantizes 37",)


def test_a_float_engine_built_from_the_int8_graph_is_refused() -> None:
    audit = audit_precision(_report("inspector_11x_int8.json"), "fp32")
    assert not audit.ok and "int8 Q/DQ graph given" in audit.message


def test_an_int8_audit_survives_the_sidecar_round_trip() -> None:
    audit = audit_int8(_report("inspector_10x_int8.json"))
    again = PrecisionAudit.from_dict(json.loads(json.dumps(audit.to_dict())))
    assert again == audit and again.int8_conv_layers == 5 and again.conv_layers == 6


# ---------------------------------------------------------------------------------------------- the gate
def test_the_int8_gate_holds_the_engine_to_onnx_runtime_fp32() -> None:
    rng = np.random.default_rng(0)
    ref = [rng.random((1, 3, 16, 16), dtype=np.float32)]
    close = [ref[0] + np.float32(0.01)]  # 40 dB
    far = [ref[0] + np.float32(0.05)]  # 26 dB
    assert accuracy_gate(ref, close, "int8").passed
    failed = accuracy_gate(ref, far, "int8")
    assert not failed.passed and "(int8)" in failed.reasons[0] and "< 32 dB" in failed.reasons[0]
    thresholds = GateThresholds(int8_min_psnr_db=20.0)
    assert GateThresholds.from_dict(thresholds.to_dict()) == thresholds
    assert accuracy_gate(ref, far, "int8", thresholds).passed


# ---------------------------------------------------------------------------------------------- the graphs
def test_the_builder_is_given_the_int8_graph_and_the_fp32_reference(tiny_onnx: dict[str, Path]) -> None:
    from sr_deploy.export.tensorrt import ExportTrtRequest, OnnxGraphs, export_trt, onnx_graph_precision

    with pytest.raises(SRDeployError, match="needs the int8 Q/DQ graph: --onnx-int8"):
        OnnxGraphs(fp32=tiny_onnx["fp32"]).for_plan(plan_precision("int8", V11))
    assert onnx_graph_precision(tiny_onnx["fp32"]) == "fp32"
    # Flag mistakes come before TensorRT is looked for (this machine has none).
    with pytest.raises(SRDeployError, match="--precision int8 needs --onnx-int8"):
        export_trt(ExportTrtRequest(onnx=tiny_onnx["fp32"], precisions=("int8",)), _no_engine)
    with pytest.raises(SRDeployError, match="is an fp32 graph"):
        export_trt(
            ExportTrtRequest(onnx=tiny_onnx["fp32"], precisions=("int8",), onnx_int8=tiny_onnx["fp32"]), _no_engine
        )
    with pytest.raises(SRDeployError, match="--onnx-int8 goes with --precision int8"):
        export_trt(
            ExportTrtRequest(onnx=tiny_onnx["fp32"], precisions=("fp32",), onnx_int8=tiny_onnx["fp32"]), _no_engine
        )
