"""Supervised baselines for classification: cross-entropy on labeled images only.

``supervised`` trains on the labeled subset and is the lower bound every SSL method must beat;
``supervised_full`` trains on every train-split label and is the upper bound. Oliver et al.,
"Realistic Evaluation of Deep Semi-Supervised Learning Algorithms" (NeurIPS 2018), ask for both
with the same network and training budget as the SSL methods; that is what these give.
Optional label smoothing: Szegedy et al., "Rethinking the Inception Architecture" (CVPR 2016).
Both are multi-task: with several targets, one head per task and the sum of their losses
(``semimed.networks.multitask``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor

from semimed.config.checks import Checked, Range
from semimed.methods.base import Method
from semimed.methods.cost import labeled_pass
from semimed.networks.multitask import multitask_cross_entropy


class Supervised(Method):
    """Cross-entropy on ``x_lb`` (B, 1, H, W) against ``y_lb`` (B,) or (B, T); no unlabeled data."""

    name = "supervised"
    multitask = True

    @dataclass(frozen=True)
    class Params(Checked):
        # share of target mass spread uniformly over classes
        label_smoothing: Annotated[float, Range(ge=0, lt=1)] = 0.0

    intrinsic_passes = staticmethod(labeled_pass)
    intrinsic_why = "one pass over the labeled batch"

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        logits = self.net(batch["x_lb"])
        sup = multitask_cross_entropy(
            logits, batch["y_lb"], self.task_sizes, self.params.label_smoothing
        )
        return {"loss": sup, "sup": sup}


class SupervisedFull(Supervised):
    """``Supervised`` on every training label (the loop reads ``labeled_pool``)."""

    name = "supervised_full"
    labeled_pool = "all"
    intrinsic_why = "as supervised, with every train label"
