"""The MONAI steps of each intensity rule of `semimed.data.intensity`, on channel-first,
resampled images: the rule's normalisation and its crop, and the `nan_policy: zero` fill."""

from __future__ import annotations

import torch
from monai.transforms import (
    CropForegroundd,
    MapTransform,
    NormalizeIntensityd,
    ScaleIntensityRanged,
)

from semimed.data.intensity import Intensity


def _nonzero(x):
    return x != 0


class PerChanneld(MapTransform):
    """Clip (`clip` per channel (low, high)) or fill non-finite voxels (`fill` per channel)
    of channel-first images. Not invertible on purpose: it records no operation, so the
    chain's inverse sees only its spatial steps (`semimed.data.original_space.invert`)."""

    def __init__(self, keys, clip=(), fill=()):
        super().__init__(keys)
        self.clip, self.fill = tuple(clip), tuple(fill)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            for c, v in enumerate(self.fill):
                x[c] = torch.nan_to_num(x[c], nan=v, posinf=v, neginf=v)
            for c, (lo, hi) in enumerate(self.clip):
                x[c] = x[c].clamp(lo, hi)
            d[key] = x
        return d


def fill_step(spec: Intensity) -> PerChanneld:
    """nan_policy zero for the z-score rules, on channel-first images: non-finite voxels
    become 0 (zscore: background, kept 0) or the channel's mean (percentile: 0 after scaling)."""
    values = spec.mean if spec.mode == "percentile" else (0.0,) * spec.channels
    return PerChanneld("image", fill=values)


def normalise_steps(spec: Intensity, keys) -> list:
    """The rule's intensity steps and its crop (on channel-first, resampled images)."""
    if spec.mode == "ct_window":
        lo, hi = spec.window
        return [
            ScaleIntensityRanged("image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
            # Air is below the window (0 after scaling); crop to the body with a small margin.
            CropForegroundd(keys, source_key="image", margin=2, allow_smaller=True),
        ]
    crop = CropForegroundd(
        keys, source_key="image", select_fn=_nonzero, margin=2, allow_smaller=True
    )
    if spec.mode == "zscore":
        return [crop, NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    return [
        crop,
        PerChanneld("image", clip=spec.clip),
        NormalizeIntensityd("image", subtrahend=spec.mean, divisor=spec.std, channel_wise=True),
    ]
