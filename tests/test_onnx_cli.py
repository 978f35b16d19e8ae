"""`srdeploy export-onnx` through sr_deploy.cli.main: bad input is one line and exit code 2; good input writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from strict_json import loads_strict

from sr_deploy.archs.imdn import IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.checkpoints import save_weights
from sr_deploy.cli import main
from sr_deploy.export.onnx import read_onnx_metadata
from sr_deploy.fileio import sha256_file

SMALL = IMDNSpec(blocks=2, channels=16, distilled=4)


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    return save_weights(build_model(SMALL, seed=0).eval(), tmp_path / "small.safetensors")


@pytest.fixture(autouse=True)
def no_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify on random inputs: these tests are about the command, not the real images."""
    monkeypatch.setenv("SRDEPLOY_SHARED", str(tmp_path / "no-shared"))


def run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("srdeploy: error: ")
    return err


def test_export_writes_a_verified_graph(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code = main(["export-onnx", "--weights", str(weights), "-o", str(out), "--precision", "fp16", "--keep-last-fp32"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "PSNR" in printed and "pass" in printed
    assert "[dB]" in printed  # the unit survives rich (it reads "[dB]" as markup unless told not to)
    assert "(worse: torch half)" in printed or "(worse: ONNX Runtime)" in printed  # which runtime gave the gate value
    assert "must be yes: pass" in printed and ">= 1" not in printed  # a yes/no check reads yes/no
    # No reference images here (see no_shared): the output says the verification ran on random inputs.
    assert "real reference images not found" in printed and "random" in printed
    assert printed.rstrip().splitlines()[-1].startswith(f"wrote {out}")  # after the checks that decided it
    meta = read_onnx_metadata(out)
    assert meta.precision == "fp16" and meta.weights_sha256 == sha256_file(weights)
    assert meta.props["keep_last_conv_fp32"] == "true"


def _fake_set(folder: Path, scale: int = 4) -> Path:
    """A test set laid out like Set5: LR_bicubic_x{scale}/ and HR/ with two small random images."""
    rng = np.random.default_rng(0)
    (folder / f"LR_bicubic_x{scale}").mkdir(parents=True)
    (folder / "HR").mkdir()
    for name in ("a.png", "b.png"):
        assert cv2.imwrite(str(folder / f"LR_bicubic_x{scale}" / name), rng.integers(0, 256, (9, 7, 3), np.uint8))
        assert cv2.imwrite(str(folder / "HR" / name), rng.integers(0, 256, (9 * scale, 7 * scale, 3), np.uint8))
    return folder


def test_reference_dir_and_strict_json(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refs = _fake_set(tmp_path / "myset")
    out = tmp_path / "m.onnx"
    assert main(["export-onnx", "--weights", str(weights), "-o", str(out), "--reference-dir", str(refs), "--json"]) == 0
    report = loads_strict(capsys.readouterr().out)
    assert report["reference_images"] == {"folder": str(refs), "origin": "--reference-dir"}
    v = report["verification"]
    assert v["real_images"] is True and v["inputs"] == "myset (2 images)" and v["passed"] is True
    finite = next(g for g in v["gates"] if g["rule"] == "is")
    assert finite["value"] is True and finite["threshold"] is True


def test_reference_dir_that_points_nowhere(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    nowhere = tmp_path / "no-such-set"
    err = run_error(["export-onnx", "--weights", str(weights), "-o", str(out), "--reference-dir", str(nowhere)], capsys)
    assert f"--reference-dir {nowhere}: no such folder" in err
    assert not out.exists()


def test_unknown_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, bad)
    err = run_error(["export-onnx", "--weights", str(bad), "-o", str(tmp_path / "m.onnx")], capsys)
    assert "other.pth" in err and "no known architecture matches" in err
    assert not (tmp_path / "m.onnx").exists()


def test_output_folder_missing(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_error(["export-onnx", "--weights", str(weights), "-o", str(tmp_path / "nope" / "m.onnx")], capsys)
    assert "--output" in err and "does not exist" in err


@pytest.mark.parametrize("opset", ["11", "16"])
def test_opset_too_old(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], opset: str) -> None:
    err = run_error(
        ["export-onnx", "--weights", str(weights), "-o", str(tmp_path / "m.onnx"), "--opset", opset], capsys
    )
    assert f"--opset {opset}: too old" in err


@pytest.mark.parametrize("static", ["0x5", "axb", "-3x4", "7", "7x5x3"])
def test_static_not_positive_ints(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], static: str
) -> None:
    err = run_error(
        ["export-onnx", "--weights", str(weights), "-o", str(tmp_path / "m.onnx"), "--static", static], capsys
    )
    assert "--static" in err


@pytest.mark.parametrize("suffix", [".onnx", ".bin"])
def test_onnx_file_given_as_weights(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model_path = tmp_path / f"model{suffix}"
    save(helper.make_model(graph), str(model_path))
    err = run_error(["export-onnx", "--weights", str(model_path), "-o", str(tmp_path / "m.onnx")], capsys)
    assert f"--weights {model_path}: is an ONNX model" in err


@pytest.mark.parametrize(("flag", "value"), [("--precision", "int8"), ("--io", "fp64")])
def test_bad_precision_flags(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    err = run_error(["export-onnx", "--weights", str(weights), "-o", str(tmp_path / "m.onnx"), flag, value], capsys)
    assert flag in err
