"""A JSON reader as strict as ``JSON.parse``: Python's json module accepts NaN and Infinity, which are not JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _reject(name: str) -> Any:
    raise ValueError(f"not JSON: {name} (write null with the reason instead)")


def loads_strict(text: str) -> Any:
    """`json.loads` that raises on NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_reject)


def load_strict(path: Path) -> Any:
    return loads_strict(path.read_text(encoding="utf-8"))
