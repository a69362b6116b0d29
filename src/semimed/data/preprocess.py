"""MONAI preprocessing chains: ingested files -> arrays on disk + a manifest (preprocess stage).

Classification writes one `images.npy` of shape (N, C, S, S) float32 in [0, 1] (C =
`preprocess.channels`; 3D MedMNIST: (N, 1, S, S, S)) -- a single file, not N tiny
DVC-tracked files -- and `manifest.json` whose `records` follow the row order of
`images.npy`, with integer labels per target (null = unknown; a null record = unlabeled).

Segmentation writes `<id>_image.npy` (C, X, Y, Z) float32 (C input channels; [0, 1] under
the HU window, z-scored otherwise: `semimed.data.intensity`) and `<id>_label.npy`
(1, X, Y, Z) uint8 per labeled case, resampled to the target spacing in RAS orientation and
cropped (to the body, or to the non-zero region), plus `manifest.json` with the spacing (mm),
the resolved normalisation (`intensity`, with any dataset statistics), the channel names,
and the shape and present classes of every case (`labeled: false`: image only).

Intensity rules (docs/data.md "Intensities"): 8-bit images (and PIL's 8-bit conversions of
palette, RGBA, ... images) map 0..255 to [0, 1], so absolute brightness is kept; 16-bit and
32-bit integer and float images (16-bit PNG, float TIFF) map their own min..max to [0, 1], as
their real range is unknown (12-bit data in 16-bit files is common); a constant such image
becomes 0. NaN / infinite values never reach the arrays: segmentation images follow
`preprocess.nan_policy` (ingest refuses them, or they become the window's low end, 0);
any other non-finite output stops preprocessing with the file's name. A constant image is
kept (8-bit: its value / 255; wider: 0); a volume whose crop is empty (no voxel above the
window's low end, or none non-zero) is refused. Images smaller than
`image_size` are resized up like any other; volumes smaller than the training patch are
padded by the loader (`semimed.data.loaders`) and by sliding-window inference.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from monai.data import PILReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)

from semimed.config import ConfigError, TaskConfig
from semimed.data.intensity import (
    Intensity,
    empty_crop_reason,
    foreground_stats,
    from_window,
    resolve_mode,
)
from semimed.data.intensity_steps import fill_step, normalise_steps
from semimed.io import atomic_dir, write_json_atomic
from semimed.tasks import spec

# PIL modes of 16-bit and 32-bit integer and float images (one band each)
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _own_range(im):
    """A wide-mode PIL image -> mode "F" with its own min..max mapped to 0..255 (the 8-bit
    scale the chain then maps to [0, 1]); a constant image -> 0; NaN stays NaN."""
    from PIL import Image

    x = np.asarray(im, dtype=np.float64)
    lo, hi = x.min(), x.max()
    if np.isfinite(lo) and np.isfinite(hi):
        x = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return Image.fromarray(x.astype(np.float32))


def _grayscale(im):
    return _own_range(im) if im.mode in WIDE_MODES else im.convert("L")


def _rgb(im):
    return _own_range(im) if im.mode in WIDE_MODES else im.convert("RGB")


def _channel_first(channels: int):
    """(H, W) or (H, W, 3) -> (`channels`, H, W) float32 (a wide-mode image stays one band)."""
    to_channels = _to_channels(channels)

    def convert(x):
        x = np.asarray(x, dtype=np.float32)
        return to_channels(x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0))

    return convert


def classification_chain(image_size: int, channels: int = 1) -> Compose:
    """Image file (PNG, JPEG, TIFF, ...) -> (C, S, S) float32 in [0, 1], C = `channels` (PIL
    converts colour to grayscale or grayscale to RGB; 16-bit and float images are scaled by
    their own range, see the module docstring). `reverse_indexing=False` keeps rows as rows."""
    reader = PILReader(converter=_grayscale if channels == 1 else _rgb, reverse_indexing=False)
    return Compose(
        [
            LoadImaged("image", reader=reader, image_only=True),
            Lambdad("image", _channel_first(channels)),
            *_scale_and_resize((image_size, image_size)),
        ]
    )


def _scale_and_resize(size) -> list:
    return [
        ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0.0, b_max=1.0, clip=True),
        Resized("image", spatial_size=size, mode="area"),
        EnsureTyped("image", data_type="numpy", dtype=np.float32, track_meta=False),
    ]


def array_chain(image_size: int, channels: int, layout: str) -> Compose:
    """A MedMNIST uint8 array -> (C, S, S) or (1, S, S, S) float32 in [0, 1]."""
    if layout == "3d":
        return Compose(_scale_and_resize((image_size,) * 3))
    return Compose(
        [Lambdad("image", _to_channels(channels)), *_scale_and_resize((image_size,) * 2)]
    )


def _to_channels(channels: int):
    """(C, H, W) array with C = 1 or 3 -> `channels` (ITU-R 601 luma, as PIL's "L")."""

    def convert(x):
        if x.shape[0] == channels:
            return x
        if channels == 3:
            return np.repeat(x, 3, axis=0)
        return (x[:1] * 0.299 + x[1:2] * 0.587 + x[2:3] * 0.114).astype(np.float32)

    return convert


def segmentation_chain(
    spacing, intensity, labeled: bool = True, fill_nonfinite: bool = False
) -> Compose:
    """NIfTI image (one file, or one per input channel) + label -> channel first, RAS,
    resampled to `spacing` mm, normalised and cropped by `intensity` (an `Intensity`, or an
    HU window (low, high): the ct_window rule; see `semimed.data.intensity`).
    `fill_nonfinite` (nan_policy zero): ct_window: NaN and -inf -> the window's low end, +inf
    -> its high end; the z-score rules: see `fill_step`; before resampling spreads them."""
    spec = intensity if isinstance(intensity, Intensity) else from_window(intensity)
    keys = ["image", "label"] if labeled else ["image"]
    modes = ("bilinear", "nearest")[: len(keys)]
    fill, late_fill = [], []
    if fill_nonfinite and spec.mode == "ct_window":
        lo, hi = float(spec.window[0]), float(spec.window[1])
        fill = [Lambdad("image", partial(torch.nan_to_num, nan=lo, posinf=hi, neginf=lo))]
    elif fill_nonfinite:
        late_fill = [fill_step(spec)]
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            *fill,
            EnsureChannelFirstd(keys),
            *late_fill,
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=spacing, mode=modes),
            *normalise_steps(spec, keys),
            EnsureTyped(keys, data_type="numpy", track_meta=False),
        ]
    )


def _load_manifest(in_dir: Path) -> dict:
    import json

    path = in_dir / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; run the ingest stage first")
    return json.loads(path.read_text())


def preprocess(cfg: TaskConfig, in_dir: Path, out_dir: Path) -> dict:
    """Run the task's MONAI chain over every ingested record; write `out_dir` atomically."""
    manifest = _load_manifest(Path(in_dir))
    with atomic_dir(out_dir) as tmp:
        if spec(cfg.task).dense:
            out = _preprocess_segmentation(cfg, manifest, tmp)
        else:
            out = _preprocess_classification(cfg, manifest, tmp)
        write_json_atomic(tmp / "manifest.json", out)
    return out


def _preprocess_classification(cfg: TaskConfig, manifest: dict, tmp: Path) -> dict:
    p = cfg.preprocess
    chain = classification_chain(p.image_size, p.channels)
    arrays, images, records = {}, [], []
    for rec in manifest["records"]:
        if "array" in rec:  # MedMNIST: a row of an npz array, channel first
            if rec["image"] not in arrays:
                with np.load(rec["image"]) as z:
                    arrays[rec["image"]] = {k: z[k] for k in z.files}
            x = arrays[rec["image"]][rec["array"]][rec["row"]]
            layout = "2d" if x.ndim == 2 else ("2d-rgb" if x.shape[-1] == 3 else "3d")
            if layout == "3d" and p.channels != 1:
                raise ConfigError(
                    f"classification.preprocess.channels: 3D volumes need 1; got {p.channels}"
                )
            x = np.moveaxis(x, -1, 0) if layout == "2d-rgb" else x[None]
            images.append(
                array_chain(p.image_size, p.channels, layout)({"image": x.astype(np.float32)})[
                    "image"
                ]
            )
        else:
            images.append(chain({"image": rec["image"]})["image"])
        _require_finite(images[-1], rec["image"])
        labels = rec["labels"] and {
            t: None if name is None else manifest["classes"][t].index(name)
            for t, name in rec["labels"].items()
        }
        out = {"id": rec["id"], "group": rec["group"], "labels": labels}
        records.append(out | ({"split": rec["split"]} if "split" in rec else {}))
    np.save(tmp / "images.npy", np.stack(images).astype(np.float32))
    return {"task": "classification", "classes": manifest["classes"], "records": records}


def _require_finite(image: np.ndarray, path) -> None:
    """Never train on NaN: a non-finite preprocessed value stops the stage, naming the file."""
    if not np.isfinite(image).all():
        raise ConfigError(f"{path}: NaN or infinite values after preprocessing; fix the file")


def dataset_intensity(cfg: TaskConfig, manifest: dict) -> Intensity:
    """The ingested dataset's normalisation: `preprocess.normalize` resolved against its
    channel names, with the percentile rule's foreground statistics."""
    p = cfg.preprocess
    channels = int(manifest.get("channels", 1))
    mode, _ = resolve_mode(p.normalize, manifest.get("channel_names"))  # ingest warned
    if mode == "ct_window":
        return from_window(p.window, channels)
    if mode == "zscore":
        return Intensity("zscore", channels)
    return foreground_stats(_raw_pairs(manifest), channels, p.nan_policy == "zero")


def _raw_pairs(manifest: dict):
    """(image (C, X, Y, Z), label (1, X, Y, Z)) of every labeled case, on its file's grid."""
    keys = ["image", "label"]
    load = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)])
    for rec in manifest["records"]:
        if rec["label"] is not None:
            out = load({"image": rec["image"], "label": rec["label"]})
            yield out["image"].numpy(), out["label"].numpy()


def _preprocess_segmentation(cfg: TaskConfig, manifest: dict, tmp: Path) -> dict:
    p = cfg.preprocess
    spacing, zero = tuple(p.spacing), p.nan_policy == "zero"
    intensity = dataset_intensity(cfg, manifest)
    chains = {flag: segmentation_chain(spacing, intensity, flag, zero) for flag in (True, False)}
    num_classes = len(manifest["classes"])
    records = []
    for rec in manifest["records"]:
        labeled = rec["label"] is not None
        out = chains[labeled]({"image": rec["image"], "label": rec["label"]})
        image = out["image"].astype(np.float32)
        _require_finite(image, _first(rec["image"]))
        if 0 in image.shape:  # e.g. a blank (all-air) or non-CT volume under a CT window
            raise ConfigError(f"{_first(rec['image'])}: {empty_crop_reason(intensity)}")
        np.save(tmp / f"{rec['id']}_image.npy", image)
        present = []
        if labeled:
            label = np.rint(out["label"]).astype(np.uint8)
            if label.max() >= num_classes:
                raise ConfigError(
                    f"{rec['label']}: label value {int(label.max())} outside the declared "
                    f"classes 0..{num_classes - 1}"
                )
            np.save(tmp / f"{rec['id']}_label.npy", label)
            present = [int(c) for c in np.unique(label)]  # classes in this volume
        out = {
            "id": rec["id"],
            "group": rec["group"],
            "shape": list(image.shape[1:]),
            "present": present,
            "labeled": labeled,
        }
        records.append(out | ({"split": rec["split"]} if "split" in rec else {}))
    return {
        "task": "segmentation",
        "classes": manifest["classes"],
        "spacing": list(spacing),
        "channel_names": manifest.get("channel_names"),
        "intensity": intensity.to_dict(),  # what predict applies to new volumes too
        "records": records,
    }


def _first(image) -> str:
    """A record's image: its path, or its first channel's."""
    return str(image[0] if isinstance(image, list) else image)
