"""Shared fixtures: the repository root and a parsed copy of the default params."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params(default_params) -> dict:
    """A mutable deep copy of params.yaml."""
    return copy.deepcopy(default_params)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Unit-test tensors are tiny: extra OpenMP threads only spin, and on a busy 2-core
    machine they made method tests up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
