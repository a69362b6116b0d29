"""Mean Teacher for classification (Tarvainen & Valpola, NeurIPS 2017): the shared method in
`semimed.methods.mean_teacher` with cross-entropy on the labeled images.

Batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,), ``x_ulb_w`` and ``x_ulb_s`` (U, 1, H, W); the weak
and strong views are two independent noises of the same image. Labeled and strong images share
one student pass, so BatchNorm normalises the mixed batch, as in the paper's code.

Defaults. ``consistency`` = 50 is USB's classic-CV Mean Teacher weight (Wang et al., NeurIPS
2022, ``ulb_loss_ratio: 50``) for the same softmax-MSE averaged over classes and samples; the
paper used 100 with that normalisation on CIFAR-10 and found results flat across roughly
10-100 in its SVHN ablation (Fig. 4). The 3D segmentation Mean Teacher uses weight 1 on the
squared distance summed over classes instead (``segmentation/mean_teacher.py``): voxel-wise
terms are another scale. ``rampup`` = 0.4 is USB's
``unsup_warm_up`` with the paper's sigmoid ramp. ``ema_decay`` = 0.99 is the paper's ramp-up
value (0.999 after it) and suits our short runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from semimed.methods import mean_teacher


class MeanTeacher(mean_teacher.MeanTeacher):
    @dataclass(frozen=True)
    class Params(mean_teacher.MeanTeacher.Params):
        consistency: float = 50.0  # final weight of the softmax-MSE consistency term, >= 0

    def supervised_loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)
