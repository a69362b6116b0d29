"""The preprocessing of a NIfTI volume and its inverse: from the preprocessed grid back to
the file's own grid (shape, affine, orientation).

`preprocess_volume` runs training's `segmentation_chain` (image only) and keeps MONAI's record
of the spatial steps applied (reorientation, resampling, body crop); `invert` undoes them for
any array on the preprocessed grid (`Compose.inverse`), and `labels_in_original_space` does
so for a label map (nearest neighbour). Prediction writes its label maps in the input's grid
with it; evaluation scores predictions against the original label files with it.
"""

from __future__ import annotations

import functools
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, Lambdad
from monai.transforms.utils import convert_applied_interp_mode
from monai.utils import TraceKeys

from semimed.config import ConfigError
from semimed.data.intensity import Intensity, empty_crop_reason, from_window
from semimed.data.preprocess import segmentation_chain


def error_cause(err: BaseException) -> str:
    """The innermost error of a chain (MONAI wraps reader errors) as one short phrase."""
    while err.__cause__ or err.__context__:
        err = err.__cause__ or err.__context__
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{err.__class__.__name__}: {text}"[:200] if text else err.__class__.__name__


def _finite(image):
    if not torch.isfinite(torch.as_tensor(image)).all():
        raise ValueError("NaN or infinite voxels (segmentation.preprocess.nan_policy: error)")
    return image


def _spec(intensity) -> Intensity:
    """An `Intensity`, its dict (a manifest's, a card's) or an HU window -> an `Intensity`."""
    if isinstance(intensity, Intensity):
        return intensity
    if isinstance(intensity, dict):
        return Intensity.from_dict(intensity)
    return from_window(intensity)


def _files(path) -> str | list[str]:
    """One volume's file, or its input channels' files (a list)."""
    return [str(p) for p in path] if isinstance(path, list | tuple) else str(path)


@functools.lru_cache(maxsize=4)
def volume_chain(spacing: tuple[float, ...], intensity, fill_nonfinite: bool = False) -> Compose:
    """Training's `segmentation_chain` (image only) without its final conversion to NumPy,
    so its output keeps MONAI's record of the spatial steps applied (for the inverse).
    `intensity`: an `Intensity` or an HU window (hashable: a tuple)."""
    chain = segmentation_chain(spacing, intensity, labeled=False, fill_nonfinite=fill_nonfinite)
    if not fill_nonfinite:  # never run a network on NaN: refuse right after loading
        chain = Compose([chain.transforms[0], Lambdad("image", _finite), *chain.transforms[1:]])
    return Compose([t for t in chain.transforms if not isinstance(t, EnsureTyped)])


def preprocess_volume(path, spacing, intensity, fill_nonfinite: bool = False) -> MetaTensor:
    """A NIfTI volume (a path, or a list of one path per input channel) -> (C, X', Y', Z')
    float32, RAS, `spacing` mm, normalised and cropped by `intensity` (an `Intensity`, its
    dict or an HU window): exactly what training saw, plus its metadata and applied
    operations. `fill_nonfinite`: the `nan_policy: zero` fill of training's chain."""
    spec = _spec(intensity)
    chain = volume_chain(tuple(float(s) for s in spacing), spec, fill_nonfinite)
    first = path[0] if isinstance(path, list | tuple) else path
    try:
        image = chain({"image": _files(path)})["image"]
    except Exception as err:
        raise ConfigError(f"{first}: cannot preprocess ({error_cause(err)})") from None
    if min(image.shape[1:]) == 0:
        if spec.mode == "ct_window":
            raise ConfigError(f"{first}: no voxel above the intensity window {list(spec.window)}")
        raise ConfigError(f"{first}: {empty_crop_reason(spec)}")
    return image


def volume_geometry(path, spacing, window) -> MetaTensor:
    """What mapping labels back to `path`'s grid needs of the volume -- its preprocessed
    shape, its metadata and MONAI's record of the applied operations -- without its voxels
    (a broadcast zero). Cached per file version (path, modification time, size): evaluation
    maps every run's predictions of the same test volumes, and the chain (load, reorient,
    resample, crop) would be redone for nothing. Only the geometry is used, so non-finite
    intensities are filled, not refused. `path`: a file or a list of one per input channel;
    `window`: the normalisation (an `Intensity`, its dict or an HU window), whose crop the
    geometry repeats."""
    files = _files(path)
    stamps = []
    for f in files if isinstance(files, list) else [files]:
        try:
            st = Path(f).stat()
        except OSError as err:
            raise ConfigError(f"{f}: cannot preprocess ({err.strerror})") from None
        stamps.append((st.st_mtime_ns, st.st_size))
    key = tuple(files) if isinstance(files, list) else files
    spacing = tuple(float(s) for s in spacing)
    return _geometry(key, tuple(stamps), spacing, _spec(window))


@functools.lru_cache(maxsize=1024)
def _geometry(path, _stamps, spacing, intensity) -> MetaTensor:
    files = list(path) if isinstance(path, tuple) else path
    full = preprocess_volume(files, spacing, intensity, fill_nonfinite=True)
    ref = MetaTensor(torch.zeros(()).expand(full.shape), meta=full.meta)
    ref.applied_operations = full.applied_operations
    return ref


@functools.lru_cache(maxsize=1)
def _spatial_steps() -> Compose:
    """The chain's invertible spatial steps (reorient, resample, crop; settings unused by
    the inverse), without the `Lambdad`s a chain may or may not hold (the non-finite check
    or fill), whose records lie below the spatial ones and are left alone."""
    chain = volume_chain((1.0, 1.0, 1.0), (0.0, 1.0))
    return Compose([t for t in chain.transforms if not isinstance(t, Lambdad)])


def _untraced(ops):
    """`ops` with every transform id (nested ones too, e.g. a crop's padding) set to
    `TraceKeys.NONE`, so the inverse matches them in last-in-first-out order."""
    if isinstance(ops, list):
        return [_untraced(op) for op in ops]
    if isinstance(ops, dict):
        out = {k: _untraced(v) for k, v in ops.items()}
        return out | ({TraceKeys.ID: TraceKeys.NONE} if TraceKeys.ID in ops else {})
    return ops


def invert(data: torch.Tensor, reference: MetaTensor, nearest: bool) -> np.ndarray:
    """(C, X', Y', Z') on `reference`'s preprocessed grid -> (C, X, Y, Z) on its file's grid.

    MONAI's record of the applied operations holds every size and affine the inverse needs;
    its transform ids are cleared (`_untraced`) so any instance of the chain inverts it."""
    ops = _untraced(deepcopy(reference.applied_operations))
    if nearest:  # labels: nearest neighbour instead of the image's bilinear resampling
        ops = convert_applied_interp_mode(ops, mode="nearest", align_corners=None)
    pred = MetaTensor(data.detach().float().cpu(), meta=deepcopy(reference.meta))
    pred.applied_operations = ops
    out = _spatial_steps().inverse({"image": pred})["image"]
    return np.asarray(out.detach().cpu().numpy())


def labels_in_original_space(
    labels, image: MetaTensor | str | Path, spacing=None, window=None
) -> np.ndarray:
    """A label map in the preprocessed grid -> (X, Y, Z) uint8 in the image file's own grid
    (its shape, affine and orientation), by inverting the chain (nearest neighbour).

    `labels`: (X', Y', Z') or (1, X', Y', Z') integers, on the grid `segmentation_chain
    (spacing, window)` makes of `image`, e.g. a `predict_volume` result on a preprocessed
    volume. `image`: the `preprocess_volume` output (carries the applied operations), or the
    path of the original NIfTI (or its channels' paths), whose `volume_geometry` with
    `spacing` (mm) and `window` (the normalisation: an `Intensity`, its dict or an HU window)
    recovers them -- what evaluation needs to score in the label files' own space (the
    labeled chain crops and resamples labels on the image's grid, so it is the same).
    Voxels outside the body crop are background (0)."""
    if not isinstance(image, MetaTensor):
        if spacing is None or window is None:
            raise ValueError("labels_in_original_space: a path needs spacing and window")
        image = volume_geometry(image, spacing, window)
    labels = torch.as_tensor(np.asarray(labels))
    labels = labels[None] if labels.ndim == 3 else labels
    if tuple(labels.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(
            f"labels_in_original_space: labels {list(labels.shape[1:])} are not on the "
            f"preprocessed grid {list(image.shape[1:])}"
        )
    return np.rint(invert(labels, image, nearest=True)[0]).astype(np.uint8)
