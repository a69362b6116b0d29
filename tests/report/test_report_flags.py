"""Convergence records, the report's warnings and marks, compact headline metrics, plot records."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from semimed.io import write_json_atomic
from semimed.report import flags as rf
from semimed.report.records import (
    headline_metrics,
    method_records,
    read_val_curve,
    val_curve_records,
)
from semimed.report.tables import comparison_table, summarize
from semimed.training import convergence


def train_info(converged: bool | None) -> dict:
    """A train.json as the training loop writes it, its convergence block from the loop's own
    `convergence.Tracker`: validations every 100 steps up to 400, still rising (under-trained)
    or flat after step 200 (converged). None: a train.json from before convergence records."""
    scores = [0.5, 0.8, 0.8, 0.8] if converged else [0.5, 0.6, 0.7, 0.8]
    tracker = convergence.Tracker(patience=0, min_steps=0, min_delta=0.0)
    for k, score in enumerate(scores, start=1):
        tracker.validated(100 * k, score)
    best_step = 200 if converged else 400
    info = {
        "task": "classification",
        "method": "supervised",
        "seed": 0,
        "steps": 400,
        "best_val_balanced_accuracy": 0.8,
        "best_step": best_step,
        "seconds": 12.5,
        "device": "cpu",
        "fingerprint": "0123456789abcdef",
    }
    if converged is None:
        return info
    extra = {"max_steps": 1000, "budget_steps": 400, "last_step": 400}
    return info | extra | {"convergence": tracker.report(400)}


def test_training_record_numbers_and_bools_only():
    record = rf.training_record(train_info(False))
    assert record == {
        "max_steps": 1000,
        "budget_steps": 400,
        "best_step": 400,
        "last_step": 400,
        "evaluations": 4,
        "stopped_early": False,
        "converged": False,
        "last_quarter_gain": pytest.approx(0.1),
        "trend_per_1k_steps": 0.0,  # one validation in the last quarter: no slope
        "skipped_steps": 0,
    }
    assert rf.training_record(train_info(True))["converged"] is True
    assert all(isinstance(v, int | float) for v in record.values())  # no "rule" string
    # an old train.json: best step only, convergence unknown
    assert rf.training_record(train_info(None)) == {"best_step": 400}
    assert rf.status(rf.training_record(train_info(None))) == "unknown"
    bad = train_info(True)
    bad["convergence"] |= {"converged": "yes", "last_quarter_gain": float("nan")}
    assert "converged" not in rf.training_record(bad)  # wrong type: unknown, not truthy
    assert "last_quarter_gain" not in rf.training_record(bad)  # NaN is not JSON


def test_training_block_reads_block_or_train_copy():
    block = rf.training_record(train_info(True))
    assert rf.training_block({"training": block, "train": {}}) == block
    # metrics files from before the "training" block: the train.json copy under "train"
    assert rf.training_block({"train": train_info(False)})["converged"] is False
    assert rf.training_block({"balanced_accuracy": 0.5}) == {}


def _training(states: dict[str, list[bool | None]]) -> dict:
    return {
        m: {s: rf.training_record(train_info(c)) for s, c in enumerate(cs)}
        for m, cs in states.items()
    }


def _stats(sup: list[float], full: list[float]) -> dict:
    runs = {
        "segmentation": {
            "supervised": {s: {"dice": v} for s, v in enumerate(sup)},
            "supervised_full": {s: {"dice": v} for s, v in enumerate(full)},
        }
    }
    return summarize(runs)["segmentation"]


def test_under_trained_flag_counts_and_names_runs():
    training = _training({"supervised": [True, False], "fixmatch": [False, True, True]})
    flag = rf.under_trained_flag(training)
    assert flag.startswith(
        "under-trained: 2 of 5 runs were still improving at their last evaluation"
    )
    assert "supervised seed1" in flag and "fixmatch seed0" in flag
    assert rf.under_trained_flag(_training({"supervised": [True, True]})) is None
    unknown = _training({"supervised": [None, True]})
    assert rf.under_trained_flag(unknown) is None  # unknown is not under-trained ...
    assert rf.unknown_flag(unknown).startswith("convergence unknown: 1 of 2 runs")  # ... but said


@pytest.mark.parametrize(
    ("sup", "full", "flagged"),
    [
        ([0.767, 0.770], [0.767, 0.768], True),  # the first dataset: no gap at all
        ([0.50, 0.52], [0.512, 0.532], True),  # gain 0.012 within the seed std 0.014
        ([0.50, 0.52], [0.52, 0.54], False),  # gain 0.020 beyond it
        ([0.50, 0.60], [0.58, 0.62], True),  # gain 0.05, but supervised's std is 0.071
        ([0.50, 0.51], [0.60, 0.61], False),  # clear gap, small std
        ([0.500], [0.515], False),  # single seeds: std 0, the 0.01 floor applies
        ([0.500], [0.505], True),
    ],
)
def test_upper_bound_flag_uses_the_larger_seed_std_or_0_01(sup, full, flagged):
    flag = rf.upper_bound_flag(_stats(sup, full), "dice")
    gain = sum(full) / len(full) - sum(sup) / len(sup)
    if flagged:
        assert flag.startswith(
            "upper bound not above baseline: this comparison is not informative"
        ), gain
    else:
        assert flag is None, gain


def test_upper_bound_flag_needs_both_bounds():
    stats = _stats([0.5], [0.5])
    del stats["supervised_full"]
    assert rf.upper_bound_flag(stats, "dice") is None
    assert rf.upper_bound_flag(_stats([0.5], [0.5]), "hd95_mm") is None  # metric not reported


def test_task_flags_marks_and_annotated_summary():
    stats = _stats([0.5, 0.51], [0.6, 0.61])
    training = _training({"supervised": [True, False], "supervised_full": [True, None]})
    flags = rf.task_flags(stats, "dice", training)
    assert [f.split(":")[0] for f in flags] == ["under-trained", "convergence unknown"]
    marks = rf.marks(training)
    assert marks == {"supervised": rf.UNDER_TRAINED, "supervised_full": rf.UNKNOWN}
    table = comparison_table({"segmentation": stats}, "segmentation", ["dice"], marks=marks)
    assert "| supervised† | 0.505 +- 0.007 (n=2) |" in table
    assert "| supervised_full? |" in table
    assert "under-trained" in rf.footnote(marks) and rf.footnote({}) == ""
    annotated = rf.annotate(stats, training, flags)
    assert annotated["supervised"]["runs"] == 2 and annotated["supervised"]["converged_runs"] == 1
    assert annotated["supervised_full"]["converged_runs"] == 1
    assert annotated["supervised"]["dice"] == stats["supervised"]["dice"]
    assert annotated["flags"] == flags
    block = rf.warnings_block(flags)
    assert block.count("> **WARNING** ") == 2 and rf.warnings_block([]) == ""
    # converged, informative: nothing to say
    clean = _training({"supervised": [True, True], "supervised_full": [True, True]})
    assert rf.task_flags(stats, "dice", clean) == [] and rf.marks(clean) == {}


def test_headline_metrics_compact_and_rounded():
    summary = summarize(
        {
            "classification": {
                "supervised": {0: {"balanced_accuracy": 0.712345, "auc": 0.9}, 1: {"auc": 0.8}},
                "fixmatch": {0: {"balanced_accuracy": 0.8}, 1: {"balanced_accuracy": 0.9}},
                "cps": {0: {"auc": 0.5}},  # no headline value: left out
            }
        }
    )["classification"]
    assert headline_metrics(summary, "balanced_accuracy") == {
        "supervised": {"balanced_accuracy": 0.7123, "std": 0.0},
        "fixmatch": {"balanced_accuracy": 0.85, "std": 0.0707},
    }


def test_method_and_val_curve_records(tmp_path):
    runs = {
        "supervised": {0: {"dice": 0.51234567}, 1: {"dice": float("nan")}},
        "dhc": {2: {"dice": 0.6, "hd95_mm": 3.0}},
    }
    assert method_records(runs, "dice") == [
        {"method": "supervised", "seed": 0, "dice": 0.512346},
        {"method": "dhc", "seed": 2, "dice": 0.6},
    ]
    tsv = tmp_path / "plots" / "metrics" / "val" / "dice.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\tdice\n50\t0.25\n100\t0.5\n")
    curve = read_val_curve(tmp_path, "dice")
    assert curve == [(50, 0.25), (100, 0.5)]
    records = val_curve_records({"dhc": {2: curve + [(150, float("nan"))]}})
    assert records == [
        {"method": "dhc", "seed": 2, "step": 50, "val": 0.25},
        {"method": "dhc", "seed": 2, "step": 100, "val": 0.5},
    ]
    write_json_atomic(tmp_path / "r.json", records)  # valid JSON: no NaN left
    assert json.loads((tmp_path / "r.json").read_text()) == records


def _budgets(last_steps: dict[str, list[int]]) -> dict:
    """A converged training record per run, stopped at the given last steps."""
    return {
        m: {s: rf.training_record(train_info(True)) | {"last_step": n} for s, n in enumerate(ns)}
        for m, ns in last_steps.items()
    }


def test_unequal_budget_flag_fires_under_60_percent_of_supervised_steps():
    training = _budgets(
        {
            "supervised": [3400, 3200],  # mean 3,300
            "fixmatch": [1800, 1900],  # 56 %: flagged
            "mean_teacher": [2000, 2000],  # 61 %: not
            "supervised_full": [3500, 3500],
        }
    )
    assert rf.budget_shares(training)["fixmatch"] == pytest.approx(1850 / 3300)
    flag = rf.unequal_budget_flag(training)
    assert flag.startswith("unequal budgets: 1 method(s) stopped at under 60 % of the 3,300")
    assert "fixmatch at 1,850 steps (56 %)" in flag and "mean_teacher" not in flag
    assert rf.task_flags(_stats([0.5], [0.6]), "dice", training) == [flag]
    marks = rf.marks(training)
    assert marks == {"fixmatch": rf.UNEQUAL}
    assert "unequal budget: its runs stopped at under 60 %" in rf.footnote(marks)
    stats = {m: {"dice": {"mean": 0.5, "std": 0.0, "n": 2}} for m in training}
    annotated = rf.annotate(stats, training, [flag], {"stop": "early"})
    assert annotated["fixmatch"]["budget"] == "unequal: 56 % of supervised's steps"
    assert annotated["mean_teacher"]["budget"] == "equal"
    assert annotated["fixmatch"]["steps_vs_supervised"] == pytest.approx(0.5606)
    assert "budget" not in annotated["supervised"] and annotated["budget"] == {"stop": "early"}
    # under-trained and short: both marks
    training["fixmatch"][0]["converged"] = False
    assert rf.marks(training)["fixmatch"] == rf.UNDER_TRAINED + rf.UNEQUAL


def test_no_unequal_budget_flag_at_equal_steps_or_without_the_baseline():
    equal = _budgets({"supervised": [400, 400], "fixmatch": [400, 300], "supervised_full": [400]})
    assert rf.unequal_budget_flag(equal) is None and rf.marks(equal) == {}
    assert rf.unequal_budget_flag(_budgets({"fixmatch": [100]})) is None
    old = {"supervised": {0: {"best_step": 4}}, "fixmatch": {0: {"best_step": 1}}}
    assert rf.unequal_budget_flag(old) is None  # no last step recorded: nothing to compare


def test_budget_protocol_in_words():
    keys = dict(steps=4000, epochs=None, patience=8, min_steps=600, min_delta=0.002, smooth=5)
    early = convergence.protocol(SimpleNamespace(stop="early", **keys))
    assert early["stop"] == "early" and early["patience"] == 8 and early["smooth"] == 5
    assert early["text"].startswith("early stopping: at most 4,000 steps; a run stops after 8")
    fixed = convergence.protocol(SimpleNamespace(stop="fixed", **keys))
    assert fixed == {
        "stop": "fixed",
        "steps": 4000,
        "text": "fixed budget: every method trains 4,000 steps; the best validation "
        "checkpoint is tested",
    }
