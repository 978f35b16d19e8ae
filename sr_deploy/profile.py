"""Params, FLOPs, activations and conv count in the NTIRE 2022 ESR counter's convention.

FLOPs: multiply-accumulates of every conv (bias not counted) plus one per element of the output of every
ReLU-family activation module (not Sigmoid); activations: elements of every conv output; both for one input of the
given size. Like the challenge's counter, it sees modules only: functional calls (pooling, resize, gating) are free.
"""

from __future__ import annotations

import copy
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
    #: The convs' multiply-accumulates alone (bias not counted): ``flops`` less the activation ops.
    macs: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        return d


#: The activation modules the challenge's counter (KAIR's utils_modelsummary, from ptflops) charges one op per output
#: element. Sigmoid, SiLU and GELU are not among them: RFDN's and RLFN's reference FLOPs leave ESA's Sigmoid out
#: exactly (4 blocks x channels x 256 x 256 ops), while RFDN's ESA ReLUs are in.
_ACTIVATIONS = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)


def meta_copy(model: nn.Module) -> nn.Module:
    """`model` with every parameter and buffer on the meta device: shapes and dtypes only, no storage. A forward
    pass on it computes every shape without touching memory, so it costs the same at 64x64 and at 16384x16384."""
    if all(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return model
    return copy.deepcopy(model).to("meta")


def profile_model(model: nn.Module, size: tuple[int, int] = (256, 256), arch: str = "") -> ModelProfile:
    """Count with forward hooks on one 1x3xHxW input on the meta device, in the model's own dtype.

    Counting needs shapes only: a real forward at 4096x4096 would need tens of GB (and torch 2.13's CPU 1x1 conv
    crashes on 1x64x4096x4096 on its own), while the meta forward takes milliseconds at any size.
    """
    param = next(model.parameters())
    dtype = param.dtype
    model = meta_copy(model)
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
        x = torch.zeros(1, 3, *size, dtype=dtype, device="meta")
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    spec = getattr(model, "spec", None)
    return ModelProfile(
        arch=arch or (spec.name if spec is not None else type(model).__name__),
        input_hw=size,
        params=sum(p.numel() for p in model.parameters()),  # numel needs no storage: meta counts the same
        flops=counts["macs"] + counts["act_ops"],
        activations=counts["activations"],
        convs=counts["convs"],
        macs=counts["macs"],
    )
