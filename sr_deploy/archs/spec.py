"""What every architecture's spec shares: the torch-free half of the plug-in protocol.

A spec is a frozen dataclass of keyword fields that rebuilds one network exactly. Its JSON form carries
``"arch"``, so a checkpoint or an ONNX file says which registry entry rebuilds it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from sr_deploy.errors import SRDeployError

S = TypeVar("S", bound="ArchSpec")

#: Bounds that keep an untrusted spec from allocating the machine away before any check runs.
MAX_CHANNELS = 1024
MAX_BLOCKS = 256
MAX_SCALE = 8


class ArchSpec:
    """Base of every architecture's spec. Subclasses are ``@dataclass(frozen=True)`` with keyword defaults."""

    ARCH: ClassVar[str] = ""
    scale: int
    in_channels: int
    out_channels: int

    def __post_init__(self) -> None:
        # Every spec is valid from birth: the dataclass __init__ of each subclass calls this.
        self.check()

    @property
    def arch(self) -> str:
        return self.ARCH

    @property
    def name(self) -> str:
        """The preset-style name, e.g. ``imdn-b7`` or ``rlfn-c46``."""
        raise NotImplementedError

    @property
    def training_form(self) -> bool:
        """True when the network carries branches that the collapse folds away."""
        return False

    def collapsed(self: S) -> S:
        """The deploy-form spec (the same spec when there is nothing to fold)."""
        return self

    def problems(self) -> list[str]:
        """What is wrong with the field values, beyond their types; empty when the spec is valid."""
        return []

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"arch": self.ARCH}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[S], d: dict[str, Any], source: str = "spec") -> S:
        """Strict: unknown fields, wrong types and out-of-range values are one error naming `source`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        given = {k: v for k, v in d.items() if k != "arch"}
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise SRDeployError(f"{source}: {cls.ARCH} spec has unknown field(s) {unknown}; expected {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for k, v in given.items():
            f = fields[k]
            default = f.default_factory() if callable(f.default_factory) else f.default
            kwargs[k] = _typed(v, default, f"{source}: {cls.ARCH} spec field {k!r}")
        try:
            return cls(**kwargs)
        except SRDeployError as e:
            raise SRDeployError(f"{source}: {e}") from None

    def check(self, source: str = "") -> None:
        """Raise one error listing every problem, with the generic bounds first."""
        out: list[str] = []
        if not 1 <= self.scale <= MAX_SCALE:
            out.append(f"scale must be in 1..{MAX_SCALE}, got {self.scale}")
        for name in ("in_channels", "out_channels"):
            v = getattr(self, name)
            if not 1 <= v <= 4:
                out.append(f"{name} must be in 1..4, got {v}")
        out.extend(self.problems())
        if out:
            prefix = f"{source}: " if source else ""
            raise SRDeployError(f"{prefix}invalid {self.ARCH} spec: " + "; ".join(out))


def out_of_range(spec: ArchSpec, bounds: dict[str, tuple[int, int]]) -> list[str]:
    """One problem per integer field outside its inclusive (low, high) bounds."""
    out = []
    for name, (low, high) in bounds.items():
        v = getattr(spec, name)
        if not low <= v <= high:
            out.append(f"{name} must be in {low}..{high}, got {v}")
    return out


def slope_problem(slope: float) -> list[str]:
    """A LeakyReLU slope is in [0, 1): negative or >= 1 would no longer be a leaky ReLU."""
    return [] if 0.0 <= slope < 1.0 else [f"slope must be in [0, 1), got {slope}"]


def _typed(value: Any, default: Any, where: str) -> Any:
    """`value` checked against the type of the field's default (bool is not an int, int is a float)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(x, type(default[0]) if default else str) for x in value
        )
        value = tuple(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = "a list" if isinstance(default, tuple) else type(default).__name__
        raise SRDeployError(f"{where}: expected {kind}, got {value!r}")
    return value


@dataclass(frozen=True)
class TilingPolicy:
    """Whether tiles with an overlap of the receptive radius reproduce the whole-image output exactly."""

    exact: bool
    reason: str = ""
    #: For an inexact policy: how far tiles were measured to move the published weights' output, in words.
    measured: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"exact": self.exact, "reason": self.reason, "measured": self.measured}


@dataclass(frozen=True)
class KeyLayout:
    """One published key layout of an architecture's checkpoints, recognised by keys present and absent."""

    name: str
    required: tuple[str, ...]
    forbidden: tuple[str, ...] = ()
    description: str = ""

    def matches(self, keys: set[str]) -> bool:
        return all(k in keys for k in self.required) and not any(k in keys for k in self.forbidden)

    def overlap(self, keys: set[str]) -> float:
        """Share of the signature present, less the share of the forbidden keys present: ranks 'closest'."""
        have = sum(k in keys for k in self.required) / max(len(self.required), 1)
        clash = sum(k in keys for k in self.forbidden) / max(len(self.forbidden), 1)
        return have - clash


#: The NTIRE 2022 Efficient SR challenge's model zoo, where the published checkpoints come from.
NTIRE_MODEL_ZOO = "https://raw.githubusercontent.com/ofsoundof/NTIRE2022_ESR/main/model_zoo/"


@dataclass(frozen=True)
class PublishedWeights:
    """A checkpoint from a model zoo that `--weights NAME` fetches once into the cache, checked by sha256."""

    name: str
    filename: str
    sha256: str
    description: str
    url: str
