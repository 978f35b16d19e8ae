from __future__ import annotations

import pytest
import torch

from sr_deploy.archs.imdn import BLOCK_CONVS, IMDNSpec
from sr_deploy.archs.registry import build_model, preset, receptive_radius, spec_from_dict, spec_from_json
from sr_deploy.errors import SRDeployError
from sr_deploy.profile import profile_model


@pytest.mark.parametrize(
    ("name", "blocks", "clb"),
    [
        ("imdn-b8", 8, ()),
        ("imdn-b7", 7, ()),
        ("imdn-b7-clb", 7, BLOCK_CONVS),
        ("imdn-b4-clb", 4, BLOCK_CONVS),
    ],
)
def test_presets(name: str, blocks: int, clb: tuple[str, ...]) -> None:
    spec = preset(name)
    assert (spec.blocks, spec.clb_convs, spec.channels, spec.distilled, spec.scale, spec.slope) == (
        blocks,
        clb,
        64,
        16,
        4,
        0.05,
    )
    assert spec.name == name


@pytest.mark.parametrize("bad", ["imdn", "imdn-b0", "rcan", "imdn-b7-clbx", ""])
def test_unknown_preset_is_a_clear_error(bad: str) -> None:
    with pytest.raises(SRDeployError, match="unknown architecture"):
        preset(bad)


@pytest.mark.parametrize(
    "spec",
    [
        IMDNSpec(),
        IMDNSpec(blocks=7).with_clb(),
        IMDNSpec(blocks=2, channels=16, distilled=4, scale=2).with_clb(("conv1", "conv3")),
        IMDNSpec(blocks=3, channels=32, distilled=8, scale=3, slope=0.1),
    ],
)
def test_spec_round_trips_through_json(spec: IMDNSpec) -> None:
    assert spec_from_json(spec.to_json()) == spec


def test_spec_validation_names_the_problem() -> None:
    with pytest.raises(SRDeployError, match="unknown CLB conv"):
        IMDNSpec(clb_convs=("conv9",))
    with pytest.raises(SRDeployError, match="4 x distilled"):
        IMDNSpec(channels=64, distilled=10)
    with pytest.raises(SRDeployError, match="unknown field"):
        spec_from_dict({"blocks": 2, "blcoks": 3})


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_scale_times_larger_on_odd_sizes(scale: int) -> None:
    model = build_model(IMDNSpec(blocks=1, channels=16, distilled=4, scale=scale), seed=0).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 7, 5))
    assert out.shape == (1, 3, 7 * scale, 5 * scale)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(IMDNSpec(blocks=1, channels=16, distilled=4), seed=5)
    b = build_model(IMDNSpec(blocks=1, channels=16, distilled=4), seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert torch.equal(torch.rand(1), expected_next)


# DESIGN.md's figures from the NTIRE 2022 ESR counter, at 1x3x256x256.
@pytest.mark.parametrize(
    ("name", "params", "flops", "activations", "convs"),
    [
        ("imdn-b8", 893_936, 58.5315e9, 154.1407e6, 43),
        ("imdn-b7", 790_496, 51.7577e9, 136.3149e6, 38),
    ],
)
def test_profile_matches_the_challenge_counter(
    name: str, params: int, flops: float, activations: float, convs: int
) -> None:
    p = profile_model(build_model(preset(name)), (256, 256))
    assert p.params == params
    assert abs(p.flops - flops) < 0.00005e9
    assert abs(p.activations - activations) < 0.00005e6
    assert p.convs == convs


def test_receptive_radius_is_tight() -> None:
    """Perturbing one LR pixel changes HR outputs exactly within radius LR pixels of it."""
    spec = IMDNSpec(blocks=2, channels=16, distilled=4, scale=2)
    model = build_model(spec, seed=0).double().eval()
    r = receptive_radius(spec)
    size, c = 2 * r + 9, r + 4
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, :, c, c] += 0.5
    with torch.no_grad():
        diff = (model(x) - model(y)).abs().sum(dim=(0, 1))
    rows = torch.nonzero(diff.sum(1) > 0).flatten()
    lo, hi = int(rows.min()) // spec.scale, int(rows.max()) // spec.scale
    assert (lo, hi) == (c - r, c + r)
