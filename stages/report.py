"""Stage report: mean +- std over seeds per method -> metrics/summary.json, figures, tables.

Reads exactly the runs that params.yaml lists (`<task>.methods` x `<task>.seeds`), so stale
files of methods dropped from an experiment never leak into its summary.
"""

import argparse
import csv
import json
from pathlib import Path

from semimed import cli
from semimed.config import TASKS, load_task
from semimed.evaluate import flat_metrics
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.report import (
    comparison_table,
    gap_closed,
    per_class_table,
    plot_comparison,
    plot_training_curves,
    summarize,
)
from semimed.train import VAL_METRIC

# What the summary (and so `dvc exp show` / `dvc metrics diff`) carries; the per-run files
# under metrics/<task>/ keep everything else.
HEADLINE = {
    "classification": (
        "balanced_accuracy",
        ["accuracy", "balanced_accuracy", "macro_f1", "auc"],
        "recall_",
    ),
    "segmentation": ("dice", ["dice", "hd95_mm", "asd_mm"], "dice_"),
}


def _val_curve(live_dir: Path, metric: str) -> list[tuple[int, float]]:
    tsv = live_dir / "plots" / "metrics" / "val" / f"{metric}.tsv"
    with open(tsv) as f:
        return [(int(r["step"]), float(r[metric])) for r in csv.DictReader(f, delimiter="\t")]


def run() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()
    runs, tables = {}, []
    out = Path("plots/report")
    for task in TASKS:
        cfg = load_task(task, args.params)
        headline, keep, per_class = HEADLINE[task]
        runs[task], curves = {}, {}
        for method in cfg.methods:
            runs[task][method] = {}
            for seed in cfg.seeds:
                path = cli.run_dir("metrics", task, method, seed).with_suffix(".json")
                flat = flat_metrics(json.loads(path.read_text()))
                runs[task][method][seed] = {  # "severity/recall_mild" -> "recall_mild"
                    k: v
                    for k, v in flat.items()
                    if k.split("/")[-1] in keep or k.split("/")[-1].startswith(per_class)
                }
                live = cli.run_dir("plots/train", task, method, seed)
                curves[f"{method} s{seed}"] = _val_curve(live, VAL_METRIC[task])
        summary = summarize({task: runs[task]})
        plot_comparison(summary, task, headline, out / f"{task}_comparison.png")
        plot_training_curves(
            curves, out / f"{task}_training_curves.png", ylabel=f"validation {VAL_METRIC[task]}"
        )
        tables.append(f"### {task}\n\n{comparison_table(summary, task, keep)}\n")
        if gap := gap_closed(summary, task, headline):
            closed = ", ".join(f"{m} {100 * g:.0f} %" for m, g in gap.items())
            tables.append(
                f"Share of the supervised -> supervised_full {headline} gap closed: {closed}\n"
            )
        if task == "segmentation":
            tables.append(
                f"Per-class {headline} (mean +- std over seeds):\n\n"
                f"{per_class_table(summary, task, per_class)}\n"
            )
    summary = summarize(runs)
    write_json_atomic("metrics/summary.json", summary)
    write_bytes_atomic(out / "results.md", "\n".join(tables).encode())
    print("\n".join(tables))


if __name__ == "__main__":
    cli.main(run)
