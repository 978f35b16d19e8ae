"""Shared fixtures. ../shared is optional: tests that read it skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sr_deploy.archs.imdn import IMDN, IMDNSpec
from sr_deploy.archs.registry import build_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands cache exported graphs under $SRDEPLOY_CACHE: keep the tests' out of the user's cache."""
    os.environ["SRDEPLOY_CACHE"] = str(tmp_path_factory.mktemp("srdeploy-cache"))


def _shared_dir() -> Path | None:
    env = os.environ.get("SRDEPLOY_SHARED")
    candidate = Path(env) if env else REPO.parent / "shared"
    return candidate if (candidate / "data").is_dir() else None


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared folder (real images, published weights, reference PSNRs, MATLAB vectors)."""
    d = _shared_dir()
    if d is None:
        pytest.skip("../shared is absent (real data is only on developer and CI machines)")
    return d


def _weights(shared: Path, name: str) -> Path:
    p = shared / "data" / "weights" / name
    if not p.is_file():
        pytest.skip(f"{p} is absent")
    return p


@pytest.fixture(scope="session")
def team26_pth(shared: Path) -> Path:
    return _weights(shared, "team26_imdn_nb7.pth")


@pytest.fixture(scope="session")
def baseline_pth(shared: Path) -> Path:
    return _weights(shared, "imdn_baseline.pth")


@pytest.fixture(scope="session")
def tiny_model() -> IMDN:
    """A 2-block, 16-channel IMDN with seeded weights: fast, and every layer kind of the real one. Do not mutate."""
    return build_model(IMDNSpec(blocks=2, channels=16, distilled=4), seed=0).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model: IMDN, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny_model exported unverified: {"fp32": fp32 graph, "fp16": fp16 graph with fp16 I/O}."""
    from sr_deploy.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("tiny-onnx")
    paths = {"fp32": folder / "fp32.onnx", "fp16": folder / "fp16.onnx"}
    export_onnx(tiny_model, paths["fp32"], verify=False)
    export_onnx(tiny_model, paths["fp16"], precision="fp16", io="fp16", verify=False)
    return paths
