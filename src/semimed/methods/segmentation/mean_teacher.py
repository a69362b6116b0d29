"""Mean Teacher for 3D segmentation (Tarvainen & Valpola, NeurIPS 2017): the shared method in
`semimed.methods.mean_teacher` with Dice + cross-entropy on the labeled patches, in the form
SSL4MIS (Luo et al.) and the DHC baselines (Wang & Li, MICCAI 2023) use for volumes.

Batch: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w``, ``x_ulb_s`` (U, 1, D, H, W). The two
views are spatially aligned (intensity-only perturbation), so voxel-wise consistency is
meaningful. SSL4MIS perturbs the teacher input with clipped Gaussian noise instead; here the
data pipeline's views play that role. Instance norm: the shared student pass mixes no
statistics across samples. EMA decay 0.99 as SSL4MIS.

Consistency scale. The cost is the paper's eq. 1, the squared Euclidean distance between the
student's and the teacher's class-probability vectors, averaged over voxels
(``softmax_mse(..., sum_classes=True)``), with weight 1 (``consistency``). SSL4MIS's 3D script
averages the squared error over voxels AND classes (``torch.mean``) with weight 0.1: C times
smaller per voxel and a tenth of the weight, a term too small a share of the loss for the
method to differ from the supervised one (``unsup_ratio``, logged every step, shows the
share). Summing over classes keeps the per-voxel scale independent of C; weight 1 is the low
end of the range the paper found flat (10-100 on the class mean with C = 10, i.e. 1-10 on the
sum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import Tensor

from semimed.config.checks import OneOf
from semimed.methods import mean_teacher
from semimed.methods.losses import softmax_mse
from semimed.methods.segmentation.losses import DICE_FORMS, seg_supervised_loss


class MeanTeacher(mean_teacher.MeanTeacher):
    @dataclass(frozen=True)
    class Params(mean_teacher.MeanTeacher.Params):
        consistency: float = 1.0  # final weight of the consistency term, >= 0
        # Dice of the supervised term (losses.DICE_FORMS)
        dice: Annotated[str, OneOf(*DICE_FORMS)] = "monai"

    def supervised_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return seg_supervised_loss(logits, targets, dice=self.params.dice)

    def consistency_loss(self, logits_student: Tensor, logits_teacher: Tensor) -> Tensor:
        return softmax_mse(logits_student, logits_teacher, sum_classes=True)
