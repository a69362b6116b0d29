"""Batched MONAI dictionary transforms: random warps and intensity changes, each acting on a
whole batch with per-image random parameters, and the combinators of the strong views.

Semi-supervised methods need two views of every unlabeled image on every step; MONAI's
per-sample random transforms run one image at a time. These transforms keep MONAI's
interface (`MapTransform` on fixed keys, `Randomizable` with `set_random_state`) but act on
whole batches `(B, C, H, W[, D])` on the training device, so each image still gets its own
random parameters from one vectorised call.

Randomness comes from the transform's own `numpy.random.RandomState` (`self.R`), seeded by
the training loop, so runs are reproducible.

The strong-view operations (`_BatchRandOpd`, in `transforms.base` and `transforms.ops`) draw
their parameters (`randomize`) apart from applying them (`apply`, on the kernels of
`transforms.kernels`); `BatchRandSomeOfd` gives each image a random subset of the operations,
and `BatchByInputKindd` picks a transform by the input kind of the batch (`input_kind`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from semimed.transforms.base import MAX_SEED, _BatchRandOpd
from semimed.transforms.kernels import _add_noise, _blur_per_sample, _per_image


class BatchRandAffined(Randomizable, MapTransform):
    """Random rotation, scaling, translation and flips, independently per image.

    Args:
        keys: batch keys to warp with the same per-sample matrix; keys in `label_keys` use
            nearest-neighbour sampling (segmentation maps), the others bilinear.
        rotate: max rotation, radians (2D: in-plane; 3D: in the plane of the last two axes
            only, about the first spatial axis: for (B, C, D, H, W) volumes the roll of a
            patient lying on the table, while the slice axis keeps its orientation).
        translate: max shift as a fraction of the image side.
        scale: max relative zoom (0.1 -> factor in [0.9, 1.1]).
        prob: probability that an image is rotated/zoomed/shifted at all.
        hflip: probability of mirroring an image along its last axis (left-right; independent
            of `prob`).
        flip: probability of mirroring along each spatial axis, independently (after `hflip`),
            for images with no canonical orientation (dermoscopy, blood smears).
    Shapes: images (B, C, H, W) or (B, C, D, H, W); output has the same shape and dtype.
    All channels of an image get the same warp.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        rotate: float = 0.0,
        translate: float = 0.0,
        scale: float = 0.0,
        prob: float = 1.0,
        label_keys: Sequence[Hashable] = (),
        hflip: float = 0.0,
        flip: float = 0.0,
    ):
        MapTransform.__init__(self, keys)
        self.rotate, self.translate, self.scale, self.prob = rotate, translate, scale, prob
        self.label_keys, self.hflip, self.flip = set(label_keys), hflip, flip

    def randomize(self, batch: int, dims: int) -> np.ndarray:
        """Draw (B, dims, dims+1) affine matrices in normalised coordinates."""
        angle = self.R.uniform(-self.rotate, self.rotate, batch)
        zoom = self.R.uniform(1 - self.scale, 1 + self.scale, batch)
        shift = self.R.uniform(-self.translate, self.translate, (batch, dims)) * 2
        apply = self.R.uniform(size=batch) < self.prob
        theta = np.zeros((batch, dims, dims + 1))
        for b in range(batch):
            rot = np.eye(dims)
            if apply[b]:
                c, s = math.cos(angle[b]), math.sin(angle[b])
                rot[:2, :2] = [[c, -s], [s, c]]
                rot /= zoom[b]
                theta[b, :, dims] = shift[b]
            theta[b, :, :dims] = rot
        if self.hflip > 0:  # drawn last: without flips the random stream is unchanged
            theta[self.R.uniform(size=batch) < self.hflip, :, 0] *= -1  # x_in = -x_out
        if self.flip > 0:
            theta[:, :, :dims] *= np.where(self.R.uniform(size=(batch, 1, dims)) < self.flip, -1, 1)
        return theta

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        first = d[self.first_key(d)]
        dims = first.ndim - 2
        theta = torch.as_tensor(self.randomize(first.shape[0], dims), dtype=torch.float32)
        theta = theta.to(first.device)
        grid = F.affine_grid(theta, list(first.shape), align_corners=False)
        for key in self.key_iterator(d):
            x = d[key]
            mode = "nearest" if key in self.label_keys else "bilinear"
            out = F.grid_sample(
                x.float(), grid, mode=mode, padding_mode="zeros", align_corners=False
            )
            d[key] = out.to(x.dtype)
        return d


class BatchRandIntensityd(Randomizable, MapTransform):
    """Per-image random gamma contrast, brightness shift, Gaussian noise and blur.

    Each perturbation is applied to each image with probability `prob`; intensities are
    not clipped. `unit_range`: intensities are in [0, 1] (the HU window) and gamma acts on
    them directly (negative values clipped to 0 first); else (z-scored volumes) gamma acts
    on each image channel's own min..max mapped to [0, 1] and back, as nnU-Net's gamma does.

    Args:
        gamma: max |log gamma| of the contrast change (0.4 -> gamma in [0.67, 1.49]).
        brightness: max additive shift.
        noise: max standard deviation of additive Gaussian noise.
        blur: max Gaussian blur sigma in pixels/voxels (0 disables).
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        gamma: float = 0.0,
        brightness: float = 0.0,
        noise: float = 0.0,
        blur: float = 0.0,
        prob: float = 0.5,
        unit_range: bool = True,
    ):
        MapTransform.__init__(self, keys)
        self.gamma, self.brightness, self.noise = gamma, brightness, noise
        self.blur, self.prob, self.unit_range = blur, prob, unit_range

    def randomize(self, batch: int) -> dict[str, np.ndarray]:
        on = self.R.uniform(size=(4, batch)) < self.prob
        return {
            "gamma": np.exp(self.R.uniform(-self.gamma, self.gamma, batch) * on[0]),
            "shift": self.R.uniform(-self.brightness, self.brightness, batch) * on[1],
            "noise": self.R.uniform(0, self.noise, batch) * on[2],
            "blur": self.R.uniform(0, self.blur, batch) * on[3],
            "seed": self.R.randint(0, MAX_SEED),
        }

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key].float()
            p = self.randomize(x.shape[0])
            x = self._gamma(x, _per_image(p["gamma"], x)) + _per_image(p["shift"], x)
            gen = torch.Generator(device=x.device).manual_seed(int(p["seed"]))
            x = _add_noise(x, _per_image(p["noise"], x), gen)
            if self.blur > 0 and (p["blur"] > 0).any():
                x = _blur_per_sample(x, p["blur"])
            d[key] = x.to(d[key].dtype)
        return d

    def _gamma(self, x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        if self.unit_range:
            return x.clamp_min(0) ** gamma
        dims = tuple(range(2, x.ndim))
        lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
        width = (hi - lo).clamp_min(1e-7)
        return ((x - lo) / width).clamp(0, 1) ** gamma * width + lo


class BatchRandSomeOfd(Randomizable, MapTransform):
    """MONAI's `SomeOf`, drawn per image: with probability `prob` an image gets k ~ U{num_ops}
    distinct operations of `ops`, chosen at random and applied in list order; else none.

    Args:
        ops: `_BatchRandOpd` operations (their own `prob` is ignored here).
        num_ops: (min, max) number of operations for a selected image, 1 <= min <= max.
        prob: probability that an image gets any operation.
    Shapes: as the operations.
    """

    def __init__(self, keys, ops: Sequence[_BatchRandOpd], num_ops=(1, 1), prob: float = 0.5):
        MapTransform.__init__(self, keys)
        if not 1 <= num_ops[0] <= num_ops[1] <= len(ops):
            raise ValueError(f"num_ops must satisfy 1 <= min <= max <= {len(ops)}, got {num_ops}")
        self.ops, self.num_ops, self.prob = list(ops), num_ops, prob

    def set_random_state(self, seed=None, state=None) -> BatchRandSomeOfd:
        super().set_random_state(seed=seed, state=state)
        for op in self.ops:  # derived seeds, as MONAI's Compose does
            op.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def randomize(self, batch: int) -> np.ndarray:
        """(B, len(ops)) bool: which operations each image gets."""
        gate = self.R.uniform(size=batch) < self.prob
        k = self.R.randint(self.num_ops[0], self.num_ops[1] + 1, batch) * gate
        rank = self.R.uniform(size=(batch, len(self.ops))).argsort(1).argsort(1)
        return rank < k[:, None]

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            chosen = self.randomize(x.shape[0])
            for j, op in enumerate(self.ops):
                x = op.transform(x, chosen[:, j])
            d[key] = x
        return d


def input_kind(x: torch.Tensor) -> str:
    """ "grey2d" (B, 1, H, W), "colour2d" (B, C > 1, H, W) or "volume" (B, C, D, H, W)."""
    if x.ndim == 5:
        return "volume"
    if x.ndim == 4:
        return "grey2d" if x.shape[1] == 1 else "colour2d"
    raise ValueError(f"expected a batch (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}")


class BatchByInputKindd(Randomizable, MapTransform):
    """Apply `by_kind[input_kind(x)]`, x the first key's batch, so one transform serves echo
    frames, colour images and volumes; the kind is read from the tensor at each call.

    Every child gets the seed this transform gets (`set_random_state`), so a child draws
    exactly what it would draw in place of this transform: a grey 2D batch gets the same
    random stream as from the echo transform alone.
    """

    def __init__(self, keys, by_kind: Mapping[str, Randomizable]):
        MapTransform.__init__(self, keys)
        self.by_kind = dict(by_kind)

    def set_random_state(self, seed=None, state=None) -> BatchByInputKindd:
        super().set_random_state(seed=seed, state=state)
        for child in self.by_kind.values():
            child.set_random_state(seed=seed, state=state)
        return self

    def __call__(self, data: Mapping) -> dict:
        return self.by_kind[input_kind(data[self.first_key(data)])](data)
