"""Robustness perturbations: deterministic corruptions of echo frames at a fixed strength
(`perturb`, one of `PERTURBATIONS`) for the robustness sweep, on the same kernels
(`transforms.kernels`) as the strong-view operations.
"""

from __future__ import annotations

import numpy as np
import torch

from semimed.transforms.kernels import (
    FAN_HALF_ANGLE,
    _add_noise,
    _blur_per_sample,
    _centre_of,
    _scale_intensity,
    _sector_gain,
)


def _centred_dropout(x, s, gen):
    """A black sector covering a fraction 0.5 * s of the fan opening, from the apex, centred
    per image at U(-0.5, 0.5) * FAN_HALF_ANGLE (inside the fan; nested as s grows)."""
    centre = (torch.rand(x.shape[0], generator=gen).numpy() - 0.5) * FAN_HALF_ANGLE
    zeros = np.zeros(x.shape[0])
    half_width = np.full(x.shape[0], 0.5 * s * FAN_HALF_ANGLE)
    return x * _sector_gain(x, centre, half_width, zeros, zeros)


# kind -> f(images, strength s in (0, 1], CPU generator); the same internals as the views.
_PERTURB = {
    "noise": lambda x, s, gen: _add_noise(x, 0.3 * s, gen).clamp(0, 1),  # sigma 0.3 s
    "blur": lambda x, s, gen: _blur_per_sample(x, np.full(len(x), 3.0 * s)),  # sigma 3 s px
    "contrast": lambda x, s, gen: _scale_intensity(x, 1 - 0.8 * s, _centre_of(x)),
    "dropout": _centred_dropout,
}
PERTURBATIONS = tuple(_PERTURB)


def perturb(images: torch.Tensor, kind: str, strength: float, seed: int = 0) -> torch.Tensor:
    """Deterministic corruption of echo frames for the robustness sweep (the robustness test
    of the lightweight echo SSL model (TMED-2 view/AS): accuracy under rising perturbation).

    Strength 0 returns the images unchanged, 1 is severe:
        noise:    additive Gaussian noise, sigma = 0.3 * strength, clipped to [0, 1];
        blur:     Gaussian blur, sigma = 3 * strength px;
        contrast: x -> m + (1 - 0.8 * strength) * (x - m), m the image mean, clipped;
        dropout:  a black sector from the apex covering 0.5 * strength of the fan opening.
    Random parts (noise, sector centres) come from a CPU generator seeded with `seed`, so a
    batch is perturbed alike on every device, and the same pattern grows with strength.

    Args:
        images: (B, 1, H, W) in [0, 1], any device and float dtype.
    Returns: (B, 1, H, W), same device and dtype.
    """
    if kind not in _PERTURB:
        raise ValueError(f"perturb: kind must be one of {PERTURBATIONS}, got {kind!r}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"perturb: strength must be in [0, 1], got {strength}")
    if strength == 0:
        return images.clone()
    gen = torch.Generator().manual_seed(seed)
    return _PERTURB[kind](images.float(), float(strength), gen).to(images.dtype)
