"""How much memory a forward pass needs, and how much this machine can give: large inputs get a plan, not a crash.

The estimate runs the network once on the meta device (shapes only, milliseconds at any size) and follows every
tensor it makes: bytes are added when an operator returns a new storage and taken off when the last Python
reference to it goes, so the peak is that of eager execution under ``no_grad``. Runtimes add workspaces and
allocator slack on top. Calibration, once, on a 2-core CPU at 512x512: torch's resident-set growth over one real
forward was 1.20x (imdn-b7), 1.39x (rfdn) and 1.32x (fmen) of the meta peak; `RUNTIME_FACTOR` covers that with
room to spare for ONNX Runtime's and OpenVINO's arenas. An estimate, not a promise: it decides when to tile.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sr_deploy.errors import SRDeployError

if TYPE_CHECKING:
    from sr_deploy.archs.spec import ArchSpec

#: Runtime overhead over the eager meta peak (see the module note).
RUNTIME_FACTOR = 1.6
#: The share of the memory available now that a command plans to use by default: the rest is for everything else.
DEFAULT_BUDGET_FRACTION = 0.5
#: Tiles are picked from these sides (LR pixels): round numbers, and no smaller than a backend runs efficiently.
_TILE_SIDES = (4096, 3072, 2048, 1536, 1024, 768, 512, 384, 256, 192, 128, 96, 64, 48, 32)

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def fmt_bytes(n: float) -> str:
    """Bytes for people: ``44.1 GiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str, flag: str) -> int:
    """``8G``, ``512M``, ``1.5GiB`` or a plain number of bytes, as bytes; anything else names the flag."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    value = float(m.group(1)) * _UNITS[m.group(2)] if m else 0.0
    if not m or not math.isfinite(value) or value < 1:
        raise SRDeployError(f"{flag} {text!r}: expected a size such as 8G, 512M or 1.5GiB")
    return int(value)


def available_bytes(meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Memory a new allocation can get now without swapping (Linux ``MemAvailable``), or None when unknown."""
    try:
        text = Path(meminfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        text = ""
    m = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    if m:
        return int(m.group(1)) * 1024
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(flag_value: str | None = None, flag: str = "--memory-budget") -> int | None:
    """The bytes a command may plan for: the flag's value, else half of what is available now (None: unknown)."""
    if flag_value is not None:
        return parse_bytes(flag_value, flag)
    free = available_bytes()
    return int(free * DEFAULT_BUDGET_FRACTION) if free is not None else None


class _LiveBytes:
    """A dispatch mode over meta tensors that keeps the running total of live storages and its peak."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's hook is untyped
            def __torch_dispatch__(
                self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
            ) -> Any:
                out = func(*args, **(kwargs or {}))
                tracker.seen(out)
                return out

        self.mode = Mode()  # type: ignore[no-untyped-call]
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def seen(self, out: Any) -> None:
        import torch
        from torch.utils._pytree import tree_flatten

        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = int(storage._cdata)
            if key in self.live:  # a view of a storage already counted (split, reshape)
                continue
            size = int(storage.nbytes())
            self.live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            weakref.finalize(t, self._freed, key)

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def forward_peak_bytes(model: Any, height: int, width: int, batch: int = 1) -> int:
    """Peak bytes of live tensors in one eager ``no_grad`` forward of `model` (an nn.Module) at the given size,
    counted on the meta device. A view that outlives its base is taken as freed with it, which can only lower the
    count by a layer's worth: `RUNTIME_FACTOR` is calibrated on top of this very count."""
    import torch

    from sr_deploy.profile import meta_copy

    meta = meta_copy(model)
    dtype = next(meta.parameters()).dtype
    tracker = _LiveBytes()
    x = torch.empty(batch, 3, height, width, dtype=dtype, device="meta")
    with torch.no_grad(), tracker.mode:
        meta(x)
    return tracker.peak + x.untyped_storage().nbytes()


@lru_cache(maxsize=64)
def _spec_peak(spec: ArchSpec, height: int, width: int) -> int:
    import torch

    from sr_deploy.archs.registry import arch_of

    with torch.device("meta"):
        model = arch_of(spec).build(spec)
    return forward_peak_bytes(model.eval(), height, width)


@dataclass(frozen=True)
class MemoryEstimate:
    """What one image at ``height x width`` LR needs: the network's forward and the images around it."""

    height: int
    width: int
    forward_bytes: int
    image_bytes: int

    @property
    def total(self) -> int:
        return self.forward_bytes + self.image_bytes


def estimate_upscale(spec: ArchSpec, height: int, width: int) -> MemoryEstimate:
    """Peak memory of upscaling one ``height x width`` LR image whole: the forward pass (meta peak times
    `RUNTIME_FACTOR`) plus the decoded input, its float copy, the float output and its 8/16-bit copy."""
    s = spec.scale
    forward = int(_spec_peak(spec, height, width) * RUNTIME_FACTOR)
    images = 3 * height * width * (2 + 4) + 3 * height * width * s * s * (4 + 2)
    return MemoryEstimate(height, width, forward, images)


def pick_tile(spec: ArchSpec, budget: int, *, overlap: int, min_size: int, longest: int) -> int | None:
    """The largest round tile side whose upscale fits `budget`, no larger than the image's longest side; None when
    even the smallest one does not fit (or is too small for the overlap)."""
    least = max(2 * overlap + 1, min_size)
    for side in _TILE_SIDES:
        if side >= longest or side < least:
            continue
        if estimate_upscale(spec, side, side).total <= budget:
            return side
    return None
