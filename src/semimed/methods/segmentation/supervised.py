"""Supervised baselines for 3D segmentation: Dice + cross-entropy on labeled volumes only.

``supervised`` (labeled subset) is the lower bound and ``supervised_full`` (every train-split
label) the upper bound, as the "fully supervised" rows of DHC (Wang & Li, MICCAI 2023) and the
baselines of SSL4MIS (Luo et al.) report them. Loss: soft Dice (Milletari et al., V-Net, 3DV
2016) plus cross-entropy, via MONAI ``DiceCELoss`` (``dice="monai"``; DHC's ``train_fully.py``
uses ``"dhc"``, SSL4MIS ``"ssl4mis"``: ``semimed.methods.segmentation.losses.seg_supervised_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor

from semimed.config.checks import Checked, OneOf, Range, require
from semimed.methods.base import Method
from semimed.methods.cost import labeled_pass
from semimed.methods.segmentation.losses import DICE_FORMS, seg_supervised_loss


class Supervised(Method):
    """``x_lb`` (B, 1, D, H, W), ``y_lb`` (B, 1, D, H, W) int64; ignores unlabeled data."""

    name = "supervised"

    @dataclass(frozen=True)
    class Params(Checked):
        # weight of the soft Dice term
        dice_weight: Annotated[float, Range(ge=0)] = 1.0
        # weight of the cross-entropy term (not both 0)
        ce_weight: Annotated[float, Range(ge=0)] = 1.0
        # Dice formulation (losses.DICE_FORMS)
        dice: Annotated[str, OneOf(*DICE_FORMS)] = "monai"

        def cross_checks(self) -> None:
            require(
                not (self.dice_weight == 0 and self.ce_weight == 0),
                "dice_weight, ce_weight",
                "must not both be 0",
            )

    intrinsic_passes = staticmethod(labeled_pass)
    intrinsic_why = "one pass over the labeled crops"

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        logits = self.net(batch["x_lb"])
        p = self.params
        sup = seg_supervised_loss(logits, batch["y_lb"], p.dice_weight, p.ce_weight, p.dice)
        return {"loss": sup, "sup": sup}


class SupervisedFull(Supervised):
    """``Supervised`` on every training label (the loop reads ``labeled_pool``)."""

    name = "supervised_full"
    labeled_pool = "all"
    intrinsic_why = "as supervised, with every train label"
