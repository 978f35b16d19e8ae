"""The general collapse: one proof per topology (float64 <= 1e-10, float32 <= 1e-5 on 37x29), borders, refusals.

Every module here is built in the test, the way a user would write it, and none has a fold rule of its own: the
collapse finds the linear part with torch.fx and reads its kernel off by probing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sr_deploy.archs.blocks import ECB, EDGE_KERNELS, RRRB, EdgeConv, ExpandConv
from sr_deploy.archs.registry import build_model, preset
from sr_deploy.errors import SRDeployError
from sr_deploy.fusion import (
    ProvenCollapse,
    collapse,
    collapse_with_report,
    fold_module,
    prove_collapse,
)

C = 8
SHAPE = (1, C, 37, 29)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs; threads only spin-wait on a busy CPU
    yield
    torch.set_num_threads(before)


def _randomize(module: nn.Module, seed: int, std: float = 0.2) -> nn.Module:
    """Every parameter random (zero-initialised branches would hide a wrong fold), BatchNorm statistics too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


def _proof(module: nn.Module, seed: int = 0, shape: tuple[int, int, int, int] = SHAPE) -> ProvenCollapse:
    proven = prove_collapse(_randomize(module, seed), shape=shape)
    eq = proven.equivalence
    assert eq.input_shape == shape
    assert eq.max_abs_f64 <= 1e-10, eq
    assert eq.max_abs_f32 <= 1e-5, eq
    return proven


def _chain_1x1s(model: nn.Module) -> list[str]:
    """1x1 convs still in the model; every test below expects none (they all sat in a linear chain)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]


# ---------------------------------------------------------------------------------------------- modules a user writes
class Parallel(nn.Module):
    """3x3 + 1x1 + identity, written as plain code rather than our ParallelConv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(C, C, 3, padding=1)
        self.b = nn.Conv2d(C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.a(x) + self.b(x) + x
        return out


class Conv3XC(nn.Module):
    """SPAN's Conv3XC (its training path): on the zero-padded input, 1x1 (C -> gC), unpadded 3x3 (gC -> gC),
    1x1 (gC -> C); plus a 1x1 skip on the input; each path with a learnable scalar gain."""

    def __init__(self, gain: int = 2) -> None:
        super().__init__()
        self.sk = nn.Conv2d(C, C, 1)
        self.conv = nn.Sequential(
            nn.Conv2d(C, C * gain, 1), nn.Conv2d(C * gain, C * gain, 3), nn.Conv2d(C * gain, C, 1)
        )
        self.gain_conv = nn.Parameter(torch.tensor(1.0))
        self.gain_skip = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_pad = F.pad(x, (1, 1, 1, 1), "constant", 0)
        out: torch.Tensor = self.gain_conv * self.conv(x_pad) + self.gain_skip * self.sk(x)
        return out


class RepVGGBN(nn.Module):
    """RepVGG / RepSR: 3x3-BN and 1x1-BN branches, a BN identity, then a per-channel scale."""

    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(C, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.point = nn.Sequential(nn.Conv2d(C, C, 1, bias=False), nn.BatchNorm2d(C))
        self.ident = nn.BatchNorm2d(C)
        self.scale = nn.Parameter(torch.ones(1, C, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (self.dense(x) + self.point(x) + self.ident(x)) * self.scale
        return out


class LoRAConv(nn.Module):
    """DSCLoRA-style: a 3x3 whose weight carries a low-rank delta B @ A, computed in forward."""

    def __init__(self, rank: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.lora_a = nn.Parameter(torch.zeros(rank, C * 9))
        self.lora_b = nn.Parameter(torch.zeros(C, rank))
        self.scaling = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = (self.lora_b @ self.lora_a).view(self.conv.weight.shape) * self.scaling
        return F.conv2d(x, self.conv.weight + delta, self.conv.bias, padding=1)


class GroupedChain(nn.Module):
    """1x1 expand (no bias), grouped 3x3, 1x1 squeeze, residual, then a ReLU: a chain inside a non-linear block."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(C, 2 * C, 1, bias=False)
        self.grouped = nn.Conv2d(2 * C, 2 * C, 3, padding=1, groups=4)
        self.squeeze = nn.Conv2d(2 * C, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.squeeze(self.grouped(self.expand(x))) + x)


class UserBlock(nn.Module):
    """What a user might write: conv-BN times a per-channel gain, minus a scaled 1x1, plus a fixed blur and a
    quarter of the input, all in the block's own code, followed by a LeakyReLU."""

    blur: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(C, C, 3, padding=1)
        self.bn = nn.BatchNorm2d(C)
        self.point = nn.Conv2d(C, C, 1, bias=False)
        self.gamma = nn.Parameter(torch.ones(1, C, 1, 1))
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        self.register_buffer("blur", kernel.expand(C, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) * self.gamma - 0.5 * self.point(x) + F.conv2d(x, self.blur, padding=1, groups=C)
        return F.leaky_relu(y + x / 4, 0.1)


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(C, C, 3, padding=1)
        self.blocks = nn.Sequential(UserBlock(), UserBlock())
        # 1x1s without bias: a bias would reach the zero-padded 3x3 (a border error, refused; see below).
        self.tail = nn.Sequential(
            nn.Conv2d(C, 2 * C, 1, bias=False),
            nn.Conv2d(2 * C, C, 1, bias=False),
            nn.Conv2d(C, C, 3, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.tail(torch.sigmoid(self.blocks(self.head(x))))
        return out


# ---------------------------------------------------------------------------------------------- one proof per topology
def test_parallel_branches_fold_into_one_3x3() -> None:
    proven = _proof(Parallel())
    assert isinstance(proven.model, nn.Conv2d) and proven.model.kernel_size == (3, 3)
    (merge,) = proven.collapse.merges
    assert merge.params_before == 9 * C * C + C * C + 2 * C and merge.params_after == 9 * C * C + C


@pytest.mark.parametrize("in_out", [(C, C), (6, 10)])
def test_expand_squeeze_with_bias_padding_is_exact_everywhere(in_out: tuple[int, int]) -> None:
    c_in, c_out = in_out
    proven = _proof(RRRB(c_in, c_out), shape=(1, c_in, 37, 29))
    assert isinstance(proven.model, nn.Conv2d) and proven.model.kernel_size == (3, 3)
    (merge,) = proven.collapse.merges
    assert merge.border_error <= 1e-12 and not merge.border_accepted
    names = [op.split(" ")[0] for op in merge.ops]
    assert {"expand_conv", "pad", "fea_conv", "reduce_conv"} <= set(names) and names[0] == "expand_conv"


def test_expand_squeeze_without_bias_padding_is_refused_naming_the_layer_and_the_error() -> None:
    net = nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), RRRB(C, C, pad_bias=False))
    _randomize(net, 3)
    with pytest.raises(
        SRDeployError, match=r"cannot fold 2 exactly: border error 0\.\d+ \(max abs, float64.*accept-border-error"
    ):
        collapse(net)


def test_expand_squeeze_without_bias_padding_with_the_flag_reports_the_error_and_proves_the_interior() -> None:
    net = _randomize(nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.ReLU(), RRRB(C, C, pad_bias=False)), 3)
    with pytest.raises(SRDeployError, match="margin"):
        prove_collapse(net, accept_border_error=True, shape=SHAPE)
    proven = prove_collapse(net, accept_border_error=True, shape=SHAPE, margin=2)
    (merge,) = proven.collapse.merges
    assert merge.module == "2" and merge.border_accepted and merge.border_error > 1e-3
    assert proven.collapse.accepted_border_error == merge.border_error
    eq = proven.equivalence
    # Exact beyond the border (2 px: the 3x3 and the folded block), off at the border.
    assert eq.border_crop == 2 and eq.max_abs_f64 <= 1e-10 and eq.max_abs_f32 <= 1e-5
    assert eq.max_abs_f64_full is not None and eq.max_abs_f64_full > 1e-4
    assert eq.input_shape == (1, C, 41, 33)


@pytest.mark.parametrize("kind", sorted(EDGE_KERNELS))
def test_ecb_fixed_kernel_branch_folds_exactly(kind: str) -> None:
    proven = _proof(EdgeConv(C, C, kind))
    assert isinstance(proven.model, nn.Conv2d) and proven.model.kernel_size == (3, 3)
    (merge,) = proven.collapse.merges
    assert any("conv2d 3x3 (weight computed in forward)" in op for op in merge.ops)
    # The learnable scale and bias go, the fixed mask was never a parameter.
    assert merge.params_before == C * C + C + 2 * C and merge.params_after == 9 * C * C + C


def test_whole_ecb_folds_exactly_including_identity() -> None:
    proven = _proof(ECB(C, C))
    assert isinstance(proven.model, nn.Conv2d) and proven.model.kernel_size == (3, 3)
    _proof(ExpandConv(C, 6, 16), shape=SHAPE)


def test_conv3xc_with_gains_folds_exactly() -> None:
    proven = _proof(Conv3XC(gain=2))
    assert isinstance(proven.model, nn.Conv2d) and proven.model.kernel_size == (3, 3)
    (merge,) = proven.collapse.merges
    assert merge.params_after < merge.params_before


def test_batchnorm_branches_fold_exactly() -> None:
    proven = _proof(RepVGGBN())
    assert isinstance(proven.model, nn.Conv2d) and proven.model.kernel_size == (3, 3)


def test_low_rank_delta_folds_into_the_base_conv() -> None:
    module = LoRAConv()
    proven = _proof(module)
    assert isinstance(proven.model, nn.Conv2d)
    (merge,) = proven.collapse.merges
    assert merge.params_before == 9 * C * C + C + 2 * 9 * C + 2 * C and merge.params_after == 9 * C * C + C


def test_chain_with_a_grouped_conv_folds_and_leaves_the_relu() -> None:
    proven = _proof(GroupedChain())
    model = proven.model
    assert _chain_1x1s(model) == []
    assert list(model.state_dict()) == ["grouped.weight", "grouped.bias"]  # named after the spatial conv
    (merge,) = proven.collapse.merges
    assert merge.placement == "graph" and merge.kernel == (3, 3) and merge.groups == 1
    assert "relu" in model.code  # type: ignore[operator]


def test_a_user_network_folds_every_linear_run_and_keeps_the_rest() -> None:
    net = UserNet()
    proven = _proof(net, seed=5)
    model = proven.model
    assert _chain_1x1s(model) == []
    merges = {m.module: m for m in proven.collapse.merges}
    # Each block's own code became one conv named after its 3x3; the tail's 1x1-1x1-3x3 run of a Sequential kept the
    # Sequential (and its indices: the 3x3 holds the fused conv, the 1x1s became Identity).
    assert set(merges) == {"blocks.0.conv", "blocks.1.conv", "tail.2"}
    assert merges["blocks.0.conv"].placement == "graph" and merges["tail.2"].placement == "chain"
    assert isinstance(model.tail, nn.Sequential) and isinstance(model.tail[0], nn.Identity)  # type: ignore[index]
    # The sigmoid and the LeakyReLUs are still there; collapsing again finds nothing left to fold.
    assert collapse_with_report(model)[1].merges == ()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_two_spatial_convs_in_a_row_are_not_composed() -> None:
    """A 3x3 after a 3x3 would become a 5x5 (25 vs 18 taps): the published FMEN layout depends on this."""
    net = _randomize(nn.Sequential(nn.Conv2d(C, C, 3, padding=1), nn.Conv2d(C, C, 3, padding=1), nn.ReLU()), 1)
    out, report = collapse_with_report(net)
    assert report.merges == ()
    assert [k for k in out.state_dict()] == list(net.state_dict())
    deploy = build_model(preset("fmen"), seed=0).eval()
    out, report = collapse_with_report(deploy)
    assert report.merges == () and report.notes == ()
    assert all(torch.equal(v, deploy.state_dict()[k]) for k, v in out.state_dict().items())


def test_collapse_never_mutates_its_input_and_returns_eval_mode() -> None:
    net = _randomize(UserNet(), 2).train()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # BN in training mode is refused; everything else may be in training mode
    before = copy.deepcopy(net.state_dict())
    out = collapse(net)
    assert net.training and not out.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(net.blocks[0], UserBlock)


# ---------------------------------------------------------------------------------------------- refusals
def test_batchnorm_in_training_mode_is_refused_naming_it() -> None:
    net = RepVGGBN().train()
    with pytest.raises(SRDeployError, match=r"cannot fold dense\.1: BatchNorm is in training mode"):
        collapse(net)


class Misaligned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(C, C, 3, padding=1)
        self.b = nn.Conv2d(C, C, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.a(x) + self.b(x))


def test_a_linear_part_that_is_not_one_conv_is_refused_naming_the_operation_and_the_reason() -> None:
    with pytest.raises(SRDeployError) as exc:
        collapse(Misaligned())
    msg = str(exc.value)
    assert "add(a, b) fails" in msg and "b: padding (0, 0) is not the centred zero padding (1, 1)" in msg
    assert len(msg.splitlines()) == 1


def test_an_even_kernel_in_a_chain_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(C, C, 1), nn.Conv2d(C, C, 2, padding=1), nn.ReLU())
    with pytest.raises(SRDeployError, match=r"cannot fold 1: 1: kernel \(2, 2\) must be odd"):
        collapse(net)


def test_fold_module_refuses_a_non_linear_module_naming_the_operation() -> None:
    with pytest.raises(SRDeployError, match=r"cannot fold blk: relu is not linear"):
        fold_module(GroupedChain(), "blk")
