"""A real-data check: scikit-learn's handwritten digits (real images, shipped inside an
installed package) through the classification stages with the `cpu` preset at 10 % labels
(`benchmarks/real_digits.py`), the budget cut to 1,500 steps (the runs' best validations come
at 600-1,300 steps) to keep the suite short. The preset's protocol is a fixed budget: every
method trains the same number of steps and each is far above chance (0.1). The comparison
itself (gap closed, 3 seeds, every method) is in docs/experiments.md: on ~300 test digits a
point of balanced accuracy is within one run's noise, so it is not asserted here."""

from __future__ import annotations

import math

import yaml

from benchmarks.real_digits import gap_closed, run


def test_cpu_preset_gives_every_method_the_same_budget_on_real_digits(tmp_path):
    methods = ["supervised", "fixmatch", "supervised_full"]
    rows = run(tmp_path, methods, [0], preset="cpu", extra=["classification.train.steps=1500"])
    train = yaml.safe_load((tmp_path / "params.yaml").read_text())["classification"]["train"]
    assert train["stop"] == "fixed" and train["steps"] == 1500
    assert [r["method"] for r in rows] == methods
    assert all(r["last_step"] == train["steps"] for r in rows), rows  # equal budgets
    assert not any(r["stopped_early"] for r in rows), rows
    assert all(r["balanced_accuracy"] > 0.9 for r in rows), rows
    assert math.isfinite(gap_closed(rows, "fixmatch")), rows
