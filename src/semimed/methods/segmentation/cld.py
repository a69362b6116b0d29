"""CLD on CPS: class-distribution-aware weights and confidence-driven sampling of pseudo-labels.

Lin et al., "Calibrating Label Distribution for Class-Imbalanced Barely-Supervised Knee
Segmentation" (MICCAI 2022). On a cross pseudo supervision pair (Chen et al., CVPR 2021) CLD
(i) weights the losses by the labeled class distribution, (ii) crops sub-volumes where the
label position distribution puts the rare classes, and (iii) "dual uncertainty-aware sampling":
each network keeps a confidence bank and trains on the other's pseudo-labels only at a random
subset of voxels, more of them for the classes it is less confident about.

DHC (Wang & Li, MICCAI 2023, ``train_cld.py``) keeps (i) and (iii), as we do ((ii) belongs to
the data pipeline and is not part of the baseline):

* weights from the voxel counts ``N_c`` of the labeled volumes: ``w_c = (max_k N_k / N_c)^(1/3)``,
  in the supervised Dice + CE and in the CPS CE of both networks;
* confidence bank of network k: ``conf_c`` = mean softmax of class c on the labeled voxels of
  class c, accumulated over ``confs_iter`` steps, then the first estimate replaces the start
  value and later ones enter an EMA (``confs_momentum``);
* sampling rate ``r_c = ((1 - conf_c) / max_j (1 - conf_j))^gamma``; network a's voxel v whose
  OWN argmax is c is kept with probability ``r_c`` (mask ``m_a``), and

      unsup = mean_v [m_a(v) w_{t_a(v)} CE(f_a(x)_v, t_a(v))] + (same for b),  t_a = argmax f_b

  averaged over all voxels of the batch (labeled + unlabeled), not over the kept ones.

Built on CPS's hooks: ``class_weights`` returns the fixed weights and feeds the banks,
``cps_loss`` samples. Defaults: DHC's confs_iter 8 and gamma 0.5; CPS weight 0.1 with a sigmoid
ramp-up over the whole run (DHC's published protocol; ``train_cld.py``'s weight: 1). The banks
and their accumulators are buffers (updated per step).
DHC's bank momentum 0.999 applies per update, about 500 of them (8-iteration windows over
~4000 iterations); our 400 steps give 50, so the default 0.99 keeps the same share of the run
in the EMA (0.999^500 ~ 0.99^50 ~ 0.6). DHC starts the banks at random values; ours start at 0
(every rate 1: plain weighted CPS until the first estimate). Weights are uniform when
``class_counts`` is unknown; an absent class counts as one voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor

from semimed.config.checks import Range
from semimed.methods.losses import hard_labels, masked_cross_entropy
from semimed.methods.segmentation.class_weights import (
    class_sampling_mask,
    label_class_sums,
    sampling_rates,
)
from semimed.methods.segmentation.cps import CrossPseudoSupervision


def cld_weights(counts: Tensor, power: float = 1.0 / 3.0) -> Tensor:
    """CLD's class-distribution-aware weights ``(max N / N_c) ** power`` (C,) from voxel counts
    (C,); the most frequent class gets 1. A count below 1 is taken as 1."""
    counts = counts.float().clamp_min(1.0)
    return (counts.max() / counts).pow(power)


class CLD(CrossPseudoSupervision):
    """Batch as CPS: ``x_lb``, ``y_lb`` (B, 1, D, H, W); ``x_ulb_w`` (U, 1, D, H, W)."""

    name = "cld"

    @dataclass(frozen=True)
    class Params(CrossPseudoSupervision.Params):
        # final weight of the sampled CPS CE (DHC protocol: 0.1; train_cld.py: 1), >= 0
        cps_weight: float = 0.1
        # share of total_steps of the sigmoid ramp-up (DHC: all), [0, 1]
        rampup: float = 1.0
        # exponent of (max N / N_c) in the weights (CLD)
        weight_power: Annotated[float, Range(ge=0)] = 1.0 / 3.0
        # exponent of the sampling rates (CLD, DHC)
        gamma: Annotated[float, Range(gt=0)] = 0.5
        # steps of confidence pooled per bank update (DHC)
        confs_iter: Annotated[int, Range(ge=1)] = 8
        # bank EMA momentum per update (DHC 0.999, see doc)
        confs_momentum: Annotated[float, Range(ge=0, lt=1)] = 0.99

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.num_classes
        counts = torch.tensor(self.class_counts) if self.class_counts is not None else None
        weights = cld_weights(counts, self.params.weight_power) if counts is not None else None
        self.register_buffer("weights", torch.ones(c) if weights is None else weights)
        # Row 0: network a's bank, row 1: network b's; sums and counts pool confs_iter steps.
        self.register_buffer("confs", torch.zeros(2, c))
        self.register_buffer("conf_sums", torch.zeros(2, c))
        self.register_buffer("conf_counts", torch.zeros(2, c))
        self.register_buffer("conf_steps", torch.zeros((), dtype=torch.long))
        # Its host copy decides when the bank updates (reading the buffer would sync a GPU
        # every step); refreshed from the buffer when a checkpoint loads.
        self._conf_steps = 0
        self.register_load_state_dict_post_hook(CLD._sync_steps)

    @staticmethod
    def _sync_steps(module: CLD, incompatible_keys: Any) -> None:
        module._conf_steps = int(module.conf_steps)

    @torch.no_grad()
    def update_banks(self, labeled_logits: tuple[Tensor, Tensor], y_lb: Tensor) -> None:
        """Pool each network's class-wise confidence on the labeled crops (logits (B, C, ...));
        every ``confs_iter`` steps turn the pool into a bank update (the first one replaces)."""
        for k, logits in enumerate(labeled_logits):
            sums, counts = label_class_sums(logits.float().softmax(1), y_lb)
            self.conf_sums[k] += sums
            self.conf_counts[k] += counts
        self.conf_steps += 1
        self._conf_steps += 1
        steps, every = self._conf_steps, self.params.confs_iter
        if steps % every:
            return
        fresh = self.conf_sums / (self.conf_counts + 1e-12)
        momentum = 0.0 if steps == every else self.params.confs_momentum
        self.confs.mul_(momentum).add_(fresh, alpha=1.0 - momentum)
        self.conf_sums.zero_()
        self.conf_counts.zero_()

    def rates(self) -> Tensor:
        """Sampling rates (2, C) of network a (row 0) and b (row 1) from their banks."""
        return torch.stack([sampling_rates(conf, self.params.gamma) for conf in self.confs])

    def class_weights(
        self, logits_a: Tensor, logits_b: Tensor, y_lb: Tensor, n_lb: int
    ) -> tuple[Tensor, Tensor]:
        """Both networks use the fixed CLD weights; the banks see this step's labeled crops."""
        self.update_banks((logits_a[:n_lb], logits_b[:n_lb]), y_lb)
        return self.weights, self.weights

    def cps_loss(
        self, logits_a: Tensor, logits_b: Tensor, w_a: Tensor | None, w_b: Tensor | None, n_lb: int
    ) -> Tensor:
        """Sampled, class-weighted CE of each network against the other's argmax, averaged
        over all voxels; each network samples by its own argmax and its own bank's rates."""
        rates = self.rates()
        unsup = logits_a.new_zeros((), dtype=torch.float32)
        pairs = ((logits_a, logits_b, w_a), (logits_b, logits_a, w_b))
        for k, (student, teacher, w) in enumerate(pairs):
            with torch.no_grad():
                target = hard_labels(teacher.detach())
                keep = class_sampling_mask(student.detach(), rates[k])
                voxel_w = keep if w is None else w[target] * keep
            unsup = unsup + masked_cross_entropy(student.float(), target, voxel_w)
        return unsup
