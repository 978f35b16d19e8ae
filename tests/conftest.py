"""Shared fixtures. ../shared is optional: tests that read it skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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
