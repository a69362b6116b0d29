"""MixMatch: sharpened guesses from two weak views, MixUp of labeled and unlabeled, L2 consistency.

Berthelot et al., "MixMatch: A Holistic Approach to Semi-Supervised Learning" (NeurIPS 2019),
Algorithm 1 and eqs. 2-5, with K = 2 augmentations (the views ``w`` and ``w2``):

    q      = Sharpen(mean_k softmax(f(x_ulb_k)), T)              k in (w, w2); no gradient
    X      = cat([x_lb, x_ulb_w, x_ulb_w2])   (B + 2U, 1, H, W),  t = cat([onehot(y_lb), q, q])
    lam    ~ Beta(alpha, alpha),  lam' = max(lam, 1 - lam),  perm: a random permutation of B + 2U
    X', t' = lam' * (X, t) + (1 - lam') * (X[perm], t[perm])
    loss   = CE(f(X'_lb), t'_lb) + lambda_u * ramp(step) * mean_{u, c}(softmax(f(X'_ulb)) - t'_ulb)^2

``lam' >= 0.5`` keeps each mixed sample closer to its own source, so the first B rows stay
"labeled". The L2 term is averaged over samples and classes, as in the paper (1 / (L |U'|)).

Choices here:
* One ``lam`` and one permutation per step for the whole batch, as in the paper's code. Both come
  from torch's CPU generator (seeded by the training loop), so a seeded run repeats and draws the
  same on CPU and GPU. ``alpha = 0`` turns MixUp off (``lam' = 1``), the paper's ablation.
* No interleaving: the reference code interleaves labeled and unlabeled rows only because it runs
  them in separate forward passes and wants equal BatchNorm statistics in each; the whole mixed
  batch here goes through ONE pass, so every row is normalised with the same statistics.
* The guess pass (both weak views in one no-grad pass, train mode) also updates BatchNorm running
  statistics; those then come from real (un-mixed) images as well as from the mixed batch, which
  matches evaluation data better than the mixed batch alone.
* Both guessed views are WEAK draws, as in the paper (USB's MixMatch guesses from its weak and
  its strong view); a test checks which keys are read.
* ``lambda_u`` (3 by default; the paper: 75) ramps up linearly over ``rampup * total_steps``
  steps (0.4 of training by default, as USB; the paper: 16k of ~1M steps). An EMA of the
  student (decay 0.99 by default; the paper's 0.999) is evaluated, as in ``fixmatch.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from monai.networks.utils import one_hot
from torch import Tensor

from semimed.config.checks import Checked, Range
from semimed.methods.base import EvaluatesEMA
from semimed.methods.classification.losses import mixup, sharpen
from semimed.methods.losses import linear_rampup


class MixMatch(EvaluatesEMA):
    """Batch: ``x_lb`` (B, 1, H, W), ``y_lb`` (B,), ``x_ulb_w`` and ``x_ulb_w2`` (U, 1, H, W)."""

    name = "mixmatch"
    uses_unlabeled = True
    views = ("w", "w2")

    @dataclass(frozen=True)
    class Params(Checked):
        # sharpening temperature T of the guessed labels
        temperature: Annotated[float, Range(gt=0, le=1)] = 0.5
        # Beta(alpha, alpha) of the MixUp coefficient; 0 = no MixUp
        alpha: Annotated[float, Range(ge=0)] = 0.75
        # final weight of the L2 unsupervised term (paper: 75)
        lambda_u: Annotated[float, Range(ge=0)] = 3.0
        # share of total_steps over which lambda_u ramps up (USB: 0.4)
        rampup: Annotated[float, Range(ge=0, le=1)] = 0.4
        # decay of the evaluated EMA model; 0 = no EMA (paper: 0.999)
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.99

    intrinsic_why = "no-grad guess on both weak views, then one pass over the mixed batch"

    @staticmethod
    def intrinsic_passes(b: int, u: int, params: MixMatch.Params) -> tuple[int, int]:
        return b + 4 * u, b + 2 * u

    def draw_mixup(self, n: int) -> tuple[float, Tensor]:
        """``lam' = max(lam, 1 - lam)``, ``lam ~ Beta(alpha, alpha)``, and a permutation (n,)."""
        if self.params.alpha == 0:
            return 1.0, torch.arange(n)
        alpha = torch.tensor(float(self.params.alpha))
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return max(lam, 1.0 - lam), torch.randperm(n)

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        x_lb, x_ulb_w, x_ulb_w2 = batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_w2"]
        n_lb = len(x_lb)
        with torch.no_grad():
            probs_w, probs_w2 = self.net(torch.cat([x_ulb_w, x_ulb_w2])).float().softmax(1).chunk(2)
            guess = sharpen((probs_w + probs_w2) / 2, self.params.temperature)

        targets = torch.cat([one_hot(batch["y_lb"][:, None], self.num_classes), guess, guess])
        lam, perm = self.draw_mixup(len(targets))
        mixed_x, mixed_t = mixup(
            torch.cat([x_lb, x_ulb_w, x_ulb_w2]), targets, lam, perm.to(targets.device)
        )
        logits = self.net(mixed_x).float()

        sup = F.cross_entropy(logits[:n_lb], mixed_t[:n_lb])
        unsup = F.mse_loss(logits[n_lb:].softmax(dim=1), mixed_t[n_lb:])
        weight = self.params.lambda_u * linear_rampup(step, self.params.rampup * self.total_steps)
        return {
            "loss": sup + weight * unsup,
            "sup": sup,
            "unsup": unsup,
            "weight": sup.new_tensor(weight),
        }
