"""RLFN: spec, both checkpoint layouts, the challenge's PSNRs and counter figures, tiling and ONNX policies."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from arch_checks import assert_ntire_counter, assert_onnx_ops_and_ort_agree, assert_reference_psnr

from sr_deploy.archs.registry import build_model, detect, get_arch, load_state_dict, preset, spec_from_dict
from sr_deploy.archs.rfdn import ARCH as RFDN_ARCH
from sr_deploy.archs.rlfn import ARCH, RLFN, RLFNSpec
from sr_deploy.archs.spec import MAX_BLOCKS, MAX_CHANNELS
from sr_deploy.errors import SRDeployError

CHALLENGE = "team04_rlfn.pth"
AUTHORS = "rlfn_ntire_x4.pth"

#: Every hyper-parameter differs from the published one, so inference cannot get it right by default.
SMALL = RLFNSpec(blocks=2, channels=10, mid_channels=7, esa_channels=5, scale=3)

COMMON_ONNX_OPS = {"Conv", "Add", "DepthToSpace", "Cast"}


def _shared() -> Path:
    return Path(os.environ.get("SRDEPLOY_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _shared_file(*parts: str) -> Path:
    p = _shared().joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (real data is only on developer and CI machines)")
    return p


def _load(name: str) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = torch.load(_shared_file("weights", name), map_location="cpu", weights_only=True)
    return sd


def _model(sd: dict[str, torch.Tensor], source: str) -> RLFN:
    spec, canonical = load_state_dict(sd, source)
    model = build_model(spec)
    model.load_state_dict(canonical, strict=True)
    assert isinstance(model, RLFN)
    return model.eval()


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_shared_file("reference_field.json").read_text())
    return out


@pytest.fixture(scope="module")
def challenge() -> dict[str, torch.Tensor]:
    return _load(CHALLENGE)


@pytest.fixture(scope="module")
def authors() -> dict[str, torch.Tensor]:
    return _load(AUTHORS)


@pytest.fixture(scope="module")
def published_model(challenge: dict[str, torch.Tensor]) -> RLFN:
    return _model(challenge, CHALLENGE)


# ---------------------------------------------------------------------------------------------- spec and presets
def test_presets_and_names() -> None:
    assert get_arch("rlfn") is ARCH
    assert preset("rlfn") == RLFNSpec() and RLFNSpec().name == "rlfn"
    assert preset("RLFN-S") == RLFNSpec(blocks=6, channels=48, mid_channels=48)
    assert RLFNSpec(blocks=6, channels=48, mid_channels=48).name == "rlfn-s"
    assert preset("rlfn-b6-c52") == RLFNSpec(blocks=6, channels=52, mid_channels=52)
    assert preset("rlfn-b4-c46-m48") == RLFNSpec()
    assert SMALL.name == "rlfn-b2-c10-m7-e5-x3"
    assert ARCH.parse_preset(SMALL.name) == SMALL
    assert RLFNSpec(slope=0.2).name.endswith("-s0.2")
    assert ARCH.parse_preset("rfdn") is None and ARCH.parse_preset("rlfn-b0-c46") is None
    with pytest.raises(SRDeployError, match="channels must be in"):
        ARCH.parse_preset(f"rlfn-b4-c{MAX_CHANNELS + 5}")


def test_spec_round_trips_and_rejects_bad_values() -> None:
    assert spec_from_dict(json.loads(SMALL.to_json())) == SMALL
    with pytest.raises(SRDeployError, match="unknown field"):
        spec_from_dict({"arch": "rlfn", "distilled": 4})
    bad: list[tuple[dict[str, Any], str]] = [
        ({"blocks": MAX_BLOCKS + 1}, "blocks"),
        ({"channels": 3}, "channels"),
        ({"mid_channels": MAX_CHANNELS + 1}, "mid_channels"),
        ({"esa_channels": 0}, "esa_channels"),
        ({"slope": -0.1}, "slope"),
        ({"in_channels": 5}, "in_channels"),
    ]
    for fields, name in bad:
        with pytest.raises(SRDeployError, match=name):
            spec_from_dict({"arch": "rlfn", **fields})


# ---------------------------------------------------------------------------------------------- network
def test_forward_shape_range_and_minimum_input() -> None:
    model = build_model(SMALL, seed=0).eval()
    assert isinstance(model, RLFN) and model.input_range == 255.0 and ARCH.min_input_size == 15
    with torch.no_grad():
        assert model(torch.rand(2, 3, ARCH.min_input_size, 22)).shape == (2, 3, 45, 66)
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 3, 20, ARCH.min_input_size - 1))


def test_key_inference_recovers_an_irregular_spec_in_both_layouts() -> None:
    sd = build_model(SMALL, seed=0).state_dict()
    spec, canonical = load_state_dict(sd, "small")
    assert spec == SMALL and canonical.keys() == sd.keys()
    theirs = ARCH.from_canonical(sd, "authors")
    assert {"conv_1.weight", "block_2.esa.conv4.bias", "conv_2.weight", "upsampler.0.weight"} <= theirs.keys()
    assert detect(theirs, "small").layout == "authors"
    spec, canonical = load_state_dict(theirs, "small")
    assert spec == SMALL and all(torch.equal(canonical[k], v) for k, v in sd.items())


def test_tiling_is_really_inexact_beyond_the_receptive_radius() -> None:
    """The policy's claim: a crop wider than the radius on every side still differs from the whole-image result."""
    spec = RLFNSpec(blocks=1, channels=8, mid_channels=8, esa_channels=4, scale=2)
    model = build_model(spec, seed=0).eval()
    r = ARCH.receptive_radius(spec)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        tile = model(x[:, :, : 32 + r, : 32 + r])
    assert not torch.allclose(whole[:, :, :64, :64], tile[:, :, :64, :64], atol=1e-6)
    assert ARCH.tiling.exact is False and "ESA" in ARCH.tiling.reason


def test_receptive_radius() -> None:
    assert ARCH.receptive_radius(RLFNSpec()) == 15
    assert ARCH.receptive_radius(SMALL) == 9


def test_receptive_radius_is_tight_on_the_local_path() -> None:
    """With ESA's gates removed (its local part is 1x1), one LR pixel reaches exactly the radius on each side."""
    spec = RLFNSpec(blocks=2, channels=8, mid_channels=6, esa_channels=4, scale=2)
    model = build_model(spec, seed=0).double().eval()
    for i in range(1, spec.blocks + 1):
        getattr(model, f"B{i}").esa = torch.nn.Identity()
    r = ARCH.receptive_radius(spec)
    size, c = 2 * r + 9, r + 4
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0, :, c, c] += 0.5
    with torch.no_grad():
        diff = (model(x) - model(y)).abs().sum(dim=(0, 1))
    rows = torch.nonzero(diff.sum(1) > 0).flatten()
    assert (int(rows.min()) // spec.scale, int(rows.max()) // spec.scale) == (c - r, c + r)


# ---------------------------------------------------------------------------------------------- the checkpoints
def test_rfdns_checkpoint_matches_no_rlfn_layout() -> None:
    """RFDN's keys include every RLFN signature key: only the forbidden ones keep the two apart."""
    sd = _load("rfdn_baseline.pth")
    assert not any(lay.matches(set(sd)) for lay in ARCH.layouts)
    assert detect(sd, "rfdn_baseline.pth").arch is RFDN_ARCH


@pytest.mark.parametrize(("name", "layout"), [(CHALLENGE, "ntire"), (AUTHORS, "authors")])
def test_checkpoints_load_strictly_and_detect_uniquely(name: str, layout: str) -> None:
    sd = _load(name)
    found = detect(sd, name)
    assert found.arch is ARCH and found.layout == layout
    assert not any(lay.matches(set(sd)) for lay in RFDN_ARCH.layouts)
    spec, canonical = load_state_dict(sd, name)
    assert spec == RLFNSpec() and spec.name == "rlfn"
    model = build_model(spec)
    model.load_state_dict(canonical, strict=True)
    own = model.state_dict()
    assert own.keys() == canonical.keys() and len(own) == len(sd)
    assert all(own[k].shape == v.shape for k, v in canonical.items())
    assert ARCH.from_canonical(canonical, layout).keys() == sd.keys()


def test_both_layouts_hold_the_same_network(
    challenge: dict[str, torch.Tensor], authors: dict[str, torch.Tensor]
) -> None:
    a, b = _model(challenge, CHALLENGE), _model(authors, AUTHORS)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    x = torch.rand(1, 3, 23, 31)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("name", [CHALLENGE, AUTHORS])
def test_any_missing_key_is_one_clear_error(name: str) -> None:
    sd = _load(name)
    layout = detect(sd, name).layout
    for key in sd:
        partial = {k: v for k, v in sd.items() if k != key}
        # The strict check runs on canonical keys: past detection, the authors' conv_1.bias is named fea_conv.bias.
        (canonical,) = ARCH.to_canonical({key: sd[key]}, layout)
        with pytest.raises(SRDeployError, match=f"{re.escape(key)}|{re.escape(canonical)}"):
            load_state_dict(partial, name)


def test_published_entry_matches_the_file(reference: dict[str, Any]) -> None:
    (entry,) = ARCH.published
    assert entry.name == "ntire:rlfn" and entry.filename == CHALLENGE
    assert entry.url.endswith("/model_zoo/" + CHALLENGE)
    assert entry.sha256 == reference["weights"][CHALLENGE]["sha256"]
    assert hashlib.sha256(_shared_file("weights", CHALLENGE).read_bytes()).hexdigest() == entry.sha256


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_per_image_psnr_matches_the_reference(published_model: RLFN, reference: dict[str, Any], dataset: str) -> None:
    expected = reference["results"][CHALLENGE][dataset]["per_image"]
    assert_reference_psnr(published_model, _shared() / "data" / dataset, expected)


@pytest.mark.parametrize("name", [CHALLENGE, AUTHORS])
def test_ntire_counter_figures(name: str, reference: dict[str, Any]) -> None:
    assert_ntire_counter(_model(_load(name), name), reference["weights"][name]["ntire_counter"])


# ---------------------------------------------------------------------------------------------- ONNX
@pytest.mark.slow
def test_onnx_operator_set_and_onnxruntime_agreement() -> None:
    assert_onnx_ops_and_ort_agree(build_model(RLFNSpec(), seed=0).eval(), ARCH)
