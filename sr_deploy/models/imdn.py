"""The NTIRE 2022 ESR challenge's simplified IMDN, with optional collapsible linear blocks.

Plain models have exactly the state-dict keys of the challenge's checkpoints (``model.0``,
``model.1.sub.{i}.conv1.0``, ..., ``model.2``), so published weights load ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from sr_deploy.models.clb import ParallelConv
from sr_deploy.models.spec import ModelSpec


def _conv(in_ch: int, out_ch: int, clb: bool) -> nn.Module:
    if clb:
        return ParallelConv.clb(in_ch, out_ch, 3)
    return nn.Conv2d(in_ch, out_ch, 3, padding=1)


class IMDBlock(nn.Module):
    """Information multi-distillation block without channel attention (the challenge's variant)."""

    def __init__(self, spec: ModelSpec) -> None:
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


class IMDN(nn.Module):
    """Input: NCHW RGB in [0, 1]. Output: NCHW RGB, ``scale`` times larger, not clamped."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.channels
        body: list[nn.Module] = [IMDBlock(spec) for _ in range(spec.blocks)]
        body.append(nn.Conv2d(c, c, 3, padding=1))
        self.model = nn.Sequential(
            nn.Conv2d(spec.in_channels, c, 3, padding=1),
            ShortcutBlock(nn.Sequential(*body)),
            nn.Conv2d(c, spec.out_channels * spec.scale**2, 3, padding=1),
            nn.PixelShuffle(spec.scale),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out


def build_model(spec: ModelSpec, seed: int | None = None) -> IMDN:
    """Build a model; with `seed`, its initial weights are reproducible without touching global RNG state."""
    if seed is None:
        return IMDN(spec)
    devices: list[int] = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return IMDN(spec)


def receptive_radius(spec: ModelSpec) -> int:
    """LR pixels of context on each side that one output pixel depends on.

    Derived from the layer list: every 3x3 conv on the main path adds 1 (1x1 branches and the 1x1 fusion add 0).
    In a block the longest path is conv1 -> conv2 -> conv3 -> conv4 (4 convs); plus head, body tail and upsampler.
    """
    per_block = 4
    return 1 + spec.blocks * per_block + 1 + 1
