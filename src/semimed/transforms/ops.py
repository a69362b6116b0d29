"""Per-image random operations of the strong views, as batched MONAI dictionary transforms.

Each operation (a `_BatchRandOpd`, `transforms.base`) changes each image of a batch
`(B, C, H, W[, D])` with its own random parameters: it draws them (`randomize`, from the
transform's own `numpy.random.RandomState` `self.R`) apart from applying them (`apply`, on the
kernels of `transforms.kernels`, which `perturb` runs too). `BatchRandSomeOfd`
(`transforms.dictionary`) gives each image a random subset of them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from semimed.transforms.base import _BatchRandOpd
from semimed.transforms.kernels import (
    FAN_HALF_ANGLE,
    _add_noise,
    _blur_per_sample,
    _box_mask,
    _centre_of,
    _draw_boxes,
    _per_image,
    _scale_intensity,
    _sector_gain,
    _shuffle_windows,
    _shuffle_windows_nd,
)


class BatchRandCutoutd(_BatchRandOpd):
    """Zero one random box per image (Cutout, DeVries & Taylor 2017), with probability `prob`.

    Args:
        size: box side as a fraction of each image side.
    Shapes: (B, C, H, W[, D]).
    """

    def __init__(self, keys: Sequence[Hashable], size: float = 0.25, prob: float = 0.5):
        super().__init__(keys, prob)
        self.size = size

    def randomize(self, x):
        return _draw_boxes(self.R, x.shape, (self.size, self.size))

    def apply(self, x, params, gen):
        return x * (1 - _box_mask(x, params["start"], params["side"]))


class BatchRandNoiseInpaintd(_BatchRandOpd):
    """Noise in-painting (the lightweight echo SSL model (TMED-2 view/AS)): one random box per
    image is replaced by Gaussian noise with the box's own mean and standard deviation, clipped
    to [0, 1], so the patch keeps its brightness and texture energy but loses its structure.

    Args:
        size: (min, max) box side as a fraction of each image side, drawn per axis.
    Shapes: (B, C, H, W[, D]).
    """

    def __init__(self, keys: Sequence[Hashable], size=(0.2, 0.4), prob: float = 0.5):
        super().__init__(keys, prob)
        self.size = size

    def randomize(self, x):
        return _draw_boxes(self.R, x.shape, self.size)

    def apply(self, x, params, gen):
        mask = _box_mask(x, params["start"], params["side"])
        dims = tuple(range(2, x.ndim))
        area = mask.sum(dims, keepdim=True)
        mean = (x * mask).sum(dims, keepdim=True) / area
        std = (((x - mean) ** 2 * mask).sum(dims, keepdim=True) / area).sqrt()
        fill = _add_noise(mean.expand_as(x), std, gen).clamp(0, 1)
        return torch.where(mask > 0, fill, x)


class BatchRandLocalShuffled(_BatchRandOpd):
    """Local pixel shuffling (Models Genesis, Zhou et al., MICCAI 2019; used by the lightweight
    echo SSL model (TMED-2 view/AS)): each image is tiled by square windows of a random side, at
    a random grid offset, and the pixels of a `fraction` of the windows are permuted. Coarse
    anatomy survives; texture and thin edges (leaflets) are scrambled within a few pixels.

    Models Genesis shuffles 3D CT sub-volumes; volumes get cubic windows here.

    Args:
        window: (min, max) window side, pixels/voxels (inclusive).
        fraction: share of the windows that are shuffled.
    Shapes: (B, C, H, W[, D]); the channels of a pixel move together.
    """

    def __init__(self, keys: Sequence[Hashable], window=(2, 4), fraction=0.5, prob=0.5):
        super().__init__(keys, prob)
        self.window, self.fraction = window, fraction

    def randomize(self, x):
        b = x.shape[0]
        window = self.R.randint(self.window[0], self.window[1] + 1, b)
        offset = (self.R.uniform(size=(b, x.ndim - 2)) * window[:, None]).astype(int)
        return {"window": window, "offset": offset, "fraction": np.full(b, self.fraction)}

    def apply(self, x, params, gen):
        shuffle = _shuffle_windows if x.ndim == 4 else _shuffle_windows_nd  # 2D: the fast bank
        return shuffle(x, params["window"], params["offset"], params["fraction"], gen)


class BatchRandSignalDropoutd(_BatchRandOpd):
    """Simulated ultrasound signal dropout / acoustic shadowing: an angular sector of the fan
    (apex at the top centre) is attenuated from a random depth down, as behind a rib or a
    calcified valve (start > 0) or where the probe loses contact (start 0: the whole beam).

    Args:
        width: (min, max) sector width as a fraction of the fan opening 2 * FAN_HALF_ANGLE.
        depth: (min, max) depth where the shadow starts, fraction of the image width.
        residual: (min, max) fraction of the signal left in the shadow (0 = black).
    Shapes: (B, C, H, W), 2D only.
    """

    def __init__(self, keys, width=(0.1, 0.3), depth=(0.0, 0.5), residual=(0.0, 0.5), prob=0.5):
        super().__init__(keys, prob)
        self.width, self.depth, self.residual = width, depth, residual

    def randomize(self, x):
        b = x.shape[0]
        return {
            "centre": self.R.uniform(-FAN_HALF_ANGLE, FAN_HALF_ANGLE, b),
            "half_width": self.R.uniform(*self.width, b) * FAN_HALF_ANGLE,
            "start": self.R.uniform(*self.depth, b),
            "residual": self.R.uniform(*self.residual, b),
        }

    def apply(self, x, params, gen):
        return x * _sector_gain(x, **params)


class BatchRandBrightnessd(_BatchRandOpd):
    """Brightness as scanner gain: each image is multiplied by U(1 - b, 1 + b) and clipped to
    [0, 1], so the black background outside the fan stays black (the lightweight echo SSL
    model (TMED-2 view/AS): ColorJitter brightness 0.5). Shapes: (B, C, H, W[, D])."""

    def __init__(self, keys: Sequence[Hashable], brightness: float = 0.5, prob: float = 0.5):
        super().__init__(keys, prob)
        self.brightness = brightness

    def randomize(self, x):
        return {"factor": self.R.uniform(1 - self.brightness, 1 + self.brightness, x.shape[0])}

    def apply(self, x, params, gen):
        return _scale_intensity(x, _per_image(params["factor"], x), 0.0)


class BatchRandGaussianBlurd(_BatchRandOpd):
    """Gaussian blur with sigma ~ U(sigma) pixels per image (the lightweight echo SSL model
    (TMED-2 view/AS): sigma 0.1-2 on 112 px frames). Replicate padding: the image mean is kept
    up to border effects.
    Shapes: (B, C, H, W[, D])."""

    def __init__(self, keys: Sequence[Hashable], sigma=(0.1, 1.5), prob: float = 0.5):
        super().__init__(keys, prob)
        self.sigma = sigma

    def randomize(self, x):
        return {"sigma": self.R.uniform(*self.sigma, x.shape[0])}

    def apply(self, x, params, gen):
        return _blur_per_sample(x, params["sigma"])


class BatchRandContrastd(BatchRandBrightnessd):
    """Contrast: each image is scaled by U(1 - c, 1 + c) about its own mean (not about 0 as
    the gain is) and clipped to [0, 1] (CT/MR window width, exposure).
    Shapes: (B, C, H, W[, D])."""

    def __init__(self, keys: Sequence[Hashable], contrast: float = 0.4, prob: float = 0.5):
        super().__init__(keys, brightness=contrast, prob=prob)  # the same factor draw

    def apply(self, x, params, gen):
        return _scale_intensity(x, _per_image(params["factor"], x), _centre_of(x))


class BatchRandGaussianNoised(_BatchRandOpd):
    """Additive Gaussian noise with sigma ~ U(0, noise) per image, clipped to [0, 1] (scanner
    noise; independent per pixel and channel). Shapes: (B, C, H, W[, D])."""

    def __init__(self, keys: Sequence[Hashable], noise: float = 0.1, prob: float = 0.5):
        super().__init__(keys, prob)
        self.noise = noise

    def randomize(self, x):
        return {"sigma": self.R.uniform(0, self.noise, x.shape[0])}

    def apply(self, x, params, gen):
        return _add_noise(x, _per_image(params["sigma"], x), gen).clamp(0, 1)


# ITU-R BT.601 luma weights: the grey an RGB image is desaturated towards.
_LUMA = (0.299, 0.587, 0.114)


class BatchRandColourd(_BatchRandOpd):
    """Colour jitter for colour images (dermoscopy, stained smears): saturation ~ U(1 - s,
    1 + s) about the image's own grey (luma for RGB, the channel mean otherwise), then a
    colour cast, a gain ~ U(1 - g, 1 + g) per channel (white balance, stain strength);
    clipped to [0, 1]. Brightness and contrast are separate operations.
    Shapes: (B, C, H, W[, D]), C > 1 (a one-channel image only gets the gain)."""

    def __init__(self, keys, saturation: float = 0.3, gain: float = 0.1, prob: float = 0.5):
        super().__init__(keys, prob)
        self.saturation, self.gain = saturation, gain

    def randomize(self, x):
        b, c = x.shape[:2]
        return {
            "saturation": self.R.uniform(1 - self.saturation, 1 + self.saturation, b),
            "gain": self.R.uniform(1 - self.gain, 1 + self.gain, (b, c)),
        }

    def apply(self, x, params, gen):
        c = x.shape[1]
        weights = torch.tensor(_LUMA if c == 3 else [1 / c] * c, device=x.device)
        grey = (x * weights.view(1, c, *[1] * (x.ndim - 2))).sum(1, keepdim=True)
        gain = torch.as_tensor(params["gain"], dtype=torch.float32, device=x.device)
        out = _scale_intensity(x, _per_image(params["saturation"], x), grey)
        return (out * gain.view(*gain.shape, *[1] * (x.ndim - 2))).clamp(0, 1)
