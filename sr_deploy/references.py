"""Where the real reference images (Set5: LR_bicubic_x4/ and HR/) come from, decided the same way wherever the
command is run: ``--reference-dir``, else ``$SRDEPLOY_SHARED/data/Set5``, else the ``shared/data/Set5`` beside a
source checkout. Never the current directory, which made the same command verify differently by where it ran.

Standard library only: the commands call this before deciding whether to import torch or onnx.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sr_deploy.errors import SRDeployError

#: The environment variable naming the shared data folder (the one holding data/Set5, data/weights, ...).
ENV_VAR = "SRDEPLOY_SHARED"
#: The test set inside that folder.
SET5 = Path("data") / "Set5"
#: How a user fixes "not found", for notes and help texts.
HOW_TO_GIVE = f"give --reference-dir DIR (a folder with LR_bicubic_x4/ and HR/) or set ${ENV_VAR}"


@dataclass(frozen=True)
class ReferenceChoice:
    """The reference folder to use (None: none was found) and where it came from, in words."""

    folder: Path | None
    origin: str

    def describe(self) -> str:
        """One line for the output: which images, from where, or that the real ones were not found."""
        if self.folder is None:
            return (
                f"note: real reference images not found ({self.origin}), so seeded random inputs are used: "
                f"{HOW_TO_GIVE}"
            )
        return f"reference images: {self.folder} ({self.origin})"


def check_reference_dir(path: Path, flag: str = "--reference-dir") -> Path:
    """`path` if it is a folder; else the one-line error (exit 2). The images in it are checked when read."""
    if not path.exists():
        raise SRDeployError(f"{flag} {path}: no such folder")
    if not path.is_dir():
        raise SRDeployError(f"{flag} {path}: is a file, expected a folder with LR_bicubic_x4/ (and HR/)")
    return path


def _checkout_shared() -> Path | None:
    """``shared`` beside the source checkout this package runs from (editable installs, CI), else None: it is
    found from this file, so it does not depend on the current directory."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        return None  # an installed package: no checkout to look beside
    return root.parent / "shared"


def find_reference_folder(explicit: Path | None = None, *, scale: int = 4) -> ReferenceChoice:
    """The reference folder, in order: `explicit` (--reference-dir; must exist), $SRDEPLOY_SHARED/data/Set5, the
    checkout's ../shared/data/Set5. A folder counts when it holds ``LR_bicubic_x{scale}``."""
    if explicit is not None:
        return ReferenceChoice(check_reference_dir(explicit), "--reference-dir")
    sub = f"LR_bicubic_x{scale}"
    env = os.environ.get(ENV_VAR)
    if env:
        folder = Path(env) / SET5
        if (folder / sub).is_dir():
            return ReferenceChoice(folder, f"${ENV_VAR}")
        return ReferenceChoice(None, f"${ENV_VAR}={env} has no {SET5 / sub}")
    shared = _checkout_shared()
    if shared is not None and (shared / SET5 / sub).is_dir():
        return ReferenceChoice(shared / SET5, "shared/ beside the source checkout")
    return ReferenceChoice(None, f"no --reference-dir, ${ENV_VAR} unset, no shared/ beside a source checkout")
