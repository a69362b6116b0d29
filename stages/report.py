"""Stage report: mean +- std over seeds per method -> metrics/summary.json; per-case paired
comparisons against supervised -> metrics/paired.json; figures, tables (plots/report/).

Reads exactly the runs that params.yaml lists (`<task>.methods` x `<task>.seeds`), so stale
files of methods dropped from an experiment never leak into its summary.
"""

import csv
import json
from pathlib import Path

from semimed import cli, paths
from semimed.config import TASKS, load_task
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.paired import task_section
from semimed.report import (
    comparison_table,
    flat_metrics,
    gap_closed,
    per_class_table,
    plot_comparison,
    plot_training_curves,
    summarize,
)
from semimed.tasks import spec


def _val_curve(live_dir: Path, metric: str) -> list[tuple[int, float]]:
    with open(paths.val_curve(live_dir, metric)) as f:
        return [(int(r["step"]), float(r[metric])) for r in csv.DictReader(f, delimiter="\t")]


def run() -> None:
    args = cli.parser(__doc__, task=False).parse_args()
    runs, tables, paired, sections = {}, [], {}, []
    out = paths.REPORT
    for task in TASKS:
        cfg = load_task(task, args.params)
        # what the summary (and so `dvc exp show` / `dvc metrics diff`) carries; the per-run
        # files under metrics/<task>/ keep everything else
        ts = spec(task)
        headline, keep, per_class = ts.headline, list(ts.summary_metrics), ts.per_class_prefix
        runs[task], curves = {}, {}
        for method in cfg.methods:
            runs[task][method] = {}
            for seed in cfg.seeds:
                path = paths.run_metrics(task, method, seed)
                flat = flat_metrics(json.loads(path.read_text()))
                runs[task][method][seed] = {  # "severity/recall_mild" -> "recall_mild"
                    k: v
                    for k, v in flat.items()
                    if k.split("/")[-1] in keep or k.split("/")[-1].startswith(per_class)
                }
                live = paths.live_dir(task, method, seed)
                curves[f"{method} s{seed}"] = _val_curve(live, headline)
        summary = summarize({task: runs[task]})
        plot_comparison(summary, task, headline, out / f"{task}_comparison.png")
        plot_training_curves(
            curves, out / f"{task}_training_curves.png", ylabel=f"validation {headline}"
        )
        tables.append(f"### {task}\n\n{comparison_table(summary, task, keep)}\n")
        if gap := gap_closed(summary, task, headline):
            closed = ", ".join(f"{m} {100 * g:.0f} %" for m, g in gap.items())
            tables.append(
                f"Share of the supervised -> supervised_full {headline} gap closed: {closed}\n"
            )
        if ts.dense:  # per-class Dice of the organs
            tables.append(
                f"Per-class {headline} (mean +- std over seeds):\n\n"
                f"{per_class_table(summary, task, per_class)}\n"
            )
        # per-case differences against supervised, from the evaluate stage's case tables
        paired[task], text = task_section(task, cfg.methods, cfg.seeds, ts.dense, paths.run_cases)
        sections.append(text)
    tables += ["## Paired comparison against supervised (per test case)\n", *sections]
    write_json_atomic(paths.SUMMARY, summarize(runs))
    write_json_atomic(paths.PAIRED, paired)
    write_bytes_atomic(out / "results.md", "\n".join(tables).encode())
    print("\n".join(tables))


if __name__ == "__main__":
    cli.main(run)
