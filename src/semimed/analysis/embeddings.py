"""Embeddings of the trained classifiers: ``net.backbone`` features (N, F) of the test images
projected to 2D with t-SNE (van der Maaten & Hinton, JMLR 2008; scikit-learn) and UMAP
(McInnes et al., arXiv:1802.03426; umap-learn), one scatter per method coloured by class.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_limits
from torch import nn

from semimed.io import save_figure

PROJECTIONS = {"tsne": "t-SNE", "umap": "UMAP"}  # name -> display name


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
    scikit-learn passed as ``precomputed_knn``: that skips umap-learn's own neighbour search
    and its numba JIT compilation (umap-learn is imported here, so the other analyses never
    pay for its import).
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
