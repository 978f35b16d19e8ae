"""srdeploy train --qat (issue 13): the fake quantization is what the Q/DQ graph runs, fine-tuning helps, the gate
holds, and mistakes are one line."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from sr_deploy.archs.imdn import IMDN
from sr_deploy.cli import main
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.export import quantize as qz
from sr_deploy.export.onnx import ReferenceImage, build_onnx_model, load_reference_images
from sr_deploy.train import qat as Q

_LOOSE = qz.Int8Gates(max_y_drop_db=50.0, max_brightness_shift=255.0)
_ORT_ONLY: dict[str, qz.RunnerFactory] = {"onnxruntime": qz.ort_runner}


def _smooth_images(n: int, seed: int, h: int = 40, w: int = 52) -> list[np.ndarray]:
    """HxWx3 uint8 images of smooth content (int8 error on white noise says little about images)."""
    rng = np.random.default_rng(seed)
    return [
        cv2.resize(rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8), (w, h)) for _ in range(n)
    ]


def _nchw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[None].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lr")
    for i, img in enumerate(_smooth_images(6, seed=1)):
        cv2.imwrite(str(root / f"{i:04d}.png"), img)
    return root


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Laid out like Set5 (HR is the LR enlarged: a stand-in for the gate's arithmetic, not Set5)."""
    root = tmp_path_factory.mktemp("refs")
    (root / "LR_bicubic_x4").mkdir()
    (root / "HR").mkdir()
    for i, img in enumerate(_smooth_images(2, seed=2, h=20, w=24)):
        cv2.imwrite(str(root / "LR_bicubic_x4" / f"{i}.png"), img)
        cv2.imwrite(str(root / "HR" / f"{i}.png"), cv2.resize(img, (96, 80)))
    return root


@pytest.fixture(scope="module")
def refs(reference_dir: Path) -> list[ReferenceImage]:
    return load_reference_images(reference_dir, scale=4)


@pytest.fixture(scope="module")
def start(tiny_model: IMDN, folder: Path) -> tuple[onnx.ModelProto, dict[str, float], onnx.ModelProto]:
    """tiny_model's fp32 graph, PTQ's calibrated scales, and the PTQ graph with every conv int8."""
    opts = qz.QuantizeOptions(calib_count=4, crop=16)
    calib = qz.load_calibration_set(folder, 4, 16, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, _ = qz.centre_image_convs(build_onnx_model(tiny_model))
        onnx.save(fp32, f"{tmp}/f.onnx")
        cache = qz.calibrate(Path(f"{tmp}/f.onnx"), calib, opts, Path(f"{tmp}/c.json"))
        return fp32, Q.calibrated_scales(cache), qz.quantize_qdq(Path(f"{tmp}/f.onnx"), cache, opts)


def _errors(run: qz.Runner, model: IMDN, images: list[np.ndarray]) -> float:
    """Mean |int8 - fp32| over `images`."""
    with torch.no_grad():
        return float(
            np.mean([np.abs(run(_nchw(i)) - model(torch.from_numpy(_nchw(i))).numpy()).mean() for i in images])
        )


def _assert_within_rounding(simulated: np.ndarray, deployed: np.ndarray, fp32: np.ndarray) -> None:
    """Torch multiplies by 1/scale where ONNX divides: a value on a rounding boundary may land one step apart and
    move its neighbourhood a little. Most outputs agree to float precision, and on average the two differ by far
    less than the quantization error itself."""
    diff = np.abs(simulated - deployed)
    assert float((diff < 1e-5).mean()) > 0.9
    assert float(diff.mean()) < 0.05 * float(np.abs(deployed - fp32).mean())


# ---------------------------------------------------------------------------------------------- the simulation
def test_fake_quantization_is_what_onnxruntime_runs(
    tiny_model: IMDN, start: tuple[onnx.ModelProto, dict[str, float], onnx.ModelProto]
) -> None:
    fp32, scales, ptq = start
    qat = Q.wrap_for_qat(tiny_model, fp32, scales, learn=True)
    x = _nchw(_smooth_images(1, seed=5)[0])
    with torch.no_grad():
        sim = qat.net.eval()(torch.from_numpy(x)).numpy()
        ref = tiny_model(torch.from_numpy(x)).numpy()
    # Before any training: the simulation is PTQ's graph (same ranges, same placement).
    _assert_within_rounding(sim, qz.ort_runner(ptq.SerializeToString())(x), ref)
    # As after training: other weights and other scales; the export must carry both.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in qat.net.parameters():
            if p.dim() == 4:
                p.mul_(1 + 0.05 * torch.randn(p.shape, generator=gen))
        for q in qat.quantizers.values():
            q.log_scale.add_(0.3 * torch.randn(1, generator=gen))
        sim = qat.net.eval()(torch.from_numpy(x)).numpy()
    graph = Q.qat_graph(Q.unwrap(qat), qat.scales(), qz.QuantizeOptions())
    got = qz.ort_runner(graph.SerializeToString())(x)
    assert Q.activation_scales(graph) == {t: s for t, s in qat.scales().items() if t in Q.activation_scales(graph)}
    assert set(Q.activation_scales(graph)) == set(qat.quantizers)
    audit = qz.audit_qdq(graph)
    assert audit.ok and audit.float_convs == 0 and audit.quantized_convs == 13
    _assert_within_rounding(sim, got, ref)


def test_a_graph_name_without_a_module_is_refused(
    tiny_model: IMDN, start: tuple[onnx.ModelProto, dict[str, float], onnx.ModelProto]
) -> None:
    fp32, scales, _ = start
    broken = onnx.ModelProto()
    broken.CopyFrom(fp32)
    conv = next(n for n in broken.graph.node if n.op_type == "Conv")
    w = next(i for i in broken.graph.initializer if i.name == conv.input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 2, w.name))
    with pytest.raises(Exception, match="do not match one to one"):
        Q.wrap_for_qat(tiny_model, broken, scales, learn=True)


def test_float_layers_stay_float_in_the_simulation_and_the_graph(
    tiny_model: IMDN, start: tuple[onnx.ModelProto, dict[str, float], onnx.ModelProto]
) -> None:
    fp32, scales, _ = start
    qat = Q.wrap_for_qat(tiny_model, fp32, scales, learn=True, float_layers=["model.0"])
    assert "lr" not in qat.quantizers and "model.0" not in qat.layers  # the image input is not quantized
    assert isinstance(qat.net.model[0], torch.nn.Conv2d) and isinstance(qat.net.model[2], Q.FakeQuantConv2d)
    graph = Q.qat_graph(Q.unwrap(qat), qat.scales(), qz.QuantizeOptions(), ["model.0"])
    audit = qz.audit_qdq(graph)
    assert audit.ok and audit.float_convs == 1 and qz.quantized_layers(graph)[0] != "model.0"
    with pytest.raises(SRDeployError, match=r"--float-layer model\.9: no such conv"):
        Q.wrap_for_qat(tiny_model, fp32, scales, learn=True, float_layers=["model.9"])
    with pytest.raises(SRDeployError, match="at most 2 may stay"):
        Q.QatOptions(float_layers=("a", "b", "c")).validate()


def test_qat_lowers_the_int8_error_of_ptq(
    tiny_model: IMDN, start: tuple[onnx.ModelProto, dict[str, float], onnx.ModelProto]
) -> None:
    fp32, scales, ptq = start
    images = _smooth_images(8, seed=3)
    data = Q.TrainingData("mem", tuple("abcdef"), tuple(images[:6]), (), 4, "0" * 64)
    held_out = images[6:]
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    qat = Q.wrap_for_qat(tiny_model, fp32, scales, learn=True)
    options = Q.QatOptions(steps=25, lr=1e-5, batch_size=4, crop=16, seed=0)
    log = Q.fine_tune(qat, tiny_model, data, options, torch.device("cpu"))
    assert log.last_loss < log.first_loss
    graph = Q.qat_graph(Q.unwrap(qat), qat.scales(), qz.QuantizeOptions())
    assert _errors(qz.ort_runner(graph.SerializeToString()), tiny_model, held_out) < _errors(
        qz.ort_runner(ptq.SerializeToString()), tiny_model, held_out
    )
    # The teacher is the model given: the student is a copy, the teacher stays as it was.
    assert all(torch.equal(v, before[k]) for k, v in tiny_model.state_dict().items())


def test_batches_are_seeded_and_pair_hr_with_its_lr() -> None:
    lr = _smooth_images(2, seed=4, h=12, w=14)
    hr = [cv2.resize(i, (56, 48), interpolation=cv2.INTER_NEAREST) for i in lr]
    data = Q.TrainingData("mem", ("a", "b"), tuple(lr), tuple(hr), 4, "0" * 64)
    a = Q.sample_batch(data, np.random.default_rng(7), 5, 8)
    b = Q.sample_batch(data, np.random.default_rng(7), 5, 8)
    assert torch.equal(a[0], b[0]) and a[1] is not None and b[1] is not None and torch.equal(a[1], b[1])
    assert a[0].shape == (5, 3, 8, 8) and a[1].shape == (5, 3, 32, 32)
    # Nearest-neighbour HR: every 4x4 HR block is its LR pixel, whatever flip or transpose was drawn.
    assert torch.equal(a[1][:, :, ::4, ::4], a[0])


def test_hr_pairs_train_against_hr(tiny_model: IMDN, tmp_path: Path) -> None:
    lrs = _smooth_images(2, seed=6, h=12, w=16)
    for folder in ("hr", "lr"):
        (tmp_path / folder).mkdir()
    for i, img in enumerate(lrs):
        cv2.imwrite(str(tmp_path / "lr" / f"{i}.png"), img)
        cv2.imwrite(str(tmp_path / "hr" / f"{i}.png"), cv2.resize(img, (64, 48), interpolation=cv2.INTER_NEAREST))
    data = Q.load_hr_pairs([tmp_path / "hr"], [tmp_path / "lr"], 8, 4)
    assert data.supervised and len(data.hr) == 2 and data.hr[0].shape == (48, 64, 3)
    lr, hr = Q.sample_batch(data, np.random.default_rng(0), 3, 8)
    assert hr is not None and torch.equal(hr[:, :, ::4, ::4], lr)
    with pytest.raises(SRDeployError, match="larger than every training image"):
        Q.load_hr_pairs([tmp_path / "hr"], [tmp_path / "lr"], 13, 4)


# ---------------------------------------------------------------------------------------------- the gate
def test_a_graph_that_fails_the_gate_is_not_written(
    tiny_model: IMDN, folder: Path, refs: list[ReferenceImage], tmp_path: Path
) -> None:
    out = tmp_path / "m.int8.onnx"
    out.write_bytes(b"keep me")
    impossible = qz.Int8Gates(max_y_drop_db=-1.0, max_brightness_shift=255.0)
    options = Q.QatOptions(
        steps=2, batch_size=2, crop=16, quantize=qz.QuantizeOptions(calib_count=3, crop=16, gates=impossible)
    )
    calib = qz.load_calibration_set(folder, 3, 16)
    data = Q.load_lr_folder(folder, 16, 4)
    with pytest.raises(GateFailedError) as err:
        Q.qat_quantize(tiny_model, out, data, calib, refs, options=options, runners=_ORT_ONLY)
    line = str(err.value)
    assert "\n" not in line and "not written" in line and "onnxruntime" in line and "PTQ with the same" in line
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["m.int8.onnx"]


def test_a_passing_graph_carries_the_qat_metadata(
    tiny_model: IMDN, folder: Path, refs: list[ReferenceImage], tmp_path: Path
) -> None:
    out = tmp_path / "m.int8.onnx"
    options = Q.QatOptions(
        steps=3, batch_size=2, crop=16, quantize=qz.QuantizeOptions(calib_count=3, crop=16, gates=_LOOSE)
    )
    calib = qz.load_calibration_set(folder, 3, 16)
    data = Q.load_lr_folder(folder, 16, 4)
    report = Q.qat_quantize(
        tiny_model, out, data, calib, refs, weights_sha256="ab" * 32, options=options, runners=_ORT_ONLY
    )
    graph = qz.check_int8_graph(out, tiny_model.spec, "ab" * 32)
    assert graph.float_layers == ()
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    quant = json.loads(meta["quantization"])
    assert quant["method"]["method"] == "qat" and quant["method"]["steps"] == 3
    assert quant["method"]["data_sha256"] == data.sha256 and quant["fine_tune"]["steps"] == 3
    assert meta["weights_sha256"] == "ab" * 32  # the weights given, whose fp32 graph the gate compares with
    d = report.to_dict()
    assert d["float_layers"] == [] and d["audit"]["ok"] and d["activation_scales"] == report.scales
    json.dumps(d, allow_nan=False)


# ---------------------------------------------------------------------------------------------- the command
def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def test_command_mistakes_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, folder: Path, tiny_model: IMDN
) -> None:
    from sr_deploy.checkpoints import save_weights

    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny_model, weights)
    out = str(tmp_path / "o.onnx")
    (tmp_path / "empty").mkdir()
    base = ["train", "--qat", "-o", out]
    for args, words in (
        ([*base, "--calib-dir", str(folder)], "--qat needs --init-from"),
        ([*base, "--init-from", str(tmp_path / "nope.pth"), "--calib-dir", str(folder)], "nope.pth"),
        ([*base, "--init-from", str(weights)], "--qat needs --calib-dir"),
        ([*base, "--init-from", str(weights), "--calib-dir", str(tmp_path / "empty")], "no images"),
        ([*base, "--init-from", str(weights), "--calib-dir", str(folder), "--steps", "0"], "--steps"),
        ([*base, "--init-from", str(weights), "--calib-dir", str(folder), "--epochs", "3"], "not used with --qat"),
        (["train", "--steps", "10"], "--steps is an option of --qat"),
        ([*base, "--init-from", str(weights), "--calib-dir", str(folder), "-o", str(weights)], "--output"),
    ):
        code, err = _cli(capsys, *args)
        assert code == 2 and words in err and err.count("\n") == 1, (args, err)
    assert not Path(out).exists()


def test_command_writes_the_graph_and_the_fine_tuned_weights(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_model: IMDN,
    folder: Path,
    reference_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sr_deploy.checkpoints import load_model, save_weights

    weights = tmp_path / "tiny.safetensors"
    save_weights(tiny_model, weights)
    monkeypatch.setattr(qz, "Int8Gates", lambda: _LOOSE)
    out = tmp_path / "tiny.int8.onnx"
    code = main(
        ["train", "--qat", "--init-from", str(weights), "--calib-dir", str(folder), "--calib-count", "3",
         "--calib-crop", "16", "--crop", "16", "--steps", "2", "--batch-size", "2", "-o", str(out),
         "--reference-dir", str(reference_dir), "--no-openvino-gate", "--save-weights",
         str(tmp_path / "ft.safetensors"), "--report", str(tmp_path / "r.json"), "--no-progress"]
    )  # fmt: skip
    assert code == 0 and out.is_file(), capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["method"]["method"] == "qat" and report["options"]["steps"] == 2 and report["audit"]["ok"]
    tuned, _ = load_model(tmp_path / "ft.safetensors")
    before = tiny_model.state_dict()
    assert any(
        not torch.equal(v, before[k]) for k, v in tuned.state_dict().items()
    )  # the fine-tuned weights, not a copy of the input
