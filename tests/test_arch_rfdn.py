"""RFDN: spec, checkpoint import, the challenge's PSNRs and counter figures, tiling and ONNX policies."""

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
from sr_deploy.archs.rfdn import ARCH, RFDN, RFDNSpec
from sr_deploy.archs.spec import MAX_BLOCKS, MAX_CHANNELS
from sr_deploy.errors import SRDeployError

WEIGHTS = "rfdn_baseline.pth"

#: Every hyper-parameter differs from the published one, so inference cannot get it right by default.
SMALL = RFDNSpec(blocks=2, channels=12, distilled=5, esa_channels=4, scale=3)

COMMON_ONNX_OPS = {"Conv", "Add", "DepthToSpace", "Cast"}


def _shared() -> Path:
    return Path(os.environ.get("SRDEPLOY_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _shared_file(*parts: str) -> Path:
    p = _shared().joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"{p} is absent (real data is only on developer and CI machines)")
    return p


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    out: dict[str, Any] = json.loads(_shared_file("reference_field.json").read_text())
    return out


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = torch.load(_shared_file("weights", WEIGHTS), map_location="cpu", weights_only=True)
    return sd


@pytest.fixture(scope="module")
def published_model(checkpoint: dict[str, torch.Tensor]) -> RFDN:
    spec, canonical = load_state_dict(checkpoint, WEIGHTS)
    model = build_model(spec)
    model.load_state_dict(canonical, strict=True)
    assert isinstance(model, RFDN)
    return model.eval()


# ---------------------------------------------------------------------------------------------- spec and presets
def test_presets_and_names() -> None:
    assert get_arch("rfdn") is ARCH
    assert preset("rfdn") == RFDNSpec() and RFDNSpec().name == "rfdn"
    assert preset("RFDN-b6-c48") == RFDNSpec(blocks=6, channels=48, distilled=24, esa_channels=12)
    assert SMALL.name == "rfdn-b2-c12-d5-e4-x3"
    assert ARCH.parse_preset(SMALL.name) == SMALL
    assert RFDNSpec(slope=0.2).name.endswith("-s0.2")
    assert ARCH.parse_preset("imdn-b8") is None and ARCH.parse_preset("rfdn-b0-c50") is None
    with pytest.raises(SRDeployError, match="blocks must be in"):
        ARCH.parse_preset(f"rfdn-b{MAX_BLOCKS + 5}-c50")


def test_spec_round_trips_and_rejects_bad_values() -> None:
    assert spec_from_dict(json.loads(SMALL.to_json())) == SMALL
    with pytest.raises(SRDeployError, match="unknown field"):
        spec_from_dict({"arch": "rfdn", "mid_channels": 4})
    bad: list[tuple[dict[str, Any], str]] = [
        ({"blocks": 0}, "blocks"),
        ({"channels": MAX_CHANNELS + 1}, "channels"),
        ({"distilled": 51}, "distilled"),
        ({"esa_channels": 0}, "esa_channels"),
        ({"slope": 1.0}, "slope"),
        ({"scale": 9}, "scale"),
    ]
    for fields, name in bad:
        with pytest.raises(SRDeployError, match=name):
            spec_from_dict({"arch": "rfdn", **fields})


# ---------------------------------------------------------------------------------------------- network
def test_forward_shape_range_and_minimum_input() -> None:
    model = build_model(SMALL, seed=0).eval()
    assert isinstance(model, RFDN) and model.input_range == 255.0 and ARCH.min_input_size == 15
    with torch.no_grad():
        assert model(torch.rand(2, 3, 17, ARCH.min_input_size)).shape == (2, 3, 51, 45)
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 3, ARCH.min_input_size - 1, 20))


def test_key_inference_recovers_an_irregular_spec() -> None:
    sd = build_model(SMALL, seed=0).state_dict()
    spec, canonical = load_state_dict(sd, "small")
    assert spec == SMALL and canonical.keys() == sd.keys()
    assert ARCH.expected_shapes(SMALL) == {k: tuple(v.shape) for k, v in sd.items()}


def test_tiling_is_really_inexact_beyond_the_receptive_radius() -> None:
    """The policy's claim: a crop wider than the radius on every side still differs from the whole-image result."""
    spec = RFDNSpec(blocks=1, channels=8, distilled=4, esa_channels=4, scale=2)
    model = build_model(spec, seed=0).eval()
    r = ARCH.receptive_radius(spec)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        whole = model(x)
        tile = model(x[:, :, : 32 + r, : 32 + r])
    assert not torch.allclose(whole[:, :, :64, :64], tile[:, :, :64, :64], atol=1e-6)
    assert ARCH.tiling.exact is False and "ESA" in ARCH.tiling.reason


def test_receptive_radius() -> None:
    assert ARCH.receptive_radius(RFDNSpec()) == 19
    assert ARCH.receptive_radius(SMALL) == 11


def test_receptive_radius_is_tight_on_the_local_path() -> None:
    """With ESA's gates removed (its local part is 1x1), one LR pixel reaches exactly the radius on each side."""
    spec = RFDNSpec(blocks=2, channels=8, distilled=4, esa_channels=4, scale=2)
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


# ---------------------------------------------------------------------------------------------- the checkpoint
def test_checkpoint_loads_strictly_and_detects_uniquely(checkpoint: dict[str, torch.Tensor]) -> None:
    spec, canonical = load_state_dict(checkpoint, WEIGHTS)
    assert spec == RFDNSpec() and spec.name == "rfdn"
    found = detect(checkpoint, WEIGHTS)
    assert found.arch is ARCH and found.layout == "ntire"
    model = build_model(spec)
    model.load_state_dict(canonical, strict=True)
    own = model.state_dict()
    assert own.keys() == checkpoint.keys()
    assert all(own[k].shape == v.shape for k, v in checkpoint.items())


def test_any_missing_key_is_one_clear_error(checkpoint: dict[str, torch.Tensor]) -> None:
    signature = ARCH.layouts[0].required
    for key in checkpoint:
        partial = {k: v for k, v in checkpoint.items() if k != key}
        # Without a signature key nothing matches; RFDN is still named closest, with the key it lacks.
        match = f"closest is rfdn .*missing {re.escape(key)}" if key in signature else re.escape(key)
        with pytest.raises(SRDeployError, match=match):
            load_state_dict(partial, WEIGHTS)


def test_published_entry_matches_the_file(reference: dict[str, Any]) -> None:
    (entry,) = ARCH.published
    assert entry.name == "ntire:rfdn" and entry.filename == WEIGHTS
    assert entry.url.endswith("/model_zoo/" + WEIGHTS)
    assert entry.sha256 == reference["weights"][WEIGHTS]["sha256"]
    assert hashlib.sha256(_shared_file("weights", WEIGHTS).read_bytes()).hexdigest() == entry.sha256


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_per_image_psnr_matches_the_reference(published_model: RFDN, reference: dict[str, Any], dataset: str) -> None:
    assert_reference_psnr(
        published_model, _shared() / "data" / dataset, reference["results"][WEIGHTS][dataset]["per_image"]
    )


def test_ntire_counter_figures(published_model: RFDN, reference: dict[str, Any]) -> None:
    assert_ntire_counter(published_model, reference["weights"][WEIGHTS]["ntire_counter"])


# ---------------------------------------------------------------------------------------------- ONNX
@pytest.mark.slow
def test_onnx_operator_set_and_onnxruntime_agreement() -> None:
    assert_onnx_ops_and_ort_agree(build_model(RFDNSpec(), seed=0).eval(), ARCH)
