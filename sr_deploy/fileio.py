"""Atomic file writes and hashing: nothing a user made is lost or half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sr_deploy.errors import SRDeployError

#: A training run folder's own files (see ``sr_deploy.train.loop.RunPaths``): only `srdeploy train` writes them, so
#: `--resume` finds them as it left them. Every ``*.safetensors`` directly in the folder and everything under
#: ``checkpoints/`` count too (last, best and the epoch snapshots).
RUN_FILES: tuple[str, ...] = ("config.toml", "run.json", "metrics.jsonl", "state.pt", ".lock")
RUN_SNAPSHOTS = "checkpoints"
#: What makes a folder a run folder.
RUN_MARKERS: tuple[str, ...] = ("run.json", "state.pt")


#: Output suffix -> matplotlib format of the commands that draw (train-plot -o, bench --plot): a file holds what its
#: name says, so `-o curves.txt` is refused rather than given PNG bytes.
PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def plot_format(path: str | Path, flag: str) -> str:
    """The matplotlib format for a plot written to `path`, from its suffix; any other suffix names the flag."""
    fmt = PLOT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SRDeployError(f"{flag} {path}: expected a {', '.join(PLOT_FORMATS)} file (the suffix picks the format)")
    return fmt


def os_error_text(e: OSError) -> str:
    """The operating system's words for `e` ("Permission denied"), without Python's "[Errno 13]" prefix."""
    return e.strerror or str(e) or type(e).__name__


def read_error(e: OSError, path: str | Path, what: str = "") -> SRDeployError:
    """One line for an input that cannot be read, naming the file the OS complained about."""
    culprit = e.filename if isinstance(e.filename, str) and e.filename else str(path)
    prefix = f"{what} " if what else ""
    return SRDeployError(f"{prefix}{culprit}: cannot read ({os_error_text(e)})")


def write_error(e: OSError, path: str | Path, what: str = "output") -> SRDeployError:
    """One line for an output that cannot be written (read-only folder, full disk), naming the flag and the file."""
    other = e.filename if isinstance(e.filename, str) and e.filename else ""
    # A temporary name beside the target means nothing to the user; another file does, and it may have been an
    # input that failed while the output was being made.
    if other and Path(other).parent != Path(path).parent:
        return SRDeployError(f"{what} {path}: failed on {other} ({os_error_text(e)})")
    return SRDeployError(f"{what} {path}: cannot write ({os_error_text(e)})")


def _run_folder(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in RUN_MARKERS)


def refuse_run_file(path: str | Path, what: str = "output") -> None:
    """Refuse to write over a training run's own files: a resumed run needs them exactly as training left them."""
    p = Path(os.path.realpath(path))
    parent = p.parent
    if parent.name == RUN_SNAPSHOTS and _run_folder(parent.parent):
        raise SRDeployError(
            f"{what} {path}: is inside the run folder {parent.parent}'s {RUN_SNAPSHOTS}/; write it elsewhere"
        )
    if _run_folder(parent) and (p.name in RUN_FILES or p.name == RUN_SNAPSHOTS or p.suffix.lower() == ".safetensors"):
        raise SRDeployError(
            f"{what} {path}: is one of the run folder {parent}'s own files ({', '.join(RUN_FILES[:4])}, "
            f"*.safetensors, {RUN_SNAPSHOTS}/), which only srdeploy train writes; write it elsewhere"
        )


def _writable_target(path: str | Path, what: str) -> Path:
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        if parent.exists():
            raise SRDeployError(f"{what} {p}: {parent} is a file, not a folder")
        raise SRDeployError(f"{what} {p}: folder {parent} does not exist")
    if p.is_dir():
        raise SRDeployError(f"{what} {p}: is a folder, expected a file path")
    # The file is replaced by a rename, so what counts is whether the folder takes new entries.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SRDeployError(f"{what} {p}: cannot write to the folder {parent} (permission denied or read-only)")
    return p


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """Return `path` as a Path, or raise if a command may not write it: no folder, a folder given for a file, a
    folder that is not writable, a training run's own file. Cheap, so commands call it before their long work.
    (`atomic_path` repeats all but the last check: training itself writes its run folder through it.)"""
    p = _writable_target(path, what)
    refuse_run_file(p, what)
    return p


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: the same inode when both exist (hard links, symlinks, bind mounts), else
    the same resolved path."""
    try:
        if os.path.exists(a) and os.path.exists(b):
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def files_in(folder: str | Path | None) -> list[Path]:
    """The regular files directly in `folder`, for `refuse_overwriting_inputs`; nothing when it is not a readable
    folder (the command reports that itself, with its own words)."""
    if folder is None:
        return []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return [e for e in entries if e.is_file()]


def refuse_overwriting_inputs(
    outputs: Iterable[tuple[str, str | Path | None]], inputs: Iterable[tuple[str, str | Path | None]]
) -> None:
    """Refuse, before any work, an output that is one of the command's inputs or another of its outputs.

    `outputs` are (flag, path) and `inputs` (what, path) pairs; None paths are skipped. Every file the command
    reads counts as an input (the files of an input folder: `files_in`). Outputs are written atomically, so a
    refused run has changed nothing.
    """
    outs = [(flag, Path(p)) for flag, p in outputs if p is not None]
    ins = [(what, Path(p)) for what, p in inputs if p is not None]
    for i, (flag, out) in enumerate(outs):
        for what, src in ins:
            if same_file(out, src):
                described = what if str(src) in what else f"{what} {src}"
                raise SRDeployError(
                    f"{flag} {out}: is an input of this command ({described}); writing it would destroy it, "
                    "choose another path"
                )
        for other_flag, other in outs[i + 1 :]:
            if same_file(out, other):
                raise SRDeployError(f"{flag} {out} and {other_flag} {other}: the same file; give each its own path")


@contextlib.contextmanager
def atomic_path(path: str | Path, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    The temporary file is removed whatever ends the block, KeyboardInterrupt and SIGTERM included (`srdeploy`
    turns SIGTERM into an exception, so this ``finally`` runs). OS failures (a read-only folder, a full disk) are
    one SRDeployError naming `what` and `path`.
    """
    target = _writable_target(path, what)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    except OSError as e:
        raise write_error(e, target, what) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            # mkstemp makes the file 0600; give it the mode a plain open() would have.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
            os.replace(tmp_path, target)
        except OSError as e:
            raise write_error(e, target, what) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes, what: str = "output") -> Path:
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str, what: str = "output") -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"), what)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise read_error(e, path) from None
    return h.hexdigest()


def dumps_json(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (with a final newline when indented): NaN and Infinity are not JSON (``JSON.parse`` and most
    parsers reject them), so a report's `to_dict` turns them into null with a reason (`db_or_null`) and this
    raises ValueError if one slipped through, rather than writing a file other tools cannot read."""
    return json.dumps(obj, indent=indent, allow_nan=False) + ("\n" if indent is not None else "")


def db_or_null(
    key: str, value: float | None, *, note_key: str | None = None, infinite: str = "identical outputs"
) -> dict[str, Any]:
    """``{key: value, note_key: None}``, or for a non-finite value ``{key: None, note_key: reason}`` (note_key
    defaults to ``key + "_note"``): a PSNR of identical outputs is +inf, which JSON cannot hold."""
    note = note_key or f"{key}_note"
    if value is None or math.isfinite(value):
        return {key: value, note: None}
    reason = infinite if value > 0 else ("not a number" if math.isnan(value) else "-inf")
    return {key: None, note: reason}


def digest_path(path: Path) -> Path:
    """Where the sha256 of a cached file is recorded: beside it, as ``NAME.sha256``."""
    return path.with_name(path.name + ".sha256")


def record_digest(path: Path, digest: str) -> None:
    write_text_atomic(digest_path(path), digest + "\n", "digest")


def digest_matches(path: Path) -> bool:
    """Whether `path` still has the sha256 recorded when it was written (not cut short, not edited since)."""
    try:
        recorded = digest_path(path).read_text(encoding="ascii").strip()
        return path.is_file() and sha256_file(path) == recorded
    except (OSError, UnicodeDecodeError, SRDeployError):
        return False
