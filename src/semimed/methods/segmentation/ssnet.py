"""SS-Net: smoothness by adversarial perturbations, class separation by a class-wise memory.

Wu et al., "Exploring Smoothness and Class-Separation for Semi-supervised Medical Image
Segmentation" (MICCAI 2022). One network; besides the supervised loss on labeled crops it
(i) enforces smoothness with virtual adversarial training (VAT, Miyato et al., TPAMI 2019): the
prediction should not change under the input perturbation of norm ``eps`` that changes it most,
and (ii) separates the classes: voxel features of the labeled crops (by label) and of the
unlabeled crops (by pseudo-label) are pulled towards a per-class memory of good labeled
features, the pixel-level contrastive scheme of Alonso et al. (ICCV 2021).

As DHC (Wang & Li, MICCAI 2023, ``train_ssnet.py``) computes it, for the batch x (labeled and
unlabeled crops) with p = softmax f(x) (no gradient) and D the soft Dice loss (background
included, pooled over the batch):

* LDS: ``d = unit(u)``, u uniform in [-0.5, 0.5]; one power step
  ``d = unit(grad_d D(softmax f(x + xi d), p))``; ``lds = D(softmax f(x + eps d), p)``, where
  ``unit`` scales each sample to L2 norm 1 over all its voxels;
* memory: projected features (``projection`` head, eval mode) of the labeled voxels predicted
  correctly and not as background; per class, when there are more than ``memory_size``, a
  learned selector's sigmoid score ranks them and the ``memory_size`` LOWEST scored are kept
  (DHC's ascending sort); the memory of a class is replaced whenever it has new entries;
* contrast(z, labels) = (1/C) sum_c mean_{i,j} (1 - cos(z_i, m_j)) a_i b_j over the features
  z_i = prediction(projection(.)) of class c and memory entries m_j of class c, a_i, b_j the
  sigmoid scores of two learned selectors, each rescaled to mean 1;
* loss = Dice(f(x_l), y) + w * (lds + contrast_weight * (contrast_l + contrast_u)), w = 1
  without ramp-up (the default here: ``consistency`` 0.1 with a sigmoid ramp-up over the whole
  run, the protocol of DHC's published tables).
  DHC computes a CE term but leaves it out of the loss (``sup_ce_weight`` 0). The supervised
  Dice is DHC's form by default (``dice``: batch, no background, smooth 1; see
  ``losses.DICE_FORMS``).

Differences: DHC's network hands its last decoder feature map to the heads; ours come unchanged
from ``net_factory`` and have no full-resolution feature map before the output layer, so the
voxel features are the logits (C channels); the heads (``feat_dim`` 64 = 2 x DHC's 32 filters)
and selectors belong to the method. DHC keeps the memory in numpy; ours is a buffer
(C, memory_size, feat_dim) plus per-class sizes. DHC runs the heads on every voxel, which
costs several times the network's own forward + backward (2 x 2 x 32^3 voxels through
width-64 MLPs), so the separation term (memory update included) uses ``contrast_voxels``
voxels drawn at random from the labeled crops and as many from the unlabeled ones (0 = all,
as DHC). VAT keeps DHC's norms on our 32^3 crops (xi = eps = 10 per crop: per-voxel rms
10 / sqrt(32^3) ~ 0.055 of the [0, 1] intensity range, ~0.01 on DHC's 64x128x128 crops). Batch
norm running statistics are frozen during the two perturbed forwards, as in DHC.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import Tensor, nn

from semimed.config.checks import Checked, OneOf, Range
from semimed.methods.base import Method
from semimed.methods.losses import hard_labels, ramped_terms
from semimed.methods.segmentation.losses import DICE_FORMS, weighted_dice_ce

# Soft Dice between two probability maps, background included, pooled over the batch (DHC).
_SOFT_DICE = DiceLoss(include_background=True, batch=True, smooth_nr=1e-8, smooth_dr=1e-8)


def soft_dice_distance(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Soft Dice loss of softmax(logits) (B, C, ...) against probabilities (B, C, ...)."""
    return _SOFT_DICE(logits.float().softmax(1), target_probs.float())


def unit_per_sample(d: Tensor) -> Tensor:
    """``d`` (B, ...) scaled so that each sample has L2 norm 1 over all its elements."""
    norm = d.flatten(1).norm(dim=1).view(-1, *([1] * (d.dim() - 1)))
    return d / (norm + 1e-8)


@contextlib.contextmanager
def frozen_running_stats(net: nn.Module) -> Iterator[None]:
    """Batch norm layers normalise with batch statistics but leave their running ones alone."""
    tracking = [m for m in net.modules() if getattr(m, "track_running_stats", False)]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


def mlp(inputs: int, width: int, out: int, act: nn.Module) -> nn.Sequential:
    """Linear - BatchNorm1d - act - Linear, the shape of DHC's heads and selectors."""
    return nn.Sequential(
        nn.Linear(inputs, width), nn.BatchNorm1d(width), act, nn.Linear(width, out)
    )


class SSNet(Method):
    """Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "ssnet"
    uses_unlabeled = True
    views = ("w",)

    @dataclass(frozen=True)
    class Params(Checked):
        # weight w of LDS + contrast (DHC protocol: 0.1; train_ssnet.py: 1)
        consistency: Annotated[float, Range(ge=0)] = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC protocol: all; train_ssnet.py: none)
        rampup: Annotated[float, Range(ge=0, le=1)] = 1.0
        # L2 norm per crop of the probe perturbation (DHC)
        vat_xi: Annotated[float, Range(gt=0)] = 10.0
        # L2 norm per crop of the adversarial perturbation (DHC)
        vat_eps: Annotated[float, Range(gt=0)] = 10.0
        # weight of the class-separation terms (DHC)
        contrast_weight: Annotated[float, Range(ge=0)] = 0.1
        # memory entries per class (DHC)
        memory_size: Annotated[int, Range(ge=2)] = 32
        # width of the projection / prediction heads (DHC: 64)
        feat_dim: Annotated[int, Range(ge=1)] = 64
        # CE beside the supervised Dice (DHC: 0)
        sup_ce_weight: Annotated[float, Range(ge=0)] = 0.0
        # Dice of the supervised term (losses.DICE_FORMS; DHC's code: dhc)
        dice: Annotated[str, OneOf(*DICE_FORMS)] = "dhc"
        # voxels drawn per part for separation (DHC: all = 0)
        contrast_voxels: Annotated[int, Range(ge=0)] = 4096

    intrinsic_why = "clean pass + VAT probe (input gradient only) + adversarial pass"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: SSNet.Params) -> tuple[int, int]:
        return 3 * (b + u), 3 * (b + u)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c, f = self.num_classes, self.params.feat_dim
        self.projection = mlp(c, f, f, nn.ReLU())
        self.prediction = mlp(f, f, f, nn.ReLU())
        self.selectors = nn.ModuleList(mlp(f, f, 1, nn.LeakyReLU(0.2)) for _ in range(c))
        self.memory_selectors = nn.ModuleList(mlp(f, f, 1, nn.LeakyReLU(0.2)) for _ in range(c))
        self.register_buffer("memory", torch.zeros(c, self.params.memory_size, f))
        self.register_buffer("memory_len", torch.zeros(c, dtype=torch.long))

    def adversarial_direction(self, x: Tensor, probs: Tensor) -> Tensor:
        """Unit direction (per sample) (B, ...) that most increases the Dice distance of the
        prediction from ``probs``, by one power step from a random direction."""
        d = unit_per_sample(torch.rand_like(x) - 0.5).requires_grad_(True)
        with frozen_running_stats(self.net):
            distance = soft_dice_distance(self.net(x + self.params.vat_xi * d), probs)
        (grad,) = torch.autograd.grad(distance, d)
        return unit_per_sample(grad.detach())

    def smoothness_loss(self, x: Tensor, probs: Tensor) -> Tensor:
        """LDS: the Dice distance from ``probs`` at ``x + eps d`` (d adversarial)."""
        d = self.adversarial_direction(x, probs)
        with frozen_running_stats(self.net):
            return soft_dice_distance(self.net(x + self.params.vat_eps * d), probs)

    @torch.no_grad()
    def update_memory(self, features: Tensor, labels: Tensor) -> None:
        """Replace each present class's memory by its projected features (N, F) (at most
        ``memory_size``, the lowest selector scores when there are more)."""
        k = self.params.memory_size
        for c in range(self.num_classes):
            feats = features[labels == c].float()
            if len(feats) == 0:
                continue
            if len(feats) > k:
                score = self.selectors[c](feats)[:, 0].sigmoid()
                feats = feats[score.argsort()[:k]]
            self.memory[c, : len(feats)] = feats
            self.memory_len[c] = len(feats)

    def contrast(self, z: Tensor, labels: Tensor) -> Tensor:
        """Selector-weighted mean cosine distance of features z (N, F) to their class's memory,
        summed over classes with at least two of each and divided by C."""
        loss = z.new_zeros((), dtype=torch.float32)
        for c in range(self.num_classes):
            feats, size = z[labels == c].float(), int(self.memory_len[c])
            if len(feats) < 2 or size < 2:
                continue
            memory = F.normalize(self.memory[c, :size], dim=1)
            distance = 1.0 - F.normalize(feats, dim=1) @ memory.T  # (M, N)
            a = self.selectors[c](feats.detach()).sigmoid()  # (M, 1)
            b = self.memory_selectors[c](memory).sigmoid().T  # (1, N)
            loss = loss + (distance * (a / a.mean()) * (b / b.mean())).mean()
        return loss / self.num_classes

    def draw(self, logits: Tensor) -> Tensor:
        """Indices of the voxels (rows of ``logits.movedim(1, -1).reshape(-1, C)``) that take
        part in the separation term: ``contrast_voxels`` drawn without replacement, or all."""
        total = logits[:, 0].numel()
        k = self.params.contrast_voxels
        if k == 0 or k >= total:
            return torch.arange(total, device=logits.device)
        return torch.randperm(total, device=logits.device)[:k]

    def separation_loss(self, logits: Tensor, y_lb: Tensor, n_lb: int) -> Tensor:
        """Memory update from the labeled crops, then contrast of labeled (by label) and
        unlabeled (by own argmax) voxel features; logits (B + U, C, ...) with graph."""
        c = self.num_classes
        lab, unl = logits[:n_lb], logits[n_lb:]
        pick_l, pick_u = self.draw(lab), self.draw(unl)
        emb_l = lab.movedim(1, -1).reshape(-1, c)[pick_l]
        emb_u = unl.movedim(1, -1).reshape(-1, c)[pick_u]
        y = y_lb.reshape(-1)[pick_l]
        with torch.no_grad():
            pred = hard_labels(emb_l)
            good = (pred == y) & (pred > 0)
            pseudo = hard_labels(emb_u)
            if good.any():
                training = self.projection.training
                self.projection.eval()
                self.update_memory(self.projection(emb_l[good].float()), y[good])
                self.projection.train(training)
        z_l = self.prediction(self.projection(emb_l.float()))
        z_u = self.prediction(self.projection(emb_u.float()))
        return self.contrast(z_l, y) + self.contrast(z_u, pseudo)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, y_lb = batch["x_lb"], batch["y_lb"]
        x = torch.cat([x_lb, batch["x_ulb_w"]])
        n = len(x_lb)
        p = self.params
        logits = self.net(x)
        sup = weighted_dice_ce(logits[:n], y_lb, None, 1.0, p.sup_ce_weight, p.dice)
        lds = self.smoothness_loss(x, logits.detach().float().softmax(1))
        separation = self.separation_loss(logits, y_lb, n)
        unsup = lds + p.contrast_weight * separation
        return ramped_terms(
            sup,
            unsup,
            p.consistency,
            step,
            p.rampup * self.total_steps,
            lds=lds,
            separation=separation,
        )
