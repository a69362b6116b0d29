"""What the trained classifiers learned: Grad-CAM maps, robustness to corruptions, embeddings.

Three analyses of the classification task, all on the TEST split and each testable alone:

* **Grad-CAM** (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017) through MONAI's ``monai.visualize.GradCAM`` on the
  last ``nn.Conv2d`` of ``net.backbone``: the same few test images for every method.
* **Robustness**: balanced accuracy under ``semimed.transforms.perturb`` (noise, blur,
  contrast, dropout) of growing strength, in the spirit of ImageNet-C (Hendrycks & Dietterich,
  ICLR 2019); mean +- sample std over training seeds, as in ``semimed.report.tables``.
* **Embeddings**: ``net.backbone`` features (N, F) projected to 2D with t-SNE (van der Maaten
  & Hinton, JMLR 2008; scikit-learn) and UMAP (McInnes et al., arXiv:1802.03426; umap-learn).

Figures are bare Agg ``Figure`` objects written atomically, as in ``semimed.report.tables``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from monai.visualize import GradCAM
from sklearn.manifold import TSNE
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits
from torch import nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn
from torch.fx.proxy import TraceError

from semimed.config import ClsAnalysis, ConfigError, TaskConfig, load_task, parse_section
from semimed.inference import predict_proba
from semimed.report.tables import mean_std, save_figure
from semimed.transforms import perturb

PROJECTIONS = {"tsne": "t-SNE", "umap": "UMAP"}  # name -> display name


# ----------------------------------------------------------------------------------- params


def parse_analysis(raw: object, key: str = "classification.analysis") -> ClsAnalysis:
    """Strictly parse the raw ``analysis`` mapping; ConfigError names the bad key."""
    return parse_section(ClsAnalysis, raw, key)


def load_analysis(path: str | Path = "params.yaml") -> tuple[TaskConfig, ClsAnalysis]:
    """The classification TaskConfig and its ``analysis`` sub-section from params.yaml."""
    cfg = load_task("classification", path)
    if cfg.analysis is None:
        raise ConfigError(f"{path}: classification.analysis: missing key")
    return cfg, cfg.analysis


# --------------------------------------------------------------------------------- Grad-CAM


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


# ------------------------------------------------------------------------------- robustness


def _inference_copy(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with every conv-BatchNorm pair folded into one conv (by
    torch.fx; a network fx cannot trace keeps its BatchNorms) in channels-last layout: the
    same outputs up to float rounding, ~3x faster for our small-channel CPU convs."""
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
            stats = [(s, mean_std(v)) for s, v in sorted(per_strength.items())]
            s = np.asarray([st for st, _ in stats])
            m = np.asarray([v["mean"] for _, v in stats])
            sd = np.asarray([v["std"] for _, v in stats])
            (line,) = ax.plot(s, m, marker="o", markersize=3, label=method)
            ax.fill_between(s, m - sd, m + sd, color=line.get_color(), alpha=0.2)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("strength")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("balanced accuracy (test)")
    axes[-1].legend(fontsize=7)
    save_figure(fig, out_png)


# ------------------------------------------------------------------------------- embeddings


@torch.inference_mode()
def backbone_features(net: nn.Module, images: torch.Tensor, batch_size: int, device) -> np.ndarray:
    """``net.backbone`` features (N, F) float32 of images (N, 1, H, W), in eval mode."""
    net.eval()
    out = [
        net.backbone(images[i : i + batch_size].to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()


def project(features: np.ndarray, how: str, seed: int, neighbors: int = 15) -> np.ndarray:
    """2D projection (N, 2) of features (N, F) with ``how`` in PROJECTIONS.

    t-SNE: perplexity ``min(30, N - 1)``, PCA init, one thread (so the result does not depend
    on the machine's core count). UMAP: ``n_neighbors = min(neighbors, N - 1)``, random_state
    ``seed`` (which makes umap-learn single-threaded and reproducible), exact neighbours from
    scikit-learn passed as ``precomputed_knn``: that skips umap-learn's own neighbour search,
    whose numba JIT compilation is half of the ~10 s that the first UMAP call of a process
    costs (umap-learn is imported here, so the other analyses never pay for it).
    """
    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 3:
        raise ValueError(f"features: need at least 3 samples to project; got {n}")
    if how == "tsne":
        tsne = TSNE(n_components=2, perplexity=min(30.0, n - 1.0), init="pca", random_state=seed)
        with threadpool_limits(1):
            return tsne.fit_transform(x).astype(np.float32)
    if how == "umap":
        import umap

        k = min(neighbors, n - 1)
        dist, index = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)  # self first
        with warnings.catch_warnings():  # "n_jobs overridden by random_state": intended
            warnings.simplefilter("ignore", UserWarning)
            reducer = umap.UMAP(
                n_components=2,
                n_neighbors=k,
                random_state=seed,
                precomputed_knn=(index, dist, None),
            )
            return reducer.fit_transform(x).astype(np.float32)
    raise ValueError(f"how: must be one of {', '.join(PROJECTIONS)}; got {how!r}")


def plot_embeddings(
    points: Mapping[str, np.ndarray],
    labels: Sequence[int],
    class_names: Sequence[str],
    title: str,
    out_png: Path,
) -> None:
    """A scatter per method of ``points[method]`` (N, 2), coloured by true class (N,)."""
    labels = np.asarray(labels)
    cols = min(3, len(points))
    nrows = -(-len(points) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * nrows + 0.4), layout="constrained")
    axes = np.asarray(fig.subplots(nrows, cols, squeeze=False)).ravel()
    cmap = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for ax, (method, xy) in zip(axes, points.items(), strict=False):
        for c, name in enumerate(class_names):
            sel = labels == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=cmap(c % cmap.N), label=name)
        ax.set_title(method, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(points) :]:
        ax.set_axis_off()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6), fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, out_png)
