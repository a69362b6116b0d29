"""Grad-CAM of the trained classifiers: the same few test images for every method.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) through MONAI's ``monai.visualize.GradCAM`` on the
last ``nn.Conv2d`` of ``net.backbone``, for the predicted class of each image.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from monai.visualize import GradCAM
from torch import nn

from semimed.io import save_figure


def last_conv_name(net: nn.Module) -> str:
    """Name (as in ``net.named_modules()``) of the last ``nn.Conv2d`` inside ``net.backbone``,
    e.g. ``"backbone.10"`` for the cnn or ``"backbone.0.layer4.1.conv2"`` for resnet18."""
    names = [
        f"backbone.{name}"
        for name, module in net.backbone.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    if not names:
        raise ValueError("net.backbone has no nn.Conv2d layer for Grad-CAM")
    return names[-1]


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max scaling of (B, 1, H, W) to [0, 1]; a constant map becomes 0.

    Replaces MONAI's default post-processing, which maps (min, max) to (1, 0) and so shows
    the least relevant pixels brightest.
    """
    flat = maps.detach().flatten(1)
    low = flat.min(1).values.view(-1, 1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1, 1) - low).clamp_min(1e-12)
    return ((maps.detach() - low) / span).clamp(0, 1)


def gradcam_maps(
    net: nn.Module, images: torch.Tensor, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of the predicted class for each image.

    Args:
        net: a ``Classifier``; it is deep-copied, so hooks and ``requires_grad`` changes never
            reach the caller's network (EMA teachers are frozen and would give no gradient).
        images: (N, 1, H, W).
        num_classes: classes of the primary target, the first logit columns of a multi-task
            network; None: every column.

    Returns:
        maps (N, H, W) float32 in [0, 1] (upsampled bilinearly to the image size) and the
        predicted classes (N,) int64. Images go through one at a time with an explicit class:
        MONAI scores a batch by ``logits[:, argmax]``, which mixes the images' classes.
    """
    model = copy.deepcopy(net).eval().requires_grad_(True)
    device = next(model.parameters()).device
    cam = GradCAM(nn_module=model, target_layers=last_conv_name(model), postprocessing=_unit_range)
    with torch.no_grad():
        logits = model(images.to(device))
    preds = logits[:, :num_classes].argmax(1).cpu().numpy()
    maps = [
        cam(x[None].to(device), class_idx=int(c))[0, 0].cpu().numpy()
        for x, c in zip(images, preds, strict=True)
    ]
    return np.stack(maps).astype(np.float32), preds.astype(np.int64)


def select_images(labels: torch.Tensor | np.ndarray, n: int) -> list[int]:
    """Positions of ``n`` images, class by class: the first image of each class (in class
    order), then the second of each, ...; deterministic, and every class shown if n allows."""
    labels = np.asarray(labels)
    queues = [list(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    picked: list[int] = []
    while len(picked) < min(n, len(labels)):
        for q in queues:
            if q and len(picked) < n:
                picked.append(int(q.pop(0)))
    return picked


def plot_gradcam_grid(
    images: torch.Tensor,
    labels: Sequence[int],
    rows: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    out_png: Path,
) -> None:
    """First row the images (N, 1, H, W) titled with their class; then one row per method,
    ``rows[method] = (maps (N, H, W), preds (N,))``, the map over the grayscale frame, titled
    predicted/true (green if right, red if wrong)."""
    n = len(images)
    fig = Figure(figsize=(1.6 * n + 0.8, 1.7 * (len(rows) + 1)), layout="constrained")
    axes = np.asarray(fig.subplots(len(rows) + 1, n, squeeze=False))
    frames = images[:, 0].cpu().numpy()
    for r, (name, (maps, preds)) in enumerate([("image", (None, None)), *rows.items()]):
        axes[r, 0].set_ylabel(name, fontsize=8)
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(frames[c], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            true = class_names[int(labels[c])]
            if maps is None:
                ax.set_title(true, fontsize=8)
                continue
            ax.imshow(maps[c], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            ok = int(preds[c]) == int(labels[c])
            title = f"{class_names[int(preds[c])]}/{true}"
            ax.set_title(title, fontsize=8, color="tab:green" if ok else "tab:red")
    fig.suptitle("Grad-CAM of the predicted class (title: predicted/true)", fontsize=9)
    save_figure(fig, out_png)
