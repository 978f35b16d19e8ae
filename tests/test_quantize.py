"""srdeploy quantize (issue 13): calibration set, Q/DQ placement, the gate's search, the int8 graph in the runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from sr_deploy.archs.imdn import IMDN
from sr_deploy.cli import main
from sr_deploy.compare import output_to_uint8_rgb
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.export import quantize as qz
from sr_deploy.export.onnx import ReferenceImage, build_onnx_model, load_reference_images


def _write_images(folder: Path, sizes: list[tuple[int, int]], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        # Smooth content: int8 error on white noise says little about images.
        coarse = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
        img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"{i:04d}.png"), img)


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    _write_images(folder, [(40, 52)] * 6 + [(20, 20)], seed=1)
    return folder


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like Set5: LR_bicubic_x4/ and HR/ (HR is simply the LR enlarged: a stand-in, not Set5)."""
    root = tmp_path_factory.mktemp("refs")
    _write_images(root / "LR_bicubic_x4", [(24, 20), (17, 29)], seed=2)
    (root / "HR").mkdir()
    for p in (root / "LR_bicubic_x4").iterdir():
        lr = cv2.imread(str(p))
        cv2.imwrite(str(root / "HR" / p.name), cv2.resize(lr, (lr.shape[1] * 4, lr.shape[0] * 4)))
    return root


@pytest.fixture(scope="module")
def refs(reference_dir: Path) -> list[ReferenceImage]:
    return load_reference_images(reference_dir, scale=4)


_LOOSE = qz.Int8Gates(max_y_drop_db=50.0, max_brightness_shift=255.0)


@pytest.fixture(scope="module")
def int8_graph(
    tiny_model: IMDN, calib_dir: Path, refs: list[ReferenceImage], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """tiny_model quantized whole (loose gate: its seeded weights are no image model), OpenVINO held to it too."""
    out = tmp_path_factory.mktemp("int8") / "tiny.int8.onnx"
    calib = qz.load_calibration_set(calib_dir, 4, 16, seed=0)
    qz.quantize_model(
        tiny_model,
        out,
        calib,
        refs,
        weights_sha256="ab" * 32,
        options=qz.QuantizeOptions(calib_count=4, crop=16, gates=_LOOSE),
    )
    return out


# ---------------------------------------------------------------------------------------------- calibration set
def test_calibration_set_is_reproducible_and_named_by_its_hash(calib_dir: Path) -> None:
    a = qz.load_calibration_set(calib_dir, 3, 16, seed=0)
    b = qz.load_calibration_set(calib_dir, 3, 16, seed=0)
    c = qz.load_calibration_set(calib_dir, 3, 16, seed=1)
    assert a.sha256 == b.sha256 and a.sha256 != c.sha256
    assert all(x.shape == (1, 3, 16, 16) and x.dtype == np.float32 for x in a.crops)
    assert all(float(x.min()) >= 0.0 and float(x.max()) <= 1.0 for x in a.crops)
    assert all(np.array_equal(x, y) for x, y in zip(a.crops, b.crops, strict=True))
    assert a.skipped == {}  # the 20x20 image is usable for 16x16 crops ...
    assert "smaller than the 32x32 crop" in qz.load_calibration_set(calib_dir, 3, 32).skipped["0006.png"]  # not 32


def test_calibration_folder_mistakes_are_one_line(tmp_path: Path, calib_dir: Path) -> None:
    with pytest.raises(SRDeployError, match="no such folder"):
        qz.load_calibration_set(tmp_path / "missing", 4, 16)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(SRDeployError, match=r"no images"):
        qz.load_calibration_set(tmp_path / "empty", 4, 16)
    # Seven images, but only six are at least 32x32: asking for seven is refused, naming the small one.
    with pytest.raises(SRDeployError, match=r"6 usable image\(s\) of at least 32x32 .*0006.png.* asks for 7"):
        qz.load_calibration_set(calib_dir, 7, 32)


# ---------------------------------------------------------------------------------------------- Q/DQ placement
def test_the_quantized_graph_is_what_tensorrt_takes(int8_graph: Path) -> None:
    model = onnx.load(str(int8_graph))
    audit = qz.audit_qdq(model)
    assert audit.ok, audit.problems
    assert audit.quantized_convs == 13 and audit.float_convs == 0
    assert audit.activation_pairs == 13 and audit.weight_dqs == 13
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == onnx.TensorProto.INT8
            assert numpy_helper.to_array(inits[node.input[1]]).size > 1  # per output channel
        if node.op_type == "Conv":
            assert node.input[2] in inits and inits[node.input[2]].data_type == onnx.TensorProto.FLOAT
    ops = {n.op_type for n in model.graph.node}
    net = {"Conv", "LeakyRelu", "Split", "Add", "Concat", "DepthToSpace"}
    assert ops == net | {"QuantizeLinear", "DequantizeLinear", "Sub", "Pad"}
    # The image reaches the first conv centred on zero, so symmetric int8 keeps all 8 of its bits.
    (image_input,) = qz.centred_inputs(model)
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == image_input)
    assert numpy_helper.to_array(inits[q.input[1]]) == pytest.approx(0.5 / 127, rel=0.05)


def test_centring_the_image_leaves_the_function_unchanged(tiny_model: IMDN) -> None:
    import onnxruntime as ort

    fp32 = build_onnx_model(tiny_model)
    centred, made = qz.centre_image_convs(fp32)
    assert list(made.values()) == [0.5] and qz.centred_inputs(centred) == made
    onnx.checker.check_model(centred, full_check=True)
    # A constant image shows the border: padding the shifted image with -c must be padding the image with 0.
    for x in (np.full((1, 3, 9, 11), 0.75, np.float32), np.random.default_rng(3).random((1, 3, 13, 8), np.float32)):
        a, b = (
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
            for m in (fp32, centred)
        )
        assert float(np.abs(a - b).max()) < 1e-5


def _swap_zero_point(model: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """The graph input's Q/DQ with a zero point of another type (NNCF writes uint8 for the non-negative input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    (image_input,) = qz.centred_inputs(out)
    q = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == image_input)
    zp = next(i for i in out.graph.initializer if i.name == q.input[2])
    zp.CopyFrom(helper.make_tensor(zp.name, dtype, [], [0]))
    return out


def test_the_audit_names_what_tensorrt_would_refuse(int8_graph: Path) -> None:
    model = onnx.load(str(int8_graph))
    problems = qz.audit_qdq(_swap_zero_point(model, onnx.TensorProto.UINT8)).problems
    assert any("zero point is uint8" in p for p in problems)

    # A Q/DQ pair on an Add input (NNCF's default placement for residuals): not where we quantize.
    moved = onnx.ModelProto()
    moved.CopyFrom(model)
    add = next(n for n in moved.graph.node if n.op_type == "Add")
    dq = next(
        n
        for n in moved.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] not in {i.name for i in moved.graph.initializer}
    )
    add.input[0] = dq.output[0]
    assert any("only conv inputs are quantized" in p for p in qz.audit_qdq(moved).problems)

    # Per-channel weights on the wrong axis.
    axis = onnx.ModelProto()
    axis.CopyFrom(model)
    wdq = next(
        n for n in axis.graph.node if n.op_type == "DequantizeLinear" and any(a.name == "axis" for a in n.attribute)
    )
    next(a for a in wdq.attribute if a.name == "axis").i = 1
    assert any("axis 0" in p for p in qz.audit_qdq(axis).problems)


def test_the_fp32_graph_is_not_quantized(tiny_model: IMDN) -> None:
    proto = build_onnx_model(tiny_model)
    assert not qz.is_quantized(proto)
    audit = qz.audit_qdq(proto)
    assert audit.ok and audit.quantized_convs == 0 and audit.float_convs == 13
    names = [c.name for c in qz.conv_layers(proto)]
    assert names[0] == "model.0" and names[-1].startswith("up") and len(names) == 13


# ---------------------------------------------------------------------------------------------- metadata, runtimes
def test_metadata_records_calibration_method_and_float_layers(int8_graph: Path, calib_dir: Path) -> None:
    from sr_deploy.export.onnx import read_onnx_metadata

    meta = read_onnx_metadata(int8_graph)
    assert meta.precision == "int8" and meta.weights_sha256 == "ab" * 32
    calib = qz.load_calibration_set(calib_dir, 4, 16, seed=0)
    assert meta.props["calibration_sha256"] == calib.sha256
    quant = json.loads(meta.props["quantization"])
    assert quant["float_layers"] == [] and meta.props["float_layers"] == ""
    assert "onnxruntime" in quant["method"]["quantizer"] and quant["method"]["calibration"] == "percentile"
    # The tensor through which the first conv reads the image centred, read back from the graph itself.
    assert quant[qz.CENTRED_KEY] == qz.centred_inputs(onnx.load(str(int8_graph))) and list(
        quant[qz.CENTRED_KEY].values()
    ) == [0.5]


def test_split_free_rewrite_is_exact_on_the_int8_graph(int8_graph: Path) -> None:
    import onnxruntime as ort

    from sr_deploy.runtime.graph_rewrite import split_free

    model = onnx.load(str(int8_graph))
    rewritten = split_free(model)
    assert "Split" not in {n.op_type for n in rewritten.graph.node}
    assert qz.audit_qdq(rewritten).ok
    x = np.random.default_rng(0).random((1, 3, 19, 23), dtype=np.float32)
    a, b = (
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"lr": x})[0]
        for m in (model, rewritten)
    )
    assert np.array_equal(a, b)


def test_int8_runs_in_openvino_and_onnxruntime_close_to_each_other(tiny_model: IMDN, int8_graph: Path) -> None:
    from sr_deploy.runtime.factory import make_backend
    from sr_deploy.runtime.ov_backend import openvino_status

    x = np.random.default_rng(1).random((1, 3, 21, 18), dtype=np.float32)
    ort_be = make_backend("onnxruntime", tiny_model, precision="int8", device="cpu", int8_graph=int8_graph)
    assert ort_be.info.precision == "int8" and ort_be.info.details["int8_graph"]["path"] == str(int8_graph)
    a = ort_be.run(x)
    if openvino_status() is not None:
        pytest.skip(f"openvino: {openvino_status()}")
    ov_be = make_backend("openvino", tiny_model, precision="int8", device="cpu", int8_graph=int8_graph)
    b = ov_be.run(x)
    assert ov_be.info.precision == "int8"
    assert (
        ov_be.info.details["convolutions_by_precision"].get("i8", 0)
        + ov_be.info.details["convolutions_by_precision"].get("u8", 0)
        >= 13
    )
    assert a.shape == b.shape == (1, 3, 84, 72)
    assert float(np.abs(a - b).max()) < 0.05  # the same int8 arithmetic, rounded in different places


def test_int8_is_refused_without_a_graph_with_an_fp32_graph_and_on_torch(
    tiny_model: IMDN, int8_graph: Path, tiny_onnx: dict[str, Path]
) -> None:
    from sr_deploy.runtime.factory import choose_auto, make_backend

    with pytest.raises(SRDeployError, match="needs the quantized graph: --onnx"):
        make_backend("onnxruntime", tiny_model, precision="int8")
    with pytest.raises(SRDeployError, match="is an fp32 graph"):
        make_backend("onnxruntime", tiny_model, precision="int8", int8_graph=tiny_onnx["fp32"])
    with pytest.raises(SRDeployError, match="the torch backend does not run the int8 graph"):
        make_backend("torch", tiny_model, precision="int8", int8_graph=int8_graph)
    with pytest.raises(SRDeployError, match="quantized from other weights"):
        make_backend("onnxruntime", tiny_model, precision="int8", int8_graph=int8_graph, weights_sha256="cd" * 32)
    with pytest.raises(SRDeployError, match="with --precision int8 only"):
        make_backend("onnxruntime", tiny_model, precision="fp32", int8_graph=int8_graph)
    # auto: int8 only when asked for; never in place of fp32.
    assert choose_auto("int8", "cpu") in ("openvino", "onnxruntime")
    assert choose_auto("fp32", "cpu") != "int8"


def test_tensorrt_takes_the_int8_graph_only_as_the_int8_graph(int8_graph: Path, tiny_onnx: dict[str, Path]) -> None:
    from sr_deploy.export.tensorrt import onnx_graph_precision, resolve_onnx_graphs

    assert onnx_graph_precision(int8_graph) == "int8"
    with pytest.raises(SRDeployError, match="is an int8 Q/DQ graph; give it to --onnx-int8"):
        resolve_onnx_graphs(int8_graph, None)


def test_openvino_refuses_an_int8_graph_as_fp32(int8_graph: Path) -> None:
    from sr_deploy.runtime.ov_backend import OpenVinoBackend, openvino_status

    if openvino_status() is not None:
        pytest.skip(f"openvino: {openvino_status()}")
    with pytest.raises(SRDeployError, match="run it with --precision int8"):
        OpenVinoBackend(int8_graph, precision="fp32")


def _with_remainder_verdict(src: Path, dst: Path, passed: bool) -> Path:
    """A copy of the int8 graph whose recorded bf16-remainder verdict is `passed`."""
    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "quantization":
            quant = json.loads(prop.value)
            quant[qz.BF16_REMAINDER_KEY] = {"passed": passed}
            prop.value = json.dumps(quant)
    onnx.save_model(model, str(dst))
    return dst


def test_openvino_runs_the_float_remainder_in_bf16_only_where_the_gate_passed_that_way(
    tiny_model: IMDN, int8_graph: Path, tmp_path: Path
) -> None:
    from sr_deploy.runtime.factory import make_backend
    from sr_deploy.runtime.ov_backend import OpenVinoBackend, bf16_capable, openvino_status

    if openvino_status() is not None or bf16_capable() is not None:
        pytest.skip("needs OpenVINO with native bf16")
    from sr_deploy.export.onnx import read_onnx_metadata

    quant = json.loads(read_onnx_metadata(int8_graph).props["quantization"])
    verdict = quant[qz.BF16_REMAINDER_KEY]  # measured when the graph was written
    assert verdict["passed"] is True and verdict["runtime"] == "openvino, bf16 remainder"  # the loose gate
    assert qz.check_int8_graph(int8_graph).bf16_remainder_passed
    x = np.random.default_rng(1).random((1, 3, 17, 19), dtype=np.float32)
    hints = {}
    outputs = {}
    for passed in (True, False):
        graph = _with_remainder_verdict(int8_graph, tmp_path / f"{passed}.int8.onnx", passed)
        backend = make_backend("openvino", tiny_model, precision="int8", device="cpu", int8_graph=graph)
        outputs[passed] = backend.run(x)
        hints[passed] = backend.info.details["compute_precision_hint"]
    assert hints == {True: "bf16", False: "f32"}
    assert not np.array_equal(outputs[True], outputs[False])  # the remainder really computed in another precision
    with pytest.raises(SRDeployError, match="int8 graph's float part"):
        OpenVinoBackend(int8_graph, precision="fp32", int8_remainder="bf16")


def test_metadata_names_the_method(int8_graph: Path) -> None:
    assert qz.check_int8_graph(int8_graph).method == "ptq"


# ---------------------------------------------------------------------------------------------- the search
def _fake_runtime(fp32: bytes, bad: dict[str, float]) -> qz.RunnerFactory:
    """A runtime whose output is fp32's plus noise of the summed amplitude of the quantized `bad` layers: the search
    can be checked against a known answer."""
    reference = qz.ort_runner(fp32)

    def factory(graph: bytes) -> qz.Runner:
        quantized = set(qz.quantized_layers(onnx.load_from_string(graph)))
        amplitude = sum(a for name, a in bad.items() if name in quantized)

        def run(x: np.ndarray) -> np.ndarray:
            noise = np.random.default_rng(x.shape[2]).standard_normal((1, 3, x.shape[2] * 4, x.shape[3] * 4))
            return reference(x) + np.float32(amplitude) * noise.astype(np.float32)

        return run

    return factory


def _search(tiny_model: IMDN, calib_dir: Path, out: Path, bad: dict[str, float], limit: int) -> qz.QuantizeReport:
    """The search with a fake runtime, on references whose HR is the fp32 output plus a little fixed noise: the Y-PSNR
    drop then grows with the fake int8 noise, so the right answer is known."""
    fp32 = build_onnx_model(tiny_model).SerializeToString()
    run = qz.ort_runner(fp32)
    rng = np.random.default_rng(3)
    refs = []
    for i, (h, w) in enumerate(((20, 24), (17, 15))):
        lr = rng.random((1, 3, h, w), dtype=np.float32)
        sr = run(lr)
        hr = output_to_uint8_rgb(sr + 0.01 * rng.standard_normal(sr.shape))
        refs.append(ReferenceImage(f"img{i}", lr, hr))
    calib = qz.load_calibration_set(calib_dir, 3, 16, seed=0)
    options = qz.QuantizeOptions(
        calib_count=3,
        crop=16,
        max_float_layers=limit,
        check_openvino=False,
        gates=qz.Int8Gates(max_y_drop_db=0.1, max_brightness_shift=255.0),
    )
    return qz.quantize_model(tiny_model, out, calib, refs, options=options, runners={"fake": _fake_runtime(fp32, bad)})


def test_the_search_leaves_the_fewest_sensitive_layers_in_floating_point(
    tiny_model: IMDN, calib_dir: Path, tmp_path: Path
) -> None:
    bad = {"model.1.sub.0.conv2.0": 0.02, "up.0": 0.03}
    out = tmp_path / "m.int8.onnx"
    report = _search(tiny_model, calib_dir, out, bad, limit=3)
    ranked = qz.greedy_order(report.sensitivities)
    assert [x.name for x in ranked[:2]] == ["up.0", "model.1.sub.0.conv2.0"]
    assert report.float_layers == ["up.0", "model.1.sub.0.conv2.0"]
    assert [len(s.float_layers) for s in report.steps] == [0, 1, 2]
    assert report.steps[0].y_drop_db > 0.1 and report.steps[-1].y_drop_db == pytest.approx(0.0, abs=1e-9)
    assert out.is_file() and qz.audit_qdq(onnx.load(str(out))).float_convs == 2
    assert qz.check_int8_graph(out).float_layers == ("up.0", "model.1.sub.0.conv2.0")


def test_a_graph_that_fails_the_gate_is_not_written(tiny_model: IMDN, calib_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.int8.onnx"
    out.write_bytes(b"keep me")
    bad = {"model.1.sub.0.conv2.0": 0.02, "up.0": 0.03}
    with pytest.raises(GateFailedError) as err:
        _search(tiny_model, calib_dir, out, bad, limit=1)
    line = str(err.value)
    assert "\n" not in line and "not written" in line and "(up.0)" in line
    assert "PTQ cannot pass with <= 1 float layer(s)" in line and "0 float:" in line and "1 float:" in line
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["m.int8.onnx"]  # no temporary left behind


def test_gate_results_take_the_worse_runtime() -> None:
    a = qz.RuntimeScore("onnxruntime", 32.1, 0.05, True, 0.1, 45.0)
    b = qz.RuntimeScore("openvino", 32.0, 0.12, True, 0.6, 44.0)
    gates = {g.name: g for g in qz.gate_results([a, b], qz.Int8Gates())}
    drop = gates["mean Y-PSNR drop vs fp32 (dB)"]
    assert drop.value == 0.12 and drop.source == "openvino" and not drop.passed
    shift = gates["mean brightness shift (levels of 255)"]
    assert shift.value == 0.6 and not shift.passed
    assert gates["finite (no NaN/Inf)"].passed
    nan = qz.RuntimeScore("onnxruntime", float("nan"), float("inf"), False, float("inf"), 0.0)
    assert not {g.name: g for g in qz.gate_results([nan], qz.Int8Gates())}["finite (no NaN/Inf)"].passed


# ---------------------------------------------------------------------------------------------- the command
def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_command_mistakes_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, calib_dir: Path, reference_dir: Path
) -> None:
    base = ["quantize", "--weights", "x.pth", "-o", str(tmp_path / "o.onnx"), "--reference-dir", str(reference_dir)]
    for extra, words in (
        (["--calib-dir", str(tmp_path / "nope")], "no such folder"),
        (["--calib-dir", str(calib_dir), "--calib-count", "9", "--crop", "16"], "asks for 9"),
        (["--calib-dir", str(calib_dir), "--calibration", "entropy"], "--calibration 'entropy'"),
    ):
        code, err = _cli(capsys, *base, *extra)
        assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.onnx").exists()


def test_command_writes_a_graph_that_eval_runs(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_model: IMDN,
    calib_dir: Path,
    reference_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sr_deploy.checkpoints import save_weights

    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny_model, weights)
    monkeypatch.setattr(qz, "Int8Gates", lambda: _LOOSE)
    out = tmp_path / "tiny.int8.onnx"
    code = main(
        ["quantize", "--weights", str(weights), "--calib-dir", str(calib_dir), "--calib-count", "3", "--crop", "16",
         "-o", str(out), "--reference-dir", str(reference_dir), "--no-openvino-gate",
         "--report", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert code == 0 and out.is_file()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["calibration"]["count"] == 3 and report["audit"]["ok"]
    capsys.readouterr()
    code = main(
        ["eval", "--weights", str(weights), "--hr-dir", str(reference_dir / "HR"), "--lr-dir",
         str(reference_dir / "LR_bicubic_x4"), "--backend", "onnxruntime", "--precision", "int8", "--onnx", str(out)]
    )  # fmt: skip
    assert code == 0
    assert "int8" in capsys.readouterr().out


@pytest.mark.slow
def test_team26_quantizes_into_a_graph_tensorrt_takes(team26_pth: Path, shared: Path, tmp_path: Path) -> None:
    """The real network, every conv quantized from a few crops (no gate: that search takes minutes)."""
    from sr_deploy.checkpoints import load_model
    from sr_deploy.export.onnx import allowed_ops, op_counts

    model, _ = load_model(str(team26_pth), form="plain")
    fp32 = tmp_path / "fp32.onnx"
    onnx.save_model(build_onnx_model(model), str(fp32))
    calib = qz.load_calibration_set(shared / "data" / "DIV2K_test_LR_bicubic_x4", 2, 32, seed=0)
    options = qz.QuantizeOptions(calib_count=2, crop=32)
    cache = qz.calibrate(fp32, calib, options, tmp_path / "ranges.json")
    graph = qz.quantize_qdq(fp32, cache, options, exclude=[qz.conv_layers(onnx.load(str(fp32)))[0].node])
    audit = qz.audit_qdq(graph)
    assert audit.ok, audit.problems
    assert (audit.quantized_convs, audit.float_convs) == (37, 1)
    assert set(op_counts(graph)) <= allowed_ops(model.spec, quantized=True)


def test_bench_times_int8_only_with_a_graph_and_adds_its_rows_to_all() -> None:
    from sr_deploy.bench.rows import plan_rows

    plain = [r.key for r in plan_rows("all", "fp32", best_precision="bf16")]
    assert not any("int8" in k for k in plain)
    rows = plan_rows("all", "fp32", best_precision="bf16", int8_graph="m.int8.onnx")
    int8 = [r for r in rows if r.precision == "int8"]
    assert [r.key for r in int8] == ["onnxruntime-int8", "openvino-int8"]  # each under its backend
    assert all(r.int8_graph == "m.int8.onnx" for r in int8)
    assert [r.key for r in rows if r.precision != "int8"] == plain
    (single,) = plan_rows("openvino", "int8", best_precision="bf16", int8_graph="m.int8.onnx")
    assert single.int8_graph == "m.int8.onnx" and single.kind == "openvino"
    with pytest.raises(SRDeployError, match="--precision int8 needs the quantized graph"):
        plan_rows("openvino", "int8", best_precision="bf16")
    with pytest.raises(SRDeployError, match="--onnx: the int8 graph is timed with --precision int8"):
        plan_rows("openvino", "fp32", best_precision="bf16", int8_graph="m.int8.onnx")


def test_int8_on_a_cpu_without_int8_is_refused(int8_graph: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sr_deploy.errors import MissingDependencyError
    from sr_deploy.runtime import ov_backend

    if ov_backend.openvino_status() is not None:
        pytest.skip(f"openvino: {ov_backend.openvino_status()}")
    monkeypatch.setattr(ov_backend, "int8_capable", lambda: "this CPU has no int8 support in OpenVINO's CPU plugin")
    with pytest.raises(MissingDependencyError, match="--precision int8: this CPU has no int8"):
        ov_backend.OpenVinoBackend(int8_graph, precision="int8")


def test_quantize_refuses_to_write_over_its_own_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sr_deploy.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    image = calib / "a.png"
    image.write_bytes(b"not really a png")
    before = image.read_bytes()
    assert main(["quantize", "--weights", "w.safetensors", "--calib-dir", str(calib), "-o", str(image)]) == 2
    err = capsys.readouterr().err
    assert "is an input of this command" in err and str(image) in err
    assert image.read_bytes() == before
