"""Summaries over seeds and the Markdown tables of ``plots/report/results.md``.

Results are reported as mean +- sample standard deviation over seeds, as the papers we
compare with do (e.g. DHC, Wang & Li, MICCAI 2023: mean and std over 3 seeds). The report's
figures are `semimed.report.figures`. No torch and no matplotlib here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

Summary = dict[str, dict[str, dict[str, dict[str, float | int]]]]


# ---------------------------------------------------------------------------------- summary


def mean_std(values: list[float]) -> dict[str, float | int]:
    """Mean, sample std (ddof=1; 0.0 for a single value) and count of `values`."""
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def summarize(runs: Mapping[str, Mapping[str, Mapping[int, Mapping[str, float]]]]) -> Summary:
    """Mean, sample std (ddof=1; 0.0 for a single seed) and count of each metric over seeds.

    Args:
        runs: ``runs[task][method][seed] = {metric: value}`` (e.g. ``flat_metrics`` output).

    Returns:
        ``{task: {method: {metric: {"mean", "std", "n"}}}}`` with methods in the given order
        and metrics in order of first appearance. None or non-finite values are left out,
        so ``n`` counts the seeds that produced the metric.
    """
    summary: Summary = {}
    for task, methods in runs.items():
        summary[task] = {}
        for method, seeds in methods.items():
            values: dict[str, list[float]] = {}
            for metrics in seeds.values():
                for name, value in metrics.items():
                    if value is not None and math.isfinite(float(value)):
                        values.setdefault(name, []).append(float(value))
            summary[task][method] = {name: mean_std(v) for name, v in values.items()}
    return summary


def _task(summary: Summary, task: str) -> dict:
    if task not in summary:
        raise ValueError(f"task: unknown {task!r}, valid choices are {sorted(summary)}")
    return summary[task]


def comparison_table(
    summary: Summary,
    task: str,
    metrics: list[str],
    digits: int = 3,
    marks: Mapping[str, str] | None = None,
) -> str:
    """Markdown table, one row per method, cells ``mean +- std (n=k)``; missing cells ``-``;
    ``marks[method]`` (e.g. a dagger for under-trained runs) follows the method's name.

    Example::

        | method | dice | hd95_mm |
        | --- | --- | --- |
        | fixmatch | 0.812 +- 0.010 (n=3) | 7.400 +- 0.300 (n=3) |
    """
    rows = [
        "| method | " + " | ".join(metrics) + " |",
        "| --- |" + " --- |" * len(metrics),
    ]
    for method, stats in _task(summary, task).items():
        cells = [
            f"{s['mean']:.{digits}f} +- {s['std']:.{digits}f} (n={s['n']})"
            if (s := stats.get(m))
            else "-"
            for m in metrics
        ]
        mark = (marks or {}).get(method, "")
        rows.append(f"| {method}{mark} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def gap_closed(summary: Summary, task: str, metric: str) -> dict[str, float]:
    """Share of the ``supervised`` -> ``supervised_full`` gap in ``metric``'s mean that each
    other method closes: ``(m - sup) / (full - sup)`` (1 = as good as all labels, < 0 = worse
    than the labeled subset alone). Empty unless both bounds ran and differ."""
    stats = _task(summary, task)
    try:
        low, high = stats["supervised"][metric]["mean"], stats["supervised_full"][metric]["mean"]
    except KeyError:
        return {}
    if high == low:
        return {}
    return {
        method: (s[metric]["mean"] - low) / (high - low)
        for method, s in stats.items()
        if method not in ("supervised", "supervised_full") and metric in s
    }


def per_class_table(summary: Summary, task: str, prefix: str, digits: int = 3) -> str:
    """Markdown table of the per-class metrics ``<prefix><class>``, one column per class (as
    DHC's tables show which classes a method loses), cells ``mean +- std`` over seeds."""
    stats = _task(summary, task)
    classes = list(dict.fromkeys(k for s in stats.values() for k in s if k.startswith(prefix)))
    rows = [
        "| method | " + " | ".join(c[len(prefix) :] for c in classes) + " |",
        "| --- |" + " --- |" * len(classes),
    ]
    for method, s in stats.items():
        cells = [
            f"{s[c]['mean']:.{digits}f} +- {s[c]['std']:.{digits}f}" if c in s else "-"
            for c in classes
        ]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def comparison_records(summary: Summary, task: str, metric: str) -> list[dict]:
    """Rows ``{"method", "mean", "std"}`` of the comparison bar chart
    (`semimed.report.figures.plot_comparison`); methods that lack ``metric`` are left out."""
    return [
        {"method": method, "mean": stats[metric]["mean"], "std": stats[metric]["std"]}
        for method, stats in _task(summary, task).items()
        if metric in stats
    ]


def flat_metrics(metrics: dict) -> dict[str, float]:
    """Flatten a metrics dict into ``{name: float}`` for summaries across seeds.

    Top-level numbers keep their key; ``per_class`` entries become ``"<metric>_<class>"``
    (e.g. ``"dice_liver"``, ``"recall_PLAX"``; whitespace in class names becomes ``_``);
    further tasks of a multi-task model (``tasks: {name: metrics}``) get a ``"<name>/"``
    prefix (``"severity/balanced_accuracy"``). Lists (``confusion_matrix``) and None values
    (not computable) are left out.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if key == "tasks" and isinstance(value, dict):
            for task, task_metrics in value.items():
                for name, v in flat_metrics(task_metrics).items():
                    flat[f"{task}/{name}"] = v
        elif key == "per_class" and isinstance(value, dict):
            for cls, scores in value.items():
                cls_key = "_".join(str(cls).split())
                for metric, v in scores.items():
                    if _is_number(v):
                        flat[f"{metric}_{cls_key}"] = float(v)
        elif _is_number(value):
            flat[key] = float(value)
    return flat


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)
