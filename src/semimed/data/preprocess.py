"""MONAI preprocessing chains: ingested files -> arrays on disk + a manifest (preprocess stage).

Classification writes one `images.npy` of shape (N, 1, S, S) float32 in [0, 1] (a single
file, not N tiny DVC-tracked files) and `manifest.json` whose `records` follow the row order
of `images.npy`, with integer labels per task.

Segmentation writes `<id>_image.npy` (1, X, Y, Z) float32 in [0, 1] and `<id>_label.npy`
(1, X, Y, Z) uint8 per case, resampled to the target spacing in RAS orientation and cropped
to the body, plus `manifest.json` with the spacing (mm) and shape of every case.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import PILReader
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)

from semimed.config import ConfigError, TaskConfig
from semimed.io import atomic_dir, write_json_atomic


def classification_chain(image_size: int) -> Compose:
    """PNG frame -> (1, S, S) float32 in [0, 1]. `reverse_indexing=False` keeps rows as rows."""
    return Compose(
        [
            LoadImaged("image", reader=PILReader(reverse_indexing=False), image_only=True),
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            ScaleIntensityRanged("image", a_min=0, a_max=255, b_min=0.0, b_max=1.0, clip=True),
            Resized("image", spatial_size=(image_size, image_size), mode="area"),
            EnsureTyped("image", data_type="numpy", dtype=np.float32, track_meta=False),
        ]
    )


def segmentation_chain(spacing, window) -> Compose:
    """NIfTI image + label -> RAS, resampled to `spacing` mm, HU window -> [0, 1], body crop."""
    keys = ["image", "label"]
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            Spacingd(keys, pixdim=spacing, mode=("bilinear", "nearest")),
            ScaleIntensityRanged(
                "image", a_min=window[0], a_max=window[1], b_min=0.0, b_max=1.0, clip=True
            ),
            # Air is below the window (0 after scaling); crop to the body with a small margin.
            CropForegroundd(keys, source_key="image", margin=2, allow_smaller=True),
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
        if cfg.task == "classification":
            out = _preprocess_classification(cfg, manifest, tmp)
        else:
            out = _preprocess_segmentation(cfg, manifest, tmp)
        write_json_atomic(tmp / "manifest.json", out)
    return out


def _preprocess_classification(cfg: TaskConfig, manifest: dict, tmp: Path) -> dict:
    chain = classification_chain(cfg.preprocess.image_size)
    images, records = [], []
    for rec in manifest["records"]:
        images.append(chain({"image": rec["image"]})["image"])
        labels = {t: manifest["classes"][t].index(name) for t, name in rec["labels"].items()}
        records.append({"id": rec["id"], "group": rec["group"], "labels": labels})
    np.save(tmp / "images.npy", np.stack(images).astype(np.float32))
    return {"task": "classification", "classes": manifest["classes"], "records": records}


def _preprocess_segmentation(cfg: TaskConfig, manifest: dict, tmp: Path) -> dict:
    spacing = tuple(cfg.preprocess.spacing)
    chain = segmentation_chain(spacing, cfg.preprocess.window)
    num_classes = len(manifest["classes"])
    records = []
    for rec in manifest["records"]:
        out = chain({"image": rec["image"], "label": rec["label"]})
        image, label = out["image"].astype(np.float32), np.rint(out["label"]).astype(np.uint8)
        if label.max() >= num_classes:
            raise ConfigError(
                f"{rec['label']}: label value {int(label.max())} outside the declared classes "
                f"0..{num_classes - 1}"
            )
        np.save(tmp / f"{rec['id']}_image.npy", image)
        np.save(tmp / f"{rec['id']}_label.npy", label)
        records.append(
            {
                "id": rec["id"],
                "group": rec["group"],
                "shape": list(image.shape[1:]),
                "present": [int(c) for c in np.unique(label)],  # classes in this volume
            }
        )
    return {
        "task": "segmentation",
        "classes": manifest["classes"],
        "spacing": list(spacing),
        "records": records,
    }
