"""Classification loss parts: MixUp and sharpening (MixMatch), the NT-Xent contrastive loss
(SimCLR), and the k-means prototypes TEAR's IPH term matches.

Shapes: probabilities or soft targets (N, C), features and projections (N, F).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "group_means",
    "kmeans_assign",
    "matched_prototype_loss",
    "mixup",
    "nt_xent",
    "sharpen",
]


# ---------------------------------------------- sharpening and MixUp (MixMatch)


def sharpen(probs: Tensor, temperature: float | Tensor) -> Tensor:
    """Temperature sharpening ``p_c^(1/T) / sum_k p_k^(1/T)`` of probabilities (N, C), over dim 1.

    MixMatch (Berthelot et al., NeurIPS 2019), eq. 7: T = 1 leaves ``probs`` unchanged and
    T -> 0 tends to the one-hot argmax. Computed as ``softmax(log(p) / T)``, the same value,
    so a small T cannot underflow to 0 / 0.
    """
    return (probs.clamp_min(1e-12).log() / temperature).softmax(dim=1)


def mixup(inputs: Tensor, targets: Tensor, lam: float, perm: Tensor) -> tuple[Tensor, Tensor]:
    """MixUp (Zhang et al., ICLR 2018): ``lam * a + (1 - lam) * a[perm]`` for inputs and targets.

    inputs (N, ...), soft targets (N, C), ``perm`` (N,) a permutation of ``range(N)``. The caller
    draws ``lam`` and ``perm`` (from torch's seeded RNG, so runs repeat); MixMatch (Berthelot et
    al. 2019, eqs. 8-11) mixes labeled and unlabeled samples this way with ``lam >= 0.5``.
    """
    mixed_inputs = lam * inputs + (1.0 - lam) * inputs[perm]
    mixed_targets = lam * targets + (1.0 - lam) * targets[perm]
    return mixed_inputs, mixed_targets


# ---------------------------------------- contrastive and prototype losses (SimCLR, TEAR)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., ICML
    2020, eq. 1), averaged over all 2N anchors.

    z1, z2 (N, D): projections of two views; row i of z1 and row i of z2 are the positive pair,
    the other 2N - 2 rows are the negatives. With cosine similarity ``sim``:
    ``l(i, j) = -log exp(sim(z_i, z_j) / T) / sum_{k != i} exp(sim(z_i, z_k) / T)``.
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    # An anchor is never its own negative.
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, positives)


@torch.no_grad()
def kmeans_assign(features: Tensor, k: int, iters: int) -> Tensor:
    """Cluster index (N,) in [0, min(k, N)) of features (N, F) by k-means on unit vectors.

    Deterministic: the first centre is the point farthest from the mean, each next one the
    point farthest from the centres so far (maximin), then ``iters`` Lloyd steps; an empty
    cluster keeps its centre. Runs in torch (no sklearn) and returns no gradient.
    """
    x = F.normalize(features.detach().float(), dim=1)
    centres = x[(x - x.mean(0)).norm(dim=1).argmax()][None]
    for _ in range(min(k, len(x)) - 1):
        centres = torch.cat([centres, x[torch.cdist(x, centres).min(1).values.argmax()][None]])
    for _ in range(iters):
        onehot = F.one_hot(torch.cdist(x, centres).argmin(1), len(centres)).to(x.dtype)
        counts = onehot.sum(0)[:, None]
        centres = torch.where(counts > 0, onehot.T @ x / counts.clamp_min(1), centres)
    return torch.cdist(x, centres).argmin(1)


def group_means(features: Tensor, groups: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean feature per group: features (N, F), groups (N,) in [0, k) -> ((k, F), (k,) bool).

    The bool marks non-empty groups (an empty group's row is 0). Gradients flow into
    ``features``, so prototypes built from a student's features train that student.
    """
    onehot = F.one_hot(groups, k).to(features.dtype)
    counts = onehot.sum(0)
    return onehot.T @ features / counts.clamp_min(1)[:, None], counts > 0


def matched_prototype_loss(
    student: Tensor, student_present: Tensor, teacher: Tensor, teacher_present: Tensor
) -> Tensor:
    """Mean ``1 - cos`` between student prototypes (K, F) and teacher prototypes (K', F) after
    a one-to-one matching of the present ones (bool masks (K,), (K',)).

    Clusters carry no class index, so each present student prototype is paired with a present
    teacher prototype by the Hungarian algorithm (scipy ``linear_sum_assignment``) maximising the
    summed cosine similarity; the loss averages ``1 - cos`` over the pairs (0 when there are none)
    and its gradient reaches both inputs (pass a detached teacher). Used by TEAR's IPH.
    """
    s_idx, t_idx = student_present.nonzero()[:, 0], teacher_present.nonzero()[:, 0]
    cos = F.cosine_similarity(student[s_idx, None], teacher[None, t_idx], dim=-1)
    if cos.numel() == 0:
        return student.sum() * 0.0
    rows, cols = linear_sum_assignment(cos.detach().float().cpu().numpy(), maximize=True)
    return (1.0 - cos[torch.as_tensor(rows), torch.as_tensor(cols)]).mean()
