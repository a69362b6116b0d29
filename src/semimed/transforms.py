"""Weak and strong augmentations as batched MONAI dictionary transforms.

Semi-supervised methods need two views of every unlabeled image on every step. MONAI's
per-sample random transforms cost 1.4 ms (affine) to 2.8 ms (affine + intensity) per 64x64
image on a 2-core CPU -- about 0.3 s per FixMatch step at batch 32 with mu=2, more than the
network itself. These transforms keep MONAI's interface (`MapTransform` on fixed keys,
`Randomizable` with `set_random_state`) but act on whole batches `(B, C, H, W[, D])` on the
training device with one `grid_sample`, so each image still gets its own random parameters
at a fraction of the cost (~3 ms for 96 images).

Randomness comes from the transform's own `numpy.random.RandomState` (`self.R`), seeded by
the training loop, so runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, MapTransform, Randomizable


class BatchRandAffined(Randomizable, MapTransform):
    """Random rotation, scaling and translation, independently per image of a batch.

    Args:
        keys: batch keys to warp with the same per-sample matrix; keys in `label_keys` use
            nearest-neighbour sampling (segmentation maps), the others bilinear.
        rotate: max rotation, radians (2D: in-plane; 3D: about the last axis only, since
            CT/MR slices keep their orientation).
        translate: max shift as a fraction of the image side.
        scale: max relative zoom (0.1 -> factor in [0.9, 1.1]).
        prob: probability that an image is warped at all.
    Shapes: images (B, C, H, W) or (B, C, H, W, D); output has the same shape and dtype.
    """

    def __init__(
        self,
        keys: Sequence[Hashable],
        rotate: float = 0.0,
        translate: float = 0.0,
        scale: float = 0.0,
        prob: float = 1.0,
        label_keys: Sequence[Hashable] = (),
    ):
        MapTransform.__init__(self, keys)
        self.rotate, self.translate, self.scale, self.prob = rotate, translate, scale, prob
        self.label_keys = set(label_keys)

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
    assumed roughly in [0, 1] (the preprocess stage scales them so).

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
    ):
        MapTransform.__init__(self, keys)
        self.gamma, self.brightness, self.noise, self.blur, self.prob = (
            gamma,
            brightness,
            noise,
            blur,
            prob,
        )

    def randomize(self, batch: int) -> dict[str, np.ndarray]:
        on = self.R.uniform(size=(4, batch)) < self.prob
        return {
            "gamma": np.exp(self.R.uniform(-self.gamma, self.gamma, batch) * on[0]),
            "shift": self.R.uniform(-self.brightness, self.brightness, batch) * on[1],
            "noise": self.R.uniform(0, self.noise, batch) * on[2],
            "blur": self.R.uniform(0, self.blur, batch) * on[3],
            "seed": self.R.randint(0, 2**31 - 1),
        }

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key].float()
            p = self.randomize(x.shape[0])
            dev = x.device

            def col(v, x=x, dev=dev):
                return torch.as_tensor(v, dtype=torch.float32, device=dev).view(
                    -1, *([1] * (x.ndim - 1))
                )

            x = x.clamp_min(0) ** col(p["gamma"]) + col(p["shift"])
            gen = torch.Generator(device=dev).manual_seed(int(p["seed"]))
            x = x + torch.randn(x.shape, generator=gen, device=dev) * col(p["noise"])
            if self.blur > 0 and (p["blur"] > 0).any():
                x = _blur_per_sample(x, p["blur"])
            d[key] = x.to(d[key].dtype)
        return d


def _blur_per_sample(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image (sigma 0 = identity)."""
    radius = max(1, int(math.ceil(2 * sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    sig = torch.as_tensor(np.maximum(sigmas, 1e-3), dtype=torch.float32, device=x.device)
    kernels = torch.exp(-0.5 * (offsets[None] / sig[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # (B, K); sigma~0 -> delta
    b, c = x.shape[:2]
    spatial = x.ndim - 2
    out = x.reshape(1, b * c, *x.shape[2:])
    weight = kernels.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    for axis in range(spatial):
        shape = [b * c, 1] + [1] * spatial
        shape[2 + axis] = weight.shape[1]
        pad = [0, 0] * spatial
        pad[2 * (spatial - 1 - axis)] = pad[2 * (spatial - 1 - axis) + 1] = radius
        out = conv(F.pad(out, pad, mode="replicate"), weight.view(shape), groups=b * c)
    return out.reshape_as(x)


class BatchRandCutoutd(Randomizable, MapTransform):
    """Zero one random box per image (Cutout, DeVries & Taylor 2017), with probability `prob`.

    Args:
        size: box side as a fraction of each image side.
    """

    def __init__(self, keys: Sequence[Hashable], size: float = 0.25, prob: float = 0.5):
        MapTransform.__init__(self, keys)
        self.size, self.prob = size, prob

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            b, spatial = x.shape[0], x.shape[2:]
            keep = torch.ones_like(x)
            apply = self.R.uniform(size=b) < self.prob
            for i in np.flatnonzero(apply):
                box = []
                for n in spatial:
                    side = max(1, int(round(n * self.size)))
                    start = self.R.randint(0, n - side + 1)
                    box.append(slice(start, start + side))
                keep[(i, slice(None), *box)] = 0
            d[key] = x * keep
        return d


def weak_augment(task: str, keys=("image",), label_keys=()) -> Compose:
    """Weak view. Echo frames: small rotation/shift/zoom (the sector geometry allows little
    more: flips would turn one view's anatomy into another's). CT patches: none beyond the
    random crop, so that labels stay aligned."""
    if task == "classification":
        return Compose(
            [BatchRandAffined(keys, rotate=0.17, translate=0.08, scale=0.1, label_keys=label_keys)]
        )
    return Compose([])


def strong_augment(task: str, keys=("image",)) -> Compose:
    """Strong view: the weak view plus intensity changes, noise, blur and cutout (echo), or
    intensity changes and noise only (CT: spatially aligned with the weak view)."""
    if task == "classification":
        return Compose(
            [
                BatchRandAffined(keys, rotate=0.17, translate=0.08, scale=0.1),
                BatchRandIntensityd(keys, gamma=0.4, brightness=0.1, noise=0.1, blur=1.0),
                BatchRandCutoutd(keys, size=0.3, prob=0.5),
            ]
        )
    return Compose([BatchRandIntensityd(keys, gamma=0.3, brightness=0.1, noise=0.1, prob=0.8)])


def seed_transform(transform: Compose, seed: int) -> Compose:
    """Seed every random transform of a Compose (MONAI's `set_random_state`)."""
    return transform.set_random_state(seed=seed)
