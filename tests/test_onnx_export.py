"""ONNX export: the exact operator set, PixelShuffle as DepthToSpace (CRD), FP16 casts, gates, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from strict_json import loads_strict

from sr_deploy import __version__
from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.checkpoints import save_weights
from sr_deploy.compare import Comparison
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.export.onnx import (
    ExportGates,
    OnnxExportReport,
    ReferenceImage,
    cast_audit,
    check_export_args,
    export_onnx,
    is_onnx_file,
    load_reference_images,
    model_file_kind,
    read_onnx_metadata,
    require_onnx_path,
    require_weights_path,
)

SMALL = IMDNSpec(blocks=2, channels=16, distilled=4)
SHA = "ab" * 32


def expected_ops(spec: IMDNSpec, casts: int) -> dict[str, int]:
    """The whole graph, op by op: a new operator (or a lost fusion) changes this and fails the test."""
    ops = {
        "Conv": 5 * spec.blocks + 3,  # 4 convs + the 1x1 fusion per block, head, body tail, upsampler
        "LeakyRelu": 3 * spec.blocks,
        "Split": 3 * spec.blocks,
        "Concat": spec.blocks,
        "Add": spec.blocks + 1,  # block residuals + the body shortcut
        "DepthToSpace": 1,
    }
    if casts:
        ops["Cast"] = casts
    return dict(sorted(ops.items()))


def ort_run(path: Path | bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(path if isinstance(path, bytes) else str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
    return np.asarray(sess.run(["sr"], {"lr": x.astype(dtype)})[0]).astype(np.float32)


def torch_run(model: IMDN, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def small() -> IMDN:
    return build_model(SMALL, seed=0).eval()


@pytest.fixture(scope="module")
def fp32_export(small: IMDN, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, OnnxExportReport]:
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    return path, export_onnx(small, path, weights_sha256=SHA)


@pytest.fixture(scope="module")
def fp16_exports(small: IMDN, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, OnnxExportReport]]:
    d = tmp_path_factory.mktemp("onnx16")
    out = {}
    for io_ in ("fp32", "fp16"):
        for keep in (False, True):
            key = f"io={io_},keep={keep}"
            path = d / f"{io_}-{keep}.onnx"
            # One of them at opset 17, the lowest supported, to prove the down-conversion.
            opset = 17 if (io_, keep) == ("fp16", False) else 18
            report = export_onnx(
                small, path, precision="fp16", io=io_, keep_last_conv_fp32=keep, opset=opset, weights_sha256=SHA
            )
            out[key] = (path, report)
    return out


# ---------------------------------------------------------------------------------------------- graph shape
def test_fp32_graph_has_exactly_the_expected_operators(fp32_export: tuple[Path, OnnxExportReport]) -> None:
    path, report = fp32_export
    assert report.ops == expected_ops(SMALL, casts=0)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["lr"]
    assert [o.name for o in model.graph.output] == ["sr"]
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)


def test_fp32_export_is_dynamic_in_batch_height_width(fp32_export: tuple[Path, OnnxExportReport]) -> None:
    path, _ = fp32_export
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 3
    assert all(d.dim_param and not d.dim_value for d in (dims[0], dims[2], dims[3]))


def test_fp32_ort_matches_torch_at_other_batches_and_odd_sizes(
    small: IMDN, fp32_export: tuple[Path, OnnxExportReport]
) -> None:
    path, report = fp32_export
    assert report.verification is not None and report.verification.passed
    assert report.verification.max_abs <= 1e-4
    assert not report.verification.real_images
    rng = np.random.default_rng(1)
    for shape in ((2, 3, 9, 13), (1, 3, 7, 5), (3, 3, 1, 1)):
        x = rng.random(shape, dtype=np.float32)
        got = ort_run(path, x)
        assert got.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
        assert np.abs(got - torch_run(small, x)).max() <= 1e-4


def test_depth_to_space_is_crd_blocksize_4(fp32_export: tuple[Path, OnnxExportReport]) -> None:
    path, _ = fp32_export
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "DepthToSpace"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"blocksize": 4, "mode": b"CRD"}


@pytest.mark.parametrize("dynamic", [True, False])
def test_exported_depth_to_space_computes_torch_pixel_shuffle(
    fp32_export: tuple[Path, OnnxExportReport], dynamic: bool
) -> None:
    """The CRD-vs-DCR trap: the exported node, alone, must permute exactly as torch's pixel_shuffle does."""
    path, _ = fp32_export
    (node,) = [n for n in onnx.load(str(path)).graph.node if n.op_type == "DepthToSpace"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    d2s = helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=attrs["blocksize"], mode=attrs["mode"].decode())
    in_shape: list[int | str] = ["n", 48, "h", "w"] if dynamic else [1, 48, 7, 5]
    out_shape: list[int | str] = ["n", 3, "H", "W"] if dynamic else [1, 3, 28, 20]
    graph = helper.make_graph(
        [d2s],
        "d2s",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sizes = [(1, 7, 5), (2, 9, 3)] if dynamic else [(1, 7, 5)]
    for n, h, w in sizes:
        x = np.arange(n * 48 * h * w, dtype=np.float32).reshape(n, 48, h, w)
        got = sess.run(["y"], {"x": x})[0]
        np.testing.assert_array_equal(got, torch.pixel_shuffle(torch.from_numpy(x), 4).numpy())


def test_static_export_fixes_the_input_and_matches_torch(small: IMDN, tmp_path: Path) -> None:
    path = tmp_path / "static.onnx"
    report = export_onnx(small, path, static_hw=(7, 5), weights_sha256=SHA)
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 7, 5]
    assert report.static_hw == (7, 5)
    x = np.random.default_rng(2).random((1, 3, 7, 5), dtype=np.float32)
    assert np.abs(ort_run(path, x) - torch_run(small, x)).max() <= 1e-4
    assert read_onnx_metadata(path).static_hw == (7, 5)


# ---------------------------------------------------------------------------------------------- fp16
def test_fp16_graphs_have_the_same_operators_plus_boundary_casts(
    fp16_exports: dict[str, tuple[Path, OnnxExportReport]],
) -> None:
    assert fp16_exports["io=fp32,keep=False"][1].ops == expected_ops(SMALL, casts=2)
    assert fp16_exports["io=fp16,keep=False"][1].ops == expected_ops(SMALL, casts=0)
    assert fp16_exports["io=fp32,keep=True"][1].ops == expected_ops(SMALL, casts=2)
    assert fp16_exports["io=fp16,keep=True"][1].ops == expected_ops(SMALL, casts=2)


@pytest.mark.parametrize(
    ("key", "io_type", "casts"),
    [
        (
            "io=fp32,keep=False",
            TensorProto.FLOAT,
            [("float32", "float16", "Conv"), ("float16", "float32", "graph output")],
        ),
        ("io=fp16,keep=False", TensorProto.FLOAT16, []),
        ("io=fp32,keep=True", TensorProto.FLOAT, [("float32", "float16", "Conv"), ("float16", "float32", "Conv")]),
        (
            "io=fp16,keep=True",
            TensorProto.FLOAT16,
            [("float16", "float32", "Conv"), ("float32", "float16", "graph output")],
        ),
    ],
)
def test_fp16_casts_point_at_the_right_types(
    fp16_exports: dict[str, tuple[Path, OnnxExportReport]], key: str, io_type: int, casts: list[tuple[str, str, str]]
) -> None:
    path, report = fp16_exports[key]
    model = onnx.load(str(path))
    assert [(c["from"], c["to"], c["consumer"]) for c in report.casts] == casts
    assert [(c["from"], c["to"], c["consumer"]) for c in cast_audit(model)] == casts
    assert model.graph.input[0].type.tensor_type.elem_type == io_type
    assert model.graph.output[0].type.tensor_type.elem_type == io_type
    # Weights: every initializer half, except the upsampler conv's when it is kept in FP32.
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    last = set(convs[-1].input[1:]) if key.endswith("keep=True") else set()
    init_types = {i.name: i.data_type for i in model.graph.initializer}
    for name, dtype in init_types.items():
        if dtype in (TensorProto.FLOAT, TensorProto.FLOAT16):
            want = TensorProto.FLOAT if name in last else TensorProto.FLOAT16
            assert dtype == want, name


@pytest.mark.parametrize(
    ("which", "wrong"), [(0, TensorProto.FLOAT), (-1, TensorProto.FLOAT16), (0, TensorProto.DOUBLE)]
)
def test_cast_audit_rejects_a_cast_to_the_wrong_type(
    fp16_exports: dict[str, tuple[Path, OnnxExportReport]], which: int, wrong: int
) -> None:
    """Retarget the input cast (feeds FP16 convs) or the output cast (graph output is FP32): both must be caught."""
    path, _ = fp16_exports["io=fp32,keep=False"]
    model = onnx.load(str(path))
    cast = [n for n in model.graph.node if n.op_type == "Cast"][which]
    for a in cast.attribute:
        if a.name == "to":
            a.i = wrong
    with pytest.raises(GateFailedError):
        cast_audit(model)


def test_fp16_outputs_are_close_to_fp32_and_finite(
    small: IMDN, fp16_exports: dict[str, tuple[Path, OnnxExportReport]]
) -> None:
    x = np.random.default_rng(3).random((1, 3, 11, 7), dtype=np.float32)
    ref = torch_run(small, x)
    for key, (path, report) in fp16_exports.items():
        assert report.verification is not None and report.verification.passed, key
        assert report.verification.psnr_db_torch_half is not None
        got = ort_run(path, x)
        assert np.isfinite(got).all()
        mse = float(np.mean((got.astype(np.float64) - ref) ** 2))
        assert 10 * np.log10(1.0 / mse) >= 50.0, key


# ---------------------------------------------------------------------------------------------- gates, files
def test_failed_gates_leave_no_file_and_keep_an_existing_one(small: IMDN, tmp_path: Path) -> None:
    path = tmp_path / "new.onnx"
    with pytest.raises(GateFailedError, match="max abs"):
        export_onnx(small, path, gates=ExportGates(fp32_max_abs=-1.0))
    assert not path.exists()
    old = tmp_path / "old.onnx"
    old.write_bytes(b"previous export")
    with pytest.raises(GateFailedError, match="PSNR"):
        export_onnx(small, old, precision="fp16", gates=ExportGates(fp16_min_psnr_db=1e9))
    assert old.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.onnx"]  # no temp files either


def test_fp16_gates_name_the_worse_runtime_and_report_strict_json() -> None:
    """The fp16 gates take the worse of ONNX Runtime and torch half: the report says which one it was; the
    finite check is yes/no; an identical output's infinite PSNR is null with the reason."""
    from sr_deploy.export.onnx import HALF_LABEL, ORT_LABEL, VerificationReport, _gates

    ref = np.full((1, 3, 4, 4), 0.5)
    half = ref + 10 ** (-70 / 20)  # 70 dB below a peak of 1
    r = VerificationReport(
        "x", True, Comparison().add(ref, ref), torch_half=Comparison().add(ref, half),
        y_psnr_torch_fp32=32.0, y_psnr_onnx=31.99, y_psnr_torch_half=31.995,
    )  # fmt: skip
    r.gates.extend(_gates(r, "fp16", ExportGates()))
    finite, psnr, drop = r.gates
    assert psnr.source == HALF_LABEL and psnr.value == pytest.approx(70.0) and psnr.passed
    assert drop.source == ORT_LABEL and drop.value == pytest.approx(0.01)
    assert finite.value_text() == "yes" and finite.describe() == "finite (no NaN/Inf) = yes (needs yes)"
    assert drop.describe() == "mean Y-PSNR drop vs fp32 (dB) = 0.01 (ONNX Runtime) (needs <= 0.02)"
    d = loads_strict(json.dumps(r.to_dict()))
    assert d["psnr_db"] is None and d["psnr_db_note"] == "identical outputs"
    assert d["gates"][0]["value"] is True and d["gates"][1]["source"] == HALF_LABEL


def test_training_time_model_is_collapsed_and_verified_on_given_images(tmp_path: Path) -> None:
    clb = build_model(SMALL.with_clb(), seed=4).eval()
    rng = np.random.default_rng(6)
    refs = [
        ReferenceImage(
            "a", rng.random((1, 3, 8, 6), dtype=np.float32), rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
        )
    ]
    report = export_onnx(clb, tmp_path / "clb.onnx", references=refs, reference_label="one image")
    assert not report.spec.clb
    assert report.ops == expected_ops(SMALL, casts=0)
    v = report.verification
    assert v is not None and v.inputs == "one image" and v.real_images and v.y_psnr_torch_fp32 is not None
    x = np.random.default_rng(5).random((1, 3, 9, 6), dtype=np.float32)
    assert np.abs(ort_run(tmp_path / "clb.onnx", x) - torch_run(clb, x)).max() <= 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"opset": 11}, "--opset 11: too old"),
        ({"opset": 99}, "--opset 99"),
        ({"static_hw": (0, 5)}, "--static"),
        ({"io": "fp16"}, "--io fp16 needs --precision fp16"),
        ({"precision": "int8"}, "--precision"),
    ],
)
def test_bad_export_options_are_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"precision": "fp32", "io_": "fp32", "opset": 18, "static_hw": None}
    args.update({("io_" if k == "io" else k): v for k, v in kwargs.items()})
    with pytest.raises(SRDeployError, match=match):
        check_export_args(**args)  # type: ignore[arg-type]


def test_missing_output_folder_is_refused_before_export(small: IMDN, tmp_path: Path) -> None:
    with pytest.raises(SRDeployError, match="does not exist"):
        export_onnx(small, tmp_path / "nope" / "m.onnx")


# ---------------------------------------------------------------------------------------------- metadata, detection
def test_metadata_round_trip(small: IMDN, fp32_export: tuple[Path, OnnxExportReport]) -> None:
    path, report = fp32_export
    meta = read_onnx_metadata(path)
    assert meta.spec == small.spec
    assert meta.scale == 4
    assert meta.weights_sha256 == SHA
    assert meta.precision == "fp32" and meta.io == "fp32"
    assert meta.srdeploy_version == __version__
    assert meta.opset == 18 == report.opset
    assert meta.input_dtype == "float32"
    assert meta.static_hw is None


def test_fp16_metadata_and_opset_17(fp16_exports: dict[str, tuple[Path, OnnxExportReport]]) -> None:
    meta = read_onnx_metadata(fp16_exports["io=fp16,keep=False"][0])
    assert (meta.precision, meta.io, meta.opset, meta.input_dtype) == ("fp16", "fp16", 17, "float16")
    assert meta.props["keep_last_conv_fp32"] == "false"
    assert read_onnx_metadata(fp16_exports["io=fp32,keep=True"][0]).props["keep_last_conv_fp32"] == "true"


def test_onnx_files_are_told_apart_from_weights(
    small: IMDN, fp32_export: tuple[Path, OnnxExportReport], tmp_path: Path
) -> None:
    path, _ = fp32_export
    disguised = tmp_path / "model.bin"
    disguised.write_bytes(path.read_bytes())
    pth = tmp_path / "w.pth"
    torch.save(small.state_dict(), pth)
    st = save_weights(small, tmp_path / "w.safetensors")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x08\x07not really a model")
    assert is_onnx_file(path) and is_onnx_file(disguised)
    assert not any(is_onnx_file(p) for p in (pth, st, junk))
    with pytest.raises(SRDeployError, match=r"--weights .*model\.bin: is an ONNX model"):
        require_weights_path(disguised)
    with pytest.raises(SRDeployError, match=r"--onnx .*w\.pth: is not an ONNX model"):
        require_onnx_path(pth)
    assert require_weights_path(pth) == pth
    kinds = [model_file_kind(p) for p in (path, disguised, pth, st, tmp_path / "m.engine")]
    assert kinds == ["onnx", "onnx", "weights", "weights", "tensorrt-engine"]


def test_metadata_of_a_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(SRDeployError, match="not written by srdeploy"):
        read_onnx_metadata(path)


# ---------------------------------------------------------------------------------------------- real weights
def test_team26_fp16_export_keeps_set5_y_psnr(shared: Path, team26_pth: Path, tmp_path: Path) -> None:
    """Two of the Set5 images (the small ones, to stay fast), against the challenge code's own per-image figures."""
    import json

    from sr_deploy.checkpoints import load_model

    model, loaded = load_model(team26_pth, form="plain")
    refs = [r for r in load_reference_images(shared / "data" / "Set5") if r.name in ("bird", "head")]
    ref_psnr = json.loads((shared / "data" / "reference_psnr.json").read_text())
    per_image = ref_psnr["results"]["Set5/team26_imdn_nb7.pth"]["per_image"]
    want = float(np.mean([per_image[f"{r.name}.png"]["psnr_y"] for r in refs]))
    report = export_onnx(model, tmp_path / "t26.onnx", precision="fp16", references=refs, weights_sha256=loaded.sha256)
    v = report.verification
    assert v is not None and v.passed
    assert v.y_psnr_torch_fp32 == pytest.approx(want, abs=0.01)
    assert v.y_psnr_onnx is not None and v.y_psnr_torch_half is not None
    assert v.y_psnr_torch_fp32 - min(v.y_psnr_onnx, v.y_psnr_torch_half) <= 0.02
    assert read_onnx_metadata(tmp_path / "t26.onnx").weights_sha256 == loaded.sha256
