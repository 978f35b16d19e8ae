"""The training-form presets (imdn-b7-rrrb, imdn-b7-ecb, fmen-rrrb): specs, the published layouts they collapse to,
`srdeploy train` + `srdeploy fuse` end to end, and fuse's border refusal through the CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sr_deploy.archs.blocks import ECB, RRRB, ParallelConv
from sr_deploy.archs.fmen import FMEN, FMENSpec
from sr_deploy.archs.imdn import BLOCK_CONVS, IMDN, IMDNSpec
from sr_deploy.archs.registry import (
    arch_of,
    build_model,
    get_arch,
    load_state_dict,
    preset,
    spec_from_dict,
    uncollapse,
)
from sr_deploy.checkpoints import load_weights, save_weights
from sr_deploy.cli import main
from sr_deploy.errors import SRDeployError
from sr_deploy.fusion import collapse_with_report, prove_collapse, verify_equivalence
from sr_deploy.imaging.io import write_image

TINY_IMDN = {"blocks": 1, "channels": 8, "distilled": 2}
TINY_FMEN = {"blocks": 1, "channels": 8, "mid": 4, "erbs": 1, "warmup_mid": 4, "warmup_erbs": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs; threads only spin-wait on a busy CPU
    yield
    torch.set_num_threads(before)


def _randomize(model: nn.Module, seed: int, std: float = 0.05) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


# ---------------------------------------------------------------------------------------------- specs
def test_presets_name_their_block_type_and_collapse_to_the_deploy_spec() -> None:
    for name, block, module in (
        ("imdn-b7-rrrb", "rrrb", RRRB),
        ("imdn-b7-ecb", "ecb", ECB),
        ("imdn-b7-clb", "clb", None),
    ):
        spec = preset(name)
        assert isinstance(spec, IMDNSpec) and spec.block_type == block and spec.clb_convs == BLOCK_CONVS
        assert spec.name == name and spec.training_form and spec.collapsed() == preset("imdn-b7")
        if module is not None:
            with torch.device("meta"):
                blocks = [m for m in build_model(spec).modules() if isinstance(m, module)]
            assert len(blocks) == 7 * 4
    fmen = preset("fmen-rrrb")
    assert fmen == FMENSpec(block_type="rrrb") and fmen.name == "fmen-rrrb" and fmen.collapsed() == preset("fmen")
    assert preset("fmen-b2-rrrb").collapsed() == preset("fmen-b2")
    assert get_arch("fmen").training_spec(preset("fmen")) == fmen


def test_old_specs_without_block_type_mean_what_they_meant() -> None:
    assert spec_from_dict({"arch": "imdn", "blocks": 7, "clb_convs": list(BLOCK_CONVS)}) == preset("imdn-b7-clb")
    assert spec_from_dict({"arch": "imdn", "blocks": 7, "clb_convs": []}) == preset("imdn-b7")
    assert spec_from_dict({"arch": "fmen"}) == preset("fmen")
    for spec in (preset("imdn-b7-ecb"), preset("fmen-rrrb"), IMDNSpec(blocks=2).with_blocks("rrrb", ("conv2",))):
        assert spec_from_dict(json.loads(spec.to_json())) == spec
    assert IMDNSpec(blocks=2).with_blocks("rrrb", ("conv2",)).name == "imdn-b2-rrrb[conv2]"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"block_type": "rrrb"}, "needs clb_convs"),
        ({"block_type": "plain", "clb_convs": ["conv1"]}, "has no training blocks"),
        ({"block_type": "acb", "clb_convs": ["conv1"]}, "block_type must be one of"),
    ],
)
def test_inconsistent_block_types_are_one_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(SRDeployError, match=message):
        spec_from_dict({"arch": "imdn", **fields}, "w.safetensors")


def test_training_state_dicts_are_recognised_from_their_keys() -> None:
    for spec in (IMDNSpec(**TINY_IMDN).with_blocks("ecb"), FMENSpec(**TINY_FMEN, block_type="rrrb")):
        found, _ = load_state_dict(build_model(spec, seed=0).state_dict(), "x.pth")
        assert found == spec


# ---------------------------------------------------------------------------------------------- published layouts
@pytest.mark.parametrize("block", ["rrrb", "ecb"])
def test_collapsed_imdn_b7_training_forms_have_team26s_layout(block: str) -> None:
    train = _randomize(build_model(preset(f"imdn-b7-{block}"), seed=0), seed=1)
    deploy, report = collapse_with_report(train)
    assert isinstance(deploy, IMDN) and deploy.spec == preset("imdn-b7")
    expected = arch_of(deploy.spec).expected_shapes(deploy.spec)  # team26's keys and shapes (test_checkpoints)
    assert [(k, tuple(v.shape)) for k, v in deploy.state_dict().items()] == list(expected.items())
    assert len(report.merges) == 7 * 4 and all(m.kernel == (3, 3) for m in report.merges)
    assert report.params_before > 3 * report.params_after and report.params_after == 790_496
    # No 1x1 of a training block is left: the only 1x1s are the blocks' own fusion convs (after a concat).
    ones = [n for n, m in deploy.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert ones == [f"model.1.sub.{i}.conv1x1" for i in range(7)]


def test_collapsed_fmen_rrrb_loads_strict_into_the_team03_layout(shared: Path) -> None:
    path = shared / "data" / "weights" / "team03_fmen.pth"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    published: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    spec, canonical = load_state_dict(published, "team03")
    plain = build_model(spec)
    plain.load_state_dict(canonical, strict=True)
    # The published weights as RRRBs (exactly: expand [I; 0], squeeze [I, 0], inner 3x3 W - 2I) ...
    train = uncollapse(plain.eval())
    assert isinstance(train, FMEN) and train.spec == preset("fmen-rrrb")
    assert sum(isinstance(m, RRRB) for m in train.modules()) == 4 * 2 + (2 + 4) * 2
    # ... collapse back, proven, into exactly team03's keys, shapes and (to float32 rounding) values.
    proven = prove_collapse(train)
    assert proven.equivalence.max_abs_f64 <= 1e-10 and proven.equivalence.max_abs_f32 <= 1e-5
    ours = proven.model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in published.items()]
    FMEN(spec).load_state_dict(ours, strict=True)
    assert max(float((ours[k] - published[k]).abs().max()) for k in published) <= 1e-5
    # And an RRRB model trained from scratch (random weights) lands in the same layout.
    fresh = _randomize(build_model(FMENSpec(block_type="rrrb"), seed=3), seed=4)
    deploy, report = collapse_with_report(fresh)
    assert [(k, tuple(v.shape)) for k, v in deploy.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in published.items()
    ]
    assert len(report.merges) == 20 and {m.module.rsplit(".", 1)[-1] for m in report.merges} == {"rep_conv"}


def test_fmen_uncollapse_is_the_same_function() -> None:
    plain = _randomize(build_model(FMENSpec(**TINY_FMEN), seed=0).double(), seed=1)
    assert isinstance(plain, FMEN)
    report = verify_equivalence(uncollapse(plain), plain, shape=(1, 3, 19, 17))
    assert report.max_abs_f64 <= 1e-10 and report.max_abs_f32 <= 1e-5


# ---------------------------------------------------------------------------------------------- train + fuse, CLI
TRAIN_TOML = """
arch = "{preset}"
seed = 0
device = "cpu"
val_every = 1
checkpoint_every = 1
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


@pytest.fixture(scope="module")
def hr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hr")
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(root / f"{i}.png", rng.integers(0, 256, (72, 68, 3), dtype=np.uint8))
    return root


@pytest.mark.parametrize(
    ("name", "model", "merges"),
    [("imdn-b7-rrrb", TINY_IMDN, 4), ("imdn-b7-ecb", TINY_IMDN, 4), ("fmen-rrrb", TINY_FMEN, 6)],
)
def test_each_preset_trains_and_fuses(
    name: str, model: dict[str, int], merges: int, hr_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in model.items())
    (tmp_path / "cfg.toml").write_text(TRAIN_TOML.format(preset=name, model=fields))
    run = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "cfg.toml"), "--hr-dir", str(hr_dir), "--run-dir", str(run)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]) == 0
    trained = load_weights(run / "last.safetensors")
    assert trained.spec.training_form and trained.spec.name.endswith(name.rsplit("-", 1)[-1])
    capsys.readouterr()
    out = tmp_path / "deploy.safetensors"
    assert main(["fuse", str(run / "last.safetensors"), "-o", str(out), "--report", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out
    assert f"{merges} linear blocks folded" in printed
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["collapse"]["merges"]) == merges and report["equivalence"]["passed"]
    assert report["equivalence"]["max_abs_f64"] <= 1e-10 and report["equivalence"]["max_abs_f32"] <= 1e-5
    fused = load_weights(out)
    assert fused.spec == trained.spec.collapsed()
    fused.build()  # loads strict


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_fuse_refuses_a_border_error_without_the_flag_and_reports_it_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = IMDNSpec(**TINY_IMDN).with_blocks("rrrb")
    naive = spec_from_dict({**spec.to_dict(), "pad_bias": False})
    assert naive.name.endswith("-rrrb-zeropad")
    src = save_weights(_randomize(build_model(naive, seed=0), seed=1), tmp_path / "naive.safetensors")  # type: ignore[arg-type]
    out = tmp_path / "out.safetensors"
    err = _one_line_error(capsys, ["fuse", str(src), "-o", str(out)])
    assert "cannot fold model.1.sub.0.conv1.0 exactly: border error" in err and "--accept-border-error" in err
    assert not out.exists()
    argv = ["fuse", str(src), "-o", str(out), "--report", str(tmp_path / "r.json"), "--accept-border-error"]
    assert main(argv) == 0
    assert "accepted border error" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    accepted = report["collapse"]["accepted_border_error_f64"]
    assert accepted > 1e-4 and all(m["border_accepted"] for m in report["collapse"]["merges"])
    eq = report["equivalence"]
    assert eq["passed"] and eq["border_crop"] > 0 and eq["max_abs_f64_full"] > 1e-6
    assert load_weights(out).spec == spec.collapsed()


def test_fuse_of_a_parallel_branch_model_still_reports_each_merge(tmp_path: Path) -> None:
    from sr_deploy.checkpoints import fuse_checkpoint

    clb = _randomize(build_model(IMDNSpec(**TINY_IMDN).with_clb(), seed=0), seed=2)
    assert sum(isinstance(m, ParallelConv) for m in clb.modules()) == 4
    report = fuse_checkpoint(save_weights(clb, tmp_path / "c.safetensors"), tmp_path / "d.safetensors")  # type: ignore[arg-type]
    merges = report.collapse["merges"]
    assert [m["module"] for m in merges] == [
        "model.1.sub.0.conv1.0",
        "model.1.sub.0.conv2.0",
        "model.1.sub.0.conv3.0",
        "model.1.sub.0.conv4",
    ]
    assert merges[0]["ops"][:2] == [
        "model.1.sub.0.conv1.0.branches.0 (conv 3x3 8->8)",
        "model.1.sub.0.conv1.0.branches.1 (conv 1x1 8->8)",
    ]
    assert sum(m["params_before"] - m["params_after"] for m in merges) == report.params_in - report.params_out
