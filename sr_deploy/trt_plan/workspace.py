"""The builder's workspace: what size to suggest after a build ran out of scratch memory."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

_REQUEST_RE = re.compile(r"request(?:ed)?\D{0,24}?(\d+(?:\.\d+)?)\s*(MB|MiB|GB|GiB)", re.IGNORECASE)


def suggest_workspace_gb(current_bytes: int, log_lines: Sequence[str] = ()) -> float:
    """A workspace to try after a build ran out: the largest tactic request TensorRT logged (e.g. "Tactic Device
    request: 2048MB Available: 1024MB") with a quarter on top, else double the current one; at least 1 GiB,
    rounded up to a whole GiB so the suggestion is easy to type."""
    requested = 0.0
    for line in log_lines:
        for amount, unit in _REQUEST_RE.findall(line):
            gib = float(amount) / (1024.0 if unit.upper().startswith("M") else 1.0)
            requested = max(requested, gib)
    target = 1.25 * requested if requested else 2.0 * current_bytes / 2**30
    return float(max(1, math.ceil(target)))
