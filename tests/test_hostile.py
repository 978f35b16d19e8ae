"""Hostile input, table-driven: every case runs the real entry point and must end in exactly one line on stderr
(no traceback) that names the flag or the file, with the expected exit code, and leave the folder as it was (file
names, sizes and mtimes before and after; no temporary file left). In the spirit of polygraphy's and trtexec's
refusal tests. Tiny models and images keep the table fast; a few promises that are not one-liners (the graph cache,
reproducible fuse output, automatic tiling, real permissions) have their own tests at the end.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model, spec_from_dict
from sr_deploy.checkpoints import save_ntire, save_weights
from sr_deploy.cli import main
from sr_deploy.errors import Interrupted, SRDeployError
from sr_deploy.imaging.io import write_image

SPEC = IMDNSpec(blocks=1, channels=16, distilled=4, scale=2)
RFDN = {"arch": "rfdn", "blocks": 1, "channels": 8, "distilled": 4, "esa_channels": 4}

TRAIN_TOML = """
arch = "imdn-b1-clb"
seed = 0
device = "cpu"
[model]
channels = 16
distilled = 4
[data]
num_workers = 0
storage = "memory"
[[stages]]
lr_patch = 4
crops_per_image = 1
epochs = 1
batch_size = 2
milestones = []
[[stages]]
lr_patch = 4
crops_per_image = 1
epochs = 1
batch_size = 2
milestones = []
"""


# ----------------------------------------------------------------------------------------------------- the world


def _image(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything the cases read, made once: weights, images, training data and a finished two-stage run."""
    from sr_deploy.train.config import load_config
    from sr_deploy.train.loop import train

    root = tmp_path_factory.mktemp("hostile")
    save_weights(build_model(SPEC.with_clb(), seed=0), root / "clb.safetensors")
    save_weights(build_model(SPEC, seed=0), root / "d.safetensors")
    save_ntire(build_model(SPEC, seed=0), root / "d.pth")
    save_weights(build_model(spec_from_dict(RFDN), seed=0), root / "rfdn.safetensors")
    for i, name in enumerate(("a.png", "b.png")):
        _image(root / "hr" / name, 24, 20, seed=i)
        _image(root / "lr" / name, 12, 10, seed=10 + i)
    _image(root / "in" / "x.png", 12, 12)
    _image(root / "big" / "big.png", 200, 200)
    for i in range(3):
        _image(root / "data" / "hr" / f"{i:04d}.png", 16, 16, seed=20 + i)
    (root / "data" / "tiny.toml").write_text(TRAIN_TOML)
    cfg = load_config(root / "data" / "tiny.toml").with_overrides(
        hr_dirs=[str(root / "data" / "hr")], cache_dir=str(root / "data" / "cache")
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(cfg, root / "run").completed
    finally:
        torch.set_num_threads(before)
    (root / "empty").mkdir()
    (root / "notes.txt").write_text("not weights\n")
    return root


@pytest.fixture()
def world(template: Path, tmp_path: Path) -> Path:
    """A private copy of the template (mtimes kept), so that a case that did write cannot hide from the next."""
    w = tmp_path / "w"
    shutil.copytree(template, w, symlinks=True)
    return w


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: relative path -> (size, mtime in ns). A run folder's ``.lock`` is left out: it holds
    the pid of the last process that took the lock, which a refused `--resume` may well have been."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.name == ".lock":
            continue
        if path.is_file() or path.is_symlink():
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


# ----------------------------------------------------------------------------------------------- injected faults


def _fail_for(target: Path, exc: OSError) -> Callable[..., Any]:
    real = open

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(str(file)) == target:
            raise exc
        return real(file, *args, **kwargs)

    return fake_open


def unreadable_weights(w: Path, mp: pytest.MonkeyPatch) -> None:
    import sr_deploy.fileio as fileio

    target = w / "d.safetensors"
    mp.setattr(
        fileio,
        "open",
        _fail_for(target, PermissionError(errno.EACCES, "Permission denied", str(target))),
        raising=False,
    )


def unreadable_image(w: Path, mp: pytest.MonkeyPatch) -> None:
    real = np.fromfile
    target = w / "hr" / "b.png"

    def fake(file: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(str(file)) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(target))
        return real(file, *args, **kwargs)

    mp.setattr(np, "fromfile", fake)


def unlistable_folder(w: Path, mp: pytest.MonkeyPatch) -> None:
    real = pathlib.Path.iterdir
    target = w / "hr"

    def fake(self: Path) -> Iterator[Path]:
        if self == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    mp.setattr(pathlib.Path, "iterdir", fake)


def read_only(folder_name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """os.access says the folder is not writable (as for a non-root user on a 0555 folder or a read-only mount)."""

    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        real = os.access
        target = w / folder_name if folder_name else w

        def fake(path: Any, mode: int, **kwargs: Any) -> bool:
            if Path(str(path)) == target and mode & os.W_OK:
                return False
            return real(path, mode, **kwargs)

        mp.setattr(os, "access", fake)

    return setup


def never_run(module: str, name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """The long work must not start: if it does, the AssertionError is a traceback and the case fails."""

    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        import importlib

        def ran(*_: Any, **__: Any) -> Any:
            raise AssertionError(f"{module}.{name} ran before the output was checked")

        mp.setattr(importlib.import_module(module), name, ran)

    return setup


def both(*setups: Callable[[Path, pytest.MonkeyPatch], None]) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        for s in setups:
            s(w, mp)

    return setup


def disk_full(w: Path, mp: pytest.MonkeyPatch) -> None:
    """ENOSPC on every temporary file an atomic write fills (the file is created, then the disk is full)."""
    real = pathlib.Path.write_bytes

    def fake(self: Path, data: Any) -> int:
        if self.name.startswith(".") and self.name.endswith(".tmp"):
            real(self, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    mp.setattr(pathlib.Path, "write_bytes", fake)


def read_only_mount(w: Path, mp: pytest.MonkeyPatch) -> None:
    def fake(*_: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, "Read-only file system", str(kwargs.get("dir", "")))

    mp.setattr(tempfile, "mkstemp", fake)


def old_file(name: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        (w / name).write_text("the previous run's file\n")

    return setup


def interrupt_at(module: str, name: str, exc: BaseException) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        import importlib

        def stop(*_: Any, **__: Any) -> Any:
            raise exc

        mp.setattr(importlib.import_module(module), name, stop)

    return setup


def wrapped_interrupt() -> BaseException:
    """What torch's ONNX exporter raises for a Ctrl-C: its own error, with the KeyboardInterrupt as the cause."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("TorchExportError: Failed to export the model with torch.export.\n" * 60) from e
    except RuntimeError as wrapped:
        return wrapped


def sigterm_mid_write(w: Path, mp: pytest.MonkeyPatch) -> None:
    """A real SIGTERM while an image's temporary file is half written: srdeploy's handler must clean up."""
    real = pathlib.Path.write_bytes

    def fake(self: Path, data: Any) -> int:
        if self.name.startswith(".") and self.name.endswith(".tmp"):
            real(self, bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, data)

    mp.setattr(pathlib.Path, "write_bytes", fake)


def metadata(change: dict[str, Any] | None, raw: str | None = None) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """Rewrite the spec in d.safetensors' metadata (untrusted input: the tensors stay as they are)."""

    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = w / "d.safetensors"
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata())
        tensors = load_file(str(path))
        meta["spec"] = raw if raw is not None else json.dumps({**json.loads(meta["spec"]), **(change or {})})
        save_file(tensors, str(path), metadata=meta)

    return setup


def config(text: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        (w / "cfg.toml").write_text(text)

    return setup


def damaged_state(w: Path, mp: pytest.MonkeyPatch) -> None:
    """state.pt whose model lacks the first conv's tensors (its spec no longer matches them)."""
    path = w / "run" / "state.pt"
    state = torch.load(path, weights_only=False)
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("model.0.")}
    torch.save(state, path)


#: Locks the test itself holds (as another `srdeploy train` would); closed after each test.
_HELD: list[int] = []


def locked_run(w: Path, mp: pytest.MonkeyPatch) -> None:
    fd = os.open(w / "run" / ".lock", os.O_RDWR | os.O_CREAT)
    _HELD.append(fd)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"4242\n")


def extra_image(rel: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        _image(w / rel, 4, 4)

    return setup


def truncated(rel: str, keep: int | None = None) -> Callable[[Path, pytest.MonkeyPatch], None]:
    """The file cut to `keep` bytes (default: half of it)."""

    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        data = (w / rel).read_bytes()
        (w / rel).write_bytes(data[: len(data) // 2 if keep is None else keep])

    return setup


def make_dir(rel: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def setup(w: Path, mp: pytest.MonkeyPatch) -> None:
        (w / rel).mkdir()

    return setup


def links(w: Path, mp: pytest.MonkeyPatch) -> None:
    (w / "sym.safetensors").symlink_to(w / "clb.safetensors")
    os.link(w / "clb.safetensors", w / "hard.safetensors")


def never_checkpointed(w: Path, mp: pytest.MonkeyPatch) -> None:
    (w / "run" / "state.pt").unlink()


def raise_ansi(w: Path, mp: pytest.MonkeyPatch) -> None:
    import sr_deploy.checkpoints as ck

    def boom(*_: Any, **__: Any) -> Any:
        raise SRDeployError(f"{w / 'd.safetensors'}: \x1b[1m\x1b[31mRuntimeError\x1b[0m: bad weights\nsecond line")

    mp.setattr(ck, "load_weights", boom)


# --------------------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # split on spaces; {w} is the world folder
    needles: tuple[str, ...]  # each must be in the one line; {w} as above
    code: int = 2
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None


W = "{w}"
FUSE = f"fuse {W}/clb.safetensors"
EVAL = f"eval --weights {W}/d.safetensors --hr-dir {W}/hr --backend torch"
UP = f"upscale {W}/in --weights {W}/d.safetensors --backend torch"
BENCH = f"bench --weights {W}/d.safetensors --synthetic 8x8 --count 1 --backend torch --warmup 0 --repeat 1 -q"
TRAIN = f"train --config {W}/cfg.toml --hr-dir {W}/data/hr --cache-dir {W}/data/cache --no-progress"
EXPORT = f"export-onnx --weights {W}/d.safetensors"

CASES = [
    # 1. no command destroys its input
    Case("fuse-onto-its-input", f"{FUSE} -o {W}/clb.safetensors", ("-o", "clb.safetensors", "input")),
    Case("fuse-report-onto-input", f"{FUSE} -o {W}/o.safetensors --report {W}/clb.safetensors", ("--report",)),
    Case("fuse-report-is-output", f"{FUSE} -o {W}/o.safetensors --report {W}/o.safetensors", ("-o", "--report")),
    Case("fuse-onto-a-symlink", f"{FUSE} -o {W}/sym.safetensors", ("-o", "sym.safetensors"), setup=links),
    Case("fuse-onto-a-hard-link", f"{FUSE} -o {W}/hard.safetensors", ("-o", "hard.safetensors"), setup=links),
    Case("export-onnx-onto-weights", f"{EXPORT} -o {W}/d.safetensors", ("--output", "d.safetensors")),
    Case("eval-json-onto-hr-image", f"{EVAL} --json {W}/hr/a.png", ("--json", "hr/a.png", "HR image")),
    Case("eval-json-onto-lr-image", f"{EVAL} --lr-dir {W}/lr --json {W}/lr/b.png", ("--json", "lr/b.png")),
    Case("eval-json-onto-weights", f"{EVAL} --json {W}/d.safetensors", ("--json", "--weights")),
    Case("bench-report-onto-weights", f"{BENCH} --report {W}/d.safetensors", ("--report", "d.safetensors")),
    Case(
        "bench-two-outputs-one-file", f"{BENCH} --report {W}/r.json --markdown {W}/r.json", ("--report", "--markdown")
    ),
    Case(
        "bench-plot-onto-input-image",
        f"{BENCH.replace('--synthetic 8x8 --count 1', f'--input {W}/in')} --plot {W}/in/x.png",
        ("--plot", "x.png"),
    ),
    Case("train-plot-onto-config", f"train-plot {W}/run -o {W}/run/config.toml", ("-o", "config.toml", "run folder")),
    Case("train-plot-onto-state", f"train-plot {W}/run -o {W}/run/state.pt", ("-o", "state.pt")),
    Case("train-plot-onto-weights", f"train-plot {W}/run -o {W}/run/last.safetensors", ("-o", "last.safetensors")),
    Case("train-plot-into-snapshots", f"train-plot {W}/run -o {W}/run/checkpoints/c.png", ("-o", "checkpoints")),
    Case(
        "bench-plot-txt",
        f"{BENCH} --plot {W}/plot.txt",
        ("--plot", "plot.txt", ".png"),
        setup=never_run("sr_deploy.bench.run", "run_bench"),
    ),
    Case("train-plot-txt", f"train-plot {W}/run -o {W}/x.txt", ("-o", "x.txt", ".png")),
    Case(
        "fuse-into-run-last", f"fuse {W}/run/best.safetensors -o {W}/run/last.safetensors", ("-o", "last.safetensors")
    ),
    Case("fuse-into-run-snapshots", f"{FUSE} -o {W}/run/checkpoints/x.safetensors", ("-o", "checkpoints")),
    Case("export-onnx-into-run-metrics", f"{EXPORT} -o {W}/run/metrics.jsonl", ("--output", "metrics.jsonl")),
    Case("upscale-over-its-input", f"{UP} -o {W}/in --format same", ("x.png", "overwrite an input")),
    Case("upscale-existing-output", f"{UP} -o {W}/hr", ("hr/x.png", "--overwrite"), setup=extra_image("hr/x.png")),
    # 2. every OS failure is one line
    Case(
        "unreadable-weights",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "Permission denied"),
        setup=unreadable_weights,
    ),
    Case("unreadable-image-in-folder", EVAL, ("b.png", "Permission denied"), setup=unreadable_image),
    Case("unlistable-input-folder", EVAL, ("hr", "Permission denied"), setup=unlistable_folder),
    Case(
        "eval-json-read-only-folder",
        f"{EVAL} --json {W}/out/r.json",
        ("--json", "out/r.json", "cannot write"),
        setup=both(make_dir("out"), read_only("out"), never_run("sr_deploy.evaluate", "evaluate")),
    ),
    Case(
        "bench-report-read-only-folder",
        f"{BENCH} --report {W}/out/r.json",
        ("--report", "cannot write"),
        setup=both(make_dir("out"), read_only("out"), never_run("sr_deploy.bench.run", "run_bench")),
    ),
    Case(
        "upscale-read-only-output",
        f"{UP} -o {W}/out",
        ("-o", "cannot write"),
        setup=both(make_dir("out"), read_only("out")),
    ),
    Case(
        "fuse-read-only-mount",
        f"{FUSE} -o {W}/o.safetensors",
        ("o.safetensors", "Read-only file system"),
        setup=read_only_mount,
    ),
    Case(
        "fuse-disk-full",
        f"{FUSE} -o {W}/old.safetensors",
        ("old.safetensors", "No space left"),
        setup=both(old_file("old.safetensors"), disk_full),
    ),
    Case(
        "eval-json-disk-full",
        f"{EVAL} --json {W}/r.json",
        ("r.json", "No space left"),
        setup=both(old_file("r.json"), disk_full),
    ),
    Case(
        "run-dir-is-a-file",
        f"{TRAIN} --run-dir {W}/notes.txt",
        ("--run-dir", "notes.txt", "is a file"),
        setup=config(TRAIN_TOML),
    ),
    Case("resume-a-file", f"train --resume {W}/notes.txt", ("notes.txt", "is a file")),
    Case("json-parent-is-a-file", f"{EVAL} --json {W}/notes.txt/r.json", ("--json", "notes.txt")),
    # 3. (the graph cache: tests below)  4. untrusted checkpoint metadata
    Case(
        "spec-blocks-as-string",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "'blocks'"),
        setup=metadata({"blocks": "7"}),
    ),
    Case(
        "spec-clb-convs-int",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "clb_convs"),
        setup=metadata({"clb_convs": 5}),
    ),
    Case(
        "spec-65536-channels",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "channels"),
        setup=metadata({"channels": 65536, "distilled": 16384}),
    ),
    Case(
        "spec-100000-blocks",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "blocks"),
        setup=metadata({"blocks": 100000}),
    ),
    Case(
        "spec-disagrees-with-tensors",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "wrong shapes"),
        setup=metadata({"channels": 32, "distilled": 8}),
    ),
    Case(
        "spec-invalid-json",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "not valid JSON"),
        setup=metadata(None, raw="{nope"),
    ),
    Case(
        "spec-nan-slope",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "slope"),
        setup=metadata({"slope": float("nan")}),
    ),
    Case(
        "spec-unknown-arch",
        f"fuse {W}/d.safetensors -o {W}/o.pth",
        ("d.safetensors", "unknown architecture"),
        setup=metadata({"arch": "edsr"}),
    ),
    Case("weights-are-a-folder", f"info --weights {W}/hr", ("hr", "folder")),
    Case("weights-are-an-image", f"fuse {W}/in/x.png -o {W}/o.safetensors", ("x.png", "image")),
    Case("weights-are-text", f"info --weights {W}/notes.txt", ("notes.txt",)),
    Case(
        "weights-truncated",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors",),
        setup=truncated("d.safetensors", 500),
    ),
    Case("weights-empty", f"info --weights {W}/d.pth", ("d.pth",), setup=truncated("d.pth", 0)),
    # 5. large inputs get a plan
    Case("bench-count-huge", "bench --synthetic 32x32 --count 100000000 --backend torch", ("--count",)),
    Case("bench-synthetic-huge", "bench --synthetic 100000x100000 --backend torch", ("--synthetic", "memory")),
    Case("upscale-tile-huge", f"{UP} -o {W}/out --tile 999999", ("--tile 999999", "memory")),
    Case("upscale-budget-garbage", f"{UP} -o {W}/out --memory-budget lots", ("--memory-budget", "lots")),
    Case(
        "upscale-inexact-too-big",
        f"upscale {W}/big --weights {W}/rfdn.safetensors --backend torch -o {W}/out --memory-budget 8M",
        ("big.png", "--tile", "--inexact-tiles"),
    ),
    Case(
        "upscale-image-below-min-size",
        f"upscale {W}/in --weights {W}/rfdn.safetensors --backend torch -o {W}/out",
        ("x.png", "15x15"),
    ),
    Case(
        "bench-synthetic-below-min-size",
        f"bench --weights {W}/rfdn.safetensors --synthetic 4x4 --backend torch",
        ("--synthetic 4x4", "15x15"),
    ),
    Case("weights-dev-zero", f"fuse /dev/zero -o {W}/o.safetensors", ("/dev/zero", "not a regular file")),
    # 6. training input and state
    Case(
        "config-channels-string",
        f"{TRAIN} --run-dir {W}/new",
        ("cfg.toml", "channels"),
        setup=config(TRAIN_TOML.replace("channels = 16", 'channels = "sixteen"')),
    ),
    Case(
        "config-betas-strings",
        f"{TRAIN} --run-dir {W}/new",
        ("cfg.toml", "betas"),
        setup=config(TRAIN_TOML.replace("milestones = []", 'milestones = []\nbetas = ["a", "b"]', 1)),
    ),
    Case(
        "config-milestones-strings",
        f"{TRAIN} --run-dir {W}/new",
        ("cfg.toml", "milestones"),
        setup=config(TRAIN_TOML.replace("milestones = []", 'milestones = ["x"]', 1)),
    ),
    Case(
        "config-lr-inf",
        f"{TRAIN} --run-dir {W}/new",
        ("cfg.toml", "lr"),
        setup=config(TRAIN_TOML.replace("epochs = 1", "epochs = 1\nlr = inf", 1)),
    ),
    Case(
        "config-blocks-huge",
        f"{TRAIN} --run-dir {W}/new",
        ("cfg.toml", "blocks"),
        setup=config(TRAIN_TOML.replace("channels = 16", "channels = 16\nblocks = 100000")),
    ),
    Case("seed-negative", f"{TRAIN} --run-dir {W}/new --seed -1", ("--seed",), setup=config(TRAIN_TOML)),
    Case("lr-flag-inf", f"{TRAIN} --run-dir {W}/new --lr inf", ("--lr",), setup=config(TRAIN_TOML)),
    Case("train-into-existing-run", f"{TRAIN} --run-dir {W}/run", ("run", "--resume"), setup=config(TRAIN_TOML)),
    Case("resume-never-checkpointed", f"train --resume {W}/run", ("run", "start it"), setup=never_checkpointed),
    Case(
        "resume-damaged-state",
        f"train --resume {W}/run --no-progress",
        ("state.pt", "missing keys"),
        setup=damaged_state,
    ),
    Case("resume-locked-run", f"train --resume {W}/run --no-progress", ("run", "pid 4242"), setup=locked_run),
    Case("config-missing", f"train --config {W}/nope.toml", ("nope.toml",)),
    Case("config-not-toml", f"{TRAIN} --run-dir {W}/new", ("cfg.toml", "TOML"), setup=config("arch = [")),
    # 7. interruptions: one line, 130 / 143, nothing half-written
    Case(
        "ctrl-c-at-start",
        "info --arch imdn-b7",
        ("interrupted",),
        code=130,
        setup=interrupt_at("sr_deploy.cli", "build_app", KeyboardInterrupt()),
    ),
    Case(
        "ctrl-c-in-a-command",
        f"info --weights {W}/d.safetensors",
        ("interrupted",),
        code=130,
        setup=interrupt_at("sr_deploy.checkpoints", "load_weights", KeyboardInterrupt()),
    ),
    Case(
        "ctrl-c-in-onnx-export",
        f"{EXPORT} -o {W}/d.onnx",
        ("interrupted",),
        code=130,
        setup=interrupt_at("sr_deploy.export.onnx", "export_onnx", wrapped_interrupt()),
    ),
    Case(
        "sigterm-in-a-command",
        f"{FUSE} -o {W}/o.safetensors",
        ("SIGTERM",),
        code=143,
        setup=interrupt_at("sr_deploy.checkpoints", "load_weights", Interrupted(signal.SIGTERM)),
    ),
    Case(
        "sigterm-mid-write",
        f"{UP} -o {W}/hr --overwrite",
        ("SIGTERM",),
        code=143,
        setup=both(extra_image("hr/x.png"), sigterm_mid_write),
    ),
    # 8. small ones
    Case(
        "ansi-codes-stripped",
        f"info --weights {W}/d.safetensors",
        ("d.safetensors", "RuntimeError: bad weights; second line"),
        setup=raise_ansi,
    ),
    Case("broken-png-no-libpng-chatter", EVAL, ("b.png", "cannot decode"), setup=truncated("hr/b.png")),
    Case("static-size-zero", f"{EXPORT} -o {W}/d.onnx --static 0x5", ("--static",)),
    Case("no-such-input", f"upscale {W}/nope.png --weights {W}/d.safetensors -o {W}/out", ("nope.png",)),
    Case("eval-hr-dir-is-a-file", f"eval --weights {W}/d.safetensors --hr-dir {W}/notes.txt", ("notes.txt",)),
    Case("bench-empty-input", f"bench --input {W}/empty --backend torch", ("empty", "no images")),
    Case("upscale-output-is-a-file", f"{UP} -o {W}/notes.txt", ("-o", "notes.txt")),
]


@pytest.fixture(autouse=True)
def _release_test_locks() -> Iterator[None]:
    yield
    while _HELD:
        os.close(_HELD.pop())


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs; threads only spin-wait on the shared CPU
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, world: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if case.setup is not None:
        case.setup(world, monkeypatch)
    before = snapshot(world)
    argv = case.argv.replace(W, str(world)).split()
    code = main(argv)
    monkeypatch.undo()
    _, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == case.code, f"exit {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err}"
    line = lines[0]
    assert "Traceback" not in err and "\x1b" not in line
    assert line.startswith("srdeploy: error: " if case.code == 2 else "srdeploy: "), line
    for needle in case.needles:
        assert needle.replace(W, str(world)) in line, f"{needle!r} not in: {line}"
    after = snapshot(world)
    leftovers = [name for name in after if Path(name).name.startswith(".") and name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left: {leftovers}"
    assert after == before, f"the folder changed: {sorted(set(after.items()) ^ set(before.items()))}"


def test_resuming_a_finished_run_says_so_and_changes_nothing(world: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = snapshot(world)
    assert main(["train", "--resume", str(world / "run"), "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert "already finished" in err and "stage 3" not in err
    assert snapshot(world) == before


def test_the_guarded_run_files_are_the_ones_training_writes(world: Path) -> None:
    from sr_deploy.fileio import RUN_FILES, RUN_MARKERS, RUN_SNAPSHOTS
    from sr_deploy.train.loop import RunPaths

    paths = RunPaths(world / "run")
    assert {p.name for p in (paths.config, paths.run_json, paths.metrics, paths.state, paths.lock)} == set(RUN_FILES)
    assert paths.snapshots.name == RUN_SNAPSHOTS and {paths.last.suffix, paths.best.suffix} == {".safetensors"}
    assert set(RUN_MARKERS) <= {p.name for p in paths.root.iterdir()}


def test_train_plot_writes_what_the_suffix_says(world: Path) -> None:
    assert main(["train-plot", str(world / "run"), "-o", str(world / "c.svg")]) == 0
    assert b"<svg" in (world / "c.svg").read_bytes()[:400]


# ---------------------------------------------------------------------------------------- beyond one-line errors


def test_fuse_output_is_byte_identical_between_runs(world: Path) -> None:
    """safetensors keeps its metadata in a Rust HashMap (a new order per map) and torch.save names the zip's folder
    after the file: both would make two identical runs differ."""
    for suffix in ("safetensors", "pth"):
        outs = [world / f"o{i}.{suffix}" for i in range(3)]
        for out in outs:
            assert main(["fuse", str(world / "clb.safetensors"), "-o", str(out)]) == 0
        data = [o.read_bytes() for o in outs]
        assert data[0] == data[1] == data[2], suffix
    st = (world / "o0.safetensors").read_bytes()
    meta = json.loads(st[8 : 8 + int.from_bytes(st[:8], "little")])["__metadata__"]
    assert list(meta) == sorted(meta)


def test_upscale_tiles_an_image_too_large_for_the_budget_and_says_so(
    world: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from sr_deploy.memory import estimate_upscale

    argv = ["upscale", str(world / "big"), "--weights", str(world / "d.safetensors"), "--backend", "torch"]
    assert main([*argv, "-o", str(world / "whole")]) == 0
    assert "tiles" not in capfd.readouterr().err
    budget = estimate_upscale(SPEC, 200, 200).total // 2  # the whole image no longer fits; a tile does
    assert main([*argv, "-o", str(world / "tiled"), "--memory-budget", str(budget)]) == 0
    err = capfd.readouterr().err
    assert "big.png" in err and "tiles" in err and "--memory-budget" in err
    whole, tiled = (np.asarray(cv2.imread(str(world / d / "big.png")), int) for d in ("whole", "tiled"))
    # Exact tiling: float32 convs may round a pixel the other way at a different input shape, never a seam.
    assert whole.shape == tiled.shape == (400, 400, 3)
    assert np.abs(whole - tiled).max() <= 1 and (whole == tiled).mean() > 0.999


def test_a_run_that_never_checkpointed_starts_again_in_its_folder(world: Path) -> None:
    (world / "run" / "state.pt").unlink()
    (world / "run" / "last.safetensors").unlink()
    (world / "run" / "best.safetensors").unlink()
    shutil.rmtree(world / "run" / "checkpoints")
    argv = ["train", "--config", str(world / "run" / "config.toml"), "--run-dir", str(world / "run"), "--no-progress"]
    assert main(argv) == 0
    events = [line for line in (world / "run" / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert len(events) == 1  # the old log went with the old attempt


def test_info_counts_a_4096_image_without_running_the_network(capfd: pytest.CaptureFixture[str]) -> None:
    """torch 2.13's CPU 1x1 conv crashes on 1x64x4096x4096, and a real forward there needs tens of GB: counting runs
    on the meta device, so the figures are exact at any size (FLOPs scale with the pixels)."""
    figures = []
    for size in ("256x256", "4096x4096"):
        assert main(["info", "--arch", "imdn-b7", "--size", size, "--json"]) == 0
        figures.append(json.loads(capfd.readouterr().out)["forms"]["collapsed"])
    small, large = figures
    assert small["params"] == large["params"] == 790_496
    assert large["flops"] == 256 * small["flops"] and large["activations"] == 256 * small["activations"]


def test_memory_estimate_follows_the_architecture_and_the_size() -> None:
    from sr_deploy.memory import estimate_upscale, parse_bytes, pick_tile

    spec = spec_from_dict({"arch": "imdn", "blocks": 7})
    a, b = estimate_upscale(spec, 256, 256), estimate_upscale(spec, 512, 512)
    assert 3.5 < b.total / a.total < 4.5  # memory grows with the pixels
    assert estimate_upscale(spec, 4096, 4096).total > 16 * 2**30  # the image that was killed for memory at 24 GB
    wider = spec_from_dict({"arch": "imdn", "blocks": 7, "channels": 128, "distilled": 32})
    assert estimate_upscale(wider, 256, 256).forward_bytes > 1.8 * a.forward_bytes
    tile = pick_tile(spec, 2 * 2**30, overlap=10, min_size=1, longest=4096)
    assert (
        tile is not None
        and estimate_upscale(spec, tile, tile).total <= 2 * 2**30 < estimate_upscale(spec, 2 * tile, 2 * tile).total
    )
    assert parse_bytes("1.5G", "--memory-budget") == 3 * 2**29 and parse_bytes("512M", "--x") == 2**29
    with pytest.raises(SRDeployError, match="--memory-budget 'inf'"):
        parse_bytes("inf", "--memory-budget")


def test_synthetic_bench_images_are_made_when_asked_for() -> None:
    from sr_deploy.bench.inputs import MAX_SYNTHETIC_COUNT, SyntheticImages

    images = SyntheticImages(5, 7, MAX_SYNTHETIC_COUNT, seed=3)  # nothing is made yet: no 10,000 arrays
    assert len(images) == MAX_SYNTHETIC_COUNT
    assert np.array_equal(images[42].lr, images[42].lr) and not np.array_equal(images[0].lr, images[1].lr)
    assert images[-1].name == images[MAX_SYNTHETIC_COUNT - 1].name and [i.name for i in images[:2]] == [
        images[0].name,
        images[1].name,
    ]
    with pytest.raises(IndexError):
        images[MAX_SYNTHETIC_COUNT]
    with pytest.raises(SRDeployError, match="--count"):
        SyntheticImages(5, 7, MAX_SYNTHETIC_COUNT + 1, seed=0)


def test_libpng_warnings_stay_off_stderr(world: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """libpng prints "libpng warning: ..." straight to file descriptor 2, past OpenCV's log level: a PNG with a
    damaged ancillary chunk decodes, and the warning is not shown."""
    import struct
    import zlib

    from sr_deploy.imaging.io import read_image

    data = (world / "in" / "x.png").read_bytes()
    chunk = b"tEXtComment\x00hi"
    bad = struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk) ^ 1)  # wrong CRC
    (world / "in" / "x.png").write_bytes(data[:33] + bad + data[33:])
    assert read_image(world / "in" / "x.png").rgb.shape == (12, 12, 3)
    assert capfd.readouterr().err == ""


def test_sigterm_handler_is_restored_after_a_command() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert main(["info", "--size", "bad"]) == 2
    assert signal.getsignal(signal.SIGTERM) == before


# ------------------------------------------------------------------------------------------------ the graph cache


def test_graph_cache_replaces_a_truncated_or_edited_graph(tmp_path: Path, tiny_model: IMDN) -> None:
    import onnx
    from onnx import numpy_helper

    from sr_deploy.runtime.factory import _onnx_for, graph_key

    folder = tmp_path / "graphs"
    folder.mkdir()
    path = _onnx_for(tiny_model, "fp32", "", folder)
    good = path.read_bytes()
    assert path.name.endswith(f"{graph_key(tiny_model, 'fp32')[:16]}.onnx")
    stamp = path.stat().st_mtime_ns
    assert _onnx_for(tiny_model, "fp32", "", folder) == path and path.stat().st_mtime_ns == stamp

    path.write_bytes(good[: len(good) // 2])  # cut short: a miss, exported again
    assert _onnx_for(tiny_model, "fp32", "", folder) == path
    assert path.read_bytes() == good

    proto = onnx.load(str(path))  # weights edited, metadata kept: a miss too
    init = proto.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 0 + 1, init.name))
    onnx.save(proto, str(path))
    assert _onnx_for(tiny_model, "fp32", "", folder) == path
    assert path.read_bytes() == good
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_graph_cache_is_keyed_by_content() -> None:
    from sr_deploy.runtime.factory import graph_key

    a, b = build_model(SPEC, seed=0), build_model(SPEC, seed=0)
    assert graph_key(a, "fp32") == graph_key(b, "fp32") != graph_key(a, "fp16")
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert graph_key(a, "fp32") != graph_key(b, "fp32")


# ----------------------------------------------------------------------------- real permissions, as a non-root user

NOBODY = 65534


def _can_drop_root() -> str | None:
    if not hasattr(os, "fork") or not hasattr(os, "setuid"):
        return "os.fork/os.setuid are not available on this platform"
    if os.geteuid() != 0:
        return "needs root to switch to an unprivileged user (the monkeypatched cases above stand in for it)"
    return None


def _main_as_nobody(argv: list[str]) -> tuple[int, str]:
    """main(argv) in a forked child that dropped to uid/gid 65534 (modules already imported stay usable, so the
    interpreter need not be readable by that user); (exit code, stderr). The cases below fail before any network
    runs: a forked child must not enter an OpenMP region its parent's threads left locked."""
    import time

    with tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 99
            try:
                os.dup2(err.fileno(), 2)
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the child exits without cleanup
                torch.set_num_threads(1)
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                code = main(argv)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + 120
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"srdeploy {' '.join(argv)} as nobody did not finish in 120 s")
        err.seek(0)
        return os.waitstatus_to_exitcode(done[1]), err.read().decode("utf-8", "replace")


@pytest.mark.skipif(_can_drop_root() is not None, reason=str(_can_drop_root()))
def test_real_permissions_as_an_unprivileged_user(template: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Root reads and writes anything, so the cases above inject the failures; here a child process drops to
    `nobody` and meets real 0000 files and folders and a real 0555 output folder."""
    base = Path(tempfile.mkdtemp(prefix="srdeploy-perm-"))
    try:
        os.chmod(base, 0o755)
        w = base / "w"
        shutil.copytree(template / "hr", w / "hr")
        shutil.copytree(template / "in", w / "in")
        shutil.copy2(template / "d.safetensors", w / "d.safetensors")
        shutil.copy2(template / "d.safetensors", w / "locked.safetensors")
        (w / "out").mkdir()
        weights = ["--weights", str(w / "d.safetensors")]
        cases = [
            (["eval", *weights, "--hr-dir", str(w / "hr"), "--json", str(w / "out" / "r.json")], "out/r.json"),
            (["info", "--weights", str(w / "locked.safetensors")], "locked.safetensors"),
            (["upscale", str(w / "in"), *weights, "-o", str(w / "o2"), "--backend", "torch"], "/in"),
            (["bench", "--input", str(w / "hr"), *weights, "--backend", "torch", "-q"], "b.png"),
        ]
        for argv, _ in cases:  # as root first: every module the child will need is imported now
            main(argv)
        capfd.readouterr()
        shutil.rmtree(w / "o2", ignore_errors=True)
        for p in [w, *w.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        for p in (w / "hr" / "b.png", w / "locked.safetensors", w / "in"):
            os.chmod(p, 0)
        os.chmod(w / "out", 0o555)
        before = snapshot(base)
        for argv, needle in cases:
            code, err = _main_as_nobody(argv)
            lines = [line for line in err.splitlines() if line.strip()]
            assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
            said = ("ermission", "cannot write", "not readable")  # the OS's words, ours, or typer's
            assert needle in lines[0] and any(word in lines[0] for word in said), lines[0]
        assert snapshot(base) == before
    finally:
        for p in base.rglob("*"):
            os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)
