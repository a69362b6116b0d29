"""Functional tensor kernels of the batched transforms and the robustness perturbations.

Plain functions on whole batches `(B, C, H, W[, D])` on the batch's device, no MONAI classes:
the caller draws the per-image parameters and passes them in (one number per image, or one
for all), and any noise comes from an explicit `torch.Generator` (`_draw_boxes` draws from the
`numpy.random.RandomState` it is given). The strong-view operations (`transforms.ops`)
and the fixed-strength corruptions (`transforms.perturb`) run this same code.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FAN_HALF_ANGLE = 0.7  # rad; half opening of the echo sector (synthetic_echo draws 32-45 deg)


def _per_image(v, x: torch.Tensor) -> torch.Tensor:
    """Numbers (B,) -> float32 tensor (B, 1, ..., 1) that broadcasts against x, on its device."""
    t = torch.as_tensor(np.asarray(v), dtype=torch.float32, device=x.device)
    return t.view(-1, *([1] * (x.ndim - 1)))


def _add_noise(x: torch.Tensor, sigma, gen: torch.Generator) -> torch.Tensor:
    """x + sigma * N(0, 1), the noise drawn from `gen` (on its own device) in x's shape."""
    noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)
    return x + noise * sigma


def _centre_of(x: torch.Tensor) -> torch.Tensor:
    """Mean of each image over channels and space, (B, 1, ..., 1)."""
    return x.mean(tuple(range(1, x.ndim)), keepdim=True)


def _scale_intensity(x: torch.Tensor, factor, centre) -> torch.Tensor:
    """centre + factor * (x - centre), clipped to [0, 1]: gain (centre 0) or contrast."""
    return (centre + factor * (x - centre)).clamp(0, 1)


def _blur_per_sample(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image (sigma 0 = identity).

    Along each axis, a batched product with one banded (n, n) matrix per image that folds in
    the replicated border (one batched product, not a grouped conv with a kernel per image).
    Kernels are cut at 2 sigma.
    """
    radius = max(1, int(math.ceil(2 * sigmas.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device)
    if np.all(sigmas == sigmas[0]):  # one matrix for all (perturb: whole test sets at once)
        sigmas = sigmas[:1]
    sig = torch.as_tensor(np.maximum(sigmas, 1e-3), dtype=torch.float32, device=x.device)
    kernels = torch.exp(-0.5 * (offsets[None] / sig[:, None]) ** 2)
    kernels = kernels / kernels.sum(1, keepdim=True)  # (B or 1, K); sigma~0 -> delta
    k, taps = kernels.shape
    out = x
    for axis in range(2, x.ndim):
        n = x.shape[axis]
        cols = (torch.arange(n, device=x.device)[:, None] + offsets).clamp(0, n - 1)
        mat = torch.zeros(k, n, n, device=x.device, dtype=x.dtype)
        mat.scatter_add_(
            2, cols.expand(k, n, taps), kernels[:, None].to(x.dtype).expand(k, n, taps)
        )
        moved = out.movedim(axis, -1)
        flat = moved.reshape(x.shape[0], -1, n) @ mat.transpose(1, 2)
        out = flat.view(moved.shape).movedim(-1, axis)
    return out


def _draw_boxes(R: np.random.RandomState, shape, size: tuple[float, float]) -> dict:
    """One box per image: sides a fraction U(size) of each image side, placed uniformly.
    Returns {"start", "side"}: int arrays (B, spatial dims)."""
    b, spatial = shape[0], np.array(shape[2:])
    side = np.maximum(1, np.round(R.uniform(*size, (b, len(spatial))) * spatial)).astype(int)
    start = np.floor(R.uniform(size=side.shape) * (spatial - side + 1)).astype(int)
    return {"start": start, "side": side}


def _box_mask(x: torch.Tensor, start: np.ndarray, side: np.ndarray) -> torch.Tensor:
    """(B, 1, *spatial) float mask, 1 inside each image's box."""
    mask = torch.ones((), device=x.device)
    for axis, n in enumerate(x.shape[2:]):
        coord = torch.arange(n, device=x.device)
        lo = torch.as_tensor(start[:, axis], device=x.device)[:, None]
        inside = (coord >= lo) & (
            coord < lo + torch.as_tensor(side[:, axis], device=x.device)[:, None]
        )
        view = [len(start), 1] + [1] * (x.ndim - 2)
        view[2 + axis] = n
        mask = mask * inside.view(view)
    return mask


_SHIFT_BANKS: dict = {}
_BANK = 1024  # permutations per window side


def _shift_bank(sides: tuple[int, ...], width: int, device) -> torch.Tensor:
    """Flat offsets to apply fixed random permutations inside square windows.

    Row 1 + i * _BANK + j holds, for the j-th of _BANK fixed random permutations of a window
    of side sides[i], the flat offset from each pixel (row-major slot) to the pixel it takes
    its value from, in an image `width` px wide; row 0 (no move) is zero. Shape
    (1 + len(sides) * _BANK, max(sides) ** 2), int64. Made once per key: windows pick a row,
    so no sort runs per batch.
    """
    key = (sides, width, str(device))
    if key not in _SHIFT_BANKS:
        gen = torch.Generator().manual_seed(0)
        bank = torch.zeros(1 + len(sides) * _BANK, max(sides) ** 2, dtype=torch.long)
        for i, side in enumerate(sides):
            slot = torch.arange(side * side)
            source = torch.rand(_BANK, side * side, generator=gen).argsort(1)
            rows = slice(1 + i * _BANK, 1 + (i + 1) * _BANK)
            shift = (source // side - slot // side) * width + (source % side - slot % side)
            bank[rows, : side * side] = shift
        _SHIFT_BANKS[key] = bank.to(device)
    return _SHIFT_BANKS[key]


def _window_axis(n: int, offset: torch.Tensor, win: torch.Tensor, count: int):
    """Along one axis of n px, for grids of windows of side win (B, 1) starting offset (B,)
    px before the image start: each pixel's window index (`count` for windows cut by the
    border) and its slot inside the window, both (B, n)."""
    pos = torch.arange(n, device=win.device) + offset[:, None]  # grid coordinate
    tile, inner = pos // win, pos % win
    start = pos - inner - offset[:, None]  # window start in image coordinates
    whole = (start >= 0) & (start + win <= n)
    return torch.where(whole, tile, count), inner


def _shuffle_windows(x, window, offset, fraction, gen: torch.Generator) -> torch.Tensor:
    """Permute the pixels inside square windows of each image (B, C, H, W).

    Image b is tiled by windows of side window[b] px whose grid starts offset[b] = (dy, dx)
    px up-left of the image corner; a fraction[b] of the windows that lie wholly inside the
    image (drawn from `gen`) get a random permutation, shared by the channels. Exact: each
    window keeps its pixel multiset.
    """
    b, c, h, w = x.shape
    dev = x.device
    sides = tuple(np.unique(window).tolist())
    win = torch.as_tensor(window, device=dev)[:, None]
    off = torch.as_tensor(offset, device=dev)
    count = (max(h, w) + max(sides)) // min(sides) + 1  # > windows per axis of any image
    ty, iy = _window_axis(h, off[:, 0], win, count)
    tx, ix = _window_axis(w, off[:, 1], win, count)
    # Per window: a row of the shift bank (0 = not shuffled). One uniform decides both
    # whether (below `fraction`) and which permutation (u / fraction).
    u = torch.rand(b, (count + 1) ** 2, generator=gen, device=gen.device).to(dev)
    frac = _per_image(fraction, u)
    kind = torch.as_tensor(np.searchsorted(sides, window), device=dev)[:, None]
    pick = (u / frac.clamp_min(1e-9) * _BANK).long().clamp(max=_BANK - 1)
    row = torch.where(u < frac, 1 + kind * _BANK + pick, 0).view(b, count + 1, count + 1)
    row[:, count] = row[:, :, count] = 0  # windows cut by the border stay
    tile = ty[:, :, None] * (count + 1) + tx[:, None, :]  # (B, H, W)
    slot = iy[:, :, None] * win[:, :, None] + ix[:, None, :]
    bank = _shift_bank(sides, w, dev)
    shift = bank.take(
        row.view(b, -1).gather(1, tile.view(b, -1)) * bank.shape[1] + slot.view(b, -1)
    )
    index = torch.arange(h * w, device=dev) + shift  # (B, H * W) source pixel of each pixel
    flat = x.reshape(b, c, h * w)
    return flat.gather(2, index[:, None].expand(b, c, h * w)).view_as(x)


_CUBE_BANKS: dict = {}


def _cube_shift_bank(side: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """`_shift_bank` for cubic windows of side `side` in volumes of shape `spatial`: row 0 is
    zero (no move), row 1 + j the flat offsets of the j-th fixed random permutation; shape
    (1 + _BANK, side ** len(spatial)), int64, on the CPU."""
    key = (side, spatial)
    if key not in _CUBE_BANKS:
        k = len(spatial)
        strides = torch.tensor([math.prod(spatial[a + 1 :]) for a in range(k)])
        slots = torch.cartesian_prod(*[torch.arange(side)] * k).view(side**k, k)
        offset = (slots * strides).sum(-1)  # flat offset of each slot from the window start
        gen = torch.Generator().manual_seed(0)
        source = torch.rand(_BANK, side**k, generator=gen).argsort(1)
        still = torch.zeros(1, side**k, dtype=torch.long)
        _CUBE_BANKS[key] = torch.cat([still, offset[source] - offset])
    return _CUBE_BANKS[key]


def _shuffle_windows_nd(x, window, offset, fraction, gen: torch.Generator) -> torch.Tensor:
    """`_shuffle_windows` for any number of spatial axes (volumes (B, C, D, H, W)): cubic
    windows of side window[b] on a grid offset by offset[b] (B, spatial dims); a fraction[b]
    of the whole windows (drawn from `gen`) get one of _BANK fixed random permutations,
    shared by the channels. Images are processed in groups of equal window side.

    As in 2D, each voxel costs two gathers: its (window, slot) key picks the flat offset to
    its source voxel from a per-window table of bank rows, then its value is fetched.
    """
    b, c, *spatial = x.shape
    dev, k, size = x.device, len(spatial), math.prod(spatial)
    out = x.clone()
    for side in np.unique(window).tolist():
        idx = torch.as_tensor(np.flatnonzero(window == side), device=dev)
        n_img, slots = len(idx), side**k
        count = max(spatial) // side + 2  # > windows per axis; index `count`: cut by the border
        windows = (count + 1) ** k
        win = torch.full((n_img, 1), side, device=dev)
        off = torch.as_tensor(offset[idx.cpu().numpy()], device=dev)
        key = torch.zeros([n_img] + [1] * k, dtype=torch.long, device=dev)
        for a, n in enumerate(spatial):  # key = window * slots + slot, summed over the axes
            tile, inner = _window_axis(n, off[:, a], win, count)
            view = [n_img] + [1] * k
            view[1 + a] = n
            part = tile * (count + 1) ** (k - 1 - a) * slots + inner * side ** (k - 1 - a)
            key = key + part.view(view)
        tiles = torch.cartesian_prod(*[torch.arange(count + 1)] * k).view(windows, k)
        # As in 2D, one uniform per window decides whether (below `fraction`) and which of
        # _BANK fixed permutations it gets.
        u = torch.rand(n_img, windows, generator=gen, device=gen.device).cpu()
        frac = torch.as_tensor(fraction[idx.cpu().numpy()], dtype=torch.float32)[:, None]
        moved = (u < frac) & (tiles < count).all(-1)  # (n_img, windows), whole windows only
        pick = (u / frac.clamp_min(1e-9) * _BANK).long().clamp(max=_BANK - 1)
        row = torch.where(moved, 1 + pick, 0)
        shift = _cube_shift_bank(side, tuple(spatial))[row].to(dev)  # (n_img, windows, slots)
        index = torch.arange(size, device=dev) + shift.view(n_img, -1).gather(
            1, key.expand(n_img, *spatial).reshape(n_img, -1)
        )
        sub = x[idx].reshape(n_img, c, size)
        out[idx] = sub.gather(2, index[:, None].expand(n_img, c, size)).view(n_img, c, *spatial)
    return out


def _sector_gain(x, centre, half_width, start, residual) -> torch.Tensor:
    """(B, 1, H, W) gain that attenuates to `residual` the angular sector centre +- half_width
    (rad, 0 = straight down) of a fan with its apex at the top centre, from depth `start`
    (fraction of the width) down; 1 elsewhere. Edges ramp over 0.05 rad / 0.05 width."""
    h, w = x.shape[-2:]
    depth = ((torch.arange(h, device=x.device) + 0.5) / w).view(h, 1)
    lateral = ((torch.arange(w, device=x.device) + 0.5) / w - 0.5).view(1, w)
    angle = torch.atan2(lateral, depth)
    radius = torch.hypot(lateral, depth)
    across = (_per_image(half_width, x) - (angle - _per_image(centre, x)).abs()) / 0.05
    along = (radius - _per_image(start, x)) / 0.05 + 1
    inside = across.clamp(0, 1) * along.clamp(0, 1)
    return 1 - (1 - _per_image(residual, x)) * inside
