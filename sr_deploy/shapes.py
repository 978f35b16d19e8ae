"""Parsing of size flags shared by the commands (HxW, NxCxHxW)."""

from __future__ import annotations

from sr_deploy.errors import SRDeployError


def parse_dims(text: str, flag: str, count: int) -> tuple[int, ...]:
    """`text` like '339x510' (count=2) or '1x3x64x64' (count=4) as positive ints, else one clear error."""
    parts = text.lower().replace("*", "x").split("x")
    expected = (
        f"{count} positive integers like 256x256" if count == 2 else "NxCxHxW with positive integers, e.g. 1x3x64x64"
    )
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != count or any(d <= 0 for d in dims):
        raise SRDeployError(f"{flag} {text!r}: expected {expected}")
    return dims


def parse_hw(text: str, flag: str) -> tuple[int, int]:
    h, w = parse_dims(text, flag, 2)
    return h, w


def check_min_size(height: int, width: int, least: int, what: str, arch: str) -> None:
    """Refuse an input smaller than the architecture's smallest (a strided conv and a pool need room): torch would
    fail inside the network with "Output size is too small"."""
    if min(height, width) < least:
        raise SRDeployError(f"{what}: {height}x{width} is smaller than the {least}x{least} LR pixels {arch} needs")
