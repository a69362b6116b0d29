"""DHC: Dual-debiased Heterogeneous Co-training (Wang & Li, MICCAI 2023) for class-imbalanced
semi-supervised 3D segmentation.

CPS (``cps.CrossPseudoSupervision``) between two networks whose losses are weighted per class
by two different rules, so the pair is heterogeneous; each network's weights multiply both its
supervised Dice + CE and its cross pseudo-supervision CE ("w_ce+dice" and "wce" in DHC's code):

* network a, DiffDW (difficulty-aware): per-class Dice of a's labeled prediction each step;
  classes that stall or unlearn and stay poor get larger weights
  (``semimed.methods.segmentation.class_weights.difficulty_weights_``, EMA over ``diff_window`` steps).
* network b, DistDW (distribution-aware): ``distribution_weights`` of the voxel counts of b's
  hard predictions on the unlabeled crops, EMA'd with ``dist_momentum``; initialised from the
  labeled volumes' class counts (``class_counts``), uniform when those are unknown.

Defaults: DHC's DistDW momentum 0.99 and DiffDW over 50 steps; CPS weight 0.1 with a sigmoid
ramp-up over the whole run, the protocol of DHC's published tables (its script's own default
weight is 1). Running quantities are buffers, so a resumed run continues them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import hard_labels
from semimed.methods.segmentation.class_weights import (
    class_counts,
    difficulty_weights_,
    distribution_weights,
    ema_,
    hard_dice_per_class,
)
from semimed.methods.segmentation.cps import CrossPseudoSupervision


class DHC(CrossPseudoSupervision):
    name = "dhc"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # share of total_steps of the sigmoid ramp-up of cps_weight (DHC: all), [0, 1]
        rampup: float = 1.0
        # EMA momentum of the DistDW weights
        dist_momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99
        # DiffDW accumulates over this many steps (momentum (n-1)/n)
        diff_window: Annotated[int, Range(ge=1)] = 50

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.num_classes
        prior = (
            distribution_weights(torch.tensor(self.class_counts))
            if self.class_counts is not None
            else torch.ones(c)
        )
        self.register_buffer("dist_weights", prior.float())
        self.register_buffer("last_dice", torch.full((c,), 1e-8))
        self.register_buffer("learn", torch.zeros(c))
        self.register_buffer("unlearn", torch.zeros(c))
        self.register_buffer("one_minus_dice", torch.ones(c))

    def class_weights(
        self, logits_a: Tensor, logits_b: Tensor, y_lb: Tensor, n_lb: int
    ) -> tuple[Tensor, Tensor]:
        dice = hard_dice_per_class(logits_a[:n_lb].float(), y_lb)
        window = self.params.diff_window
        w_a = difficulty_weights_(
            dice,
            self.last_dice,
            self.learn,
            self.unlearn,
            self.one_minus_dice,
            (window - 1) / window,
        )
        counts = class_counts(hard_labels(logits_b[n_lb:]), self.num_classes)
        ema_(self.dist_weights, distribution_weights(counts), self.params.dist_momentum)
        return w_a, self.dist_weights.clone()
