"""RFDN (Liu et al. 2020): residual feature distillation blocks with Enhanced Spatial Attention.

The module's keys are those of the NTIRE 2022 ESR challenge's RFDN baseline (the AIM 2020 winner's configuration:
``fea_conv``, ``B1..B4``, ``c.0``, ``LR_conv``, ``upsampler.0``), so its checkpoint loads ``strict=True``.
The weights work on pixels in [0, 255]; ``SRNet`` scales the [0, 1] input and output around them.
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
class RFDNSpec(ArchSpec):
    """Defaults are the published checkpoint: 4 blocks of 50 channels, 25 distilled, ESA on 12."""

    ARCH: ClassVar[str] = "rfdn"

    blocks: int = 4
    channels: int = 50
    distilled: int = 25
    esa_channels: int = 12
    scale: int = 4
    slope: float = 0.05
    in_channels: int = 3
    out_channels: int = 3

    def problems(self) -> list[str]:
        out = out_of_range(
            self, {"blocks": (1, MAX_BLOCKS), "channels": (4, MAX_CHANNELS), "esa_channels": (1, MAX_CHANNELS)}
        )
        if not 1 <= self.distilled <= self.channels:
            out.append(f"distilled must be in 1..channels ({self.channels}), got {self.distilled}")
        out += slope_problem(self.slope)
        return out

    @property
    def name(self) -> str:
        if self == RFDNSpec():
            return "rfdn"
        base = f"rfdn-b{self.blocks}-c{self.channels}"
        if self.distilled != self.channels // 2:
            base += f"-d{self.distilled}"
        if self.esa_channels != self.channels // 4:
            base += f"-e{self.esa_channels}"
        if self.scale != 4:
            base += f"-x{self.scale}"
        if self.slope != 0.05:
            base += f"-s{self.slope:g}"
        return base


class RFDB(nn.Module):
    """Three shallow residual blocks, each with a 1x1 distillation branch; the distilled features fuse by 1x1."""

    def __init__(self, spec: RFDNSpec) -> None:
        super().__init__()
        c, d = spec.channels, spec.distilled
        self.c1_d = nn.Conv2d(c, d, 1)
        self.c1_r = nn.Conv2d(c, c, 3, padding=1)
        self.c2_d = nn.Conv2d(c, d, 1)
        self.c2_r = nn.Conv2d(c, c, 3, padding=1)
        self.c3_d = nn.Conv2d(c, d, 1)
        self.c3_r = nn.Conv2d(c, c, 3, padding=1)
        self.c4 = nn.Conv2d(c, d, 3, padding=1)
        self.c5 = nn.Conv2d(4 * d, c, 1)
        self.act = nn.LeakyReLU(spec.slope)
        self.esa = ESA(c, spec.esa_channels, deep=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.act(self.c1_d(x))
        r1 = self.act(self.c1_r(x) + x)
        d2 = self.act(self.c2_d(r1))
        r2 = self.act(self.c2_r(r1) + r1)
        d3 = self.act(self.c3_d(r2))
        r3 = self.act(self.c3_r(r2) + r2)
        d4 = self.act(self.c4(r3))
        out: torch.Tensor = self.esa(self.c5(torch.cat((d1, d2, d3, d4), dim=1)))
        return out


class RFDN(SRNet):
    """``fea_conv`` -> B1..Bn -> ``c`` (1x1 over all block outputs, LeakyReLU) -> ``LR_conv`` + skip -> upsampler."""

    spec: RFDNSpec

    def __init__(self, spec: RFDNSpec) -> None:
        super().__init__(spec, RFDNArch.input_range)
        c = spec.channels
        self.fea_conv = nn.Conv2d(spec.in_channels, c, 3, padding=1)
        self.block_names = [f"B{i}" for i in range(1, spec.blocks + 1)]
        for name in self.block_names:
            self.add_module(name, RFDB(spec))
        self.c = nn.Sequential(nn.Conv2d(spec.blocks * c, c, 1), nn.LeakyReLU(spec.slope))
        self.LR_conv = nn.Conv2d(c, c, 3, padding=1)
        self.upsampler = pixel_shuffle_tail(c, spec.out_channels, spec.scale)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for name in self.block_names:
            h = getattr(self, name)(h)
            outs.append(h)
        out: torch.Tensor = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return out

    def output_stage(self) -> nn.Module:
        return self.upsampler


_PRESET_RE = re.compile(
    r"^rfdn(?:-b(?P<b>[1-9]\d{0,3})-c(?P<c>[1-9]\d{0,4})(?:-d(?P<d>[1-9]\d{0,4}))?"
    r"(?:-e(?P<e>[1-9]\d{0,4}))?(?:-x(?P<x>[1-9]))?)?$"
)


class RFDNArch(Architecture[RFDNSpec]):
    id: ClassVar[str] = "rfdn"
    title: ClassVar[str] = "RFDN, residual feature distillation network (AIM 2020 winner; NTIRE 2022 ESR baseline)"
    spec_type = RFDNSpec
    input_range: ClassVar[float] = 255.0
    tiling: ClassVar[TilingPolicy] = TilingPolicy(
        exact=False,
        reason=INEXACT_TILING_REASON,
        # python benchmarks/tiling_inexact.py (benchmarks/results/tiling_inexact.md): worst Set14 image.
        measured="published weights on Set14: worst image "
        "47.4 / 54.5 dB from the whole image at 70 / 134-pixel tiles, mean PSNR within 0.004 dB",
    )
    min_input_size: ClassVar[int] = MIN_INPUT_SIZE
    # Measured (dynamo exporter, opset 18, dynamic batch/height/width): the blocks' LeakyRelu and Concat; ESA's
    # Relu, MaxPool, Resize, Sigmoid and Mul (the gate); Mul and Div by 255 for the weights' pixel range. Resize
    # gets its target size from Shape (with start/end) and Concat: it follows the input's dynamic height and width.
    onnx_ops: ClassVar[frozenset[str]] = frozenset(
        {"LeakyRelu", "Concat", "Relu", "MaxPool", "Resize", "Sigmoid", "Mul", "Div", "Shape"}
    )
    layouts: ClassVar[tuple[KeyLayout, ...]] = (
        KeyLayout(
            "ntire",
            # The distillation convs, the deep ESA and the fusion conv are what RFDN has and RLFN lacks: an RFDN
            # state dict missing one of them still ranks RFDN closest, since RLFN forbids the others.
            required=("fea_conv.weight", "B1.c1_d.weight", "B1.esa.conv_max.weight", "c.0.weight", "LR_conv.weight"),
            description="the challenge's RFDN: fea_conv, B<i>.c1_d..c5 / esa, c.0, LR_conv, upsampler.0",
        ),
    )
    published: ClassVar[tuple[PublishedWeights, ...]] = (
        PublishedWeights(
            "ntire:rfdn",
            "rfdn_baseline.pth",
            "11af8ec8ebd68689e90ef1e29044f9804c72d3bd9f7573820b7b26035782760c",
            "the NTIRE 2022 ESR challenge's RFDN baseline (AIM 2020 efficient SR winner, 4 blocks of 50 channels)",
            NTIRE_MODEL_ZOO + "rfdn_baseline.pth",
        ),
    )

    def smoke_spec(self) -> RFDNSpec:
        return RFDNSpec(blocks=1, channels=8, distilled=4, esa_channels=4)

    def presets(self) -> dict[str, str]:
        return {
            "rfdn": "the AIM 2020 winner / NTIRE 2022 baseline (4 blocks, 50 channels, ESA 12)",
            "rfdn-b<N>-c<C>[-d<D>][-e<E>][-x<S>]": "any size; distilled defaults to C/2, ESA channels to C/4",
        }

    def parse_preset(self, name: str) -> RFDNSpec | None:
        m = _PRESET_RE.match(name)
        if not m:
            return None
        if m.group("b") is None:
            return RFDNSpec()
        c = int(m.group("c"))
        return RFDNSpec(
            blocks=min(int(m.group("b")), MAX_BLOCKS + 1),
            channels=min(c, MAX_CHANNELS + 1),
            distilled=int(m.group("d")) if m.group("d") else max(c // 2, 1),
            esa_channels=int(m.group("e")) if m.group("e") else max(c // 4, 1),
            scale=int(m.group("x")) if m.group("x") else 4,
        )

    def build(self, spec: RFDNSpec) -> RFDN:
        return RFDN(spec)

    def receptive_radius(self, spec: RFDNSpec) -> int:
        # The local path only: fea_conv, then per block the chain c1_r -> c2_r -> c3_r -> c4 (the 1x1s and ESA's
        # conv1/conv_f/conv4 add nothing), LR_conv and the upsampler conv. ESA's coarse path is not counted.
        return 1 + 4 * spec.blocks + 1 + 1

    def infer_spec(self, sd: StateDict, source: str) -> RFDNSpec:
        blocks = highest_index(set(sd), r"^B(\d+)\.")
        if blocks < 1:
            raise SRDeployError(f"{source}: no RFDN blocks found (no B<i>.* keys)")
        head = tensor_of(sd, "fea_conv.weight", source)
        in_channels = int(head.shape[1])
        scale = scale_of(sd, in_channels, source)
        try:
            return RFDNSpec(
                blocks=blocks,
                channels=int(head.shape[0]),
                distilled=int(tensor_of(sd, "B1.c1_d.weight", source).shape[0]),
                esa_channels=int(tensor_of(sd, "B1.esa.conv1.weight", source).shape[0]),
                scale=scale,
                in_channels=in_channels,
                out_channels=in_channels,
            )
        except SRDeployError as e:
            raise SRDeployError(f"{source}: {e}") from None


ARCH = RFDNArch()
