"""`srdeploy info` and `srdeploy fuse` through the real entry point: results, and one-line errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from strict_json import load_strict, loads_strict

from sr_deploy.archs.imdn import IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.checkpoints import load_weights, save_ntire, save_weights
from sr_deploy.cli import main

TINY = IMDNSpec(blocks=2, channels=16, distilled=4)


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("srdeploy: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_info_json_for_the_paper_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--arch", "imdn-b7-clb", "--json"]) == 0
    report = loads_strict(capsys.readouterr().out)
    assert report["forms"]["collapsed"]["params"] == 790_496
    assert report["forms"]["training"]["params"] > report["forms"]["collapsed"]["params"]
    assert report["forms"]["collapsed"]["convs"] == 38


def test_info_reads_weights_and_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_weights(build_model(TINY, seed=0), tmp_path / "w.safetensors")
    assert main(["info", "--weights", str(path), "--size", "32x16", "--json"]) == 0
    report = loads_strict(capsys.readouterr().out)
    assert report["forms"]["collapsed"]["input_hw"] == [32, 16]
    assert report["weights"]["format"] == "srdeploy"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "--arch", "rcan"], "--arch 'rcan': unknown architecture"),
        (["info", "--size", "256"], "--size '256'"),
        (["info", "--size", "0x5"], "positive integers"),
        (["info", "--arch", "imdn-b7", "--weights", "x.pth"], "not both"),
        (["fuse", "nope.safetensors", "-o", "out.safetensors"], "nope.safetensors: no such file"),
        (["info", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in _one_line_error(capsys, argv)


def test_fuse_end_to_end_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clb = build_model(TINY.with_clb(), seed=1)
    src = save_weights(clb, tmp_path / "clb.safetensors")
    out = tmp_path / "deploy.pth"
    assert main(["fuse", str(src), "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert "max abs error, float64" in printed
    assert load_weights(out).format == "ntire" and not load_weights(out).spec.clb
    assert load_strict(tmp_path / "r.json")["equivalence"]["passed"] is True

    missing_dir = tmp_path / "nope" / "x.safetensors"
    assert "folder" in _one_line_error(capsys, ["fuse", str(src), "-o", str(missing_dir)])
    assert "--format 'onnx'" in _one_line_error(capsys, ["fuse", str(src), "-o", str(out), "--format", "onnx"])


def test_fuse_accepts_a_plain_checkpoint_as_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = save_ntire(build_model(TINY, seed=2), tmp_path / "plain.pth")
    report = tmp_path / "r.json"
    assert main(["fuse", str(src), "-o", str(tmp_path / "o.safetensors"), "--report", str(report)]) == 0
    a, b = load_weights(src).state_dict, load_weights(tmp_path / "o.safetensors").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Nothing folded: identical outputs, an infinite PSNR. The report says so in JSON that JSON.parse reads.
    assert "Infinity" not in report.read_text()
    eq = load_strict(report)["equivalence"]
    assert eq["psnr_f32_db"] is None and eq["psnr_f32_note"] == "identical outputs"
    printed = capsys.readouterr().out
    assert "inf (identical outputs)" in printed
    assert printed.rstrip().splitlines()[-1].startswith("wrote ")
