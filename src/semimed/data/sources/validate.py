"""Checks every source runs at ingest, before anything is written.

Each failed check raises `IngestError` with one line naming the file, row or key and what
was expected; the ingest stage then exits non-zero and its temporary folder is removed, so
no partial output is left behind. Oddities that are legal but worth a look (resampling far
from the native spacing, intensities unlike CT under a CT window) are collected as warnings:
printed by the stage and kept in the manifest.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semimed.config import ConfigError

SPLITS = ("train", "train_labeled", "train_unlabeled", "val", "test")


class IngestError(ConfigError):
    """Bad input data; the message names the file or key and what was expected."""


@dataclass
class Index:
    """What a source reader returns: class names (classification: per target) and records
    (see `semimed.data.sources`), plus warnings for the user and `extra` manifest keys
    (segmentation: the input channels and their names)."""

    classes: dict | list
    records: list[dict]
    warnings: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def require_dir(path: Path, key: str) -> Path:
    if not Path(path).is_dir():
        raise IngestError(f"{key}: folder {str(path)!r} not found")
    return Path(path)


def require_file(path: Path, what: str) -> Path:
    if not Path(path).is_file():
        raise IngestError(f"{path}: file not found ({what})")
    return Path(path)


def read_csv(path: Path, columns: Iterable[str], key: str) -> list[dict]:
    """Rows of CSV `path`; every name in `columns` must be a column (`key` names the param)."""
    require_file(path, key)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        rows = list(reader)
    missing = [c for c in columns if c not in header]
    if missing:
        raise IngestError(
            f"{path}: missing column {missing[0]!r} ({key}); columns are: {', '.join(header)}"
        )
    if not rows:
        raise IngestError(f"{path}: no data rows")
    return rows


def group_of(item_id: str, pattern: str, default: str | None = None) -> str:
    """Patient id of `item_id`: the first group of `pattern`, else `default` or the id."""
    if not pattern:
        return default or item_id
    m = re.search(pattern, item_id)
    if m is None or m.group(1) is None:
        raise IngestError(f"data.group_regex: {pattern!r} does not match id {item_id!r}")
    return m.group(1)


def check_image(path: Path) -> None:
    """A 2D image PIL can decode in full (a truncated PNG/JPEG fails here, not in training)."""
    from PIL import Image

    require_file(path, "listed image")
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as err:
        raise IngestError(f"{path}: unreadable or truncated image ({err})") from None


def load_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """(array, affine, spacing) of a 3D NIfTI, fully decoded (truncated gzip fails here)."""
    import nibabel as nib

    require_file(path, "listed volume")
    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)
    except Exception as err:
        raise IngestError(
            f"{path}: unreadable or corrupt NIfTI ({err.__class__.__name__})"
        ) from None
    if arr.ndim != 3:
        raise IngestError(f"{path}: expected a 3D volume; got shape {tuple(arr.shape)}")
    return arr, img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def check_finite(path: Path, image: np.ndarray, policy: str) -> list[str]:
    """NaN or infinite voxels: refused (`policy` "error"), or a warning that preprocess sets them
    to the window's low end, 0 after scaling ("zero"). Returns the warnings."""
    bad = int(image.size - np.count_nonzero(np.isfinite(image)))
    if not bad:
        return []
    if policy == "error":
        raise IngestError(
            f"{path}: {bad} NaN or infinite voxels; fix the file, or set "
            "segmentation.preprocess.nan_policy: zero to set them to 0 after scaling"
        )
    return [f"{path}: {bad} NaN or infinite voxels set to 0 after scaling (nan_policy: zero)"]


def check_label_values(path: Path, label: np.ndarray, classes: list[str]) -> list[int]:
    """Integer label values within 0..C-1; returns the values present."""
    values = np.unique(label)
    if not np.all(np.mod(values, 1) == 0):  # NaN fails here too
        raise IngestError(f"{path}: label map has non-integer values; expected class indices")
    bad = [int(v) for v in values if v < 0 or v >= len(classes)]
    if bad:
        raise IngestError(
            f"{path}: label value {bad[0]} outside the declared classes 0..{len(classes) - 1} "
            f"({', '.join(classes)})"
        )
    return [int(v) for v in values]


def load_case(paths: list[Path]) -> tuple[list[np.ndarray], np.ndarray, tuple[float, ...]]:
    """A case's input channels (one 3D file each): (arrays, affine, spacing), every channel
    on the first one's grid (the same shape, affine within 1e-3)."""
    first, affine, spacing = load_nifti(paths[0])
    images = [first]
    for path in paths[1:]:
        image, other, _ = load_nifti(path)
        if image.shape != first.shape:
            raise IngestError(
                f"{path}: shape {tuple(image.shape)} differs from channel 0 {paths[0]} "
                f"{tuple(first.shape)} (every input channel must share one voxel grid)"
            )
        if not np.allclose(affine, other, atol=1e-3):
            raise IngestError(
                f"{path}: affine differs from channel 0 {paths[0]} (every input channel must "
                "share one voxel grid)"
            )
        images.append(image)
    return images, affine, spacing


def check_pair(image_paths: list[Path], label_path: Path, classes: list[str]) -> tuple:
    """Input channels and label volume of one shape and affine; returns (images, spacing,
    present classes)."""
    images, affine, spacing = load_case(image_paths)
    label, label_affine, _ = load_nifti(label_path)
    image_path = image_paths[0]
    if images[0].shape != label.shape:
        raise IngestError(
            f"{label_path}: shape {tuple(label.shape)} differs from its image "
            f"{image_path} {tuple(images[0].shape)}"
        )
    if not np.allclose(affine, label_affine, atol=1e-3):
        raise IngestError(
            f"{label_path}: affine differs from its image {image_path} (voxel grids must match)"
        )
    return images, spacing, check_label_values(label_path, label, classes)


def spacing_warnings(path: Path, spacing, target) -> list[str]:
    """Legal but suspicious: resampling by more than 2x."""
    ratio = np.asarray(spacing, dtype=float) / np.asarray(target, dtype=float)
    if np.any(ratio > 2) or np.any(ratio < 0.5):
        return [
            f"{path}: spacing {tuple(round(s, 2) for s in spacing)} mm is far from "
            f"preprocess.spacing {tuple(target)} (resampled by up to {max(ratio.max(), 1 / ratio.min()):.1f}x)"
        ]
    return []


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    return float(np.nanmin(image)), float(np.nanmax(image))  # NaN: see check_finite


def hu_warning(ranges: dict[str, tuple[float, float]], window) -> list[str]:
    """One warning for a dataset whose modality is unknown, under the HU window, when some
    volumes' intensities (path -> (min, max)) do not look like CT in HU."""
    odd = [(p, r) for p, r in ranges.items() if r[0] > -200 or r[1] < 100]
    if not odd:
        return []
    (path, (lo, hi)), more = odd[0], len(odd) - 1
    others = f" (and {more} more of {len(ranges)} volumes)" if more else ""
    return [
        f"{path}: intensities span [{lo:g}, {hi:g}], unlike CT in HU{others}; "
        f"preprocess.window {list(window)} assumes HU and dataset.json names no modality "
        "(add its channel_names, or set preprocess.normalize: zscore for MR)"
    ]


def check_unique_ids(records: list[dict], where: str) -> None:
    first: dict[str, str] = {}
    for rec in records:
        if rec["id"] in first:
            raise IngestError(
                f"{where}: duplicated id {rec['id']!r} ({first[rec['id']]} and {rec['image']}); "
                "ids must be unique"
            )
        first[rec["id"]] = str(rec["image"])


def split_cell(value: str, where: str) -> str:
    """A split column's cell: train, val or test (empty = train)."""
    value = value.strip() or "train"
    if value not in ("train", "val", "test"):
        raise IngestError(f"{where}: split {value!r}; expected train, val or test")
    return value


def check_split_groups(records: list[dict], where: str) -> None:
    """No patient in two of train / val / test of a source's own split."""
    owner: dict[str, tuple[str, str]] = {}
    for rec in records:
        part = rec.get("split")
        if part is None:
            continue
        if part not in SPLITS:
            raise IngestError(
                f"{where}: item {rec['id']!r} has split {part!r}; expected one of {', '.join(SPLITS)}"
            )
        part = "train" if part.startswith("train") else part
        other = owner.setdefault(rec["group"], (part, rec["id"]))
        if other[0] != part:
            raise IngestError(
                f"{where}: patient {rec['group']!r} falls in two splits: {other[1]!r} in "
                f"{other[0]} and {rec['id']!r} in {part}"
            )


def check_targets(classes: dict, targets, source: str) -> None:
    """Every `classification.data.targets` name is a label of the source."""
    for t in targets:
        if t not in classes:
            raise IngestError(
                f"classification.data.targets: {t!r} is not a label of source {source} "
                f"(it has: {', '.join(classes)})"
            )


def sorted_names(values) -> list[str]:
    """Class names in a stable order: numeric when every name is an integer."""
    names = sorted(set(values))
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        names.sort(key=int)
    return names
