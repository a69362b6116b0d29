"""Paired per-case comparison against supervised: bootstrap CI, Wilcoxon, pairing by id."""

import csv

import numpy as np
import pytest

from semimed.report.paired import (
    case_scores,
    compare,
    detection,
    mean_over_seeds,
    paired_difference,
    task_section,
)


def test_bootstrap_interval_contains_the_true_difference():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, size=60)
    method = base + 0.05 + rng.normal(0, 0.03, size=60)  # true mean difference 0.05
    r = paired_difference(
        {f"c{i}": v for i, v in enumerate(method)}, {f"c{i}": v for i, v in enumerate(base)}
    )
    assert r["n"] == 60
    assert r["ci_low"] < 0.05 < r["ci_high"]
    assert r["ci_low"] <= r["mean_diff"] <= r["ci_high"]
    assert r["p_value"] < 1e-6
    again = paired_difference(
        {f"c{i}": v for i, v in enumerate(method)}, {f"c{i}": v for i, v in enumerate(base)}
    )
    assert again == r  # fixed bootstrap seed


def test_identical_inputs_give_zero_difference_and_p_one():
    scores = {"a": 0.7, "b": 0.2, "c": 1.0}
    r = paired_difference(scores, dict(scores))
    assert r == {"n": 3, "mean_diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


def test_pairs_by_case_id_not_by_order():
    method = {"b": 1.0, "a": 0.0, "x": 5.0}  # "x" has no partner: left out
    base = {"a": 0.0, "b": 1.0, "y": -3.0}
    r = paired_difference(method, base)
    assert r["n"] == 2 and r["mean_diff"] == 0.0 and r["p_value"] == 1.0


def test_mean_over_shared_seeds_then_paired():
    scores = {
        "supervised": {0: {"a": 0.0, "b": 1.0}, 1: {"a": 0.0, "b": 0.0}},
        "fixmatch": {0: {"a": 1.0, "b": 1.0}, 1: {"a": 1.0, "b": 0.0}, 2: {"a": 9.0}},
    }
    assert mean_over_seeds(scores["supervised"], [0, 1]) == {"a": 0.0, "b": 0.5}
    r = compare(scores)["fixmatch"]
    assert r["seeds"] == [0, 1] and r["n"] == 2  # seed 2 has no supervised partner
    assert r["mean_diff"] == pytest.approx(0.5)  # a: +1, b: 0
    assert compare({"fixmatch": scores["fixmatch"]}) == {}  # no baseline: nothing to pair


def test_case_scores_and_detection():
    seg = [
        {"case": "p1", "class": "liver", "dice": "0.8", "empty_rule": "False"},
        {"case": "p1", "class": "spleen", "dice": "0.0", "empty_rule": "True"},
        {"case": "p2", "class": "liver", "dice": "0.6", "empty_rule": "False"},
    ]
    assert case_scores(seg, dense=True) == pytest.approx({"p1": 0.4, "p2": 0.6})
    assert detection(seg) == {"pairs": 3, "penalised": 1, "dice_detected": 0.7}
    cls = [
        {"id": "i1", "label": "A", "prediction": "A"},
        {"id": "i2", "label": "A", "prediction": "B"},
    ]
    assert case_scores(cls, dense=False) == {"i1": 1.0, "i2": 0.0}


def test_task_section_reads_the_case_tables(tmp_path):
    def path(task, method, seed):
        return tmp_path / f"{task}_{method}_{seed}.csv"

    for method, correct in (("supervised", [1, 0, 0, 1]), ("fixmatch", [1, 1, 0, 1])):
        with open(path("classification", method, 0), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "label", "prediction", "prob_A", "prob_B"])
            w.writeheader()
            for i, ok in enumerate(correct):
                w.writerow(
                    {
                        "id": f"i{i}",
                        "label": "A",
                        "prediction": "A" if ok else "B",
                        "prob_A": "0.5",
                        "prob_B": "0.5",
                    }
                )
    entry, text = task_section(
        "classification", ["supervised", "fixmatch"], [0], dense=False, case_path=path
    )
    assert entry["methods"]["fixmatch"]["mean_diff"] == pytest.approx(0.25)  # accuracy +25 %
    assert entry["methods"]["fixmatch"]["n_seeds"] == 1
    assert "| fixmatch | +0.250 |" in text and text.startswith("### classification")
