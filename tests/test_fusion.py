"""The fold, one numeric assertion per branch topology (the mmpretrain manner), plus refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sr_deploy.archs.blocks import ParallelConv
from sr_deploy.archs.imdn import BLOCK_CONVS, IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model, preset, uncollapse
from sr_deploy.errors import GateFailedError, SRDeployError
from sr_deploy.fusion import collapse, collapse_verified, fold_module, verify_equivalence


def _randomize(module: nn.Module, seed: int, std: float = 0.1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def _max_err(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((a.double()(x.double()) - b.double()(x.double())).abs().max())


def _conv(i: int, o: int, k: int, bias: bool = True, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(i, o, k, padding=dilation * (k // 2), bias=bias, groups=groups, dilation=dilation)


def _bn_conv(i: int, o: int, k: int) -> nn.Sequential:
    return nn.Sequential(_conv(i, o, k, bias=False), nn.BatchNorm2d(o))


VARIANTS = {
    "3x3+1x1, in!=out": lambda: ParallelConv([_conv(6, 10, 3), _conv(6, 10, 1)]),
    "3x3+1x1, no bias": lambda: ParallelConv([_conv(8, 8, 3, bias=False), _conv(8, 8, 1, bias=False)]),
    "3x3 bias + 1x1 no bias": lambda: ParallelConv([_conv(8, 8, 3), _conv(8, 8, 1, bias=False)]),
    "5x5+3x3+1x1": lambda: ParallelConv([_conv(4, 7, 5), _conv(4, 7, 3), _conv(4, 7, 1)]),
    "1x1 first, 3x3 second": lambda: ParallelConv([_conv(5, 5, 1), _conv(5, 5, 3)]),
    "3x3+1x1+identity": lambda: ParallelConv([_conv(8, 8, 3), _conv(8, 8, 1)], identity=nn.Identity()),
    "grouped 3x3+1x1+identity": lambda: ParallelConv(
        [_conv(8, 8, 3, groups=2), _conv(8, 8, 1, groups=2)], identity=nn.Identity()
    ),
    "RepVGG: conv-BN x2 + BN identity": lambda: ParallelConv(
        [_bn_conv(8, 8, 3), _bn_conv(8, 8, 1)], identity=nn.BatchNorm2d(8)
    ),
    "dilated 3x3 alone + identity": lambda: ParallelConv([_conv(4, 4, 3, dilation=2)], identity=nn.Identity()),
    # Folded by probing, so branches need not share dilation or groups: the fused kernel is dense where they differ.
    "3x3 + dilated 3x3 -> 5x5": lambda: ParallelConv([_conv(4, 4, 3), _conv(4, 4, 3, dilation=2)]),
    "grouped 3x3 + dense 1x1": lambda: ParallelConv([_conv(4, 4, 3, groups=2), _conv(4, 4, 1)]),
    "stride 2, 3x3 + 1x1": lambda: ParallelConv(
        [nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.Conv2d(4, 6, 1, stride=2)]
    ),
}

#: The fused kernel each topology must give (largest branch, or the dense hull of dilated branches).
EXPECTED_KERNEL = {"3x3 + dilated 3x3 -> 5x5": 5}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fold_is_exact_for_each_branch_topology(name: str) -> None:
    module = VARIANTS[name]()
    _randomize(module, seed=list(VARIANTS).index(name))
    module.eval()
    first = module.branches[0]
    conv = first if isinstance(first, nn.Conv2d) else first[0]
    x = torch.rand(2, conv.in_channels, 13, 11, generator=torch.Generator().manual_seed(1))
    ref = copy.deepcopy(module).double()
    fused = fold_module(copy.deepcopy(module).double(), name)
    err = _max_err(ref, fused, x)
    assert err <= 1e-12, f"{name}: {err}"
    assert fused.kernel_size[0] == EXPECTED_KERNEL.get(
        name, max((b.kernel_size[0] if isinstance(b, nn.Conv2d) else b[0].kernel_size[0]) for b in module.branches)
    )
    # The group structure survives when every branch has it (a depthwise-heavy block stays cheap).
    if name.startswith("grouped 3x3+1x1"):
        assert fused.groups == 2


@pytest.mark.parametrize(
    ("branches", "needle"),
    [
        ([nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.Conv2d(4, 4, 1, stride=1)], "stride differs"),
        ([nn.Conv2d(4, 4, 3, padding=0), nn.Conv2d(4, 4, 1)], r"padding \(0, 0\) is not the centred"),
        ([nn.Conv2d(4, 4, 2, padding=1), nn.Conv2d(4, 4, 1)], "must be odd"),
    ],
)
def test_fold_refuses_what_cannot_be_exact_and_names_the_layer(branches: list[nn.Module], needle: str) -> None:
    with pytest.raises(SRDeployError, match=needle) as exc:
        fold_module(ParallelConv(branches), "body.3.conv")
    assert "body.3.conv.branches." in str(exc.value)


def test_fold_refuses_batchnorm_in_training_mode() -> None:
    model = nn.Sequential(ParallelConv([_bn_conv(4, 4, 3), _conv(4, 4, 1)]))
    model.train()
    with pytest.raises(SRDeployError, match=r"0\.branches\.0\.1.*training mode"):
        collapse(model)


def test_identity_branch_needs_equal_channels() -> None:
    with pytest.raises(SRDeployError, match=r"add\(x.branches.0, x.identity\) fails.*size of tensor a \(6\)"):
        fold_module(ParallelConv([_conv(4, 6, 3)], identity=nn.Identity()), "x")


def _random_clb(spec: IMDNSpec, seed: int) -> IMDN:
    model = build_model(spec, seed=seed)
    _randomize(model, seed, std=0.03)
    return model.eval()


@pytest.mark.parametrize("convs", [BLOCK_CONVS, ("conv1",), ("conv2", "conv4")])
def test_collapse_imdn_meets_the_acceptance_tolerances(convs: tuple[str, ...]) -> None:
    spec = IMDNSpec(blocks=3, channels=16, distilled=4).with_clb(convs)
    model = _random_clb(spec, seed=3)
    deploy, report = collapse_verified(model, shape=(1, 3, 37, 29))
    assert report.input_shape == (1, 3, 37, 29)
    assert report.max_abs_f64 <= 1e-10
    assert report.max_abs_f32 <= 1e-5
    assert isinstance(deploy, IMDN) and deploy.spec == spec.collapsed()
    # The deploy weights load into a plain model strict, i.e. the NTIRE key layout.
    IMDN(spec.collapsed()).load_state_dict(deploy.state_dict(), strict=True)


def test_collapse_paper_model_with_random_1x1_branches() -> None:
    model = _random_clb(preset("imdn-b7-clb"), seed=7)
    _, report = collapse_verified(model)
    assert report.passed and report.max_abs_f64 <= 1e-10 and report.max_abs_f32 <= 1e-5


def test_collapse_never_mutates_its_input() -> None:
    model = _random_clb(IMDNSpec(blocks=2, channels=16, distilled=4).with_clb(), seed=1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keys = list(before)
    collapse(model)
    assert model.training
    assert list(model.state_dict()) == keys
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, ParallelConv) for m in model.modules())


def test_verify_equivalence_detects_a_wrong_fold() -> None:
    model = _random_clb(IMDNSpec(blocks=2, channels=16, distilled=4).with_clb(), seed=2)
    deploy = collapse(model)
    with torch.no_grad():
        deploy.model[0].weight[0, 0, 1, 1] += 1e-3
    report = verify_equivalence(model, deploy)
    assert not report.passed and report.max_abs_f32 > 1e-5


def test_collapse_verified_raises_when_the_proof_fails() -> None:
    model = _random_clb(IMDNSpec(blocks=2, channels=16, distilled=4).with_clb(), seed=2)
    with pytest.raises(GateFailedError, match="not exact"):
        collapse_verified(model, tol_f64=0.0, tol_f32=0.0)


def test_uncollapse_gives_zero_branches_and_the_same_function() -> None:
    plain = _random_clb(IMDNSpec(blocks=2, channels=16, distilled=4), seed=4)
    clb = uncollapse(plain)
    assert clb.spec.clb_convs == BLOCK_CONVS
    ones = [p for n, p in clb.named_parameters() if ".branches.1." in n]
    assert ones and all(float(p.detach().abs().max()) == 0.0 for p in ones)
    report = verify_equivalence(clb, plain)
    assert report.max_abs_f64 == 0.0 and report.max_abs_f32 == 0.0
    with pytest.raises(SRDeployError, match="plain"):
        uncollapse(clb)
