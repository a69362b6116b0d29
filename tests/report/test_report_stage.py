"""The report stage on fixture runs: warnings in results.md, summary.json and the output; the
compact headline file and the per-method plot records."""

from __future__ import annotations

import copy
import json
import runpy
import sys

import pytest
import yaml
from conftest import ROOT
from test_report_flags import train_info

from semimed import paths
from semimed.evaluate.run import run_record, write_cases
from semimed.io import write_json_atomic

CLS = {"supervised": [0.70, 0.71], "fixmatch": [0.74, 0.76], "supervised_full": [0.705, 0.71]}
SEG = {"supervised": [0.50], "supervised_full": [0.70]}


def _write_run(task: str, method: str, seed: int, score: float, converged: bool) -> None:
    headline = "balanced_accuracy" if task == "classification" else "dice"
    extra = {"accuracy": score, "macro_f1": score} if task == "classification" else {}
    metrics = {headline: score, **extra}
    info = train_info(converged)
    write_json_atomic(
        paths.run_metrics(task, method, seed), run_record(task, method, seed, 4, metrics, info)
    )
    if task == "classification":
        rows = [{"id": f"i{i}", "label": "A", "prediction": "AB"[i % 2]} for i in range(4)]
    else:
        rows = [
            {"case": f"c{i}", "class": "liver", "dice": score, "hd95_mm": 1.0, "asd_mm": 1.0}
            | {"empty_rule": False}
            for i in range(3)
        ]
    write_cases(paths.run_cases(task, method, seed), rows)
    tsv = paths.val_curve(paths.live_dir(task, method, seed), headline)
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text(f"step\t{headline}\n100\t{score - 0.1}\n200\t{score}\n300\t{score}\n")


def _run_stage() -> None:
    runpy.run_path(str(ROOT / "stages" / "report.py"), run_name="report")["run"]()


@pytest.fixture
def report(tmp_path, monkeypatch, capsys, default_params):
    """Run the report stage in `tmp_path` on fixture runs; ``under_trained``: the (method,
    seed) runs whose train.json says converged false. Returns the stage's stdout."""
    monkeypatch.setattr(sys, "argv", ["report.py"])

    def run(cls: dict, under_trained=()) -> str:
        monkeypatch.chdir(tmp_path)
        params = copy.deepcopy(default_params)
        for task, scores in (("classification", cls), ("segmentation", SEG)):
            params[task]["methods"] = list(scores)
            params[task]["seeds"] = list(range(len(next(iter(scores.values())))))
            for method, values in scores.items():
                for seed, score in enumerate(values):
                    _write_run(task, method, seed, score, (method, seed) not in under_trained)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        _run_stage()
        return capsys.readouterr().out

    return run


UNDER = "under-trained: 1 of 6 runs were still improving at their last evaluation"
UNINFORMATIVE = "upper bound not above baseline: this comparison is not informative"


def test_short_run_and_uninformative_comparison_are_flagged(report, tmp_path):
    out = report(CLS, under_trained={("fixmatch", 1)})
    results = (tmp_path / paths.RESULTS).read_text()
    summary = json.loads((tmp_path / paths.SUMMARY).read_text())
    flags = summary["classification"]["flags"]
    assert flags[0].startswith(UNDER) and "(fixmatch seed1)" in flags[0]
    assert flags[1].startswith(UNINFORMATIVE)
    assert summary["classification"]["fixmatch"]["runs"] == 2
    assert summary["classification"]["fixmatch"]["converged_runs"] == 1
    assert summary["classification"]["supervised"]["converged_runs"] == 2
    # results.md: the warnings lead the file and the task's section; the table marks the method
    assert results.startswith("> **WARNING** classification: " + UNDER)
    assert results.count(UNINFORMATIVE) == 2
    assert "| fixmatch† |" in results and "| supervised |" in results
    assert "† under-trained" in results
    assert "gap closed (not informative: see the warning)" in results
    # the stage output ends with the warnings, where a user looks last
    assert out.rstrip().splitlines()[-1].startswith("WARNING classification: " + UNINFORMATIVE)
    # segmentation converged, with a clear gap: nothing flagged or marked
    assert summary["segmentation"]["flags"] == []
    section = results[results.index("### segmentation") : results.index("## Paired")]
    assert "WARNING" not in section and "†" not in section and "?" not in section


def test_informative_converged_comparison_is_not_flagged(report, tmp_path):
    cls = CLS | {"supervised_full": [0.85, 0.86]}
    out = report(cls)
    summary = json.loads((tmp_path / paths.SUMMARY).read_text())
    results = (tmp_path / paths.RESULTS).read_text()
    assert summary["classification"]["flags"] == [] == summary["segmentation"]["flags"]
    assert "WARNING" not in results and "WARNING" not in out and "†" not in results
    assert summary["classification"]["fixmatch"]["converged_runs"] == 2


def test_compact_headline_and_plot_records(report, tmp_path):
    report(CLS)
    headline = json.loads((tmp_path / paths.HEADLINE).read_text())
    assert headline == {
        "classification": {
            "supervised": {"balanced_accuracy": 0.705, "std": 0.0071},
            "fixmatch": {"balanced_accuracy": 0.75, "std": 0.0141},
            "supervised_full": {"balanced_accuracy": 0.7075, "std": 0.0035},
        },
        "segmentation": {
            "supervised": {"dice": 0.5, "std": 0.0},
            "supervised_full": {"dice": 0.7, "std": 0.0},
        },
    }
    methods = json.loads((tmp_path / paths.report_methods("classification")).read_text())
    assert {"method": "fixmatch", "seed": 1, "balanced_accuracy": 0.76} in methods
    assert len(methods) == 6
    curves = json.loads((tmp_path / paths.report_val_curves("segmentation")).read_text())
    assert curves[:2] == [
        {"method": "supervised", "seed": 0, "step": 100, "val": 0.4},
        {"method": "supervised", "seed": 0, "step": 200, "val": 0.5},
    ]
    assert len(curves) == 6
    for task in ("classification", "segmentation"):
        for name in ("comparison", "training_curves"):
            assert (tmp_path / paths.REPORT / f"{task}_{name}.png").stat().st_size > 1000
    # the per-run metrics files carry the training block (numbers and bools only)
    run = json.loads((tmp_path / paths.run_metrics("classification", "fixmatch", 1)).read_text())
    assert run["training"]["converged"] is True and run["training"]["best_step"] == 200
    assert all(isinstance(v, int | float) for v in run["training"].values())
    assert run["train"]["fingerprint"] == "0123456789abcdef" and "seconds" not in run["train"]


def test_old_runs_without_convergence_are_unknown(report, tmp_path):
    report(CLS)
    for method, seeds in CLS.items():
        for seed in range(len(seeds)):
            path = tmp_path / paths.run_metrics("classification", method, seed)
            data = json.loads(path.read_text())
            data.pop("training")
            data["train"].pop("convergence", None)
            path.write_text(json.dumps(data))
    _run_stage()
    summary = json.loads((tmp_path / paths.SUMMARY).read_text())
    assert summary["classification"]["flags"][-1].startswith("convergence unknown: 6 of 6 runs")
    assert summary["classification"]["supervised"]["converged_runs"] == 0
    assert "| supervised? |" in (tmp_path / paths.RESULTS).read_text()
