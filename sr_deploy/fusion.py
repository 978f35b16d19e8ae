"""Structural re-parameterization: fold parallel linear branches into one conv, and prove it exact.

``collapse(model)`` returns a new module and never mutates its input (the timm convention), so the
training-time model stays trainable. ``verify_equivalence`` is the proof: float64 and float32 outputs of
both forms on an odd-sized input.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sr_deploy.archs.base import SRNet
from sr_deploy.archs.blocks import ParallelConv
from sr_deploy.errors import GateFailedError, SRDeployError

#: Defaults from DESIGN.md, measured on the real weights: outputs in [0, 1].
TOL_FLOAT64 = 1e-10
TOL_FLOAT32 = 1e-5


@dataclass(frozen=True)
class Kernel:
    """A conv as weight + bias in float64, the unit every fold rule produces."""

    weight: torch.Tensor  # (out, in/groups, k, k)
    bias: torch.Tensor  # (out,)


def _bn_scale_shift(bn: nn.BatchNorm2d, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.training:
        raise SRDeployError(f"cannot fold {name}: BatchNorm is in training mode (call .eval() first)")
    if bn.running_mean is None or bn.running_var is None:
        raise SRDeployError(f"cannot fold {name}: BatchNorm has no running statistics")
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean.double() * scale


def _conv_kernel(conv: nn.Conv2d) -> Kernel:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return Kernel(w, b)


def _branch_conv(branch: nn.Module, name: str) -> tuple[nn.Conv2d, Kernel]:
    """A conv branch (optionally conv + BN) as its conv module and its folded kernel."""
    if isinstance(branch, nn.Conv2d):
        return branch, _conv_kernel(branch)
    if isinstance(branch, nn.Sequential) and len(branch) == 2 and isinstance(branch[0], nn.Conv2d):
        conv, bn = branch[0], branch[1]
        if not isinstance(bn, nn.BatchNorm2d):
            raise SRDeployError(f"cannot fold {name}: expected Conv2d + BatchNorm2d, found {type(bn).__name__}")
        k = _conv_kernel(conv)
        scale, shift = _bn_scale_shift(bn, f"{name}.1")
        return conv, Kernel(k.weight * scale.view(-1, 1, 1, 1), k.bias * scale + shift)
    raise SRDeployError(f"cannot fold {name}: unsupported branch type {type(branch).__name__}")


def _identity_kernel(identity: nn.Module, channels: int, groups: int, k: int, name: str) -> Kernel:
    w = torch.zeros(channels, channels // groups, k, k, dtype=torch.float64)
    per_group = channels // groups
    for c in range(channels):
        w[c, c % per_group, k // 2, k // 2] = 1.0
    b = torch.zeros(channels, dtype=torch.float64)
    if isinstance(identity, nn.BatchNorm2d):
        scale, shift = _bn_scale_shift(identity, name)
        return Kernel(w * scale.view(-1, 1, 1, 1), shift)
    if isinstance(identity, nn.Identity):
        return Kernel(w, b)
    raise SRDeployError(f"cannot fold {name}: identity branch must be Identity or BatchNorm2d")


def _pad_to(kernel: Kernel, k: int) -> Kernel:
    p = (k - kernel.weight.shape[-1]) // 2
    return Kernel(F.pad(kernel.weight, (p, p, p, p)), kernel.bias)


def fold_parallel(module: ParallelConv, name: str = "ParallelConv") -> nn.Conv2d:
    """Fold every branch of `module` into one conv with the largest kernel. Refuses what cannot be exact."""
    convs: list[nn.Conv2d] = []
    kernels: list[Kernel] = []
    for i, branch in enumerate(module.branches):
        conv, kernel = _branch_conv(branch, f"{name}.branches.{i}")
        convs.append(conv)
        kernels.append(kernel)
    ref = convs[0]
    for i, conv in enumerate(convs):
        where = f"{name}.branches.{i}"
        for attr in ("stride", "dilation", "groups", "in_channels", "out_channels"):
            if getattr(conv, attr) != getattr(ref, attr):
                raise SRDeployError(
                    f"cannot fold {where}: {attr} {getattr(conv, attr)} differs from branch 0's {getattr(ref, attr)}"
                )
        kh, kw = conv.kernel_size
        if kh != kw or kh % 2 == 0:
            raise SRDeployError(f"cannot fold {where}: kernel {conv.kernel_size} must be square and odd")
        centred = tuple(d * (kh - 1) // 2 for d in conv.dilation)
        if tuple(conv.padding) != centred or conv.padding_mode != "zeros":
            raise SRDeployError(
                f"cannot fold {where}: padding {conv.padding} ({conv.padding_mode}) is not the centred "
                f"zero padding {centred}, so branches would be misaligned"
            )
    if any(d != 1 for d in ref.dilation) and len({c.kernel_size for c in convs}) > 1:
        raise SRDeployError(f"cannot fold {name}: kernels of different sizes with dilation {ref.dilation}")
    k = max(c.kernel_size[0] for c in convs)
    if module.identity is not None:
        if ref.in_channels != ref.out_channels or any(s != 1 for s in ref.stride):
            raise SRDeployError(f"cannot fold {name}.identity: needs in == out channels and stride 1")
        kernels.append(_identity_kernel(module.identity, ref.out_channels, ref.groups, k, f"{name}.identity"))
    padded = [_pad_to(kern, k) for kern in kernels]
    weight = torch.stack([p.weight for p in padded]).sum(0)
    bias = torch.stack([p.bias for p in padded]).sum(0)
    fused = nn.Conv2d(
        ref.in_channels,
        ref.out_channels,
        k,
        stride=ref.stride,  # type: ignore[arg-type]
        padding=ref.dilation[0] * (k - 1) // 2,
        dilation=ref.dilation,  # type: ignore[arg-type]
        groups=ref.groups,
        bias=True,
        device=ref.weight.device,
        dtype=ref.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        assert fused.bias is not None
        fused.bias.copy_(bias)
    return fused


def _replace_child(root: nn.Module, qualified: str, new: nn.Module) -> None:
    parent_name, _, child = qualified.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def collapse(model: nn.Module) -> nn.Module:
    """A new module with every ParallelConv folded into a plain conv. `model` is left untouched."""
    if any(isinstance(m, nn.BatchNorm2d) and m.training for m in model.modules()):
        name = next(n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training)
        raise SRDeployError(f"cannot fold {name}: BatchNorm is in training mode (call .eval() first)")
    new = copy.deepcopy(model)
    targets = [(n, m) for n, m in new.named_modules() if isinstance(m, ParallelConv)]
    for name, module in targets:
        _replace_child(new, name, fold_parallel(module, name))
    if isinstance(new, SRNet):
        new.spec = new.spec.collapsed()
    return new.eval()


@dataclass(frozen=True)
class EquivalenceReport:
    """How far the deploy-form output is from the training-form output on the same input."""

    input_shape: tuple[int, ...]
    max_abs_f64: float
    mean_abs_f64: float
    max_abs_f32: float
    mean_abs_f32: float
    psnr_f32_db: float  # PSNR of deploy vs train output in float32, peak 1.0
    tol_f64: float
    tol_f32: float

    @property
    def passed(self) -> bool:
        return self.max_abs_f64 <= self.tol_f64 and self.max_abs_f32 <= self.tol_f32

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "max_abs_f64": self.max_abs_f64,
            "mean_abs_f64": self.mean_abs_f64,
            "max_abs_f32": self.max_abs_f32,
            "mean_abs_f32": self.mean_abs_f32,
            "psnr_f32_db": self.psnr_f32_db,
            "tol_f64": self.tol_f64,
            "tol_f32": self.tol_f32,
            "passed": self.passed,
        }


def _run(model: nn.Module, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    m = copy.deepcopy(model).to(device="cpu", dtype=dtype).eval()
    with torch.no_grad():
        out: torch.Tensor = m(x.to(dtype))
    return out


def verify_equivalence(
    train_model: nn.Module,
    deploy_model: nn.Module,
    *,
    shape: tuple[int, int, int, int] = (1, 3, 37, 29),
    seed: int = 0,
    inputs: torch.Tensor | None = None,
    tol_f64: float = TOL_FLOAT64,
    tol_f32: float = TOL_FLOAT32,
) -> EquivalenceReport:
    """Run both forms on the same input (uniform [0, 1], seeded, odd-sized) in float64 and float32.

    For the float64 proof to reach ~1e-13, `deploy_model` must hold float64 weights (collapse a float64 copy):
    weights folded and then stored in float32 are only float32-exact. The float32 check casts both forms to
    float32, which is exactly what gets saved and deployed.
    """
    if inputs is None:
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = inputs.double().cpu()
    d64 = (_run(train_model, x, torch.float64) - _run(deploy_model, x, torch.float64)).abs()
    a32, b32 = _run(train_model, x, torch.float32), _run(deploy_model, x, torch.float32)
    d32 = (a32.double() - b32.double()).abs()
    mse = float((d32**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    return EquivalenceReport(
        input_shape=tuple(x.shape),
        max_abs_f64=float(d64.max()),
        mean_abs_f64=float(d64.mean()),
        max_abs_f32=float(d32.max()),
        mean_abs_f32=float(d32.mean()),
        psnr_f32_db=psnr,
        tol_f64=tol_f64,
        tol_f32=tol_f32,
    )


def collapse_verified(model: nn.Module, **verify_kwargs: Any) -> tuple[nn.Module, EquivalenceReport]:
    """Collapse and prove it; raise GateFailedError (and return nothing) if the proof fails."""
    dtype = next(model.parameters()).dtype
    deploy = collapse(copy.deepcopy(model).double())
    report = verify_equivalence(model, deploy, **verify_kwargs)
    if not report.passed:
        raise GateFailedError(
            f"collapse is not exact: max abs error {report.max_abs_f64:.3g} (float64, tol {report.tol_f64:g}), "
            f"{report.max_abs_f32:.3g} (float32, tol {report.tol_f32:g})"
        )
    return deploy.to(dtype), report
