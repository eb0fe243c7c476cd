"""Shared test helpers: the parity fixture location and small network builders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def fixture_dir() -> Path:
    """The official-small parity fixture: $SPHEREHEAD_FIXTURES/official-small or ../shared/fixtures/."""
    root = os.environ.get("SPHEREHEAD_FIXTURES")
    return (Path(root) if root else REPO.parent / "shared" / "fixtures") / "official-small"


@pytest.fixture(scope="session")
def official_small() -> Path:
    path = fixture_dir()
    if not (path / "network-snapshot.pkl").exists():
        if os.environ.get("CI"):
            pytest.fail(f"parity fixture missing at {path} (CI must run the parity tests)")
        pytest.skip(f"parity fixture not found at {path}; set SPHEREHEAD_FIXTURES")
    return path


@pytest.fixture(scope="module")
def tiny_network(tmp_path_factory) -> str:
    """Path of a randomly initialised ``tiny`` network (G_ema and D) in a folder of the test module's own."""
    import spherehead
    from spherehead.networks.presets import build_preset
    G, D = build_preset("tiny")
    path = tmp_path_factory.mktemp("net") / "tiny.safetensors"
    spherehead.save_network(str(path), G_ema=G, D=D)
    return str(path)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """The `cuda` marker really asks torch whether a GPU is there."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
