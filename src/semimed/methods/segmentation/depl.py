"""DePL (DebiasPL) on CPS: pseudo-labels debiased by the running mean prediction.

Wang et al., "Debiased Learning from Naturally Imbalanced Pseudo-Labels" (CVPR 2022). Pseudo-
labels inherit the model's bias towards the classes it over-predicts. With ``q`` an EMA of the
mean predicted class probabilities on unlabeled data, DebiasPL (i) takes the pseudo-label from
the debiased logits ``f(x) - lambda * log q`` (counterfactual reasoning), kept where their
softmax reaches a confidence threshold, and (ii) trains the student with an adaptive marginal
loss, the CE of ``f(x) + lambda * log q`` (logit adjustment).

DHC (Wang & Li, MICCAI 2023, ``train_depl.py``) on its CPS pair: each network keeps its own
``q`` (EMA momentum 0.99 per step, from the softmax of its unlabeled crops, starting uniform);
network a is trained on every voxel of the batch against the debiased argmax of network b,
masked where b's debiased confidence is < 0.9 and averaged over all voxels (and the other way
round); supervised Dice + CE unweighted; lambda 1, CPS weight 1 with a sigmoid ramp-up over the
whole run (the default weight here is 0.1, the protocol of DHC's published tables). Differences:

* DHC keeps ``q`` per voxel position of the patch (C, D, H, W). Crops are drawn at random
  places, so every position estimates the same class marginal; we keep one ``q`` (C,) per
  network (the paper's form), which also holds for any patch size.
* DHC computes the marginal-adjusted logits but its CPS loss reads the unadjusted ones, so
  the adaptive marginal loss never acts there: ``marginal=False`` (default) reproduces DHC,
  ``True`` adds ``lambda * log q`` of the teacher network to the student's logits (the paper).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import masked_cross_entropy
from semimed.methods.segmentation.class_weights import ema_
from semimed.methods.segmentation.cps import CrossPseudoSupervision


def debias(logits: Tensor, mean_probs: Tensor, strength: float) -> Tensor:
    """``logits - strength * log(q)`` for logits (B, C, ...) and mean probabilities ``q`` (C,):
    a class the model predicts more often loses more."""
    shape = (1, -1) + (1,) * (logits.dim() - 2)
    return logits.float() - strength * mean_probs.clamp_min(1e-8).log().view(shape)


class DePL(CrossPseudoSupervision):
    """Batch as CPS: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "depl"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # weight of the masked CPS CE (DHC protocol: 0.1; train_depl.py: 1), >= 0
        cps_weight: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC: all), [0, 1]
        rampup: float = 1.0
        # lambda, strength of the log-q debiasing (DHC: 1)
        debias: Annotated[float, Range(ge=0)] = 1.0
        # EMA momentum of the mean prediction q per step (DHC)
        momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99
        # keep voxels whose debiased max softmax >= this (DHC)
        confidence: Annotated[float, Range(ge=0, le=1)] = 0.9
        # add lambda log q to the student's logits (paper; DHC: no-op)
        marginal: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Row 0: network a's mean prediction q, row 1: network b's.
        self.register_buffer("mean_probs", torch.full((2, self.num_classes), 1 / self.num_classes))

    @torch.no_grad()
    def debiased_labels(self, logits: Tensor, mean_probs: Tensor) -> tuple[Tensor, Tensor]:
        """Targets (B, 1, ...) and keep-mask (B, ...) bool from a teacher's logits (B, C, ...)."""
        confidence, target = debias(logits, mean_probs, self.params.debias).softmax(1).max(1)
        return target[:, None], confidence >= self.params.confidence

    def cps_loss(
        self, logits_a: Tensor, logits_b: Tensor, w_a: Tensor | None, w_b: Tensor | None, n_lb: int
    ) -> Tensor:
        """Debiased, masked CPS CE of both networks; logits (B + U, C, ...) with graph. Each
        network's targets come from the other one, debiased by the other's ``q``; then both
        ``q`` take one EMA step towards the mean softmax of their network's unlabeled crops."""
        q_a, q_b = self.mean_probs
        target_a, mask_a = self.debiased_labels(logits_b.detach(), q_b)
        target_b, mask_b = self.debiased_labels(logits_a.detach(), q_a)
        with torch.no_grad():
            for q, logits in ((q_a, logits_a), (q_b, logits_b)):
                probs = logits[n_lb:].detach().float().softmax(1)
                ema_(q, probs.transpose(0, 1).flatten(1).mean(1), self.params.momentum)
        if self.params.marginal:
            logits_a = debias(logits_a, q_b, -self.params.debias)
            logits_b = debias(logits_b, q_a, -self.params.debias)
        return masked_cross_entropy(logits_a.float(), target_a[:, 0], mask_a) + (
            masked_cross_entropy(logits_b.float(), target_b[:, 0], mask_b)
        )
