"""IMDN as the NTIRE 2022 ESR challenge simplified it, and its training forms with collapsible blocks.

Plain models have exactly the state-dict keys of the challenge's checkpoints (``model.0``,
``model.1.sub.{i}.conv1.0``, ..., ``model.2``), so published weights load ``strict=True``. Pixels in [0, 1].

Training forms put a collapsible block in place of the 3x3 convs listed in ``clb_convs``; ``block_type`` says which:
``clb`` (the paper: 3x3 with a parallel 1x1), ``rrrb`` (FMEN's 1x1 expand, 3x3, 1x1 squeeze, plus identity) or
``ecb`` (ECBSR's 3x3, 1x1-3x3 and 1x1-Sobel/Laplacian branches, plus identity). Every one collapses to the same
plain network, so block types can be compared at an identical deploy cost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from sr_deploy.archs.base import Architecture, SRNet, StateDict, highest_index
from sr_deploy.archs.blocks import ECB, RRRB, ParallelConv
from sr_deploy.archs.spec import (
    MAX_BLOCKS,
    MAX_CHANNELS,
    NTIRE_MODEL_ZOO,
    ArchSpec,
    KeyLayout,
    PublishedWeights,
    TilingPolicy,
)
from sr_deploy.errors import SRDeployError

#: The 3x3 convs inside an IMDN block; any subset may be trained as a collapsible block.
BLOCK_CONVS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4")

#: What the convs in ``clb_convs`` are trained as. "plain" has none.
BLOCK_TYPES: tuple[str, ...] = ("plain", "clb", "rrrb", "ecb")


@dataclass(frozen=True)
class IMDNSpec(ArchSpec):
    """The challenge's simplified IMDN, optionally with collapsible linear blocks (CLB)."""

    ARCH: ClassVar[str] = "imdn"

    blocks: int = 8
    channels: int = 64
    distilled: int = 16
    scale: int = 4
    slope: float = 0.05
    in_channels: int = 3
    out_channels: int = 3
    #: block convs that are trained as a collapsible block; empty means the plain (deploy) network.
    clb_convs: tuple[str, ...] = field(default_factory=tuple)
    #: which block: one of BLOCK_TYPES. Empty (a spec written before the field) means what it meant then:
    #: "clb" when clb_convs is set, else "plain".
    block_type: str = ""
    #: rrrb / ecb: pad the expand 1x1's output with its bias (exact fold at the border, as FMEN and ECBSR do);
    #: False zero-pads, and `srdeploy fuse` then refuses the border error unless --accept-border-error.
    pad_bias: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "clb_convs", tuple(self.clb_convs))
        if not self.block_type:
            object.__setattr__(self, "block_type", "clb" if self.clb_convs else "plain")
        super().__post_init__()

    def problems(self) -> list[str]:
        out = []
        if not 1 <= self.blocks <= MAX_BLOCKS:
            out.append(f"blocks must be in 1..{MAX_BLOCKS}, got {self.blocks}")
        if not 4 <= self.channels <= MAX_CHANNELS:
            out.append(f"channels must be in 4..{MAX_CHANNELS}, got {self.channels}")
        if not 0 < self.distilled < self.channels:
            out.append(f"distilled must be in (0, channels={self.channels}), got {self.distilled}")
        elif self.channels != 4 * self.distilled:
            out.append(
                f"channels ({self.channels}) must be 4 x distilled ({self.distilled}): "
                "the 1x1 fusion concatenates four distilled splits"
            )
        unknown = [c for c in self.clb_convs if c not in BLOCK_CONVS]
        if unknown:
            out.append(f"unknown CLB conv(s) {unknown}; expected a subset of {list(BLOCK_CONVS)}")
        if self.block_type not in BLOCK_TYPES:
            out.append(f"block_type must be one of {list(BLOCK_TYPES)}, got {self.block_type!r}")
        elif self.block_type == "plain" and self.clb_convs:
            out.append(f"block_type 'plain' has no training blocks, but clb_convs is {list(self.clb_convs)}")
        elif self.block_type != "plain" and not self.clb_convs:
            out.append(
                f"block_type {self.block_type!r} needs clb_convs (the block convs to train as {self.block_type}), "
                f"e.g. {list(BLOCK_CONVS)}; use block_type 'plain' for the deploy network"
            )
        return out

    @property
    def clb(self) -> bool:
        """True when the network carries training blocks (of any type)."""
        return bool(self.clb_convs)

    @property
    def training_form(self) -> bool:
        return self.clb

    @property
    def remaining(self) -> int:
        return self.channels - self.distilled

    @property
    def name(self) -> str:
        base = f"imdn-b{self.blocks}"
        if (self.channels, self.distilled, self.scale, self.slope) != (64, 16, 4, 0.05):
            base += f"-c{self.channels}-d{self.distilled}-x{self.scale}"
        if self.clb_convs == BLOCK_CONVS:
            base += f"-{self.block_type}"
        elif self.clb_convs:
            base += f"-{self.block_type}[" + ",".join(self.clb_convs) + "]"
        if self.clb_convs and not self.pad_bias and self.block_type in ("rrrb", "ecb"):
            base += "-zeropad"
        return base

    def collapsed(self) -> IMDNSpec:
        return replace(self, clb_convs=(), block_type="plain", pad_bias=True)

    def with_clb(self, convs: tuple[str, ...] = BLOCK_CONVS) -> IMDNSpec:
        """The paper's training form (3x3 + parallel 1x1) on `convs`; no convs gives the plain network."""
        return self.with_blocks("clb" if convs else "plain", convs)

    def with_blocks(self, block_type: str, convs: tuple[str, ...] = BLOCK_CONVS) -> IMDNSpec:
        """`block_type` on `convs` (all four by default)."""
        convs = () if block_type == "plain" else tuple(convs)
        return replace(self, clb_convs=convs, block_type=block_type, pad_bias=True)


def _conv(in_ch: int, out_ch: int, block_type: str, pad_bias: bool = True) -> nn.Module:
    if block_type == "clb":
        return ParallelConv.clb(in_ch, out_ch, 3)
    if block_type == "rrrb":
        return RRRB(in_ch, out_ch, pad_bias=pad_bias)
    if block_type == "ecb":
        return ECB(in_ch, out_ch, pad_bias=pad_bias)
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class IMDBlock(nn.Module):
    """Information multi-distillation block without channel attention (the challenge's variant)."""

    def __init__(self, spec: IMDNSpec) -> None:
        super().__init__()
        c, d, r = spec.channels, spec.distilled, spec.remaining
        self.distilled = d
        self.remaining = r
        clb = set(spec.clb_convs)

        def conv(name: str, in_ch: int, out_ch: int) -> nn.Module:
            return _conv(in_ch, out_ch, spec.block_type if name in clb else "plain", spec.pad_bias)

        self.conv1 = nn.Sequential(conv("conv1", c, c), nn.LeakyReLU(spec.slope))
        self.conv2 = nn.Sequential(conv("conv2", r, c), nn.LeakyReLU(spec.slope))
        self.conv3 = nn.Sequential(conv("conv3", r, c), nn.LeakyReLU(spec.slope))
        self.conv4 = conv("conv4", r, d)
        self.conv1x1 = nn.Conv2d(4 * d, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r1 = torch.split(self.conv1(x), [self.distilled, self.remaining], dim=1)
        d2, r2 = torch.split(self.conv2(r1), [self.distilled, self.remaining], dim=1)
        d3, r3 = torch.split(self.conv3(r2), [self.distilled, self.remaining], dim=1)
        d4 = self.conv4(r3)
        out: torch.Tensor = x + self.conv1x1(torch.cat((d1, d2, d3, d4), dim=1))
        return out


class ShortcutBlock(nn.Module):
    """x + sub(x); the attribute name ``sub`` is part of the checkpoint layout."""

    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.sub(x)
        return out


class IMDN(SRNet):
    """``model = [head conv, shortcut(blocks + body tail conv), upsampler conv, PixelShuffle]``."""

    spec: IMDNSpec

    def __init__(self, spec: IMDNSpec) -> None:
        super().__init__(spec, IMDNArch.input_range)
        c = spec.channels
        body: list[nn.Module] = [IMDBlock(spec) for _ in range(spec.blocks)]
        body.append(nn.Conv2d(c, c, 3, padding=1))
        self.model = nn.Sequential(
            nn.Conv2d(spec.in_channels, c, 3, padding=1),
            ShortcutBlock(nn.Sequential(*body)),
            nn.Conv2d(c, spec.out_channels * spec.scale**2, 3, padding=1),
            nn.PixelShuffle(spec.scale),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model[1](self.model[0](x))
        return out

    def output_stage(self) -> nn.Module:
        return nn.Sequential(self.model[2], self.model[3])


_PRESET_RE = re.compile(r"^imdn-b(?P<blocks>[1-9]\d*)(?:-(?P<block>clb|rrrb|ecb))?$")
_BLOCK_RE = r"^model\.1\.sub\.(\d+)\.conv1\."


class IMDNArch(Architecture[IMDNSpec]):
    id: ClassVar[str] = "imdn"
    title: ClassVar[str] = "IMDN as simplified by the NTIRE 2022 ESR challenge (baseline; team26's collapsible blocks)"
    spec_type = IMDNSpec
    input_range: ClassVar[float] = 1.0
    tiling: ClassVar[TilingPolicy] = TilingPolicy(exact=True)
    onnx_ops: ClassVar[frozenset[str]] = frozenset({"LeakyRelu", "Split", "Concat"})
    layouts: ClassVar[tuple[KeyLayout, ...]] = (
        KeyLayout(
            "ntire",
            required=("model.0.weight", "model.2.weight"),
            description="the challenge's IMDN: model.0, model.1.sub.<i>.conv1..4 / conv1x1, model.2",
        ),
    )
    published: ClassVar[tuple[PublishedWeights, ...]] = (
        PublishedWeights(
            "ntire:team26",
            "team26_imdn_nb7.pth",
            "c8bd64b7eebe5d955c00fb5626385e13fa5775518be77a265f3f74b5e33e55a7",
            "xilinxSR (team 26), collapsed 7-block IMDN of 'Efficient Image SR with Collapsible Linear Blocks'",
            NTIRE_MODEL_ZOO + "team26_imdn_nb7.pth",
        ),
        PublishedWeights(
            "ntire:imdn-baseline",
            "imdn_baseline.pth",
            "115b4cc557eba9daaf1a6543c4858014c7e2a410655aafef7c8348ae54acc203",
            "the NTIRE 2022 ESR challenge's 8-block IMDN baseline",
            NTIRE_MODEL_ZOO + "imdn_baseline.pth",
        ),
    )

    def presets(self) -> dict[str, str]:
        return {
            "imdn-b8": "the NTIRE 2022 ESR challenge baseline (8 blocks)",
            "imdn-b7": "the paper's deploy model (7 blocks, collapsed)",
            "imdn-b7-clb": "the paper's training-time model (7 blocks, every block 3x3 with a parallel 1x1)",
            "imdn-b7-rrrb": "the paper's network trained with FMEN's RRRB (1x1 expand, 3x3, 1x1 squeeze) per block 3x3",
            "imdn-b7-ecb": "the paper's network trained with ECBSR's ECB (3x3, 1x1-3x3, 1x1-Sobel/Laplacian) per 3x3",
            "imdn-b<N>[-clb|-rrrb|-ecb]": "any number of blocks",
        }

    def parse_preset(self, name: str) -> IMDNSpec | None:
        m = _PRESET_RE.match(name)
        if not m:
            return None
        spec = IMDNSpec(blocks=min(int(m.group("blocks")), MAX_BLOCKS + 1))
        return spec.with_blocks(m.group("block")) if m.group("block") else spec

    def smoke_spec(self) -> IMDNSpec:
        return IMDNSpec(blocks=1, channels=16, distilled=4)

    def training_spec(self, spec: IMDNSpec) -> IMDNSpec:
        return spec if spec.clb else spec.with_clb()

    def build(self, spec: IMDNSpec) -> IMDN:
        return IMDN(spec)

    def receptive_radius(self, spec: IMDNSpec) -> int:
        # Every 3x3 on the main path adds 1; per block the longest path is conv1 -> conv2 -> conv3 -> conv4.
        return 1 + spec.blocks * 4 + 1 + 1

    def uncollapse(self, model: SRNet) -> IMDN:
        spec = model.spec
        assert isinstance(spec, IMDNSpec)
        if spec.clb:
            raise SRDeployError(f"uncollapse expects a plain model, got {spec.name}")
        clb = IMDN(spec.with_clb()).to(next(model.parameters()).device)
        plain_sd = model.state_dict()
        new_sd: StateDict = {}
        for key, tensor in clb.state_dict().items():
            if ".branches.0." in key:
                new_sd[key] = plain_sd[key.replace(".branches.0.", ".")].clone()
            elif ".branches.1." in key:
                new_sd[key] = torch.zeros_like(tensor)
            else:
                new_sd[key] = plain_sd[key].clone()
        clb.load_state_dict(new_sd, strict=True)
        return clb

    def infer_spec(self, sd: StateDict, source: str) -> IMDNSpec:
        keys = set(sd)
        blocks = highest_index(keys, _BLOCK_RE) + 1
        if blocks < 1:
            raise SRDeployError(f"{source}: no IMDN blocks found (no model.1.sub.<i>.conv1 keys)")
        head = sd["model.0.weight"]
        channels, in_channels = int(head.shape[0]), int(head.shape[1])
        fusion = sd.get("model.1.sub.0.conv1x1.weight")
        if fusion is None or fusion.ndim != 4:
            raise SRDeployError(f"{source}: missing model.1.sub.0.conv1x1.weight")
        distilled = int(fusion.shape[1]) // 4  # the 1x1 fusion concatenates four distilled splits
        up = int(sd["model.2.weight"].shape[0])
        scale = round((up / max(in_channels, 1)) ** 0.5)
        if scale * scale * in_channels != up:
            raise SRDeployError(f"{source}: upsampler has {up} output channels, not {in_channels} x scale^2")
        # A training block leaves its own key names: the parallel 1x1 (clb), RRRB's expand conv, ECB's Sobel branch.
        markers = {"clb": ".branches.1.", "rrrb": ".expand_conv.", "ecb": ".conv1x1_sbx."}
        found = {
            (c, t)
            for c in BLOCK_CONVS
            for t, mark in markers.items()
            if any(k.startswith(f"model.1.sub.0.{c}.") and mark in k for k in sd)
        }
        types = sorted({t for _, t in found})
        if len(types) > 1:
            raise SRDeployError(f"{source}: blocks of several types ({', '.join(types)}); one block_type per network")
        clb = tuple(c for c in BLOCK_CONVS if any(fc == c for fc, _ in found))
        try:
            return IMDNSpec(
                blocks=blocks,
                channels=channels,
                distilled=distilled,
                scale=scale,
                in_channels=in_channels,
                out_channels=in_channels,
                clb_convs=clb,
                block_type=types[0] if types else "plain",
            )
        except SRDeployError as e:
            raise SRDeployError(f"{source}: {e}") from None


ARCH = IMDNArch()
