"""CReST on CPS: class-rebalancing weights from each network's own pseudo-label counts.

Wei et al., "CReST: A Class-Rebalancing Self-Training Framework for Imbalanced Semi-Supervised
Learning" (CVPR 2021). CReST self-trains in generations; after each generation it adds
pseudo-labeled samples predicted as class ``l`` to the labeled set with the sampling rate
(their eq. 1), classes ranked by frequency ``N_1 >= ... >= N_L``:

    mu_l = (N_{L+1-l} / N_1) ** alpha

so the most frequent class is kept at the smallest rate and the rarest one at rate 1.

DHC (Wang & Li, MICCAI 2023, ``train_crest.py``) turns the rates into per-class loss weights of
its CPS pair: ``w`` = the rates above computed from voxel counts (``crest_weights``), applied to
both the supervised Dice + CE and the CPS CE of a network. Each network counts the argmax of
its own prediction on the unlabeled crops every step and keeps an EMA (momentum 0.99) of the
resulting weights, initialised from the labeled volumes' voxel counts (``class_counts``; uniform
weights 1 when unknown). Defaults: DHC's alpha 1/3 and CPS weight 0.1, with a sigmoid ramp-up
over the whole run as in DHC's published protocol (``train_crest.py`` itself has none).
Self-training generations and sampling are replaced by this per-step weighting, as in DHC.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import hard_labels
from semimed.methods.segmentation.class_weights import ema_prediction_weights_
from semimed.methods.segmentation.cps import CrossPseudoSupervision


def crest_weights(counts: Tensor, alpha: float, eps: float = 1e-8) -> Tensor:
    """CReST's rates as class weights (C,) from voxel counts (C,).

    ``mu_c = ((N_c + eps) / (max N + eps)) ** alpha``; the class of rank ``l`` by ``mu``
    (descending) gets the ``mu`` of rank ``C - 1 - l``: the rarest class gets 1, the most
    frequent ``(N_min / N_max) ** alpha``. Ties keep the class order (stable sort, as DHC's
    ``sorted``); equal counts give weights 1.
    """
    mu = ((counts.float() + eps) / (counts.max().float() + eps)).pow(alpha)
    order = torch.sort(mu, descending=True, stable=True).indices
    weights = torch.empty_like(mu)
    weights[order] = mu[order].flip(0)
    return weights


class CReST(CrossPseudoSupervision):
    """Batch as CPS: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "crest"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # weight of the class-weighted CPS CE (DHC: 0.1), >= 0
        cps_weight: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC protocol: all), [0, 1]
        rampup: float = 1.0
        # exponent of the rebalancing rate (DHC: 1/3)
        alpha: Annotated[float, Range(gt=0)] = 1.0 / 3.0
        # EMA momentum of the weights per step (DHC: 0.99)
        momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        counts = torch.ones(self.num_classes)
        if self.class_counts is not None:
            counts = torch.tensor(self.class_counts)
        # Row 0: network a's weights, row 1: network b's.
        prior = crest_weights(counts, self.params.alpha)
        self.register_buffer("weights", prior.repeat(2, 1))

    def class_weights(
        self, logits_a: Tensor, logits_b: Tensor, y_lb: Tensor, n_lb: int
    ) -> tuple[Tensor, Tensor]:
        # Each network counts its own argmax on the unlabeled crops.
        own = (hard_labels(logits_a[n_lb:]), hard_labels(logits_b[n_lb:]))
        rule = functools.partial(crest_weights, alpha=self.params.alpha)
        w_a, w_b = ema_prediction_weights_(self.weights, own, rule, self.params.momentum)
        return w_a, w_b
