"""Robustness of the trained classifiers: balanced accuracy on perturbed test images.

The perturbations are `semimed.transforms.perturb` (noise, blur, contrast, dropout) of growing
strength, in the spirit of ImageNet-C (Hendrycks & Dietterich, ICLR 2019); every model sees
the same corrupted images. The figure shows the mean +- sample std over training seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn
from torch.fx.proxy import TraceError

from semimed.inference import predict_proba
from semimed.io import save_figure
from semimed.transforms import perturb


def _inference_copy(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with every conv-BatchNorm pair folded into one conv (by
    torch.fx; a network fx cannot trace keeps its BatchNorms) in channels-last layout: the
    same outputs up to float rounding, and faster for the small-channel CPU convs."""
    net = copy.deepcopy(net).eval()
    try:
        net = fuse_conv_bn(net)
    except TraceError:
        pass
    return net.to(memory_format=torch.channels_last)


def robustness_records(
    models: Mapping[str, Mapping[int, nn.Module]],
    images: torch.Tensor,
    labels: torch.Tensor,
    kinds: Sequence[str],
    strengths: Sequence[float],
    seed: int,
    batch_size: int,
    device,
    num_classes: int | None = None,
) -> list[dict]:
    """Balanced accuracy of every model on perturbed copies of the images.

    Args:
        models: ``{method: {training seed: network}}``.
        images: (N, 1, H, W) in [0, 1]; labels: (N,) class indices.
        seed: perturbation seed; every model sees the same corrupted images (paired comparison).
        num_classes: classes of the primary target (first logit columns); None: all columns.

    Returns:
        One flat list, one record per (method, training seed, kind, strength), in that nesting
        order: ``{"method", "seed", "kind", "strength", "balanced_accuracy"}`` -- a DVC plot
        template can colour by method and facet by kind; means over seeds are the reader's
        (`plot_robustness`). Strength 0 leaves the images unchanged for every kind, so the
        clean images are scored once per model.
    """
    y = np.asarray(labels)
    fast = {m: {s: _inference_copy(net) for s, net in nets.items()} for m, nets in models.items()}

    def score(nets: Mapping[int, nn.Module], x: torch.Tensor) -> dict[int, float]:
        x = x.contiguous(memory_format=torch.channels_last)
        probs = {
            s: predict_proba(net, x, batch_size, device)[:, :num_classes] for s, net in nets.items()
        }
        return {s: float(balanced_accuracy_score(y, p.argmax(1))) for s, p in probs.items()}

    clean = {m: score(nets, images) for m, nets in fast.items()} if 0 in strengths else {}
    scores: dict[tuple[str, str, float], dict[int, float]] = {}
    for kind in kinds:
        for strength in strengths:
            x = perturb(images, kind, float(strength), seed=seed) if strength else None
            for method, nets in fast.items():
                scores[method, kind, strength] = score(nets, x) if strength else clean[method]
    return [
        {
            "method": method,
            "seed": int(train_seed),
            "kind": kind,
            "strength": float(strength),
            "balanced_accuracy": round(scores[method, kind, strength][train_seed], 6),
        }
        for method, nets in models.items()
        for train_seed in nets
        for kind in kinds
        for strength in strengths
    ]


def plot_robustness(records: Sequence[Mapping], out_png: Path) -> None:
    """One subplot per perturbation kind, a line per method: the mean over the training seeds'
    records with a +-std band (sample std, none for one seed)."""
    kinds = list(dict.fromkeys(r["kind"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    if not kinds:
        raise ValueError("records: empty; nothing to plot")
    fig = Figure(figsize=(3.2 * len(kinds), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0])
    for ax, kind in zip(axes, kinds, strict=True):
        for method in methods:
            per_strength: dict[float, list[float]] = {}
            for r in records:
                if r["kind"] == kind and r["method"] == method:
                    per_strength.setdefault(r["strength"], []).append(r["balanced_accuracy"])
            strengths = sorted(per_strength)
            values = [np.asarray(per_strength[st], dtype=np.float64) for st in strengths]
            s = np.asarray(strengths)
            m = np.asarray([float(v.mean()) for v in values])
            sd = np.asarray([float(v.std(ddof=1)) if v.size > 1 else 0.0 for v in values])
            (line,) = ax.plot(s, m, marker="o", markersize=3, label=method)
            ax.fill_between(s, m - sd, m + sd, color=line.get_color(), alpha=0.2)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("strength")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("balanced accuracy (test)")
    axes[-1].legend(fontsize=7)
    save_figure(fig, out_png)
