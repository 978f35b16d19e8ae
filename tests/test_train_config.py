"""TrainConfig: the paper's defaults, TOML round trip, unknown keys named, flag overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from sr_deploy.errors import SRDeployError
from sr_deploy.train.config import DataConfig, StageConfig, TrainConfig, load_config


def test_defaults_are_the_papers_recipe() -> None:
    cfg = TrainConfig()
    assert cfg.arch == "imdn-b7-clb"
    spec = cfg.spec()
    assert (spec.blocks, spec.channels, spec.scale) == (7, 64, 4)
    assert spec.clb_convs == ("conv1", "conv2", "conv3", "conv4")
    s1, s2 = cfg.stages
    assert (s1.lr_patch, s1.crops_per_image) == (64, 10)
    assert s2.lr_patch == 160
    for s in (s1, s2):
        assert s.betas == (0.9, 0.999)
        assert s.lr == 2e-4
        assert s.milestones == (200, 400, 450, 475)
        assert s.gamma == 0.5
        assert s.epochs == 500
        assert s.batch_size == 32
        assert s.loss == "l1"
    assert cfg.data.augment


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = TrainConfig(
        arch="imdn-b2-clb",
        model={"channels": 16, "distilled": 4},
        init_from="ntire:team26",
        data=DataConfig(hr_dirs=("a", 'b "quoted"'), lr_dirs=("la", "lb"), val_hr_dir="v"),
        stages=(StageConfig(name="only", lr_patch=8, milestones=(), betas=(0.8, 0.99)),),
    )
    path = cfg.save(tmp_path / "config.toml")
    assert load_config(path) == cfg
    # None fields are left out and come back as None.
    assert load_config(TrainConfig().save(tmp_path / "d.toml")) == TrainConfig()


def test_partial_toml_keeps_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('seed = 7\n[data]\nhr_dirs = ["x"]\n[[stages]]\nlr_patch = 48\nepochs = 3\n')
    cfg = load_config(p)
    assert cfg.seed == 7
    assert cfg.data.hr_dirs == ("x",)
    assert len(cfg.stages) == 1
    assert cfg.stages[0].lr_patch == 48
    assert cfg.stages[0].epochs == 3
    assert cfg.stages[0].name == "stage1"
    assert cfg.stages[0].milestones == (200, 400, 450, 475)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("sed = 1\n", "'sed'"),
        ("[data]\nhr_dir = ['x']\n", "data.'hr_dir'"),
        ("[[stages]]\nepochs = 1\n[[stages]]\nlr_pach = 3\n", "stages[1].'lr_pach'"),
        ("[model]\nchanels = 16\n", "model.chanels"),
    ],
)
def test_unknown_key_is_named(tmp_path: Path, text: str, named: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(SRDeployError, match="unknown key") as e:
        load_config(p)
    assert named in str(e.value)
    assert "\n" not in str(e.value)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[[stages]]\nepochs = "many"\n')
    with pytest.raises(SRDeployError, match=r"stages\[0\]\.epochs: wrong type str"):
        load_config(p)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("seed = = 1\n")
    with pytest.raises(SRDeployError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(SRDeployError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_overrides_apply_to_every_stage_and_ignore_none() -> None:
    cfg = TrainConfig().with_overrides(epochs=3, lr=1e-3, batch_size=None, seed=5, hr_dirs=["h"], num_workers=0)
    assert [s.epochs for s in cfg.stages] == [3, 3]
    assert [s.lr for s in cfg.stages] == [1e-3, 1e-3]
    assert [s.batch_size for s in cfg.stages] == [32, 32]
    assert cfg.seed == 5
    assert cfg.data.hr_dirs == ("h",)
    assert cfg.data.num_workers == 0
    with pytest.raises(SRDeployError, match="unknown override 'epoch'"):
        TrainConfig().with_overrides(epoch=3)


def test_validation_lists_problems() -> None:
    with pytest.raises(SRDeployError, match=r"stages\[0\]\.epochs must be >= 1") as e:
        TrainConfig(stages=(StageConfig(epochs=0, gamma=2.0),), amp="fp8").validate()
    assert "gamma" in str(e.value)
    assert "amp" in str(e.value)
    with pytest.raises(SRDeployError, match="one LR folder per HR folder"):
        TrainConfig(data=DataConfig(hr_dirs=("a", "b"), lr_dirs=("c",))).validate()
    with pytest.raises(SRDeployError, match="unknown architecture"):
        TrainConfig(arch="edsr").validate()
    with pytest.raises(SRDeployError, match="channels"):
        TrainConfig(model={"channels": 30}).validate()
