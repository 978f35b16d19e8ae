"""Parallel conv branches on one input: the trainable form of a collapsible linear block."""

from __future__ import annotations

import torch
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
