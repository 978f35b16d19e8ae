"""sr_deploy.trt_plan: every TensorRT decision, tested without TensorRT."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sr_deploy.compare import compare_outputs, psnr_db
from sr_deploy.errors import SRDeployError
from sr_deploy.trt_plan.engine_key import (
    EngineKey,
    GpuInfo,
    engine_filename,
    explain_key_mismatch,
    explain_runtime_mismatch,
    model_name_from_onnx,
    sidecar_path,
    timing_cache_filename,
)
from sr_deploy.trt_plan.gate import GateReport, GateThresholds, accuracy_gate, gate_inputs
from sr_deploy.trt_plan.inspector import InspectorReport, audit_precision, normalize_dtype, parse_inspector_json
from sr_deploy.trt_plan.profiles import (
    ProfilePlan,
    ShapeProfile,
    check_profile_against_model,
    check_profiles_min_size,
    format_shape,
    image_sizes_in_folder,
    parse_shape,
    profile_from_flags,
    profiles_from_sizes,
)
from sr_deploy.trt_plan.sidecar import EngineSidecar, cache_decision, load_sidecar
from sr_deploy.trt_plan.versions import TrtVersion, expand_precisions, parse_trt_version, plan_precision
from sr_deploy.trt_plan.workspace import suggest_workspace_gb

FIXTURES = Path(__file__).parent / "fixtures" / "trt"
V10 = TrtVersion(10, 13, 0, 35)
V11 = TrtVersion(11, 4, 0, 0)


# ----------------------------------------------------------------------------------------------------
# shapes and profiles
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shape"),
    [("1x3x64x64", (1, 3, 64, 64)), (" 1X3x339x510 ", (1, 3, 339, 510)), ("2x1x7x9", (2, 1, 7, 9))],
)
def test_parse_shape_accepts_nchw(text: str, shape: tuple[int, int, int, int]) -> None:
    assert parse_shape(text) == shape
    assert parse_shape(format_shape(shape)) == shape


@pytest.mark.parametrize("text", ["1x3x64", "1x3x64x64x1", "1x3x-4x64", "1x3x0x64", "axbxcxd", "", "1,3,64,64"])
def test_parse_shape_rejects_and_names_the_flag(text: str) -> None:
    with pytest.raises(SRDeployError, match="--min"):
        parse_shape(text, "--min")


def test_profile_from_flags_orders_and_static() -> None:
    p = profile_from_flags("1x3x64x64", "1x3x339x510", "1x3x510x510")
    assert (p.min, p.opt, p.max) == ((1, 3, 64, 64), (1, 3, 339, 510), (1, 3, 510, 510))
    static = profile_from_flags(None, "1x3x100x120", None)
    assert static.min == static.opt == static.max == (1, 3, 100, 120)
    with pytest.raises(SRDeployError, match="--opt is required"):
        profile_from_flags("1x3x64x64", None, "1x3x510x510")


@pytest.mark.parametrize(
    ("lo", "opt", "hi", "culprit"),
    [
        ("1x3x128x64", "1x3x100x100", "1x3x510x510", "--min .* exceeds --opt .* H"),
        ("1x3x64x64", "1x3x600x100", "1x3x510x510", "--opt .* exceeds --max .* H"),
        ("1x3x64x64", "1x3x100x600", "1x3x510x510", "dimension.*W"),
        ("1x3x64x64", "1x1x100x100", "1x1x510x510", "--min .* exceeds --opt .* C"),
    ],
)
def test_profile_min_opt_max_order_is_enforced(lo: str, opt: str, hi: str, culprit: str) -> None:
    with pytest.raises(SRDeployError, match=culprit):
        profile_from_flags(lo, opt, hi)


def test_profile_batch_and_channels_must_agree() -> None:
    with pytest.raises(SRDeployError, match="batch and channels"):
        ShapeProfile((1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 64, 64))


def test_profile_checked_against_fixed_onnx_dims() -> None:
    p = profile_from_flags("1x3x64x64", "1x3x100x100", "1x3x510x510")
    check_profile_against_model(p, [1, 3, "height", None])  # dynamic H/W: fine
    with pytest.raises(SRDeployError, match="fixes dimension C to 1"):
        check_profile_against_model(p, [1, 1, "h", "w"])
    with pytest.raises(SRDeployError, match=r"--min .* fixes dimension H to 100"):
        check_profile_against_model(p, [1, 3, 100, 100])


def test_single_orientation_gives_one_profile_with_most_frequent_opt() -> None:
    sizes = [(339, 510)] * 5 + [(300, 510), (255, 480)]
    plan = profiles_from_sizes(sizes)
    assert len(plan.profiles) == 1
    p = plan.profiles[0]
    # both orientations: square box from the smallest to the largest side
    assert p.min == (1, 3, 255, 255) and p.max == (1, 3, 510, 510)
    assert p.opt == (1, 3, 339, 510)
    assert all(plan.covers((1, 3, h, w)) and plan.covers((1, 3, w, h)) for h, w in sizes)


def test_mixed_orientations_split_when_it_covers_better() -> None:
    # DIV2K-like: landscape 339..351 x 510, portrait 510 x 339..351: the square box is mostly wasted.
    sizes = [(339, 510)] * 6 + [(351, 510)] * 2 + [(510, 339)] * 3 + [(510, 351)]
    plan = profiles_from_sizes(sizes)
    names = [p.name for p in plan.profiles]
    assert names == ["landscape", "portrait"]
    land, port = plan.profiles
    assert land.min == (1, 3, 339, 510) and land.max == (1, 3, 351, 510) and land.opt == (1, 3, 339, 510)
    assert port.min == (1, 3, 510, 339) and port.max == (1, 3, 510, 351) and port.opt == (1, 3, 510, 339)
    assert all(plan.covers((1, 3, h, w)) for h, w in sizes)
    assert plan.profile_for((1, 3, 510, 340)) == 1
    assert plan.max_shape == (1, 3, 510, 510)
    single = profiles_from_sizes(sizes, split=False)
    assert len(single.profiles) == 1 and single.profiles[0].box_area > sum(p.box_area for p in plan.profiles)


def test_mixed_orientations_stay_single_when_split_does_not_help() -> None:
    # Sizes spread over the whole square: two orientation boxes cover about as much as the single one.
    sizes = [(64, 500), (500, 64), (64, 64), (500, 499), (499, 500)]
    plan = profiles_from_sizes(sizes)
    assert len(plan.profiles) == 1
    with pytest.raises(SRDeployError, match="one orientation"):
        profiles_from_sizes([(10, 20), (11, 20)], split=True)


def test_profile_for_rejects_uncovered_shape() -> None:
    plan = profiles_from_sizes([(100, 200)])
    with pytest.raises(SRDeployError, match="outside every optimization profile"):
        plan.profile_for((1, 3, 300, 300))


def _write_png(path: Path, h: int, w: int) -> None:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data)


def test_image_sizes_from_folder_read_png_headers(tmp_path: Path) -> None:
    _write_png(tmp_path / "a.png", 339, 510)
    _write_png(tmp_path / "b.png", 510, 339)
    (tmp_path / "notes.txt").write_text("not an image")
    assert sorted(image_sizes_in_folder(tmp_path)) == [(339, 510), (510, 339)]
    with pytest.raises(SRDeployError, match="no images"):
        image_sizes_in_folder(_empty(tmp_path))
    with pytest.raises(SRDeployError, match="not a folder"):
        image_sizes_in_folder(tmp_path / "a.png")


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


# ----------------------------------------------------------------------------------------------------
# versions and precision plans
# ----------------------------------------------------------------------------------------------------


def test_parse_trt_version() -> None:
    assert parse_trt_version("10.13.0.35") == TrtVersion(10, 13, 0, 35)
    assert parse_trt_version("11.4.0.post1") == TrtVersion(11, 4, 0, 0)
    assert str(parse_trt_version("11.4")) == "11.4.0"
    assert parse_trt_version("10.16.1") < parse_trt_version("11.0.0")
    with pytest.raises(SRDeployError, match="TensorRT 10 or 11"):
        parse_trt_version("8.6.1")
    with pytest.raises(SRDeployError, match=r"MAJOR.MINOR"):
        parse_trt_version("latest")


@pytest.mark.parametrize("version", [V10, V11])
def test_fp32_plan_is_plain_fp32_graph_without_tf32(version: TrtVersion) -> None:
    plan = plan_precision("fp32", version)
    assert plan.route == "plain" and plan.onnx_graph == "fp32"
    assert not plan.set_fp16_flag and plan.clear_tf32_flag
    assert "EXPLICIT_BATCH" not in plan.network_flags


def test_fp16_on_11_is_strongly_typed_fp16_graph_never_the_flag() -> None:
    plan = plan_precision("fp16", V11)
    assert plan.route == "strongly-typed" and plan.onnx_graph == "fp16" and plan.strongly_typed
    assert not plan.set_fp16_flag
    assert "EXPLICIT_BATCH" not in plan.network_flags
    with pytest.raises(SRDeployError, match=r"removed BuilderFlag.FP16"):
        plan_precision("fp16", V11, route="builder-flag")


def test_fp16_on_10_defaults_to_strongly_typed_and_offers_the_flag() -> None:
    plan = plan_precision("fp16", V10)
    assert plan.network_flags == ("STRONGLY_TYPED",) and plan.onnx_graph == "fp16" and not plan.set_fp16_flag
    alt = plan_precision("fp16", V10, route="builder-flag")
    assert alt.set_fp16_flag and alt.onnx_graph == "fp32" and not alt.strongly_typed
    assert alt.network_flags == ()


def test_plan_rejects_unknown_precision_and_route() -> None:
    with pytest.raises(SRDeployError, match="--precision 'int4'"):  # int8 is a plan of its own (test_trt_int8.py)
        plan_precision("int4", V10)
    with pytest.raises(SRDeployError, match="--route"):
        plan_precision("fp16", V10, route="magic")
    with pytest.raises(SRDeployError, match="fp32 engines have one route"):
        plan_precision("fp32", V10, route="builder-flag")
    assert expand_precisions("both") == ("fp32", "fp16")
    with pytest.raises(SRDeployError, match="--precision"):
        expand_precisions("fp64")


# ----------------------------------------------------------------------------------------------------
# cache key, names, sidecar
# ----------------------------------------------------------------------------------------------------


def _key(**changes: object) -> EngineKey:
    base = EngineKey(
        onnx_sha256="a" * 64,
        precision="fp16",
        route="strongly-typed",
        profiles=(ShapeProfile((1, 3, 64, 64), (1, 3, 339, 510), (1, 3, 510, 510)),),
        trt_version="10.13.0.35",
        gpu_name="NVIDIA L4",
        compute_capability="8.9",
        opt_level=3,
        workspace_bytes=4 << 30,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_key_digest_is_stable_and_sensitive_to_every_field() -> None:
    k = _key()
    assert k.digest() == _key().digest() == EngineKey.from_dict(json.loads(json.dumps(k.to_dict()))).digest()
    variants = [
        _key(onnx_sha256="b" * 64),
        _key(precision="fp32", route="plain"),
        _key(route="builder-flag"),
        _key(profiles=(ShapeProfile((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 510, 510)),)),
        _key(trt_version="11.4.0.0"),
        _key(gpu_name="NVIDIA H100 80GB HBM3"),
        _key(compute_capability="9.0"),
        _key(opt_level=5),
        _key(workspace_bytes=8 << 30),
    ]
    digests = {v.digest() for v in variants} | {k.digest()}
    assert len(digests) == len(variants) + 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"gpu_name": "NVIDIA A100", "compute_capability": "8.0"}, "another GPU"),
        ({"trt_version": "11.4.0.0"}, "another TensorRT"),
        ({"onnx_sha256": "c" * 64}, "the ONNX changed"),
        ({"opt_level": 5}, "optimization level"),
        ({"workspace_bytes": 1 << 30}, "workspace"),
        ({"profiles": (ShapeProfile((1, 3, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8)),)}, "profiles"),
    ],
)
def test_mismatch_says_why(change: dict[str, object], why: str) -> None:
    reasons = explain_key_mismatch(_key(), _key(**change))
    assert len(reasons) == 1 and why in reasons[0]
    assert explain_key_mismatch(_key(), _key()) == []


def test_runtime_mismatch_only_looks_at_machine() -> None:
    k = _key()
    assert explain_runtime_mismatch(k, "10.13.0.35", GpuInfo("NVIDIA L4", "8.9")) == []
    reasons = explain_runtime_mismatch(k, "11.4.0.0", GpuInfo("NVIDIA H100", "9.0"))
    assert any("another GPU" in r for r in reasons) and any("another TensorRT" in r for r in reasons)


def test_engine_and_cache_names() -> None:
    name = engine_filename("imdn-b7", "fp16", "NVIDIA GeForce RTX 4090", V10)
    assert name == "imdn-b7-fp16-nvidia-geforce-rtx-4090-trt10.13.0.engine"
    assert engine_filename("imdn-b7", "fp32", "NVIDIA L4", "11.4.0.2").endswith("-trt11.4.0.engine")
    assert sidecar_path(Path("e/x.engine")) == Path("e/x.json")
    assert model_name_from_onnx(Path("m/imdn-b7-fp16.onnx")) == "imdn-b7"
    assert model_name_from_onnx(Path("imdn_b8.onnx")) == "imdn_b8"
    a = timing_cache_filename("NVIDIA L4", "8.9", V10)
    b = timing_cache_filename("NVIDIA L4", "8.9", V11)
    assert a != b and "sm89" in a and "10.13.0.35" in a


def _sidecar(**changes: object) -> EngineSidecar:
    audit = audit_precision(parse_inspector_json((FIXTURES / "inspector_11x_fp16.json").read_text()), "fp16")
    gate = accuracy_gate([np.zeros((1, 3, 4, 4))], [np.zeros((1, 3, 4, 4))], "fp16")
    base = EngineSidecar(
        key=_key(),
        engine_file="imdn-b7-fp16-nvidia-l4-trt10.13.0.engine",
        engine_bytes=1234,
        engine_sha256="d" * 64,
        build_seconds=12.5,
        built_at="2026-11-24T08:00:00+00:00",
        plan=plan_precision("fp16", V10).to_dict(),
        audit=audit,
        gate=gate,
        io_names={"input": "input", "output": "output"},
        srdeploy_version="0.1.0",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_sidecar_round_trips_through_json() -> None:
    s = _sidecar()
    back = EngineSidecar.from_json(s.to_json())
    assert back == s
    assert json.loads(s.to_json())["gate"]["psnr_db"] is None  # identical outputs: JSON has no infinity
    assert math.isinf(back.gate.psnr_db if back.gate else 0.0)


def test_sidecar_detects_edits_and_garbage(tmp_path: Path) -> None:
    d = _sidecar().to_dict()
    d["key"]["gpu_name"] = "NVIDIA A100"
    with pytest.raises(SRDeployError, match="key_digest does not match"):
        EngineSidecar.from_dict(d)
    with pytest.raises(SRDeployError, match="not valid JSON"):
        EngineSidecar.from_json("{nope")
    d2 = _sidecar().to_dict()
    del d2["audit"]
    with pytest.raises(SRDeployError, match="missing or malformed"):
        EngineSidecar.from_dict(d2)


def test_load_sidecar_missing_is_one_line_error(tmp_path: Path) -> None:
    engine = tmp_path / "m-fp16-gpu-trt10.13.0.engine"
    engine.write_bytes(b"x")
    with pytest.raises(SRDeployError, match=r"sidecar .*missing"):
        load_sidecar(engine)
    sidecar_path(engine).write_text(_sidecar().to_json())
    assert load_sidecar(engine).key == _key()


def test_cache_decision() -> None:
    s = _sidecar()
    assert cache_decision(s, _key(), engine_exists=True) == (True, [])
    assert cache_decision(s, _key(), engine_exists=False)[0] is False
    assert cache_decision(None, _key(), engine_exists=True) == (False, ["cached engine has no sidecar"])
    reuse, why = cache_decision(s, _key(trt_version="11.4.0.0"), engine_exists=True)
    assert not reuse and "another TensorRT" in why[0]
    bad_gate = replace(s.gate, passed=False) if s.gate else None
    reuse, why = cache_decision(replace(s, gate=bad_gate), _key(), engine_exists=True)
    assert not reuse and "accuracy gate" in why[0]


# ----------------------------------------------------------------------------------------------------
# inspector JSON and audit
# ----------------------------------------------------------------------------------------------------


def _report(name: str) -> InspectorReport:
    return parse_inspector_json((FIXTURES / name).read_text())


@pytest.mark.parametrize(("text", "dtype"), [
    ("Row major linear FP32 format", "fp32"),
    ("Channel major FP16 format where channel % 8 == 0", "fp16"),
    ("Half", "fp16"), ("Float", "fp32"), ("BFloat16", "bf16"), ("DataType.HALF", "fp16"),
    ("Int8", "int8"), ("Row major linear (kLINEAR)", "unknown"),
])  # fmt: skip
def test_normalize_dtype(text: str, dtype: str) -> None:
    assert normalize_dtype(text) == dtype


@pytest.mark.parametrize("layout", ["10x", "11x"])
def test_fp16_engine_both_layouts(layout: str) -> None:
    r = _report(f"inspector_{layout}_fp16.json")
    assert r.layout == layout.replace("x", ".x")
    assert len(r.layers) == 7
    # 15 layer I/O tensors; only the engine's input and output (kept FP32) are not half
    assert r.fp16_tensor_fraction == pytest.approx(13 / 15)
    convs = [layer for layer in r.layers if layer.layer_type == "Convolution"]
    assert len(convs) == 4 and all(c.precision == "fp16" for c in convs)
    assert r.fp32_layers_by_type() == {}
    assert r.io_dtypes() == {"input": "fp32", "output": "fp32"}
    assert [t.mode for t in r.io] == ["input", "output"]
    audit = audit_precision(r, "fp16")
    assert audit.ok and audit.actual == "mixed" and audit.fp16_tensor_fraction == pytest.approx(13 / 15)


@pytest.mark.parametrize("layout", ["10x", "11x"])
def test_fp32_engine_labelled_fp16_is_an_error(layout: str) -> None:
    r = _report(f"inspector_{layout}_fp32.json")
    assert r.fp16_tensor_fraction == 0.0 and r.fp16_layer_fraction == 0.0
    assert r.fp32_layers_by_type()["Convolution"] == 4
    bad = audit_precision(r, "fp16")
    assert not bad.ok and "FP32 engine" in bad.message and bad.actual == "fp32"
    good = audit_precision(r, "fp32")
    assert good.ok


@pytest.mark.parametrize("layout", ["10x", "11x"])
def test_mixed_engine_reports_fp32_layers_by_type(layout: str) -> None:
    r = _report(f"inspector_{layout}_mixed.json")
    assert 0.0 < r.fp16_tensor_fraction < 1.0
    assert r.fp32_layers_by_type() == {"Convolution": 1, "Shuffle": 1}  # reformats are not compute
    audit = audit_precision(r, "fp16")
    assert audit.ok and any("Convolution x1" in w for w in audit.warnings)
    assert not audit_precision(r, "fp32").ok  # half tensors in an "fp32" engine


def test_both_layouts_agree_on_the_same_engine() -> None:
    for kind in ("fp16", "fp32", "mixed"):
        a, b = _report(f"inspector_10x_{kind}.json"), _report(f"inspector_11x_{kind}.json")
        assert [x.precision for x in a.layers] == [x.precision for x in b.layers]
        assert a.fp16_tensor_fraction == b.fp16_tensor_fraction


def test_inspector_rejects_names_only_and_unknown_layouts() -> None:
    with pytest.raises(SRDeployError, match="DETAILED"):
        _report("inspector_10x_names_only.json")
    with pytest.raises(SRDeployError, match="neither 'Bindings'"):
        parse_inspector_json({"Layers": []})
    with pytest.raises(SRDeployError, match="does not parse"):
        parse_inspector_json("{")
    empty = parse_inspector_json({"Layers": [], "Bindings": []})
    assert not audit_precision(empty, "fp16").ok


def test_audit_threshold_is_configurable() -> None:
    r = _report("inspector_11x_mixed.json")
    assert not audit_precision(r, "fp16", min_fp16_fraction=0.99).ok


# ----------------------------------------------------------------------------------------------------
# accuracy gate
# ----------------------------------------------------------------------------------------------------


def _ref(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((1, 3, 17, 23), dtype=np.float32), rng.random((1, 3, 8, 40), dtype=np.float32)]


def test_gate_passes_close_fp32_and_fails_far_fp32() -> None:
    ref = _ref()
    near = [r + 5e-4 for r in ref]
    rep = accuracy_gate(ref, near, "fp32")
    assert rep.passed and rep.max_abs == pytest.approx(5e-4, rel=1e-3) and rep.nonfinite == 0
    far = [r + 2e-3 for r in ref]
    rep = accuracy_gate(ref, far, "fp32")
    assert not rep.passed and "max abs error" in rep.reasons[0]


def test_gate_fp16_uses_psnr() -> None:
    ref = _ref()
    half = [r.astype(np.float16).astype(np.float32) for r in ref]  # ~71 dB: passes 45 dB
    rep = accuracy_gate(ref, half, "fp16")
    assert rep.passed and 60.0 < rep.psnr_db < 90.0
    noisy = [r + np.float32(0.01) for r in ref]  # 40 dB
    rep = accuracy_gate(ref, noisy, "fp16")
    assert not rep.passed and rep.psnr_db == pytest.approx(40.0, abs=0.01)
    strict = GateThresholds(fp16_min_psnr_db=100.0)
    assert not accuracy_gate(ref, half, "fp16", strict).passed


def test_gate_counts_nan_and_inf() -> None:
    ref = _ref()
    bad = [r.copy() for r in ref]
    bad[1][0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    rep = accuracy_gate(ref, bad, "fp16")
    assert not rep.passed and rep.nonfinite == 3 and "NaN/Inf" in rep.reasons[0]
    assert rep.to_dict()["nonfinite"] == 3


def test_gate_rejects_mismatched_inputs() -> None:
    ref = _ref()
    with pytest.raises(SRDeployError, match="shape"):
        accuracy_gate(ref, [ref[0], ref[0]], "fp32")
    with pytest.raises(SRDeployError, match="2 reference outputs but 1"):
        accuracy_gate(ref, ref[:1], "fp32")


def test_gate_report_round_trip() -> None:
    ref = _ref()
    rep = accuracy_gate(ref, [r + 1e-2 for r in ref], "fp16")
    assert GateReport.from_dict(json.loads(json.dumps(rep.to_dict()))) == rep


def test_gate_measures_through_the_comparison_module() -> None:
    # One PSNR formula: the gate's worst-sample PSNR and errors are sr_deploy.compare's, sample by sample.
    ref = _ref()
    cand = [ref[0] + np.float32(0.01), ref[1] + np.float32(0.003)]
    rep = accuracy_gate(ref, cand, "fp16")
    comparison = compare_outputs(ref, cand)
    assert rep.psnr_db == comparison.worst_psnr_db == min(psnr_db(r, c) for r, c in zip(ref, cand, strict=True))
    assert (rep.max_abs, rep.mean_abs, rep.num_samples) == (comparison.max_abs, comparison.mean_abs, 2)


def test_gate_report_of_an_older_sidecar_still_loads() -> None:
    # What srdeploy wrote before the gate measured through sr_deploy.compare: same keys, psnr null when identical.
    old = {
        "precision": "fp32",
        "passed": True,
        "num_samples": 3,
        "max_abs": 0.0,
        "mean_abs": 0.0,
        "psnr_db": None,
        "nonfinite": 0,
        "thresholds": {"fp32_max_abs": 0.001, "fp16_min_psnr_db": 45.0, "fp16_max_abs": None, "data_range": 1.0},
        "reasons": [],
    }
    rep = GateReport.from_dict(old)
    assert rep.passed and rep.psnr_db == math.inf and rep.thresholds.int8_min_psnr_db == 32.0
    assert rep.to_dict() == {**old, "thresholds": rep.thresholds.to_dict()}


def test_gate_report_with_nan_reads_back_as_failed_not_identical() -> None:
    ref = _ref()
    bad = [r.copy() for r in ref]
    bad[0][0, 0, 0, 0] = np.nan
    rep = accuracy_gate(ref, bad, "fp16")
    data = json.loads(json.dumps(rep.to_dict(), allow_nan=False))  # strict JSON
    assert data["psnr_db"] is None
    back = GateReport.from_dict(data)
    assert back == rep and back.psnr_db == -math.inf


def test_gate_inputs_cover_profile_edges() -> None:
    plan = profiles_from_sizes([(339, 510), (339, 510), (510, 339)], split=True)
    inputs = gate_inputs(plan)
    shapes = {x.shape for x in inputs}
    for p in plan.profiles:
        assert {p.min, p.opt, p.max} <= shapes
    assert all(x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0 for x in inputs)


def test_suggest_workspace() -> None:
    assert suggest_workspace_gb(4 << 30) == 8.0
    assert suggest_workspace_gb(1 << 20) == 1.0
    log = [
        "Tactic Device request: 2048MB Available: 1024MB. Device memory is insufficient to use tactic.",
        "Tactic Device request: 6000MB Available: 1024MB. Device memory is insufficient to use tactic.",
        "Could not find any implementation for node /conv due to insufficient workspace.",
    ]
    assert suggest_workspace_gb(1 << 30, log) == 8.0  # 6000 MB * 1.25 = 7.3 GiB -> 8


def test_audit_refuses_inspector_output_without_data_types() -> None:
    # 10.x without an execution context: dynamic shapes are -1 and formats (with the dtypes) are left out.
    raw = json.loads((FIXTURES / "inspector_10x_fp16.json").read_text())
    for layer in raw["Layers"]:
        for t in layer["Inputs"] + layer["Outputs"]:
            del t["Format/Datatype"]
    audit = audit_precision(parse_inspector_json(raw), "fp16")
    assert not audit.ok and "execution context" in audit.message


def test_profiles_below_an_architectures_smallest_input_are_refused() -> None:
    plan = ProfilePlan((profile_from_flags("1x3x8x8", "1x3x64x64", "1x3x128x128"),), "flags")
    check_profiles_min_size(plan, 8, "imdn-b7")
    with pytest.raises(SRDeployError, match=r"--min 1x3x8x8: rlfn needs inputs of at least 15x15"):
        check_profiles_min_size(plan, 15, "rlfn")
