"""One task's report: read its runs, summarize over seeds, flag, write its figures and DVC plot
records, and render its section of ``plots/report/results.md``.

Reads exactly the runs the task's config lists (``methods`` x ``seeds``), so stale files of
methods dropped from an experiment never leak into a summary. Inputs: each run's metrics file
(``paths.run_metrics``; test metrics and the training block), per-case table
(``paths.run_cases``) and DVCLive validation curve (``paths.val_curve``). No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from semimed import paths
from semimed.config import TaskConfig
from semimed.io import write_json_atomic
from semimed.report import flags as rf
from semimed.report.figures import plot_comparison, plot_training_curves
from semimed.report.paired import task_section
from semimed.report.records import (
    headline_metrics,
    method_records,
    read_val_curve,
    val_curve_records,
)
from semimed.report.tables import (
    comparison_records,
    comparison_table,
    flat_metrics,
    gap_closed,
    per_class_table,
    summarize,
)
from semimed.tasks import spec
from semimed.training import convergence


@dataclass(frozen=True)
class TaskReport:
    task: str
    summary: dict  # metrics/summary.json[task]: per method stats, runs, converged_runs; flags
    headline: dict  # metrics/headline.json[task]: {method: {<headline>: mean, "std": std}}
    paired: dict  # metrics/paired.json[task]
    flags: list[str]  # the task's warnings, most severe first
    section: str  # its Markdown section of results.md (tables, warnings, footnotes)
    paired_section: str  # its Markdown section of the paired comparison


def kept_metrics(run_metrics: dict, keep: list[str], per_class: str) -> dict[str, float]:
    """What the summary (and so ``dvc exp show``) carries of one run: the `keep` metrics and the
    per-class ones starting with `per_class` ("severity/recall_mild" counts as "recall_mild");
    the per-run files keep everything else."""
    flat = flat_metrics(run_metrics).items()
    return {k: v for k, v in flat if (b := k.split("/")[-1]) in keep or b.startswith(per_class)}


def task_report(cfg: TaskConfig) -> TaskReport:
    """Summarize, flag and draw the runs of ``cfg.methods`` x ``cfg.seeds``; writes
    ``plots/report/<task>_{comparison,training_curves}.png``, ``<task>_methods.json`` and
    ``<task>_val_curves.json``; returns what goes into the report's shared files."""
    task, ts = cfg.task, spec(cfg.task)
    headline, keep, per_class = ts.headline, list(ts.summary_metrics), ts.per_class_prefix
    files = {
        m: {s: json.loads(paths.run_metrics(task, m, s).read_text()) for s in cfg.seeds}
        for m in cfg.methods
    }
    runs = {
        m: {s: kept_metrics(d, keep, per_class) for s, d in per.items()} for m, per in files.items()
    }
    training = {m: {s: rf.training_block(d) for s, d in per.items()} for m, per in files.items()}
    curves = {
        m: {s: read_val_curve(paths.live_dir(task, m, s), headline) for s in cfg.seeds}
        for m in cfg.methods
    }
    summary = summarize({task: runs})
    stats = summary[task]
    flags = rf.task_flags(stats, headline, training)

    out = paths.REPORT
    write_json_atomic(paths.report_methods(task), method_records(runs, headline))
    write_json_atomic(paths.report_val_curves(task), val_curve_records(curves))
    records = comparison_records(summary, task, headline)
    plot_comparison(records, task, headline, out / f"{task}_comparison.png")
    named = {f"{m} s{s}": points for m, per in curves.items() for s, points in per.items()}
    plot_training_curves(
        named, out / f"{task}_training_curves.png", ylabel=f"validation {headline}"
    )

    marks = rf.marks(training)
    table = comparison_table(summary, task, keep, marks=marks)
    budget = convergence.protocol(cfg.train)
    text = [
        f"### {task}\n\n{rf.warnings_block(flags)}Budget protocol (train.stop: "
        f"{budget['stop']}): {budget['text']}.\n\n{table}{rf.footnote(marks)}\n"
    ]
    if gap := gap_closed(summary, task, headline):
        closed = ", ".join(f"{m} {100 * g:.0f} %" for m, g in gap.items())
        uninformative = rf.upper_bound_flag(stats, headline) is not None
        caveat = " (not informative: see the warning)" if uninformative else ""
        text.append(
            f"Share of the supervised -> supervised_full {headline} gap closed{caveat}: {closed}\n"
        )
    if ts.dense and any(k.startswith(per_class) for m in stats.values() for k in m):
        text.append(  # per-class Dice of the organs
            f"Per-class {headline} (mean +- std over seeds):\n\n"
            f"{per_class_table(summary, task, per_class)}\n"
        )
    # per-case differences against supervised, from the evaluate stage's case tables
    paired, paired_text = task_section(task, cfg.methods, cfg.seeds, ts.dense, paths.run_cases)
    return TaskReport(
        task=task,
        summary=rf.annotate(stats, training, flags, budget),
        headline=headline_metrics(stats, headline),
        paired=paired,
        flags=flags,
        section="\n".join(text),
        paired_section=paired_text,
    )
