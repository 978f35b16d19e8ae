"""`srdeploy eval` and `srdeploy upscale` through the real entry point."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from strict_json import load_strict

from sr_deploy.archs.imdn import IMDNSpec
from sr_deploy.archs.registry import build_model
from sr_deploy.checkpoints import save_weights
from sr_deploy.cli import main

SPEC = IMDNSpec(blocks=1, channels=16, distilled=4, scale=2)


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    return save_weights(build_model(SPEC.with_clb(), seed=0), tmp_path / "w.safetensors")


def _images(folder: Path, n: int, h: int, w: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return folder


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("srdeploy: error: ")
    return err[0]


def test_eval_writes_json_with_per_image_scores(
    weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hr = _images(tmp_path / "hr", 2, 24, 20)
    out = tmp_path / "r.json"
    assert main(["eval", "--weights", str(weights), "--hr-dir", str(hr), "--json", str(out)]) == 0
    report = load_strict(out)
    assert [i["name"] for i in report["images"]] == ["im0.png", "im1.png"]
    assert report["lr_source"] == "bicubic" and report["scale"] == 2
    assert "mean" in capsys.readouterr().out


def test_eval_bad_input(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hr = _images(tmp_path / "hr", 1, 24, 20)
    assert "x2 model" in _error(capsys, ["eval", "--weights", str(weights), "--hr-dir", str(hr), "--scale", "4"])
    assert "no such folder" in _error(capsys, ["eval", "--weights", str(weights), "--hr-dir", str(tmp_path / "x")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _error(capsys, ["eval", "--weights", str(weights), "--hr-dir", str(empty)])
    (hr / "bad.png").write_bytes(b"junk")
    msg = _error(capsys, ["eval", "--weights", str(weights), "--hr-dir", str(hr)])
    assert "1 image(s) failed" in msg and "bad.png" in msg


def test_upscale_tiled_equals_whole_through_the_cli(weights: Path, tmp_path: Path) -> None:
    src = _images(tmp_path / "in", 1, 45, 38)
    assert main(["upscale", str(src), "--weights", str(weights), "-o", str(tmp_path / "a"), "--backend", "torch"]) == 0
    argv = ["upscale", str(src), "--weights", str(weights), "-o", str(tmp_path / "b"), "--tile", "24"]
    assert main([*argv, "--backend", "torch"]) == 0
    a, b = cv2.imread(str(tmp_path / "a" / "im0.png")), cv2.imread(str(tmp_path / "b" / "im0.png"))
    # float32 on the CPU: oneDNN's kernel choice depends on the input shape, so a pixel may round the
    # other way; a seam would differ by far more (see test_upscale.py for the exact float64 check).
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == (90, 76, 3) and diff.max() <= 1 and (diff == 0).mean() >= 0.999


def test_upscale_reuses_the_graph_it_exported(weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRDEPLOY_CACHE", str(tmp_path / "cache"))
    src = _images(tmp_path / "in", 1, 20, 18)
    base = ["upscale", str(src), "--weights", str(weights), "--backend", "onnxruntime"]
    assert main([*base, "-o", str(tmp_path / "a")]) == 0
    (graph,) = (tmp_path / "cache" / "graphs").glob("*.onnx")
    stamp = graph.stat().st_mtime_ns
    assert main([*base, "-o", str(tmp_path / "b")]) == 0
    assert graph.stat().st_mtime_ns == stamp
    same = cv2.imread(str(tmp_path / "a" / "im0.png")), cv2.imread(str(tmp_path / "b" / "im0.png"))
    assert np.array_equal(*same)


def test_graph_cache_falls_back_when_it_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sr_deploy.runtime.factory import graph_cache

    monkeypatch.setenv("SRDEPLOY_CACHE", str(tmp_path / "c"))
    assert graph_cache() == tmp_path / "c" / "graphs"
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SRDEPLOY_CACHE", str(blocker))
    assert graph_cache() is None


def test_upscale_bad_input(weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _images(tmp_path / "in", 1, 12, 12)
    base = ["upscale", str(src), "--weights", str(weights)]
    assert "--tile 4 is too small" in _error(capsys, [*base, "-o", str(tmp_path / "o"), "--tile", "4"])
    assert "--tile must be >= 0" in _error(capsys, [*base, "-o", str(tmp_path / "o"), "--tile", "-1"])
    assert "overwrite an input" in _error(capsys, [*base, "-o", str(src), "--format", "same"])
    assert "does not exist" in _error(capsys, [*base, "-o", str(tmp_path / "x" / "y")])
    assert "--backend 'cuda'" in _error(capsys, [*base, "-o", str(tmp_path / "o"), "--backend", "cuda"])
