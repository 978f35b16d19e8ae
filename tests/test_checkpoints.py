from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model, load_state_dict, published_weights
from sr_deploy.checkpoints import (
    fuse_checkpoint,
    load_model,
    load_weights,
    resolve_named,
    save_ntire,
    save_weights,
)
from sr_deploy.errors import SRDeployError
from sr_deploy.fileio import sha256_file
from sr_deploy.fusion import verify_equivalence

SPECS = [
    IMDNSpec(blocks=1, channels=16, distilled=4),
    IMDNSpec(blocks=3, channels=16, distilled=4).with_clb(),
    IMDNSpec(blocks=2, channels=32, distilled=8, scale=2).with_clb(("conv2", "conv4")),
    IMDNSpec(blocks=2, channels=16, distilled=4, scale=3, slope=0.2),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_our_format_round_trips_spec_weights_and_provenance(spec: IMDNSpec, tmp_path: Path) -> None:
    model = build_model(spec, seed=1)
    path = save_weights(model, tmp_path / "w.safetensors", source="unit-test", source_sha256="ab" * 32)
    loaded = load_weights(path)
    assert loaded.spec == spec and loaded.format == "srdeploy"
    assert loaded.provenance["source"] == "unit-test" and loaded.provenance["source_sha256"] == "ab" * 32
    assert "srdeploy_version" in loaded.provenance
    assert loaded.sha256 == sha256_file(path)
    rebuilt = loaded.build()
    for k, v in model.state_dict().items():
        assert torch.equal(v, rebuilt.state_dict()[k])


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_ntire_layout_round_trips_and_spec_is_inferred(spec: IMDNSpec, tmp_path: Path) -> None:
    model = build_model(spec.collapsed(), seed=2)
    path = save_ntire(model, tmp_path / "w.pth")
    loaded = load_weights(path)
    assert loaded.format == "ntire"
    # Slope is not in the state dict; everything else is inferred from keys and shapes.
    assert loaded.spec == replace(spec.collapsed(), slope=0.05)


def test_ntire_export_refuses_a_clb_model(tmp_path: Path) -> None:
    with pytest.raises(SRDeployError, match="collapse it first"):
        save_ntire(build_model(SPECS[1]), tmp_path / "w.pth")


def test_wrapped_and_prefixed_state_dicts_load(tmp_path: Path) -> None:
    sd = build_model(SPECS[0], seed=0).state_dict()
    torch.save({"params": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    assert load_weights(tmp_path / "w.pth").spec == SPECS[0]


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    sd = build_model(IMDNSpec(blocks=2, channels=16, distilled=4), seed=0).state_dict()
    del sd["model.1.sub.1.conv3.0.bias"]
    sd["model.1.sub.0.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(SRDeployError) as exc:
        load_weights(tmp_path / "w.pth")
    msg = str(exc.value)
    assert "missing keys model.1.sub.1.conv3.0.bias" in msg
    assert "unexpected keys model.1.sub.0.extra.weight" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (lambda p: torch.save([1, 2, 3], p), "not a state dict"),
        (lambda p: torch.save({"a": torch.zeros(2)}, p), "no known architecture matches"),
        (lambda p: p.write_bytes(b"garbage bytes, definitely not a checkpoint"), "weights_only"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(content, needle: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.pth"
    content(path)
    with pytest.raises(SRDeployError, match=needle) as exc:
        load_weights(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)


def test_other_file_kinds_are_recognised(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07")
    with pytest.raises(SRDeployError, match="is an ONNX model, expected weights"):
        load_weights(tmp_path / "m.onnx")
    with pytest.raises(SRDeployError, match="no such file"):
        load_weights(tmp_path / "missing.pth")
    with pytest.raises(SRDeployError, match="is a folder"):
        load_weights(tmp_path)


def test_load_model_converts_between_forms(tmp_path: Path) -> None:
    clb = build_model(SPECS[1], seed=3)
    path = save_weights(clb, tmp_path / "clb.safetensors")
    plain, _ = load_model(path, form="plain")
    assert not plain.spec.clb
    assert verify_equivalence(clb.eval(), plain).max_abs_f32 <= 1e-5
    back, _ = load_model(save_ntire(plain, tmp_path / "plain.pth"), form="clb")
    assert back.spec.clb and verify_equivalence(back, plain).max_abs_f32 == 0.0


def test_named_weights_offline_error_names_url_and_cache_path(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import urllib.request

    def offline(*_a: object, **_k: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(SRDeployError) as exc:
        resolve_named("ntire:team26", tmp_path)
    msg = str(exc.value)
    assert published_weights()["ntire:team26"].url in msg and str(tmp_path / "team26_imdn_nb7.pth") in msg
    assert not list(tmp_path.iterdir())


def test_named_weights_hash_mismatch_is_refused(tmp_path: Path) -> None:
    (tmp_path / "imdn_baseline.pth").write_bytes(b"tampered")
    with pytest.raises(SRDeployError, match="sha256"):
        resolve_named("ntire:imdn-baseline", tmp_path)
    with pytest.raises(SRDeployError, match="unknown named weights"):
        resolve_named("ntire:team99", tmp_path)


def test_named_weights_resolve_from_cache(team26_pth: Path, tmp_path: Path) -> None:
    (tmp_path / team26_pth.name).write_bytes(team26_pth.read_bytes())
    loaded = load_weights("ntire:team26", cache=tmp_path)
    assert loaded.sha256 == published_weights()["ntire:team26"].sha256


def test_published_checkpoints_import_with_detected_blocks(team26_pth: Path, baseline_pth: Path) -> None:
    assert load_weights(team26_pth).spec == IMDNSpec(blocks=7)
    assert load_weights(baseline_pth).spec == IMDNSpec(blocks=8)
    assert load_weights(team26_pth).sha256 == published_weights()["ntire:team26"].sha256


def test_fused_export_matches_the_challenge_layout_exactly(team26_pth: Path, tmp_path: Path) -> None:
    """A collapsed imdn-b7-clb, exported as NTIRE layout, has team26's exact key and shape list."""
    ref = torch.load(team26_pth, map_location="cpu", weights_only=True)
    clb = build_model(IMDNSpec(blocks=7).with_clb(), seed=0).eval()
    src = save_weights(clb, tmp_path / "clb.safetensors")
    fuse_checkpoint(src, tmp_path / "fused.pth")
    ours = torch.load(tmp_path / "fused.pth", map_location="cpu", weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in ref.items()]
    IMDN(load_state_dict(ref, "team26")[0]).load_state_dict(ours, strict=True)


def test_fuse_writes_only_after_the_proof_and_reports_it(tmp_path: Path) -> None:
    clb = build_model(IMDNSpec(blocks=2, channels=16, distilled=4).with_clb(), seed=5)
    with torch.no_grad():
        for n, p in clb.named_parameters():
            if ".branches.1." in n:
                p.normal_(0, 0.05)
    src = save_weights(clb, tmp_path / "clb.safetensors", source="run/best", source_sha256="cd" * 32)
    report = fuse_checkpoint(src, tmp_path / "out.safetensors", report_path=tmp_path / "r.json")
    assert report.params_out < report.params_in
    assert report.equivalence["passed"] and report.equivalence["max_abs_f64"] <= 1e-10
    assert json.loads((tmp_path / "r.json").read_text())["arch_out"] == "imdn-b2-c16-d4-x4"
    out = load_weights(tmp_path / "out.safetensors")
    assert not out.spec.clb and out.provenance["source"] == "run/best"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clb.safetensors", "out.safetensors", "r.json"]
