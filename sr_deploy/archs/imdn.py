"""IMDN as the NTIRE 2022 ESR challenge simplified it, and the paper's collapsible-linear-block training form.

Plain models have exactly the state-dict keys of the challenge's checkpoints (``model.0``,
``model.1.sub.{i}.conv1.0``, ..., ``model.2``), so published weights load ``strict=True``. Pixels in [0, 1].
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
from torch import nn

from sr_deploy.archs.base import Architecture, SRNet, StateDict, highest_index
from sr_deploy.archs.blocks import ParallelConv
from sr_deploy.archs.spec import MAX_BLOCKS, MAX_CHANNELS, ArchSpec, KeyLayout, PublishedWeights, TilingPolicy
from sr_deploy.errors import SRDeployError

#: The 3x3 convs inside an IMDN block; any subset may carry a parallel 1x1 branch (a collapsible linear block).
BLOCK_CONVS: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4")

MODEL_ZOO = "https://raw.githubusercontent.com/ofsoundof/NTIRE2022_ESR/main/model_zoo/"


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
    #: block convs that are trained as 3x3 + parallel 1x1; empty means the plain (deploy) network.
    clb_convs: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clb_convs", tuple(self.clb_convs))
        self.check()

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
        return out

    @property
    def clb(self) -> bool:
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
            base += "-clb"
        elif self.clb_convs:
            base += "-clb[" + ",".join(self.clb_convs) + "]"
        return base

    def collapsed(self) -> IMDNSpec:
        return replace(self, clb_convs=())

    def with_clb(self, convs: tuple[str, ...] = BLOCK_CONVS) -> IMDNSpec:
        return replace(self, clb_convs=tuple(convs))


def _conv(in_ch: int, out_ch: int, clb: bool) -> nn.Module:
    if clb:
        return ParallelConv.clb(in_ch, out_ch, 3)
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class IMDBlock(nn.Module):
    """Information multi-distillation block without channel attention (the challenge's variant)."""

    def __init__(self, spec: IMDNSpec) -> None:
        super().__init__()
        c, d, r = spec.channels, spec.distilled, spec.remaining
        self.distilled = d
        self.remaining = r
        clb = set(spec.clb_convs)
        self.conv1 = nn.Sequential(_conv(c, c, "conv1" in clb), nn.LeakyReLU(spec.slope))
        self.conv2 = nn.Sequential(_conv(r, c, "conv2" in clb), nn.LeakyReLU(spec.slope))
        self.conv3 = nn.Sequential(_conv(r, c, "conv3" in clb), nn.LeakyReLU(spec.slope))
        self.conv4 = _conv(r, d, "conv4" in clb)
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

    def upsampler(self) -> nn.Module:
        return nn.Sequential(self.model[2], self.model[3])


_PRESET_RE = re.compile(r"^imdn-b(?P<blocks>[1-9]\d*)(?P<clb>-clb)?$")
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
            MODEL_ZOO + "team26_imdn_nb7.pth",
        ),
        PublishedWeights(
            "ntire:imdn-baseline",
            "imdn_baseline.pth",
            "115b4cc557eba9daaf1a6543c4858014c7e2a410655aafef7c8348ae54acc203",
            "the NTIRE 2022 ESR challenge's 8-block IMDN baseline",
            MODEL_ZOO + "imdn_baseline.pth",
        ),
    )

    def presets(self) -> dict[str, str]:
        return {
            "imdn-b8": "the NTIRE 2022 ESR challenge baseline (8 blocks)",
            "imdn-b7": "the paper's deploy model (7 blocks, collapsed)",
            "imdn-b7-clb": "the paper's training-time model (7 blocks, every block 3x3 with a parallel 1x1)",
            "imdn-b<N>[-clb]": "any number of blocks",
        }

    def parse_preset(self, name: str) -> IMDNSpec | None:
        m = _PRESET_RE.match(name)
        if not m:
            return None
        spec = IMDNSpec(blocks=min(int(m.group("blocks")), MAX_BLOCKS + 1))
        return spec.with_clb() if m.group("clb") else spec

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
        conv4 = next((v for k, v in sd.items() if k.startswith("model.1.sub.0.conv4.") and k.endswith("weight")), None)
        if conv4 is None:
            raise SRDeployError(f"{source}: missing model.1.sub.0.conv4 weights")
        distilled = int(conv4.shape[0])
        up = int(sd["model.2.weight"].shape[0])
        scale = round((up / max(in_channels, 1)) ** 0.5)
        if scale * scale * in_channels != up:
            raise SRDeployError(f"{source}: upsampler has {up} output channels, not {in_channels} x scale^2")
        clb = tuple(
            c for c in BLOCK_CONVS if any(k.startswith(f"model.1.sub.0.{c}") and ".branches.1." in k for k in sd)
        )
        try:
            return IMDNSpec(
                blocks=blocks,
                channels=channels,
                distilled=distilled,
                scale=scale,
                in_channels=in_channels,
                out_channels=in_channels,
                clb_convs=clb,
            )
        except SRDeployError as e:
            raise SRDeployError(f"{source}: {e}") from None


ARCH = IMDNArch()
