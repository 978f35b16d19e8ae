"""Every registered architecture through everything downstream: specs, checkpoints, info, fuse, ONNX, eval,
upscale's tiling policy, bench and train. Tiny seeded models keep it fast; published weights where ../shared has them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_deploy.archs.base import SRNet
from sr_deploy.archs.registry import (
    ARCH_MODULES,
    all_archs,
    arch_of,
    build_model,
    detect,
    get_arch,
    preset,
    preset_names,
    spec_from_dict,
    spec_from_json,
)
from sr_deploy.archs.spec import ArchSpec
from sr_deploy.checkpoints import load_weights, save_ntire, save_weights
from sr_deploy.cli import main
from sr_deploy.errors import SRDeployError
from sr_deploy.export.onnx import COMMON_OPS, allowed_ops, export_onnx
from sr_deploy.imaging.io import write_image

#: Every registered architecture: adding one adds it to every test here, with no edit to this file.
ARCH_IDS = sorted(ARCH_MODULES)

#: (file in ../shared/data/weights, architecture id) of every published checkpoint in the registry.
PUBLISHED = [(w.filename, a.id) for a in all_archs() for w in a.published]


def tiny(arch_id: str) -> ArchSpec:
    spec: ArchSpec = get_arch(arch_id).smoke_spec()
    return spec


def tiny_model(arch_id: str, seed: int = 0) -> SRNet:
    return build_model(tiny(arch_id), seed=seed).eval()


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_descriptor_is_complete(arch_id: str) -> None:
    arch = get_arch(arch_id)
    assert arch.id == arch_id and arch_id == arch.spec_type.ARCH
    assert arch.presets() and arch.layouts and arch.published
    assert arch.input_range in (1.0, 255.0)
    assert arch.receptive_radius(tiny(arch_id)) > 0
    assert not (arch.onnx_ops & COMMON_OPS), "list only what the architecture adds"
    for name in arch.presets():
        if "<" not in name:
            assert arch_id == preset(name).ARCH


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_specs_round_trip_and_meta_shapes_match_the_real_build(arch_id: str) -> None:
    for spec in (tiny(arch_id), get_arch(arch_id).spec_type()):
        assert spec_from_json(spec.to_json()) == spec
        assert spec_from_dict(spec.to_dict()) == spec
    spec = tiny(arch_id)
    real = {k: tuple(v.shape) for k, v in build_model(spec).state_dict().items()}
    assert arch_of(spec).expected_shapes(spec) == real


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_untrusted_spec_fields_are_refused_before_anything_is_built(arch_id: str) -> None:
    base = tiny(arch_id).to_dict()
    with pytest.raises(SRDeployError, match="expected int"):
        spec_from_dict({**base, "blocks": "7"}, "w.safetensors")
    with pytest.raises(SRDeployError, match=r"w.safetensors.*channels"):
        spec_from_dict({**base, "channels": 65536}, "w.safetensors")
    with pytest.raises(SRDeployError, match="unknown field"):
        spec_from_dict({**base, "blcoks": 2}, "w.safetensors")


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_checkpoints_round_trip_in_both_formats_and_detect_their_architecture(arch_id: str, tmp_path: Path) -> None:
    model = tiny_model(arch_id, seed=3)
    x = torch.rand(1, 3, 23, 19, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    ours = load_weights(save_weights(model, tmp_path / "w.safetensors"))
    assert ours.spec == model.spec
    native = load_weights(save_ntire(model, tmp_path / "w.pth"))
    assert native.format == "ntire" and arch_id == native.spec.ARCH
    for loaded in (ours, native):
        with torch.no_grad():
            torch.testing.assert_close(loaded.build()(x), expected, rtol=0, atol=0)
    assert detect(model.state_dict(), "sd").arch.id == arch_id


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_a_state_dict_without_a_signature_key_names_its_architecture_as_closest(arch_id: str) -> None:
    sd = dict(tiny_model(arch_id).state_dict())
    key = get_arch(arch_id).layouts[0].required[-1]
    del sd[key]
    with pytest.raises(SRDeployError, match=rf"x.pth: no known architecture .*closest is {arch_id} .*missing {key}"):
        detect(sd, "x.pth")


def test_a_state_dict_two_architectures_match_names_both() -> None:
    first, second = ARCH_IDS[:2]
    both = {**tiny_model(first).state_dict(), **tiny_model(second).state_dict()}
    with pytest.raises(SRDeployError, match=rf"ambiguous.*({first}.*{second}|{second}.*{first})"):
        detect(both, "x.pth")


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_an_unknown_preset_lists_the_close_ones(arch_id: str, capsys: pytest.CaptureFixture[str]) -> None:
    name = next(n for n in get_arch(arch_id).presets() if "<" not in n)
    typo = name[:-1] + ("q" if name[-1] != "q" else "z")
    err = _one_line_error(capsys, ["info", "--arch", typo])
    assert f"--arch {typo!r}" in err and "did you mean" in err and name in err
    assert name in preset_names()


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_info_and_fuse_work_for_every_architecture(
    arch_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = save_weights(tiny_model(arch_id), tmp_path / "w.safetensors")
    assert main(["info", "--weights", str(src), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == arch_id
    has_training_form = arch_of(tiny(arch_id)).training_spec(tiny(arch_id)) is not None
    assert set(info["forms"]) == ({"training", "collapsed"} if has_training_form else {"deploy"})
    assert main(["fuse", str(src), "-o", str(tmp_path / "out.safetensors")]) == 0
    out = capsys.readouterr().out
    assert ("nothing to fold" in out) == (not tiny(arch_id).training_form)
    assert load_weights(tmp_path / "out.safetensors").spec == tiny(arch_id).collapsed()


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_onnx_export_holds_each_architecture_to_exactly_its_operator_set(arch_id: str, tmp_path: Path) -> None:
    model = tiny_model(arch_id)
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.verification is not None and report.verification.passed
    ops = set(report.ops)
    assert ops <= allowed_ops(model.spec)
    # Every operator the descriptor lists is really needed (no stale entries that widen what TensorRT must parse).
    assert arch_of(model.spec).onnx_ops <= ops, arch_of(model.spec).onnx_ops - ops
    assert json.loads(report.to_dict()["spec"] and json.dumps(report.to_dict()["spec"]))["arch"] == arch_id


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_fp16_export_passes_its_gates_or_is_refused_up_front(arch_id: str, tmp_path: Path) -> None:
    model = tiny_model(arch_id)
    if arch_of(model.spec).fp16_refusal:
        with pytest.raises(SRDeployError, match="--precision fp16: refused"):
            export_onnx(model, tmp_path / "m.onnx", precision="fp16")
        assert not (tmp_path / "m.onnx").exists()
        return
    report = export_onnx(model, tmp_path / "m.onnx", precision="fp16")
    assert report.verification is not None and report.verification.passed


@pytest.mark.parametrize("arch_id", [a for a in ARCH_IDS if not get_arch(a).tiling.exact])
def test_tiling_an_inexact_architecture_needs_the_flag(
    arch_id: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = save_weights(tiny_model(arch_id), tmp_path / "w.safetensors")
    rng = np.random.default_rng(0)
    write_image(tmp_path / "a.png", rng.integers(0, 256, (40, 37, 3), dtype=np.uint8))
    argv = [
        "upscale",
        str(tmp_path / "a.png"),
        "--weights",
        str(src),
        "-o",
        str(tmp_path / "out"),
        "--backend",
        "torch",
    ]
    err = _one_line_error(capsys, [*argv, "--tile", "24"])
    assert "--tile 24" in err and "--inexact-tiles" in err
    err = _one_line_error(capsys, [*argv, "--tile", "8", "--inexact-tiles"])
    assert "--tile 8" in err and "at least" in err
    assert main([*argv, "--tile", "24", "--inexact-tiles"]) == 0
    assert "tiled inexactly" in capsys.readouterr().err
    assert (tmp_path / "out" / "a.png").is_file()


@pytest.mark.parametrize("arch_id", [a for a in ARCH_IDS if get_arch(a).tiling.exact])
def test_exact_architectures_tile_bit_for_bit_in_float64(arch_id: str) -> None:
    from sr_deploy.imaging.tiling import upscale_tiled

    model = tiny_model(arch_id).double()
    radius = arch_of(model.spec).receptive_radius(model.spec)
    lr = np.random.default_rng(1).random((1, 3, 45, 38))

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(torch.from_numpy(x)).numpy()
        return out

    tiled = upscale_tiled(run, lr, scale=4, tile=2 * radius + 8, overlap=radius)
    np.testing.assert_array_equal(tiled, run(lr))


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_bench_runs_every_cpu_backend_for_every_architecture(arch_id: str, tmp_path: Path) -> None:
    src = save_weights(tiny_model(arch_id), tmp_path / "w.safetensors")
    report = tmp_path / "r.json"
    argv = ["bench", "--weights", str(src), "--synthetic", "20x24", "--count", "2", "--backend", "all"]
    assert main([*argv, "--warmup", "0", "--repeat", "1", "--quiet", "--report", str(report)]) in (0, 1)
    rows = json.loads(report.read_text())["rows"]
    for kind in ("torch", "onnxruntime", "openvino"):
        ran = [r for r in rows if r["kind"] == kind and r["status"] == "ok"]
        assert ran, (kind, {r["key"]: (r["status"], r["reason"]) for r in rows})


TRAIN_TOML = """
arch = "{preset}"
seed = 1
device = "cpu"
[model]
{model}
[data]
num_workers = 0
[[stages]]
name = "s1"
lr_patch = 16
crops_per_image = 1
epochs = 1
batch_size = 2
milestones = []
"""


@pytest.mark.parametrize("arch_id", ARCH_IDS)
def test_train_a_tiny_config_of_every_architecture(arch_id: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "hr").mkdir()
    for i in range(2):
        write_image(tmp_path / "hr" / f"{i}.png", rng.integers(0, 256, (72, 68, 3), dtype=np.uint8))
    fields = {k: v for k, v in tiny(arch_id).to_dict().items() if k != "arch"}
    name = next(n for n in get_arch(arch_id).presets() if "<" not in n)
    (tmp_path / "cfg.toml").write_text(
        TRAIN_TOML.format(preset=name, model="\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items()))
    )
    run = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "cfg.toml"), "--hr-dir", str(tmp_path / "hr"), "--run-dir", str(run)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 0
    trained = load_weights(run / "last.safetensors")
    assert arch_id == trained.spec.ARCH


def _published(shared: Path, filename: str) -> Path:
    path = shared / "data" / "weights" / filename
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.mark.parametrize(("filename", "arch_id"), PUBLISHED)
def test_published_weights_give_the_challenge_counter_through_info(
    filename: str, arch_id: str, shared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _published(shared, filename)
    ref_doc = json.loads((shared / "data" / "reference_field.json").read_text())
    counter = ref_doc["weights"].get(filename, {}).get("ntire_counter")
    assert main(["info", "--weights", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == arch_id
    form = info["forms"].get("deploy") or info["forms"]["collapsed"]
    if counter is None:
        pytest.skip(f"reference_field.json has no counter figures for {filename}")
    assert form["params"] == counter["params"]
    assert round(form["flops"] / 1e9, 4) == round(counter["flops_g"], 4)
    assert round(form["activations"] / 1e6, 4) == round(counter["activations_m"], 4)
    assert form["convs"] == counter["convs"]


@pytest.mark.slow
@pytest.mark.parametrize(("filename", "arch_id"), PUBLISHED)
@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_srdeploy_eval_reproduces_the_challenge_per_image(
    filename: str, arch_id: str, dataset: str, shared: Path, tmp_path: Path
) -> None:
    """Through `srdeploy eval` and its default backend: every image, RGB and Y, within 0.005 dB."""
    results = json.loads((shared / "data" / "reference_field.json").read_text())["results"]
    if filename not in results:
        pytest.skip(f"{filename}: not in reference_field.json (IMDN's are in reference_psnr.json, test_reference_psnr)")
    ref = results[filename][dataset]
    data = shared / "data" / dataset
    out = tmp_path / "r.json"
    argv = ["eval", "--weights", str(_published(shared, filename)), "--hr-dir", str(data / "HR")]
    assert main([*argv, "--lr-dir", str(data / "LR_bicubic_x4"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    got = {Path(i["name"]).stem: i for i in report["images"]}
    assert len(got) == len(ref["per_image"])
    for image, want in ref["per_image"].items():
        score = got[Path(image).stem]
        assert abs(score["psnr_rgb"] - want["rgb"]) <= 0.005, (image, score["psnr_rgb"], want["rgb"])
        assert abs(score["psnr_y"] - want["y"]) <= 0.005, (image, score["psnr_y"], want["y"])


def test_all_archs_lists_every_registry_line() -> None:
    assert [a.id for a in all_archs()] == list(ARCH_MODULES)


def test_a_foreign_state_dict_names_no_closest_architecture() -> None:
    with pytest.raises(SRDeployError, match=r"x\.pth: no known architecture .*none of the signature keys") as e:
        detect({"encoder.weight": torch.zeros(2)}, "x.pth")
    assert "closest" not in str(e.value)
