"""RLFN (Kong et al. 2022, team ByteESR, NTIRE 2022 ESR runtime winner): three convs, a skip and ESA per block.

The module's keys are the challenge's layout of team04's checkpoint (``fea_conv``, ``B1..B4``, ``LR_conv``,
``upsampler.0``); the authors' own layout (``conv_1``, ``block_1..``, ``conv_2``) holds the same tensors and is
renamed on load. The weights work on pixels in [0, 255]; ``SRNet`` scales the [0, 1] input and output around them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sr_deploy.archs.base import Architecture, SRNet, StateDict, highest_index
from sr_deploy.archs.esa import (
    ESA,
    INEXACT_TILING_REASON,
    MIN_INPUT_SIZE,
    pixel_shuffle_tail,
    scale_of,
    tensor_of,
)
from sr_deploy.archs.spec import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    NTIRE_MODEL_ZOO,
    ArchSpec,
    KeyLayout,
    PublishedWeights,
    TilingPolicy,
    out_of_range,
    slope_problem,
)
from sr_deploy.errors import SRDeployError


@dataclass(frozen=True)
class RLFNSpec(ArchSpec):
    """Defaults are the published (pruned) challenge model: 4 blocks, 46 channels, 48 inside a block, ESA on 16."""

    ARCH: ClassVar[str] = "rlfn"

    blocks: int = 4
    channels: int = 46
    mid_channels: int = 48
    esa_channels: int = 16
    scale: int = 4
    slope: float = 0.05
    in_channels: int = 3
    out_channels: int = 3

    def problems(self) -> list[str]:
        bounds = {"blocks": (1, MAX_BLOCKS), "channels": (4, MAX_CHANNELS), "mid_channels": (4, MAX_CHANNELS)}
        return out_of_range(self, {**bounds, "esa_channels": (1, MAX_CHANNELS)}) + slope_problem(self.slope)

    @property
    def name(self) -> str:
        for preset, spec in _NAMED.items():
            if self == spec:
                return preset
        base = f"rlfn-b{self.blocks}-c{self.channels}"
        if self.mid_channels != self.channels:
            base += f"-m{self.mid_channels}"
        if self.esa_channels != 16:
            base += f"-e{self.esa_channels}"
        if self.scale != 4:
            base += f"-x{self.scale}"
        if self.slope != 0.05:
            base += f"-s{self.slope:g}"
        return base


_NAMED: dict[str, RLFNSpec] = {
    "rlfn": RLFNSpec(),
    # The paper's small model; its full RLFN (52 channels) is the generic name rlfn-b6-c52.
    "rlfn-s": RLFNSpec(blocks=6, channels=48, mid_channels=48),
}


class RLFB(nn.Module):
    """Residual local feature block: three 3x3 convs with LeakyReLU, a skip, then a 1x1 and ESA."""

    def __init__(self, spec: RLFNSpec) -> None:
        super().__init__()
        c, m = spec.channels, spec.mid_channels
        self.c1_r = nn.Conv2d(c, m, 3, padding=1)
        self.c2_r = nn.Conv2d(m, m, 3, padding=1)
        self.c3_r = nn.Conv2d(m, c, 3, padding=1)
        self.c5 = nn.Conv2d(c, c, 1)
        self.esa = ESA(c, spec.esa_channels, deep=False)
        self.act = nn.LeakyReLU(spec.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.c1_r(x))
        h = self.act(self.c2_r(h))
        h = self.act(self.c3_r(h))
        out: torch.Tensor = self.esa(self.c5(h + x))
        return out


class RLFN(SRNet):
    """``fea_conv`` -> B1..Bn -> ``LR_conv`` + skip -> upsampler."""

    spec: RLFNSpec

    def __init__(self, spec: RLFNSpec) -> None:
        super().__init__(spec, RLFNArch.input_range)
        c = spec.channels
        self.fea_conv = nn.Conv2d(spec.in_channels, c, 3, padding=1)
        self.block_names = [f"B{i}" for i in range(1, spec.blocks + 1)]
        for name in self.block_names:
            self.add_module(name, RLFB(spec))
        self.LR_conv = nn.Conv2d(c, c, 3, padding=1)
        self.upsampler = pixel_shuffle_tail(c, spec.out_channels, spec.scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        h = fea
        for name in self.block_names:
            h = getattr(self, name)(h)
        out: torch.Tensor = self.LR_conv(h) + fea
        return out

    def output_stage(self) -> nn.Module:
        return self.upsampler


#: The authors' key prefixes -> the challenge's (this module's); blocks are renumbered by pattern.
_AUTHOR_PREFIXES = {"conv_1.": "fea_conv.", "conv_2.": "LR_conv."}
_AUTHOR_BLOCK = re.compile(r"^block_(\d+)\.")
_OWN_BLOCK = re.compile(r"^B(\d+)\.")

_PRESET_RE = re.compile(
    r"^rlfn-b(?P<b>[1-9]\d{0,3})-c(?P<c>[1-9]\d{0,4})(?:-m(?P<m>[1-9]\d{0,4}))?"
    r"(?:-e(?P<e>[1-9]\d{0,4}))?(?:-x(?P<x>[1-9]))?$"
)


def _rename(sd: StateDict, prefixes: dict[str, str], block: re.Pattern[str], block_fmt: str) -> StateDict:
    out: StateDict = {}
    for key, tensor in sd.items():
        new = key
        for old, repl in prefixes.items():
            if key.startswith(old):
                new = repl + key[len(old) :]
                break
        else:
            new = block.sub(lambda m: block_fmt.format(m.group(1)), key, count=1)
        out[new] = tensor
    return out


class RLFNArch(Architecture[RLFNSpec]):
    id: ClassVar[str] = "rlfn"
    title: ClassVar[str] = "RLFN, residual local feature network (team ByteESR, NTIRE 2022 ESR runtime winner)"
    spec_type = RLFNSpec
    input_range: ClassVar[float] = 255.0
    tiling: ClassVar[TilingPolicy] = TilingPolicy(
        exact=False,
        reason=INEXACT_TILING_REASON,
        # python benchmarks/tiling_inexact.py (benchmarks/results/tiling_inexact.md): worst Set14 image.
        measured="published weights on Set14: worst image "
        "45.1 / 55.1 dB from the whole image at 62 / 126-pixel tiles, mean PSNR within 0.013 dB",
    )
    min_input_size: ClassVar[int] = MIN_INPUT_SIZE
    # Measured (dynamo exporter, opset 18, dynamic batch/height/width): the blocks' LeakyRelu; ESA's MaxPool,
    # Resize, Sigmoid and Mul (the gate); Mul and Div by 255 for the weights' pixel range. Resize gets its target
    # size from Shape (with start/end) and Concat: it follows the input's dynamic height and width.
    onnx_ops: ClassVar[frozenset[str]] = frozenset(
        {"LeakyRelu", "MaxPool", "Resize", "Sigmoid", "Mul", "Div", "Shape", "Concat"}
    )
    layouts: ClassVar[tuple[KeyLayout, ...]] = (
        KeyLayout(
            "ntire",
            required=("fea_conv.weight", "B1.c1_r.weight", "B1.c5.weight", "B1.esa.conv1.weight", "LR_conv.weight"),
            # RFDN's keys share these names: its distillation convs and deep ESA tell the two apart.
            forbidden=("B1.c1_d.weight", "B1.esa.conv_max.weight", "c.0.weight"),
            description="the challenge's RLFN (team04): fea_conv, B<i>.c1_r..c3_r / c5 / esa, LR_conv, upsampler.0",
        ),
        KeyLayout(
            "authors",
            required=("conv_1.weight", "block_1.c1_r.weight", "block_1.esa.conv1.weight", "conv_2.weight"),
            forbidden=("block_1.c1_d.weight", "block_1.esa.conv_max.weight"),
            description="the RLFN authors' release: conv_1, block_<i>.c1_r..c3_r / c5 / esa, conv_2, upsampler.0",
        ),
    )
    published: ClassVar[tuple[PublishedWeights, ...]] = (
        PublishedWeights(
            "ntire:rlfn",
            "team04_rlfn.pth",
            "ca81b7757708ce749ac3766589690db6c2729961d026c0137e7659924ec36622",
            "ByteESR (team 04), NTIRE 2022 ESR runtime winner: RLFN with 4 blocks of 46 channels",
            NTIRE_MODEL_ZOO + "team04_rlfn.pth",
        ),
    )

    def smoke_spec(self) -> RLFNSpec:
        return RLFNSpec(blocks=1, channels=8, mid_channels=8, esa_channels=4)

    def presets(self) -> dict[str, str]:
        return {
            "rlfn": "the NTIRE 2022 challenge model (4 blocks, 46 channels, 48 inside blocks, ESA 16)",
            "rlfn-s": "the paper's RLFN-S (6 blocks, 48 channels)",
            "rlfn-b6-c52": "the paper's RLFN (6 blocks, 52 channels)",
            "rlfn-b<N>-c<C>[-m<M>][-e<E>][-x<S>]": "any size; mid channels default to C, ESA channels to 16",
        }

    def parse_preset(self, name: str) -> RLFNSpec | None:
        if name in _NAMED:
            return _NAMED[name]
        m = _PRESET_RE.match(name)
        if not m:
            return None
        c = min(int(m.group("c")), MAX_CHANNELS + 1)
        return RLFNSpec(
            blocks=min(int(m.group("b")), MAX_BLOCKS + 1),
            channels=c,
            mid_channels=min(int(m.group("m")), MAX_CHANNELS + 1) if m.group("m") else c,
            esa_channels=min(int(m.group("e")), MAX_CHANNELS + 1) if m.group("e") else 16,
            scale=int(m.group("x")) if m.group("x") else 4,
        )

    def build(self, spec: RLFNSpec) -> RLFN:
        return RLFN(spec)

    def receptive_radius(self, spec: RLFNSpec) -> int:
        # The local path only: fea_conv, then per block c1_r -> c2_r -> c3_r (c5 and ESA's conv1/conv_f/conv4 are
        # 1x1), LR_conv and the upsampler conv. ESA's coarse path is not counted.
        return 1 + 3 * spec.blocks + 1 + 1

    def to_canonical(self, sd: StateDict, layout: str) -> StateDict:
        if layout == "authors":
            return _rename(sd, _AUTHOR_PREFIXES, _AUTHOR_BLOCK, "B{}.")
        return sd

    def from_canonical(self, sd: StateDict, layout: str) -> StateDict:
        if layout == "authors":
            back = {v: k for k, v in _AUTHOR_PREFIXES.items()}
            return _rename(sd, back, _OWN_BLOCK, "block_{}.")
        return sd

    def infer_spec(self, sd: StateDict, source: str) -> RLFNSpec:
        blocks = highest_index(set(sd), _OWN_BLOCK.pattern)
        if blocks < 1:
            raise SRDeployError(f"{source}: no RLFN blocks found (no B<i>.* keys)")
        head = tensor_of(sd, "fea_conv.weight", source)
        in_channels = int(head.shape[1])
        scale = scale_of(sd, in_channels, source)
        try:
            return RLFNSpec(
                blocks=blocks,
                channels=int(head.shape[0]),
                mid_channels=int(tensor_of(sd, "B1.c1_r.weight", source).shape[0]),
                esa_channels=int(tensor_of(sd, "B1.esa.conv1.weight", source).shape[0]),
                scale=scale,
                in_channels=in_channels,
                out_channels=in_channels,
            )
        except SRDeployError as e:
            raise SRDeployError(f"{source}: {e}") from None


ARCH = RLFNArch()
