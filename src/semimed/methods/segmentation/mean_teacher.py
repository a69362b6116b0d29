"""Mean Teacher for 3D segmentation (Tarvainen & Valpola, NeurIPS 2017): the shared method in
`semimed.methods.mean_teacher` with Dice + cross-entropy on the labeled patches, in the form
SSL4MIS (Luo et al.) and the DHC baselines (Wang & Li, MICCAI 2023) use for volumes.

Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w``, ``x_ulb_s`` (U, 1, D, H, W). The two
views are spatially aligned (intensity-only perturbation), so voxel-wise consistency is
meaningful. SSL4MIS perturbs the teacher input with clipped Gaussian noise instead; here the
data pipeline's views play that role. Instance norm: the shared student pass mixes no
statistics across samples. Defaults follow SSL4MIS: EMA decay 0.99, consistency weight 0.1
(also DHC's 0.1 * exp(-5 (1 - t)^2)).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from semimed.losses import seg_supervised_loss
from semimed.methods import mean_teacher


class MeanTeacher(mean_teacher.MeanTeacher):
    @dataclass(frozen=True)
    class Params(mean_teacher.MeanTeacher.Params):
        consistency: float = 0.1  # final weight of the consistency term, >= 0

    def supervised_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return seg_supervised_loss(logits, targets)
