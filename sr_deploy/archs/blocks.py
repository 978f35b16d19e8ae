"""Trainable forms of collapsible linear blocks: parallel branches (CLB, RepVGG), FMEN's RRRB and ECBSR's ECB.

Each is linear in its input and folds into one conv (``sr_deploy.fusion``); none needs a fold rule of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ParallelConv(nn.Module):
    """Sum of parallel branches applied to the same input.

    A branch is an ``nn.Conv2d``, an ``nn.Sequential(nn.Conv2d, nn.BatchNorm2d)``, or (for ``identity``)
    ``nn.Identity`` / ``nn.BatchNorm2d`` when in == out channels. Every branch is linear, so the sum folds
    exactly into one conv with the largest kernel (see ``sr_deploy.fusion``).
    """

    def __init__(self, branches: list[nn.Module], identity: nn.Module | None = None) -> None:
        super().__init__()
        if not branches:
            raise ValueError("ParallelConv needs at least one conv branch")
        self.branches = nn.ModuleList(branches)
        self.identity = identity

    @classmethod
    def clb(cls, in_ch: int, out_ch: int, kernel: int = 3, bias: bool = True) -> ParallelConv:
        """A k x k conv with a parallel 1x1 conv, as in the paper."""
        return cls(
            [
                nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias),
                nn.Conv2d(in_ch, out_ch, 1, padding=0, bias=bias),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.branches[0](x)
        for b in self.branches[1:]:
            out = out + b(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return out


def pad_with_bias(t: torch.Tensor, bias: torch.Tensor | None, pad: int = 1) -> torch.Tensor:
    """Pad `t` by `pad` pixels with `bias` (per channel) instead of zeros.

    What a 1x1 conv with that bias gives on a zero-padded input's ring: so a following unpadded k x k conv sees
    at the border what the folded conv will see, and the fold is exact there too (FMEN's RRRB, ECBSR). Written
    as pad + a border mask rather than in-place writes so that torch.fx can trace it; both terms are exact
    (t + 0 inside, 0 + bias on the ring).
    """
    if bias is None:
        return F.pad(t, (pad, pad, pad, pad))
    ring = F.pad(torch.zeros_like(t), (pad, pad, pad, pad), value=1.0)
    return F.pad(t, (pad, pad, pad, pad)) + ring * bias.view(1, -1, 1, 1)


class RRRB(nn.Module):
    """FMEN's re-parameterizable residual-in-residual block: 1x1 expand, 3x3 on the expanded features plus their
    identity, 1x1 squeeze, plus the block's identity when in == out. Folds into one 3x3.

    With `pad_bias` (FMEN's own choice) the 3x3 sees the expand conv's bias on its padded ring, so the fold is exact
    at the border; without it (zero padding, as a naive implementation would) the fold differs at the border.
    """

    def __init__(self, in_ch: int, out_ch: int, *, expand: int = 2, pad_bias: bool = True) -> None:
        super().__init__()
        mid = expand * out_ch
        self.expand_conv = nn.Conv2d(in_ch, mid, 1)
        self.fea_conv = nn.Conv2d(mid, mid, 3)  # padding 0: the ring comes from pad_with_bias
        self.reduce_conv = nn.Conv2d(mid, out_ch, 1)
        self.identity = in_ch == out_ch
        self.pad_bias = pad_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand_conv(x)
        padded = pad_with_bias(out, self.expand_conv.bias if self.pad_bias else None)
        out = self.reduce_conv(self.fea_conv(padded) + out)
        result: torch.Tensor = out + x if self.identity else out
        return result


#: ECBSR's fixed edge kernels (Zhang et al., "Edge-oriented Convolution Block for Real-time Super Resolution").
EDGE_KERNELS: dict[str, tuple[tuple[float, ...], ...]] = {
    "sobel_x": ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0)),
    "sobel_y": ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0)),
    "laplacian": ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0)),
}


class ExpandConv(nn.Module):
    """ECB's 1x1 then 3x3 branch (the 3x3 sees the 1x1's bias on its padded ring)."""

    def __init__(self, in_ch: int, out_ch: int, mid: int, *, pad_bias: bool = True) -> None:
        super().__init__()
        self.expand = nn.Conv2d(in_ch, mid, 1)
        self.conv = nn.Conv2d(mid, out_ch, 3)
        self.pad_bias = pad_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x)
        out: torch.Tensor = self.conv(pad_with_bias(y, self.expand.bias if self.pad_bias else None))
        return out


class EdgeConv(nn.Module):
    """ECB's 1x1 then a fixed depthwise edge kernel (Sobel x/y or Laplacian) with a learnable per-channel scale and
    bias. The kernel is a non-persistent buffer: part of the architecture, not of the checkpoint."""

    mask: torch.Tensor

    def __init__(self, in_ch: int, out_ch: int, kind: str, *, pad_bias: bool = True) -> None:
        super().__init__()
        if kind not in EDGE_KERNELS:
            raise ValueError(f"unknown edge kernel {kind!r}; expected one of {sorted(EDGE_KERNELS)}")
        self.expand = nn.Conv2d(in_ch, out_ch, 1)
        # ECBSR's initialisation: small random scale and bias, so the branch starts near zero.
        self.scale = nn.Parameter(torch.randn(out_ch, 1, 1, 1) * 1e-3)
        self.bias = nn.Parameter(torch.randn(out_ch) * 1e-3)
        kernel = torch.tensor(EDGE_KERNELS[kind])
        self.register_buffer("mask", kernel.expand(out_ch, 1, 3, 3).clone(), persistent=False)
        self.kind = kind
        self.pad_bias = pad_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = pad_with_bias(self.expand(x), self.expand.bias if self.pad_bias else None)
        return F.conv2d(y, self.scale * self.mask, self.bias, groups=self.mask.shape[0])


class ECB(nn.Module):
    """ECBSR's edge-oriented convolution block: 3x3; 1x1 then 3x3; 1x1 then Sobel-x, Sobel-y and Laplacian; plus the
    identity when in == out (``with_idt``). Folds into one 3x3."""

    def __init__(self, in_ch: int, out_ch: int, *, depth_multiplier: int = 2, pad_bias: bool = True) -> None:
        super().__init__()
        self.conv3x3 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv1x1_3x3 = ExpandConv(in_ch, out_ch, depth_multiplier * out_ch, pad_bias=pad_bias)
        self.conv1x1_sbx = EdgeConv(in_ch, out_ch, "sobel_x", pad_bias=pad_bias)
        self.conv1x1_sby = EdgeConv(in_ch, out_ch, "sobel_y", pad_bias=pad_bias)
        self.conv1x1_lpl = EdgeConv(in_ch, out_ch, "laplacian", pad_bias=pad_bias)
        self.identity = in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3x3(x) + self.conv1x1_3x3(x) + self.conv1x1_sbx(x) + self.conv1x1_sby(x) + self.conv1x1_lpl(x)
        result: torch.Tensor = out + x if self.identity else out
        return result
