"""The report stage states each task's budget protocol and flags unequal budgets, in results.md
and summary.json (fixture runs of tests/report/test_report_stage.py)."""

from __future__ import annotations

import json

import test_report_stage
from test_report_flags import train_info
from test_report_stage import CLS, report  # noqa: F401  (fixture: the report stage on runs)

from semimed import paths

STEPS = {"supervised": 3400, "fixmatch": 1800, "supervised_full": 3500}


def test_protocol_and_unequal_budget_in_results_and_summary(
    report,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """fixmatch stopped at 1,800 steps, supervised at 3,400: flagged, marked, said per method;
    the default config's protocol (fixed, 300 / 400 steps) is stated per task."""
    written = []  # the method of the run being written
    real = test_report_stage._write_run

    def write_run(task, method, seed, score, converged):
        written.append(method)
        real(task, method, seed, score, converged)

    def info(converged):
        out = train_info(converged)
        out["last_step"] = out["convergence"]["last_step"] = STEPS.get(written[-1], 400)
        return out

    monkeypatch.setattr(test_report_stage, "_write_run", write_run)
    monkeypatch.setattr(test_report_stage, "train_info", info)
    report(CLS | {"supervised_full": [0.85, 0.86]})
    summary = json.loads((tmp_path / paths.SUMMARY).read_text())
    results = (tmp_path / paths.RESULTS).read_text()
    cls = summary["classification"]
    assert cls["flags"] == [f for f in cls["flags"] if f.startswith("unequal budgets: 1 method")]
    assert len(cls["flags"]) == 1 and "fixmatch at 1,800 steps (53 %)" in cls["flags"][0]
    assert cls["fixmatch"]["budget"] == "unequal: 53 % of supervised's steps"
    assert cls["supervised_full"]["budget"] == "equal"
    assert cls["budget"]["stop"] == "fixed" and cls["budget"]["steps"] == 300
    assert summary["segmentation"]["flags"] == []
    assert "> **WARNING** classification: unequal budgets: 1 method(s)" in results
    assert "| fixmatch‡ |" in results and "‡ unequal budget" in results
    assert "Budget protocol (train.stop: fixed): fixed budget: every method trains 300" in results
    assert "every method trains 400 steps" in results  # segmentation's
