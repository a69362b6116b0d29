"""The segmentation overlay of one test volume: an axial slice with the ground truth and the
prediction drawn over it (``plots/eval/segmentation/<method>/seed<k>/overlay.png``).

Drawn on a bare Agg ``Figure`` and written by `semimed.io.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from semimed.io import save_figure


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
