"""The report's figures: the comparison bar chart and the training curves.

Figures are drawn on bare ``matplotlib.figure.Figure`` objects, never through ``pyplot`` (no
global backend switch, no figure registry to leak), and written by `semimed.io.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from semimed.io import save_figure


def plot_comparison(records: Sequence[Mapping], task: str, metric: str, out_png: Path) -> None:
    """Bar chart of ``metric`` per method with std error bars and ``mean+-std`` labels.

    Args:
        records: ``[{"method", "mean", "std"}]``, one bar each, as
            `semimed.report.tables.comparison_records` gives them.
        task: named in the title and in the error for no records.
    """
    if not records:
        raise ValueError(f"metric: no method of task {task!r} reports {metric!r}")
    means = [r["mean"] for r in records]
    stds = [r["std"] for r in records]

    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(records)), means, yerr=stds, capsize=3, color="tab:blue")
    for i, (m, s) in enumerate(zip(means, stds, strict=True)):
        # Above the error bar (not the bar top), so the label never hides the whisker.
        top = m + s if m >= 0 else m - s
        ax.annotate(
            f"{m:.3f}\n±{s:.3f}",
            (i, top),
            xytext=(0, 2 if m >= 0 else -2),
            textcoords="offset points",
            ha="center",
            va="bottom" if m >= 0 else "top",
            fontsize=7,
        )
    ax.set_xticks(range(len(records)), [r["method"] for r in records], rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{task}: {metric} (mean ± std over seeds)", fontsize=9)
    ax.margins(y=0.2)  # head-room so the value labels stay inside the axes
    save_figure(fig, out_png)


def plot_training_curves(
    curves: Mapping[str, list[tuple[int, float]]], out_png: Path, ylabel: str
) -> None:
    """One line per run or method; ``curves[name] = [(step, value), ...]``."""
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, points in curves.items():
        if points:
            steps, values = zip(*sorted(points), strict=True)
            ax.plot(steps, values, label=name, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    save_figure(fig, out_png)
