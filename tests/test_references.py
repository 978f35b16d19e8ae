"""Where the reference images come from: the option, $SRDEPLOY_SHARED, the checkout's shared/ -- never the
current directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from sr_deploy.errors import SRDeployError
from sr_deploy.references import ENV_VAR, find_reference_folder


def _set5(root: Path) -> Path:
    folder = root / "data" / "Set5"
    (folder / "LR_bicubic_x4").mkdir(parents=True)
    return folder


def test_the_current_directory_does_not_matter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    expected = find_reference_folder()
    # A ../shared beside the working directory, as the old lookup (Path.cwd().parent / "shared") would find.
    _set5(tmp_path / "shared")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert find_reference_folder() == expected
    assert find_reference_folder().folder != tmp_path / "shared" / "data" / "Set5"


def test_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _set5(tmp_path / "shared")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "shared"))
    choice = find_reference_folder()
    assert choice.folder == folder and choice.origin == f"${ENV_VAR}"
    assert choice.describe() == f"reference images: {folder} (${ENV_VAR})"
    # Another scale needs its own LR folder.
    assert find_reference_folder(scale=2).folder is None

    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    missing = find_reference_folder()
    assert missing.folder is None and "elsewhere" in missing.origin
    assert "real reference images not found" in missing.describe() and "--reference-dir" in missing.describe()


def test_explicit_folder_wins_and_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "elsewhere"))
    mine = tmp_path / "mine"
    mine.mkdir()
    assert find_reference_folder(mine).folder == mine
    with pytest.raises(SRDeployError, match=r"--reference-dir .*nope: no such folder"):
        find_reference_folder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(SRDeployError, match="is a file"):
        find_reference_folder(tmp_path / "file.png")
