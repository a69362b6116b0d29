"""A real-data check: scikit-learn's handwritten digits (real images, shipped inside an
installed package) through the classification stages with the `cpu` preset at 10 % labels
(`benchmarks/real_digits.py`). With a budget that fits the data, the upper bound must beat
the baseline clearly and every run must have converged by the documented rule."""

from __future__ import annotations

import math

from benchmarks.real_digits import gap_closed, run


def test_cpu_preset_converges_on_real_digits(tmp_path):
    methods = ["supervised", "fixmatch", "supervised_full"]
    rows = run(tmp_path, methods, [0], preset="cpu")
    score = {r["method"]: r["balanced_accuracy"] for r in rows}
    assert all(r["converged"] for r in rows), rows  # early stopping or a flat last quarter
    assert all(r["last_step"] < 4000 for r in rows), rows  # stopped before the maximum
    assert score["supervised_full"] - score["supervised"] >= 0.03, score
    assert math.isfinite(gap_closed(rows, "fixmatch"))
