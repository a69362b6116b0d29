"""Weak and strong augmentations, and robustness perturbations, as batched MONAI dictionary
transforms.

Semi-supervised methods need two views of every unlabeled image on every step. MONAI's
per-sample random transforms cost 1.4 ms (affine) to 2.8 ms (affine + intensity) per 64x64
image on a 2-core CPU -- about 0.3 s per FixMatch step at batch 32 with mu=2, more than the
network itself. These transforms keep MONAI's interface (`MapTransform` on fixed keys,
`Randomizable` with `set_random_state`) but act on whole batches `(B, C, H, W[, D])` on the
training device, so each image still gets its own random parameters at a fraction of the
cost (~3 ms for 96 images).

Randomness comes from the transform's own `numpy.random.RandomState` (`self.R`), seeded by
the training loop, so runs are reproducible.

Classification views read the input kind from the batch at each call (`input_kind`), so the
same `weak_augment` / `strong_augment` serve every data set; an image's channels always get
the same geometry, and intensity changes are drawn per image:

| input | weak view | strong view: the weak warp (own draw), then `BatchRandSomeOfd` of |
| --- | --- | --- |
| grey 2D (B, 1, H, W): echo, grey MedMNIST | rotate 15 deg, shift 8 %, zoom 10 %; no flips | echo ops: noise in-painting, local shuffle, cutout, signal dropout, brightness, blur |
| colour 2D (B, C>1, H, W): ISIC, Derma/BloodMNIST | as grey (`flip=0.5` for orientation-free images) | colour ops: the echo ops less signal dropout, plus colour jitter (saturation, per-channel gain) |
| volume (B, C, D, H, W): MedMNIST 3D | as grey, rotating in the (H, W) plane only | volume ops: in-painting, local shuffle and cutout with cubic boxes, contrast, brightness, blur, Gaussian noise |

Echo strong view (seed 000, the lightweight TMED-2 SSL model): noise in-painting, local pixel
shuffle, cutout, ultrasound signal dropout, brightness and Gaussian blur, of which each image
gets a random subset (`BatchRandSomeOfd`). Each operation draws its parameters (`randomize`)
apart from applying them (`apply`); `perturb` calls the same code at a fixed strength for the
robustness sweep. The grey 2D views draw exactly what they drew before colour and volume
inputs were supported.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import Compose, MapTransform, Randomizable

FAN_HALF_ANGLE = 0.7  # rad; half opening of the echo sector (synthetic_echo draws 32-45 deg)
ECHO_ROTATE = math.radians(15)  # max rotation of echo views (seed 000: RandomRotation(15))
MAX_SEED = 2**31 - 1


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


class BatchRandIntensityd(Randomizable, MapTransform):
    """Per-image random gamma contrast, brightness shift, Gaussian noise and blur.

    Each perturbation is applied to each image with probability `prob`; intensities are
    assumed roughly in [0, 1] (the preprocess stage scales them so) and are not clipped.

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
        self.gamma, self.brightness, self.noise = gamma, brightness, noise
        self.blur, self.prob = blur, prob

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
            x = x.clamp_min(0) ** _per_image(p["gamma"], x) + _per_image(p["shift"], x)
            gen = torch.Generator(device=x.device).manual_seed(int(p["seed"]))
            x = _add_noise(x, _per_image(p["noise"], x), gen)
            if self.blur > 0 and (p["blur"] > 0).any():
                x = _blur_per_sample(x, p["blur"])
            d[key] = x.to(d[key].dtype)
        return d


def _blur_per_sample(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur with a different sigma per image (sigma 0 = identity).

    Along each axis, a batched product with one banded (n, n) matrix per image that folds in
    the replicated border (on CPU ~5x faster than a grouped conv with one kernel per image).
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


class _BatchRandOpd(Randomizable, MapTransform):
    """Base of the strong-view operations: each image of a batch (B, C, H, W[, D]) is changed
    with probability `prob`, with its own parameters (shared by its channels).

    Subclasses draw parameters for every image (`randomize`: arrays whose first axis is B,
    drawn whether or not the image is selected, so the draws do not depend on the selection)
    and apply them deterministically (`apply`, on the helpers that `perturb` uses too).
    `transform(x, on)` lets `BatchRandSomeOfd` choose the images instead of `prob`.
    """

    def __init__(self, keys: Sequence[Hashable], prob: float):
        MapTransform.__init__(self, keys)
        self.prob = prob

    def randomize(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: dict, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, x: torch.Tensor, on: np.ndarray | None = None) -> torch.Tensor:
        """Change the images of x where `on` (B,) is true (default: each with `prob`)."""
        if on is None:
            on = self.R.uniform(size=x.shape[0]) < self.prob
        params = self.randomize(x)
        gen = torch.Generator(device=x.device).manual_seed(int(self.R.randint(MAX_SEED)))
        idx = np.flatnonzero(on)
        if idx.size == 0:
            return x
        if idx.size == len(on):
            return self.apply(x.float(), params, gen).to(x.dtype)
        sel = torch.as_tensor(idx, device=x.device)
        out = x.clone()
        sub = {k: v[idx] for k, v in params.items()}
        out[sel] = self.apply(x[sel].float(), sub, gen).to(x.dtype)
        return out

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


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
    """Noise in-painting (seed 000): one random box per image is replaced by Gaussian noise
    with the box's own mean and standard deviation, clipped to [0, 1], so the patch keeps its
    brightness and texture energy but loses its structure.

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
    """Local pixel shuffling (Models Genesis, Zhou et al., MICCAI 2019; seed 000): each image
    is tiled by square windows of a random side, at a random grid offset, and the pixels of a
    `fraction` of the windows are permuted. Coarse anatomy survives; texture and thin edges
    (leaflets) are scrambled within a few pixels.

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
    [0, 1], so the black background outside the fan stays black (seed 000: ColorJitter
    brightness 0.5). Shapes: (B, C, H, W[, D])."""

    def __init__(self, keys: Sequence[Hashable], brightness: float = 0.5, prob: float = 0.5):
        super().__init__(keys, prob)
        self.brightness = brightness

    def randomize(self, x):
        return {"factor": self.R.uniform(1 - self.brightness, 1 + self.brightness, x.shape[0])}

    def apply(self, x, params, gen):
        return _scale_intensity(x, _per_image(params["factor"], x), 0.0)


class BatchRandGaussianBlurd(_BatchRandOpd):
    """Gaussian blur with sigma ~ U(sigma) pixels per image (seed 000: sigma 0.1-2 on 112 px
    frames). Replicate padding: the image mean is kept up to border effects.
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


def _structure_ops(keys) -> list[_BatchRandOpd]:
    """The operations that hide or scramble structure, shared by every input kind."""
    return [
        BatchRandNoiseInpaintd(keys, size=(0.2, 0.4)),
        BatchRandLocalShuffled(keys, window=(2, 4), fraction=0.5),
        BatchRandCutoutd(keys, size=0.3),
    ]


def echo_strong_ops(keys=("image",)) -> list[_BatchRandOpd]:
    """Seed 000's echo operations in its order, with our defaults for 48-112 px frames."""
    return _structure_ops(keys) + [
        BatchRandSignalDropoutd(keys, width=(0.1, 0.3), depth=(0.0, 0.5), residual=(0.0, 0.5)),
        BatchRandBrightnessd(keys, brightness=0.5),
        BatchRandGaussianBlurd(keys, sigma=(0.1, 1.5)),
    ]


def colour_strong_ops(keys=("image",)) -> list[_BatchRandOpd]:
    """Colour 2D images (dermoscopy, blood smears): the echo operations with colour jitter
    (as RandAugment's colour operations) in place of the ultrasound signal dropout."""
    return _structure_ops(keys) + [
        BatchRandColourd(keys, saturation=0.3, gain=0.1),
        BatchRandBrightnessd(keys, brightness=0.5),
        BatchRandGaussianBlurd(keys, sigma=(0.1, 1.5)),
    ]


def volume_strong_ops(keys=("image",)) -> list[_BatchRandOpd]:
    """CT/MR volumes: the echo operations in 3D (cubic boxes and windows) less the signal
    dropout, plus contrast (window width) and Gaussian noise; a softer gain and blur than
    echo's, as CT intensities are calibrated (Hounsfield units) and 28^3 volumes are small."""
    return _structure_ops(keys) + [
        BatchRandContrastd(keys, contrast=0.4),
        BatchRandBrightnessd(keys, brightness=0.3),
        BatchRandGaussianBlurd(keys, sigma=(0.1, 1.0)),
        BatchRandGaussianNoised(keys, noise=0.1),
    ]


def input_kind(x: torch.Tensor) -> str:
    """ "grey2d" (B, 1, H, W), "colour2d" (B, C > 1, H, W) or "volume" (B, C, D, H, W)."""
    if x.ndim == 5:
        return "volume"
    if x.ndim == 4:
        return "grey2d" if x.shape[1] == 1 else "colour2d"
    raise ValueError(f"expected a batch (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}")


# Strong-view operations per input kind (`input_kind`).
STRONG_OPS = {
    "grey2d": echo_strong_ops,
    "colour2d": colour_strong_ops,
    "volume": volume_strong_ops,
}


class BatchByInputKindd(Randomizable, MapTransform):
    """Apply `by_kind[input_kind(x)]`, x the first key's batch, so one transform serves echo
    frames, colour images and volumes; the kind is read from the tensor at each call.

    Every child gets the seed this transform gets (`set_random_state`), so a child draws
    exactly what it would draw in place of this transform: the echo view's random stream is
    the one it had before colour and volume inputs came.
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


def _some_of(ops: list[_BatchRandOpd], keys) -> BatchRandSomeOfd:
    return BatchRandSomeOfd(keys, ops, num_ops=(1, len(ops)), prob=0.5)


def _classification_warp(keys, label_keys=(), flip: float = 0.0) -> BatchRandAffined:
    return BatchRandAffined(
        keys, rotate=ECHO_ROTATE, translate=0.08, scale=0.1, label_keys=label_keys, flip=flip
    )


def weak_augment(task: str, keys=("image",), label_keys=(), flip: float = 0.0) -> Compose:
    """Weak view.

    Classification, every input kind: rotation up to 15 deg (seed 000), shift up to 8 % and
    zoom +-10 %, one warp per image shared by its channels; volumes (B, C, D, H, W) rotate in
    the (H, W) plane only (patients lie on the table: roll, not tilt). No flips by default:
    in echo, upside-down flips put the apex at the bottom, and left-right flips swap the sides
    of the screen on which each chamber is shown -- view-specific under the usual display
    convention, which the classifier should be able to rely on (the synthetic set mirrors 25 %
    of studies, as some labs do; `BatchRandAffined(hflip=...)` turns flips on there); in CT/MR,
    left-right is anatomy (OrganMNIST3D has left and right kidney, femur and lung classes) and
    flips make bodies that do not exist. `flip` (probability per axis) is for images with no
    canonical orientation: dermoscopy (ISIC), blood smears (BloodMNIST), 0.5 there.
    CT patches (segmentation): none beyond the random crop, so that labels stay aligned."""
    if task == "classification":
        return Compose([_classification_warp(keys, label_keys, flip)])
    return Compose([])


def strong_augment(task: str, keys=("image",), flip: float = 0.0) -> Compose:
    """Strong view. Classification: an independent weak-view warp, then, as in seed 000's
    code, each image with probability 0.5 gets k ~ U{1..n} distinct operations of the set for
    its input kind (`STRONG_OPS`), each with its own parameters (REFERENCES paraphrases this
    as "1..n of them, each with p=0.5"): echo operations for grey frames, colour operations
    for colour images, volume operations for volumes. CT segmentation: intensity changes and
    noise only (spatially aligned with the weak view)."""
    if task == "classification":
        some_of = {kind: _some_of(make(keys), keys) for kind, make in STRONG_OPS.items()}
        return Compose([_classification_warp(keys, flip=flip), BatchByInputKindd(keys, some_of)])
    return Compose([BatchRandIntensityd(keys, gamma=0.3, brightness=0.1, noise=0.1, prob=0.8)])


def seed_transform(transform: Compose, seed: int) -> Compose:
    """Seed every random transform of a Compose (MONAI's `set_random_state`)."""
    return transform.set_random_state(seed=seed)


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
    """Deterministic corruption of echo frames for the robustness sweep (seed 000's
    robustness test: accuracy under increasing perturbation).

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
