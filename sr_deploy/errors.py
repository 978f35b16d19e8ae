"""User-facing errors: the CLI prints their message as one line and exits with code 2."""

from __future__ import annotations

from collections.abc import Sequence


class SRDeployError(Exception):
    """A mistake the user can fix (bad file, bad flag, missing dependency). Message: one line, names the culprit."""


class MissingDependencyError(SRDeployError):
    """An optional dependency or device (TensorRT, pycuda, a GPU, matplotlib) is not available."""


class GateFailedError(SRDeployError):
    """A numeric check (equivalence proof, accuracy gate) failed, so nothing was written."""


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM that stops the command: `srdeploy` prints one line and exits 128 + signum.

    A KeyboardInterrupt, so that everything that already cleans up on Ctrl-C (DataLoader workers, ``finally``
    blocks, atomic writes) does the same for SIGTERM, which by default would kill the process with no cleanup."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def name_list(items: Sequence[str], limit: int = 6) -> str:
    """The first `limit` names, comma-separated, and how many more: keeps one-line errors one line."""
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
