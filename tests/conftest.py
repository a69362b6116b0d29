"""Shared fixtures: the repository root and a parsed copy of the default params."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A params override small enough for a whole `dvc repro` in about a minute on 2 CPU cores.
TINY = {
    "classification": {
        "data": {
            "synthetic": {
                "num_patients": 12,
                "studies_per_patient": 1,
                "frames_per_study": 4,
                "image_size": 32,
                "seed": 0,
            }
        },
        "preprocess": {"image_size": 32},
        "split": {"labeled_percent": 30},
        "methods": ["supervised", "fixmatch"],
        "seeds": [0],
        "network": {"channels": [8, 16]},
        "train": {
            "steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 2,
            "checkpoint_every": 2,
        },
    },
    "segmentation": {
        "data": {"synthetic": {"num_cases": 8, "seed": 0}},
        "preprocess": {"spacing": [6.0, 6.0, 6.0]},
        "split": {"labeled_percent": 20},
        "methods": ["supervised", "mean_teacher", "dhc"],
        "seeds": [0],
        "network": {"channels": [4, 8]},
        "train": {
            "steps": 3,
            "batch_size": 1,
            "patch_size": [16, 16, 16],
            "warmup_steps": 1,
            "eval_every": 3,
            "checkpoint_every": 3,
        },
    },
}


# float32's unit roundoff (2**-24): one rounding of a float32 result is off by at most this
# fraction of its magnitude.
FLOAT32_ROUNDOFF = 2.0**-24


def float32_sum_tol(values, roundings: int) -> float:
    """Tolerance for comparing a float64 sum of float32 `values` computed on another processor.

    Each value may differ from the recorded one by `roundings` float32 roundings (kernels
    vectorised for other instruction sets, or fused multiply-adds, round differently), so the
    sum may differ by at most ``roundings * 2**-24 * sum(|values|)``; a different random draw
    changes a value by far more than its rounding, so the comparison still catches it.
    `values`: a tensor or array (converted to float64 here).
    """
    magnitude = float(np.abs(np.asarray(values, dtype=np.float64)).sum())
    return roundings * FLOAT32_ROUNDOFF * magnitude


def write_params(repo: Path, params: dict) -> None:
    """Write `params` as a repository's params.yaml AND as its Hydra source conf/config.yaml
    (with the preset defaults list), so that `dvc exp run -S key=value`, which composes
    params.yaml from conf/, keeps `params` (e.g. a tiny override) and only applies the -S."""
    params = {k: v for k, v in params.items() if k != "preset"}
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "preset": "demo"}, sort_keys=False))
    source = {"defaults": ["_self_", {"preset": "demo"}], **params}
    (repo / "conf").mkdir(exist_ok=True)
    (repo / "conf" / "config.yaml").write_text(yaml.safe_dump(source, sort_keys=False))


def die_writing_last_pt(monkeypatch, step: int) -> None:
    """Make `semimed.training.checkpoint.save` raise KeyboardInterrupt when it writes the last.pt of
    `step` (a run killed mid-checkpoint); `monkeypatch.undo()` restores it."""
    from semimed.training import checkpoint

    save = checkpoint.save

    def dying_save(obj, path):
        if path.name == "last.pt" and obj["step"] == step:
            raise KeyboardInterrupt
        save(obj, path)

    monkeypatch.setattr(checkpoint, "save", dying_save)


def merge(base: dict, over: dict) -> dict:
    """Recursively update `base` with `over` (lists and scalars replace)."""
    for k, v in over.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) else v
    return base


@pytest.fixture(scope="session")
def default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.fixture
def params(default_params) -> dict:
    """A mutable deep copy of params.yaml."""
    return copy.deepcopy(default_params)


@pytest.fixture
def tiny(default_params):
    """Parsed TaskConfig of the tiny override, per task: `tiny("segmentation")`."""
    from semimed.build import parse_task

    over = merge(copy.deepcopy(default_params), copy.deepcopy(TINY))
    return lambda task: parse_task(task, over[task])


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Unit-test tensors are tiny: extra OpenMP threads only spin, and on a busy 2-core
    machine they made method tests up to 10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
