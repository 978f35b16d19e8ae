"""FMEN (deploy form): spec, checkpoint import, the challenge's PSNRs and counter figures, receptive radius."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from arch_checks import assert_reference_psnr

from sr_deploy.archs.fmen import ARCH, FMEN, FMENSpec
from sr_deploy.archs.registry import build_model, detect, get_arch, load_state_dict, preset, spec_from_dict
from sr_deploy.archs.spec import MAX_BLOCKS, MAX_CHANNELS
from sr_deploy.errors import SRDeployError
from sr_deploy.profile import profile_model

WEIGHTS = "team03_fmen.pth"

#: A deliberately irregular spec: every hyper-parameter differs from the published one, so inference can't guess.
SMALL = FMENSpec(blocks=2, channels=8, mid=4, erbs=2, warmup_mid=6, warmup_erbs=1, scale=3)


def _shared() -> Path:
    return Path(os.environ.get("SRDEPLOY_SHARED", Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    p = _shared() / "data" / "reference_field.json"
    if not p.is_file():
        pytest.skip(f"{p} is absent (real data is only on developer and CI machines)")
    out: dict[str, Any] = json.loads(p.read_text())
    return out


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    p = _shared() / "data" / "weights" / WEIGHTS
    if not p.is_file():
        pytest.skip(f"{p} is absent (real data is only on developer and CI machines)")
    sd: dict[str, torch.Tensor] = torch.load(p, map_location="cpu", weights_only=True)
    return sd


@pytest.fixture(scope="module")
def published_model(checkpoint: dict[str, torch.Tensor]) -> FMEN:
    spec, canonical = load_state_dict(checkpoint, WEIGHTS)
    model = build_model(spec)
    model.load_state_dict(canonical, strict=True)
    assert isinstance(model, FMEN)
    return model.eval()


# ---------------------------------------------------------------------------------------------- spec and presets
def test_presets_and_names() -> None:
    assert preset("fmen") == FMENSpec()
    assert FMENSpec().name == "fmen"
    assert preset("FMEN-b6") == FMENSpec(blocks=6)
    assert ARCH.parse_preset("imdn-b8") is None
    assert ARCH.parse_preset("fmen-b0") is None
    assert SMALL.name == "fmen-b2-c8-m4x2-w6x1-x3"
    assert FMENSpec(slope=0.2).name.endswith("-s0.2")
    assert get_arch("fmen") is ARCH


def test_spec_round_trips_through_json() -> None:
    assert spec_from_dict(json.loads(SMALL.to_json())) == SMALL
    with pytest.raises(SRDeployError, match="unknown field"):
        spec_from_dict({"arch": "fmen", "distilled": 4})
    with pytest.raises(SRDeployError, match="'mid'"):
        spec_from_dict({"arch": "fmen", "mid": 16.0})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"blocks": 0}, "blocks must be"),
        ({"blocks": MAX_BLOCKS + 1}, "blocks must be"),
        ({"channels": MAX_CHANNELS + 1}, "channels must be"),
        ({"mid": 0}, "mid must be"),
        ({"warmup_erbs": 0}, "warmup_erbs must be"),
        ({"erbs": 10_000}, "erbs must be"),
        ({"slope": 1.0}, "slope must be"),
        ({"scale": 0}, "scale must be"),
    ],
)
def test_bad_fields_are_one_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SRDeployError, match=message):
        FMENSpec(**fields)


def test_a_huge_preset_is_a_bounds_error() -> None:
    with pytest.raises(SRDeployError, match="blocks must be"):
        preset("fmen-b99999999999999999999")


# ---------------------------------------------------------------------------------------------- state dicts
def test_spec_is_inferred_from_shapes() -> None:
    sd = build_model(SMALL, seed=0).state_dict()
    found = detect(sd, "small")
    assert (found.arch.id, found.layout) == ("fmen", "ntire")
    spec, canonical = load_state_dict(sd, "small")
    assert spec == SMALL
    build_model(spec).load_state_dict(canonical, strict=True)


def _published_shapes() -> dict[str, torch.Tensor]:
    return build_model(FMENSpec(), seed=0).state_dict()


@pytest.mark.parametrize(
    "key",
    ["hfabs.3.excitate.bias", "warmup.1.convs.1.conv2.rep_conv.weight", "basic_blocks.2.conv1.rep_conv.bias"],
)
def test_a_missing_key_is_named(key: str) -> None:
    sd = _published_shapes()
    del sd[key]
    with pytest.raises(SRDeployError, match=rf"missing keys .*{key}"):
        load_state_dict(sd, "cut.pth")


def test_a_missing_signature_key_says_which_architecture_is_closest() -> None:
    sd = _published_shapes()
    del sd["lr_conv.weight"]
    with pytest.raises(SRDeployError, match=r"closest is fmen .*missing lr_conv\.weight"):
        load_state_dict(sd, "cut.pth")


@pytest.mark.parametrize("key", ["basic_blocks.2.conv1.rep_conv.weight", "hfabs.1.convs.0.conv2.rep_conv.bias"])
def test_a_wrong_shape_is_named(key: str) -> None:
    sd = _published_shapes()
    sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    with pytest.raises(SRDeployError, match=rf"wrong shapes .*{key}"):
        load_state_dict(sd, "bent.pth")


def test_unpaired_blocks_are_refused() -> None:
    sd = {k: v for k, v in _published_shapes().items() if not k.startswith("hfabs.3.")}
    with pytest.raises(SRDeployError, match="4 basic_blocks but 3 hfabs"):
        load_state_dict(sd, "odd.pth")


def test_published_checkpoint_loads_strictly(checkpoint: dict[str, torch.Tensor], published_model: FMEN) -> None:
    spec, _ = load_state_dict(checkpoint, WEIGHTS)
    assert spec == preset("fmen")
    assert detect(checkpoint, WEIGHTS).label == "fmen (ntire layout)"
    assert set(published_model.state_dict()) == set(checkpoint)


def test_published_sha256_matches_the_reference(reference: dict[str, Any]) -> None:
    p = _shared() / "data" / "weights" / WEIGHTS
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    (published,) = ARCH.published
    assert published.filename == WEIGHTS
    assert published.sha256 == reference["weights"][WEIGHTS]["sha256"]
    assert hashlib.sha256(p.read_bytes()).hexdigest() == published.sha256


# ---------------------------------------------------------------------------------------------- accuracy
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_per_image_psnr_matches_the_reference(dataset: str, reference: dict[str, Any], published_model: FMEN) -> None:
    assert ARCH.input_range == reference["weights"][WEIGHTS]["data_range"]
    folder = _shared() / "data" / dataset
    assert_reference_psnr(published_model, folder, reference["results"][WEIGHTS][dataset]["per_image"])


# ---------------------------------------------------------------------------------------------- counter
def test_profile_matches_the_challenge_counter() -> None:
    """reference_field.json's ntire_counter for FMEN, written out so the check runs without ../shared.

    The challenge's FLOPs for FMEN are exactly the convs' multiply-accumulates: its activations are not submodules,
    so the counter's per-module hooks never saw them (IMDN's LeakyReLU modules, by contrast, are counted).
    """
    p = profile_model(build_model(preset("fmen")), (256, 256))
    assert p.params == 341_066
    assert round(p.flops / 1e9, 4) == round(22.280011776, 4)
    assert round(p.activations / 1e6, 4) == round(72.0896, 4)
    assert p.convs == 34


def test_counter_figures_are_the_reference_file_s(reference: dict[str, Any]) -> None:
    counter = reference["weights"][WEIGHTS]["ntire_counter"]
    assert counter == {"params": 341_066, "flops_g": 22.280011776, "activations_m": 72.0896, "convs": 34}


# ---------------------------------------------------------------------------------------------- tiling
def test_published_receptive_radius_is_the_conv_count() -> None:
    assert ARCH.tiling.exact
    assert ARCH.receptive_radius(FMENSpec()) == 34


@pytest.mark.parametrize("direction", [(0, 1), (1, 0), (1, 1), (-1, -1)])
def test_receptive_radius_is_tight(direction: tuple[int, int]) -> None:
    """One LR pixel r away (Chebyshev) changes the centre's HR block; one r + 1 away leaves it bit-identical."""
    spec = FMENSpec(blocks=1, channels=8, mid=4, erbs=1, warmup_mid=4, warmup_erbs=1, scale=2)
    model = build_model(spec, seed=0).double().eval()
    r = ARCH.receptive_radius(spec)
    assert r == 1 + 1 + 4 + 6 + 1 + 1
    size = 2 * r + 7
    c = size // 2
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = spec.scale

    def centre_change(distance: int) -> float:
        y = x.clone()
        y[0, :, c + direction[0] * distance, c + direction[1] * distance] += 0.5
        with torch.no_grad():
            diff = model(x) - model(y)
        return float(diff[..., c * s : (c + 1) * s, c * s : (c + 1) * s].abs().max())

    assert centre_change(r) > 0.0
    assert centre_change(r + 1) == 0.0
