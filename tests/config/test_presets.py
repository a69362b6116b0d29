"""Presets: conf/config.yaml + conf/preset/<name>.yaml composed by Hydra into params.yaml,
as `dvc exp run -S preset=<name> -S key=value` does (DVC's own compose function)."""

from __future__ import annotations

import pytest
import yaml
from conftest import ROOT
from dvc.utils.hydra import compose_and_dump

from semimed.build import parse_task

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "preset").glob("*.yaml"))
TASKS = ("classification", "segmentation")


def _compose(tmp_path, *overrides) -> dict:
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", "", list(overrides))
    return yaml.safe_load(out.read_text())


def test_params_yaml_is_the_composed_default(tmp_path):
    """The committed params.yaml is byte for byte what Hydra composes from conf/ (`make
    params`), so `dvc repro` and `dvc exp run -S` read the same values."""
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(ROOT / "conf"), None, "config", "", [])
    assert out.read_text() == (ROOT / "params.yaml").read_text(), "run `make params`"


def test_presets_exist_and_name_themselves(tmp_path):
    assert PRESETS == ["cpu", "demo", "gpu"]
    for name in PRESETS:
        assert _compose(tmp_path, f"preset={name}")["preset"] == name


@pytest.mark.parametrize("name", ["cpu", "demo", "gpu"])
def test_every_preset_is_valid_params(tmp_path, name):
    params = _compose(tmp_path, f"preset={name}")
    for task in TASKS:
        cfg = parse_task(task, params[task])  # every check of config/ and the registry
        if name == "demo":
            assert cfg.train.patience == 0  # today's fixed short budget
        else:
            assert cfg.train.patience > 0 and cfg.train.steps >= 10 * cfg.train.eval_every


def test_gpu_preset_follows_the_seed_protocols(tmp_path):
    params = _compose(tmp_path, "preset=gpu")
    seg, cls = params["segmentation"]["train"], params["classification"]["train"]
    assert seg["patch_size"] == [96, 96, 96] and seg["batch_size"] == 2
    assert seg["unlabeled_ratio"] == 1 and seg["optimizer"] == "sgd" and seg["lr"] == 0.03
    assert seg["schedule"] == "poly" and seg["steps"] >= 20000 and seg["amp"]
    assert cls["batch_size"] == 64 and cls["unlabeled_ratio"] == 7 and cls["amp"]


def test_overrides_compose_with_a_preset(tmp_path):
    """`-S preset=cpu -S classification.train.steps=7`: the preset, then the override."""
    params = _compose(tmp_path, "preset=cpu", "classification.train.steps=7")
    cpu = yaml.safe_load((ROOT / "conf" / "preset" / "cpu.yaml").read_text())
    train = params["classification"]["train"]
    assert train["steps"] == 7
    assert train["patience"] == cpu["classification"]["train"]["patience"]
    demo = _compose(tmp_path, "segmentation.train.steps=9")
    assert demo["preset"] == "demo" and demo["segmentation"]["train"]["steps"] == 9
