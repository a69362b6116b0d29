"""SimiS on CPS: class weights from the gap to the most frequent class.

Chen et al., "An Embarrassingly Simple Baseline for Imbalanced Semi-Supervised Learning"
(arXiv 2211.11086, 2022). SimiS supplements the labeled set with pseudo-labeled unlabeled
samples, per class as many as the class lacks with respect to the most frequent one
(``N_max - N_c``), so the training distribution becomes flat.

DHC (Wang & Li, MICCAI 2023, ``train_simis.py``) turns that gap into per-class loss weights of
its CPS pair, applied to both the supervised Dice + CE and the CPS CE of a network:

    P_c = N_c / sum_k N_k,        w_c = C * (max_k P_k - P_c)        (``simis_weights``)

with ``N`` the voxel counts of the network's own argmax over the whole batch (labeled and
unlabeled crops), EMA'd every step with momentum 0.99. The EMA starts from ``C`` and takes one
step towards the labeled volumes' weights (``class_counts``; uniform counts when unknown), so
``w_0 = m C + (1 - m) C (max P_lab - P_lab)``; the most frequent class's weight then decays like
``m^t C`` towards 0. Defaults: DHC's CPS weight 0.1, with a sigmoid ramp-up over the whole run
as in DHC's published protocol (``train_simis.py`` itself has none). The per-epoch resampling
of the paper is replaced by this per-step weighting, as in DHC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import hard_labels
from semimed.methods.segmentation.class_weights import ema_, ema_prediction_weights_
from semimed.methods.segmentation.cps import CrossPseudoSupervision


def simis_weights(counts: Tensor, eps: float = 1e-8) -> Tensor:
    """``C * (max P - P)`` (C,) with ``P = (N + eps) / (sum N + eps)`` from counts ``N`` (C,):
    0 for the most frequent class, larger the rarer a class is."""
    p = (counts.float() + eps) / (counts.sum().float() + eps)
    return counts.numel() * (p.max() - p)


class SimiS(CrossPseudoSupervision):
    """Batch as CPS: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "simis"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # weight of the class-weighted CPS CE (DHC: 0.1), >= 0
        cps_weight: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC protocol: all), [0, 1]
        rampup: float = 1.0
        # EMA momentum of the weights per step (DHC: 0.99)
        momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.num_classes
        counts = torch.ones(c) if self.class_counts is None else torch.tensor(self.class_counts)
        start = torch.full((c,), float(c))
        ema_(start, simis_weights(counts), self.params.momentum)
        # Row 0: network a's weights, row 1: network b's.
        self.register_buffer("weights", start.repeat(2, 1))

    def class_weights(
        self, logits_a: Tensor, logits_b: Tensor, y_lb: Tensor, n_lb: int
    ) -> tuple[Tensor, Tensor]:
        # Each network counts its own argmax on the whole batch, labeled crops included.
        own = (hard_labels(logits_a), hard_labels(logits_b))
        w_a, w_b = ema_prediction_weights_(self.weights, own, simis_weights, self.params.momentum)
        return w_a, w_b
