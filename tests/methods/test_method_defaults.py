"""conf/config.yaml is the one source of the methods' hyper-parameters: every method's
``Params`` defaults are exactly the values its ``<task>.methods_params.<method>`` block gives,
so code that builds ``Params()`` without arguments (tests, benchmarks) runs what the pipeline
runs (the stages read params.yaml, which Hydra composes from conf/)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import ROOT

from semimed.config import parse_section
from semimed.methods import METHODS

CONF = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
TASKS = ("classification", "segmentation")
CASES = [(task, name) for task in TASKS for name in METHODS[task]]


@pytest.mark.parametrize("task", TASKS)
def test_conf_has_one_params_block_per_registered_method(task):
    assert set(CONF[task]["methods_params"]) == set(METHODS[task])


@pytest.mark.parametrize("task,name", CASES, ids=[f"{t}.{n}" for t, n in CASES])
def test_params_defaults_are_the_conf_values(task, name):
    cls = METHODS[task][name]
    conf = CONF[task]["methods_params"][name]
    defaults = cls.Params()
    fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)}
    # conf names every field (none falls back to a default) with the same value and type
    assert set(conf) == set(fields), f"{task}.methods_params.{name}: keys differ"
    differ = {
        k: (fields[k], conf[k])
        for k in fields
        if (fields[k], type(fields[k])) != (conf[k], type(conf[k]))
    }
    assert not differ, f"{task}.methods_params.{name}: (Params default, conf) {differ}"
    assert parse_section(cls.Params, conf, f"{task}.methods_params.{name}") == defaults
