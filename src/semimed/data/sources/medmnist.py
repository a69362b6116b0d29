"""MedMNIST v2 (Yang et al., Scientific Data 2023): one `.npz` per dataset, 2D or 3D.

`data.medmnist.file` (relative to `data.root`) holds `{train,val,test}_images` and
`{train,val,test}_labels` as the `medmnist` package saves them: images uint8 (N, H, W)
grayscale, (N, H, W, 3) RGB, or (N, D, H, W) volumes for the 3D variants; labels (N, 1).
Multi-label sets (ChestMNIST: (N, 14)) are refused: the pipeline learns one class per image
and target. Target `label`; classes "0".."K-1" (the npz stores no names: see the dataset's
INFO in the medmnist package). Records point into the npz (`array`, `row`): nothing is
copied. MedMNIST ships no patient ids, so each image is its own group: use
`split.official: true` (the release's own split) to avoid patients straddling splits.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from semimed.data.sources.validate import Index, IngestError, check_targets, require_file

PARTS = ("train", "val", "test")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a MedMNIST npz, fully read (a corrupt archive fails here)."""
    require_file(path, "classification.data.medmnist.file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise IngestError(f"{path}: unreadable .npz ({err.__class__.__name__}: {err})") from None
    for part in PARTS:
        for kind in ("images", "labels"):
            if f"{part}_{kind}" not in arrays:
                raise IngestError(f"{path}: missing array '{part}_{kind}' (MedMNIST layout)")
    return arrays


def layout(images: np.ndarray, path: Path) -> str:
    """'2d', '2d-rgb' or '3d' from the image array's shape."""
    if images.ndim == 3:
        return "2d"
    if images.ndim == 4:
        return "2d-rgb" if images.shape[-1] == 3 else "3d"
    raise IngestError(
        f"{path}: images of shape {images.shape}; expected (N,H,W), (N,H,W,3) or (N,D,H,W)"
    )


def read(cfg, root: Path) -> Index:
    check_targets({"label": None}, cfg.data.targets, "medmnist")
    path = root / cfg.data.medmnist.file
    arrays = load_npz(path)
    kinds = {layout(arrays[f"{p}_images"], path) for p in PARTS}
    if len(kinds) != 1:
        raise IngestError(
            f"{path}: train/val/test images differ in layout ({', '.join(sorted(kinds))})"
        )
    records, top = [], 0
    for part in PARTS:
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        labels = labels.reshape(len(labels), -1)
        if labels.shape[1] != 1:
            raise IngestError(
                f"{path}: {part}_labels has {labels.shape[1]} columns (multi-label); "
                "expected one class per image"
            )
        if len(labels) != len(images):
            raise IngestError(f"{path}: {part}_images and {part}_labels differ in length")
        if labels.size and (labels.min() < 0 or np.any(labels % 1)):
            raise IngestError(f"{path}: {part}_labels must be class indices >= 0")
        top = max(top, int(labels.max(initial=0)))
        for i, y in enumerate(labels[:, 0].astype(int).tolist()):
            rec_id = f"{part}_{i:06d}"
            rec = {"id": rec_id, "image": str(path), "array": f"{part}_images", "row": i}
            rec.update(group=rec_id, labels={"label": str(y)})
            if cfg.split.official:
                rec["split"] = part
            records.append(rec)
    return Index({"label": [str(k) for k in range(top + 1)]}, records)
