"""Cross Pseudo Supervision (CPS): two differently initialised networks teach each other.

Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision" (CVPR 2021),
in the 3D form of DHC's baseline (Wang & Li, MICCAI 2023): both networks see the same labeled +
unlabeled crops; each is trained on the labeled part with Dice + CE and on EVERY voxel of the
batch with cross-entropy against the other network's hard prediction (argmax, no gradient):

    loss = DiceCE(f_a(x_l), y) + DiceCE(f_b(x_l), y)
         + cps_weight * ramp(step) * [CE(f_a(x), argmax f_b(x)) + CE(f_b(x), argmax f_a(x))]

``CrossPseudoSupervision`` is the shared pair: subclasses (DHC and the class-imbalance
baselines built on CPS) override ``class_weights`` to weight both terms per class,
``pseudo_labels`` to change the targets, or ``cps_loss`` to change the whole term (masks).
Inference averages the two networks' softmax (``PairAverage``). Defaults follow the protocol
of DHC's published tables (``train3times_seeds_*.sh``: ``-w 0.1 -r``) for the whole family:
weight 0.1 with a sigmoid ramp-up over the whole run (DHC's CPS script itself defaults to
weight 1 without ramp-up), and DHC's supervised Dice (``dice="dhc"``: one Dice per class over
the batch, background left out, smooth 1; ``semimed.methods.segmentation.losses.seg_dice_loss``),
which DHC's code trains every method of this family with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from semimed.config.checks import Checked, OneOf, Range
from semimed.methods.base import Method
from semimed.methods.cost import PAIR_WHY, pair_pass
from semimed.methods.losses import hard_labels, ramped_terms
from semimed.methods.segmentation.losses import DICE_FORMS, weighted_ce, weighted_dice_ce
from semimed.networks.segmentation import PairAverage


class CrossPseudoSupervision(Method):
    """Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "cps"
    uses_unlabeled = True
    views = ("w",)

    @dataclass(frozen=True)
    class Params(Checked):
        # final weight of the cross pseudo-supervision term (DHC protocol: 0.1)
        cps_weight: Annotated[float, Range(ge=0)] = 0.1
        # share of total_steps of the sigmoid ramp-up; 0 = none (DHC protocol: all)
        rampup: Annotated[float, Range(ge=0, le=1)] = 1.0
        # Dice of the supervised term (losses.DICE_FORMS; DHC's code: "dhc")
        dice: Annotated[str, OneOf(*DICE_FORMS)] = "dhc"

    intrinsic_passes = staticmethod(pair_pass)
    intrinsic_why = PAIR_WHY

    def __init__(self, net_factory: Callable[[], nn.Module], *args: Any, **kwargs: Any) -> None:
        super().__init__(net_factory, *args, **kwargs)
        # A second draw from the seeded RNG: the same architecture, a different initialisation.
        self.net2 = net_factory()

    def class_weights(
        self, logits_a: Tensor, logits_b: Tensor, y_lb: Tensor, n_lb: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """Per-class weights (C,) for network a's and b's losses this step; None = unweighted.

        logits (B + U, C, ...) of the whole batch, labeled rows first; called under no_grad."""
        return None, None

    def pseudo_labels(self, logits_a: Tensor, logits_b: Tensor) -> tuple[Tensor, Tensor]:
        """Hard targets (B + U, 1, ...) for network a (from b) and for b (from a)."""
        return hard_labels(logits_b, keepdim=True), hard_labels(logits_a, keepdim=True)

    def cps_loss(
        self, logits_a: Tensor, logits_b: Tensor, w_a: Tensor | None, w_b: Tensor | None, n_lb: int
    ) -> Tensor:
        """The cross pseudo-supervision term of the pair; logits (B + U, C, ...) with graph,
        labeled rows first. Default: each network's weighted CE against ``pseudo_labels``."""
        with torch.no_grad():
            target_a, target_b = self.pseudo_labels(logits_a.detach(), logits_b.detach())
        return weighted_ce(logits_a, target_a, w_a) + weighted_ce(logits_b, target_b, w_b)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, y_lb = batch["x_lb"], batch["y_lb"]
        x = torch.cat([x_lb, batch["x_ulb_w"]])
        n = len(x_lb)
        logits_a, logits_b = self.net(x), self.net2(x)
        with torch.no_grad():
            w_a, w_b = self.class_weights(logits_a.detach(), logits_b.detach(), y_lb, n)
        sup = self.supervised_loss(logits_a[:n], y_lb, w_a) + self.supervised_loss(
            logits_b[:n], y_lb, w_b
        )
        unsup = self.cps_loss(logits_a, logits_b, w_a, w_b, n)
        return ramped_terms(
            sup, unsup, self.params.cps_weight, step, self.params.rampup * self.total_steps
        )

    def supervised_loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None) -> Tensor:
        """Dice + CE of one network's labeled logits (B, C, ...), weighted per class (C,) or
        not, with the ``dice`` formulation of Params (DHC: the same loss for every method)."""
        return weighted_dice_ce(logits, labels, weights, dice=self.params.dice)

    def inference_model(self) -> nn.Module:
        return PairAverage(self.net, self.net2)
