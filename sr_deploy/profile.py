"""Params, FLOPs, activations and conv count in the NTIRE 2022 ESR counter's convention.

FLOPs: multiply-accumulates of every conv (bias not counted) plus one per element of every activation
output; activations: elements of every conv output; both for one input of the given size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ModelProfile:
    arch: str
    input_hw: tuple[int, int]
    params: int
    flops: int
    activations: int
    convs: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        return d


_ACTIVATIONS = (nn.LeakyReLU, nn.ReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Sigmoid)


def profile_model(model: nn.Module, size: tuple[int, int] = (256, 256), arch: str = "") -> ModelProfile:
    """Count with forward hooks on one zero 1x3xHxW input, in the model's own dtype and device."""
    counts = {"macs": 0, "act_ops": 0, "activations": 0, "convs": 0}

    def on_conv(m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(m, nn.Conv2d)
        kh, kw = m.kernel_size
        counts["macs"] += out.numel() * (m.in_channels // m.groups) * kh * kw
        counts["activations"] += out.numel()
        counts["convs"] += 1

    def on_act(_m: nn.Module, _inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        counts["act_ops"] += out.numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv))
        elif isinstance(m, _ACTIVATIONS):
            handles.append(m.register_forward_hook(on_act))
    try:
        param = next(model.parameters())
        x = torch.zeros(1, 3, *size, dtype=param.dtype, device=param.device)
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    spec = getattr(model, "spec", None)
    return ModelProfile(
        arch=arch or (spec.name if spec is not None else type(model).__name__),
        input_hw=size,
        params=sum(p.numel() for p in model.parameters()),
        flops=counts["macs"] + counts["act_ops"],
        activations=counts["activations"],
        convs=counts["convs"],
    )
