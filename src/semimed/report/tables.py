"""Summaries over seeds, Markdown tables and small figures for the README and DVC plots.

Results are reported as mean +- sample standard deviation over seeds, as the papers we
compare with do (e.g. DHC, Wang & Li, MICCAI 2023: mean and std over 3 seeds).

Figures are drawn on bare ``matplotlib.figure.Figure`` objects rendered by the Agg canvas,
never through ``pyplot``: no global backend switch, no figure registry to leak, safe in
headless stage scripts. Every file is written atomically (temp file in the target directory,
then ``os.replace``), so an interrupted stage never leaves a half-written PNG or JSON that
DVC would then cache.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from semimed.io import write_bytes_atomic, write_json_atomic

_DPI = 100  # small PNGs: they are committed to DVC plots and shown in the README

Summary = dict[str, dict[str, dict[str, dict[str, float | int]]]]


# ------------------------------------------------------------------------------------ files


def write_json(obj: object, path: Path) -> None:
    """Atomically write ``obj`` as indented JSON; NaN/inf are refused (not valid JSON)."""
    write_json_atomic(path, obj)


def save_figure(fig: Figure, out_png: Path) -> None:
    FigureCanvasAgg(fig)  # attach the Agg renderer explicitly
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    write_bytes_atomic(out_png, buf.getvalue())


# ---------------------------------------------------------------------------------- summary


def mean_std(values: list[float]) -> dict[str, float | int]:
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
    """Rows ``{"method", "mean", "std"}`` for a DVC ``bar_horizontal`` plot (methods that lack
    ``metric`` are left out)."""
    return [
        {"method": method, "mean": stats[metric]["mean"], "std": stats[metric]["std"]}
        for method, stats in _task(summary, task).items()
        if metric in stats
    ]


# ---------------------------------------------------------------------------------- figures


def plot_comparison(summary: Summary, task: str, metric: str, out_png: Path) -> None:
    """Bar chart of ``metric`` per method with std error bars and ``mean+-std`` labels."""
    records = comparison_records(summary, task, metric)
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


def _class_colours(n_classes: int) -> list[tuple[float, float, float]]:
    """A distinct RGB colour per foreground class 1..C-1 (index 0 unused: background)."""
    cmap = colormaps["tab10" if n_classes <= 11 else "tab20"]
    return [(0.0, 0.0, 0.0)] + [cmap((c - 1) % cmap.N)[:3] for c in range(1, n_classes)]


def _overlay_panel(ax, image2d: np.ndarray, labels2d: np.ndarray | None, colours, title) -> None:
    """Show a (X, Y) slice with X horizontal and Y vertical, optional filled contours."""
    ax.imshow(image2d.T, cmap="gray", origin="lower", interpolation="nearest")
    if labels2d is not None:
        rgba = np.zeros((*labels2d.T.shape, 4))
        for c in np.unique(labels2d[labels2d > 0]):
            mask = labels2d.T == c
            rgba[mask] = (*colours[c], 0.35)
            ax.contour(mask.astype(float), levels=[0.5], colors=[colours[c]], linewidths=0.8)
        ax.imshow(rgba, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_overlay(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    class_names: list[str],
    out_png: Path,
    title: str,
) -> None:
    """Three panels of one axial slice: image, image + ground truth, image + prediction.

    Args:
        image: (X, Y, Z) float intensities.
        label: (X, Y, Z) int ground-truth label map (0 = background).
        pred: (X, Y, Z) int predicted label map.
        class_names: names indexed by class; the legend lists the classes on the slice.
        out_png: destination; parent dirs are created.
        title: figure title (the chosen slice index is appended).

    The slice is the one along the last (axial, Z) axis with the most ground-truth
    foreground; if the label is empty everywhere, the one with the most predicted
    foreground (so false positives are visible), else the middle slice.
    """
    image, label, pred = np.asarray(image), np.asarray(label), np.asarray(pred)
    if not (image.shape == label.shape == pred.shape) or image.ndim != 3:
        raise ValueError(
            f"image {image.shape}, label {label.shape} and pred {pred.shape} must be the same "
            "(X, Y, Z) shape"
        )
    for name, arr in (("label", label), ("pred", pred)):
        if arr.min() < 0 or arr.max() >= len(class_names):
            raise ValueError(f"{name} values must lie in [0, {len(class_names)})")
    fg_label, fg_pred = (label > 0).sum(axis=(0, 1)), (pred > 0).sum(axis=(0, 1))
    if fg_label.any():
        z = int(fg_label.argmax())
    elif fg_pred.any():
        z = int(fg_pred.argmax())
    else:
        z = image.shape[2] // 2

    colours = _class_colours(len(class_names))
    fig = Figure(figsize=(9, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    _overlay_panel(axes[0], image[:, :, z], None, colours, "image")
    _overlay_panel(axes[1], image[:, :, z], label[:, :, z], colours, "ground truth")
    _overlay_panel(axes[2], image[:, :, z], pred[:, :, z], colours, "prediction")
    shown = np.union1d(np.unique(label[:, :, z]), np.unique(pred[:, :, z]))
    handles = [Patch(color=colours[c], label=class_names[c]) for c in shown if c > 0]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7))
    fig.suptitle(f"{title} (axial slice z={z})", fontsize=10)
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
