"""The plug-in protocol: ``SRNet`` (what a network is to the rest of srdeploy) and ``Architecture`` (its descriptor).

Below the architectures, code talks to these two and never to a concrete network. An architecture is one module
that defines its spec, its network (an ``SRNet``) and one ``Architecture`` instance named ``ARCH``, plus one line
in ``sr_deploy.archs.registry``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from sr_deploy.archs.spec import ArchSpec, KeyLayout, PublishedWeights, TilingPolicy
from sr_deploy.errors import SRDeployError, name_list

SpecT = TypeVar("SpecT", bound=ArchSpec)
StateDict = dict[str, torch.Tensor]


class SRNet(nn.Module):
    """A super-resolution network: NCHW RGB in [0, 1] in, ``spec.scale`` times larger out, [0, 1] scale, unclamped.

    Subclasses implement ``features`` (input in the weights' own value range, everything before the last conv)
    and ``output_stage`` (the last conv and the pixel shuffle). The scaling to and from the weights' value range
    (``input_range``, 255 for weights trained on [0, 255]) lives here, so it is part of every exported graph.
    """

    def __init__(self, spec: ArchSpec, input_range: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.input_range = float(input_range)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def output_stage(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.input_range
        if r != 1.0:
            x = x * r
        out: torch.Tensor = self.output_stage()(self.features(x))
        if r != 1.0:
            out = out / r
        return out


_NUM = re.compile(r"\d+")


class Architecture(Generic[SpecT]):
    """Descriptor of one architecture: the only place that knows its layers, keys, presets and policies."""

    #: Registry id, also the ``arch`` field of every spec JSON.
    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    spec_type: type[SpecT]
    #: The pixel value range the published weights expect (1.0 or 255.0); the network scales internally.
    input_range: ClassVar[float] = 1.0
    tiling: ClassVar[TilingPolicy] = TilingPolicy(exact=True)
    #: Why FP16 would be wrong for the published weights (activations beyond half range), or None when it is fine.
    fp16_refusal: ClassVar[str | None] = None
    #: The smallest LR height and width the network accepts (a strided conv and a pool need room).
    min_input_size: ClassVar[int] = 1
    #: ONNX operators the deploy graph needs beyond the common set (Conv, Add, DepthToSpace, Cast).
    onnx_ops: ClassVar[frozenset[str]] = frozenset()
    layouts: ClassVar[tuple[KeyLayout, ...]] = ()
    published: ClassVar[tuple[PublishedWeights, ...]] = ()

    # -------------------------------------------------------------- presets and specs
    def presets(self) -> dict[str, str]:
        """Named presets worth listing, name -> description."""
        return {}

    def parse_preset(self, name: str) -> SpecT | None:
        """The spec for a preset name this architecture owns, else None."""
        raise NotImplementedError

    def spec_from_dict(self, d: Mapping[str, Any], source: str = "spec") -> SpecT:
        return self.spec_type.from_dict(dict(d), source)

    def smoke_spec(self) -> SpecT:
        """The smallest spec with every layer kind of the published network: for smoke tests and quick tries."""
        raise NotImplementedError

    def training_spec(self, spec: SpecT) -> SpecT | None:
        """The training form (with foldable branches) of a deploy spec, or None when there is none."""
        return None

    # -------------------------------------------------------------- networks
    def build(self, spec: SpecT) -> SRNet:
        raise NotImplementedError

    def receptive_radius(self, spec: SpecT) -> int:
        """LR pixels of context on each side of the local (convolutional) path. With ``tiling.exact`` False,
        some path is wider than this (a global pooling or a resize), so no finite overlap is exact."""
        raise NotImplementedError

    def uncollapse(self, model: SRNet) -> SRNet:
        """Deploy weights as the training form whose extra branches are zero: the same function."""
        raise SRDeployError(f"{model.spec.name}: {self.id} has no training form to convert to")

    # -------------------------------------------------------------- checkpoints
    def to_canonical(self, sd: StateDict, layout: str) -> StateDict:
        """Keys of `layout` renamed to this module's own (the challenge's layout where there is one)."""
        return sd

    def from_canonical(self, sd: StateDict, layout: str) -> StateDict:
        return sd

    def infer_spec(self, sd: StateDict, source: str) -> SpecT:
        """Hyper-parameters from canonical key names and tensor shapes."""
        raise NotImplementedError

    def expected_shapes(self, spec: SpecT) -> dict[str, tuple[int, ...]]:
        """Every key and shape of the network's state dict, from a meta-device build (allocates nothing)."""
        with torch.device("meta"):
            model = self.build(spec)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def key_similarity(self, keys: set[str]) -> float:
        """How much `keys` look like this architecture's, in [0, 1], for 'closest architecture' messages."""
        best = max((layout.overlap(keys) for layout in self.layouts), default=0.0)
        return best

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "presets": self.presets(),
            "input_range": self.input_range,
            "tiling": self.tiling.to_dict(),
            "min_input_size": self.min_input_size,
            "fp16": self.fp16_refusal or "supported",
            "onnx_ops": sorted(self.onnx_ops),
            "layouts": [layout.name for layout in self.layouts],
            "published": [w.name for w in self.published],
        }


def check_state_dict(arch: Architecture[Any], spec: ArchSpec, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Every missing, unexpected or mis-shaped key, by name, as one error."""
    expected = arch.expected_shapes(spec)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(k for k in set(expected) & set(sd) if tuple(sd[k].shape) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing keys {name_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {name_list(unexpected)}")
    if shapes:
        k = shapes[0]
        problems.append(f"wrong shapes {name_list(shapes)} (e.g. {k}: {tuple(sd[k].shape)}, expected {expected[k]})")
    if problems:
        raise SRDeployError(f"{source}: does not match {spec.name}: " + "; ".join(problems))


def highest_index(keys: set[str], pattern: str) -> int:
    """The largest integer captured by `pattern` (one group) over `keys`, or -1: block counts from key names."""
    rx = re.compile(pattern)
    found = [int(m.group(1)) for k in keys if (m := rx.match(k))]
    return max(found, default=-1)


def seeded_build(arch: Architecture[Any], spec: ArchSpec, seed: int | None) -> SRNet:
    """Build; with `seed`, the initial weights are reproducible without touching global RNG state."""
    if seed is None:
        return arch.build(spec)
    devices: list[int] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return arch.build(spec)
