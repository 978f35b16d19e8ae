"""ModelSpec: everything needed to rebuild a network, and the named presets."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sr_deploy.errors import SRDeployError

#: The 3x3 convs inside an IMDN block; any subset may carry a parallel 1x1 branch (a collapsible linear block).
BLOCK_CONVS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4")


@dataclass(frozen=True)
class ModelSpec:
    """The challenge's simplified IMDN, optionally with collapsible linear blocks (CLB)."""

    blocks: int = 8
    channels: int = 64
    distilled: int = 16
    scale: int = 4
    slope: float = 0.05
    in_channels: int = 3
    out_channels: int = 3
    #: block convs that are trained as 3x3 + parallel 1x1; empty means the plain (deploy) network.
    clb_convs: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clb_convs", tuple(self.clb_convs))
        problems = []
        if self.blocks < 1:
            problems.append(f"blocks must be >= 1, got {self.blocks}")
        if self.scale < 1:
            problems.append(f"scale must be >= 1, got {self.scale}")
        if not 0 < self.distilled < self.channels:
            problems.append(f"distilled must be in (0, channels={self.channels}), got {self.distilled}")
        elif self.channels != 4 * self.distilled:
            problems.append(
                f"channels ({self.channels}) must be 4 x distilled ({self.distilled}): "
                "the 1x1 fusion concatenates four distilled splits"
            )
        unknown = [c for c in self.clb_convs if c not in BLOCK_CONVS]
        if unknown:
            problems.append(f"unknown CLB conv(s) {unknown}; expected a subset of {list(BLOCK_CONVS)}")
        if problems:
            raise SRDeployError("invalid model spec: " + "; ".join(problems))

    @property
    def clb(self) -> bool:
        return bool(self.clb_convs)

    @property
    def remaining(self) -> int:
        return self.channels - self.distilled

    @property
    def name(self) -> str:
        base = f"imdn-b{self.blocks}"
        if (self.channels, self.distilled, self.scale, self.slope) != (64, 16, 4, 0.05):
            base += f"-c{self.channels}-d{self.distilled}-x{self.scale}"
        if self.clb_convs == BLOCK_CONVS:
            base += "-clb"
        elif self.clb_convs:
            base += "-clb[" + ",".join(self.clb_convs) + "]"
        return base

    def collapsed(self) -> ModelSpec:
        """The deploy-time spec: same network with every 1x1 branch folded away."""
        return replace(self, clb_convs=())

    def with_clb(self, convs: tuple[str, ...] = BLOCK_CONVS) -> ModelSpec:
        return replace(self, clb_convs=tuple(convs))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["clb_convs"] = list(self.clb_convs)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SRDeployError(f"model spec has unknown field(s) {unknown}; expected {sorted(known)}")
        kwargs = dict(d)
        if "clb_convs" in kwargs:
            kwargs["clb_convs"] = tuple(kwargs["clb_convs"])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SRDeployError(f"model spec is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise SRDeployError("model spec JSON must be an object")
        return cls.from_dict(d)


_PRESET_RE = re.compile(r"^imdn-b(?P<blocks>[1-9]\d*)(?P<clb>-clb)?$")

#: Named presets worth listing; any imdn-b{N}[-clb] is also accepted.
PRESETS: dict[str, str] = {
    "imdn-b8": "the NTIRE 2022 ESR challenge baseline (8 blocks)",
    "imdn-b7": "the paper's deploy model (7 blocks, collapsed)",
    "imdn-b7-clb": "the paper's training-time model (7 blocks, every block 3x3 with a parallel 1x1)",
}


def preset(name: str) -> ModelSpec:
    """Spec for `imdn-b{N}` or `imdn-b{N}-clb`."""
    m = _PRESET_RE.match(name.strip().lower())
    if not m:
        raise SRDeployError(f"unknown architecture {name!r}: expected one of {', '.join(PRESETS)} or imdn-b<N>[-clb]")
    spec = ModelSpec(blocks=int(m.group("blocks")))
    return spec.with_clb() if m.group("clb") else spec
