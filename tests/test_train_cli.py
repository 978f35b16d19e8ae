"""`srdeploy train` / `train-plot`: a tiny run end to end, SIGTERM -> checkpoint + resume, one-line errors."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.cli import main
from sr_deploy.imaging.io import write_image
from sr_deploy.train import loop

TINY_TOML = """
arch = "imdn-b2-clb"
seed = 1
device = "cpu"
val_every = 1
checkpoint_every = 1
[model]
channels = 16
distilled = 4
[data]
num_workers = 0
[[stages]]
name = "s1"
lr_patch = 4
crops_per_image = 2
epochs = 2
batch_size = 2
milestones = [1]
[[stages]]
name = "s2"
lr_patch = 8
crops_per_image = 1
epochs = 1
batch_size = 2
milestones = []
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs; threads only spin-wait on a busy CPU
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_data")
    rng = np.random.default_rng(0)
    (root / "hr").mkdir()
    for i in range(3):
        write_image(root / "hr" / f"{i:04d}.png", rng.integers(0, 256, (40, 44, 3), dtype=np.uint8))
    (root / "val").mkdir()
    write_image(root / "val" / "v.png", rng.integers(0, 256, (32, 36, 3), dtype=np.uint8))
    (root / "tiny.toml").write_text(TINY_TOML)
    return root


def _args(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--config",
        str(data / "tiny.toml"),
        "--hr-dir",
        str(data / "hr"),
        "--val-hr-dir",
        str(data / "val"),
        "--cache-dir",
        str(data / "cache"),
        "--run-dir",
        str(run),
        "--no-progress",
        *extra,
    ]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("srdeploy: error: ")
    return err[0]


def test_train_then_plot(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(_args(data, run)) == 0
    out = capsys.readouterr().out
    assert f"last: {run / 'last.safetensors'}" in out
    assert (run / "best.safetensors").is_file()
    assert "lr_patch = 4" in (run / "config.toml").read_text()
    pytest.importorskip("matplotlib")
    assert main(["train-plot", str(run), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_sigterm_saves_and_resume_finishes(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    class TermAtStep2(loop.StopRequest):
        def requested(self, global_step: int) -> bool:
            if global_step == 2 and self.reason is None:
                os.kill(os.getpid(), signal.SIGTERM)  # a real signal through the installed handler
            return super().requested(global_step)

    monkeypatch.setattr(loop, "StopRequest", TermAtStep2)
    run = tmp_path / "run"
    assert main(_args(data, run)) == 143
    assert "stopped (SIGTERM)" in capsys.readouterr().err
    assert (run / "state.pt").is_file() and (run / "last.safetensors").is_file()
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert loop.read_metrics(run / "metrics.jsonl")[-1]["event"] == "done"


def test_bad_input_is_one_line_exit_2(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main([*_args(data, tmp_path / "r1"), "--hr-dir", str(tmp_path / "empty")]) == 2
    assert "no images" in _one_error_line(capsys)

    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_TOML.replace("epochs = 2", "epocs = 2"))
    assert main([*_args(data, tmp_path / "r2"), "--config", str(bad)]) == 2
    assert "unknown key stages[0].'epocs'" in _one_error_line(capsys)

    assert main([*_args(data, tmp_path / "r3"), "--epochs", "1", "--batch-size", "2", "--arch", "imdn-b2-clb"]) == 0
    capsys.readouterr()
    (tmp_path / "notrun").mkdir()
    assert main(["train", "--resume", str(tmp_path / "notrun")]) == 2
    assert "not a run folder" in _one_error_line(capsys)
    assert main(["train", "--resume", str(tmp_path / "r3"), "--arch", "imdn-b7-clb"]) == 2
    assert "made with arch imdn-b2-c16-d4-x4-clb, not imdn-b7-clb" in _one_error_line(capsys)

    big = tmp_path / "big.toml"
    big.write_text(TINY_TOML.replace("lr_patch = 8", "lr_patch = 80"))
    assert main([*_args(data, tmp_path / "r4"), "--config", str(big)]) == 2
    assert "LR crop 80x80 is larger than every training image" in _one_error_line(capsys)
    assert not (tmp_path / "r4").exists()

    lr = tmp_path / "lr"
    lr.mkdir()
    write_image(lr / "0000x4.png", np.zeros((10, 11, 3), np.uint8))
    assert main([*_args(data, tmp_path / "r5"), "--lr-dir", str(lr)]) == 2
    line = _one_error_line(capsys)
    assert "does not pair" in line and "0001.png" in line

    assert main([*_args(data, tmp_path / "r6"), "--amp", "fp8"]) == 2
    assert "amp must be one of" in _one_error_line(capsys)


@pytest.mark.slow
def test_torchrun_two_processes_gloo(data: Path, tmp_path: Path) -> None:
    """DDP on the CPU: 2 processes, gloo; rank 0 alone writes the run folder and the log."""
    import subprocess
    import sys

    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "sr_deploy", *_args(data, run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("last: ") == 1
    records = loop.read_metrics(run / "metrics.jsonl")
    assert records[0]["event"] == "start" and records[0]["world_size"] == 2
    assert [r["event"] for r in records].count("done") == 1
    assert (run / "best.safetensors").is_file() and (run / "last.safetensors").is_file()


@pytest.mark.slow
def test_ctrl_c_with_dataloader_workers_saves_and_exits_130(data: Path, tmp_path: Path) -> None:
    """A real SIGINT to a CLI process whose DataLoader has workers: finish the step, save, exit 130."""
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sr_deploy", *_args(data, run), "--epochs", "1000", "--num-workers", "2"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").is_file() and '"step"' in (run / "metrics.jsonl").read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "stopped (SIGINT)" in err and "Traceback" not in err
    assert loop.read_metrics(run / "metrics.jsonl")[-1]["event"] == "stopped"
    assert (run / "state.pt").is_file()
