"""Segmentation scored in each case's ORIGINAL space: the label file's own grid and spacing.

Training and sliding-window inference run on the preprocessed grid (RAS, resampled to
`<task>.preprocess.spacing` mm, cropped to the body); scores there depend on that choice of
spacing, and the nearest-neighbour resampling of the labels changes the structures measured.
A prediction is therefore also mapped back to the grid of the case's original NIfTI
(`semimed.data.original_space.labels_in_original_space`: the preprocessing chain inverted) and scored
against the ORIGINAL label file with its own voxel spacing (mm) -- the numbers a clinician
or another paper gets from the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from semimed.config import ConfigError
from semimed.data.original_space import labels_in_original_space
from semimed.evaluate.segmentation import SegmentationScorer


def original_files(ingested: Path) -> dict[str, tuple[str, str | None]]:
    """``{case id: (image path, label path or None)}`` from the ingest stage's manifest."""
    path = Path(ingested) / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{path}: missing; run the ingest stage first")
    records = json.loads(path.read_text())["records"]
    return {r["id"]: (r["image"], r["label"]) for r in records}


def read_label_file(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI label map -> ((X, Y, Z) int64 in the file's voxel order, voxel size in mm).

    The spacing is the length of each voxel axis in the affine (what MONAI's reader and
    the inverse of the chain use), so it holds for oblique affines too."""
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:  # (X, Y, Z, 1) files
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D label map, got shape {list(data.shape)}")
    spacing = tuple(float(s) for s in nib.affines.voxel_sizes(img.affine)[:3])
    return np.rint(data).astype(np.int64), spacing


class OriginalSpaceScorer:
    """A `SegmentationScorer` fed with predictions mapped back to the original label files.

    `files`: `original_files` of the task; `spacing` (mm) and `window` (the normalisation:
    an `Intensity` or an HU window): the preprocess stage's settings, needed to redo the
    chain whose inverse maps the prediction back.
    Cases whose label file is unknown or absent (image-only) are skipped and counted.
    """

    def __init__(self, class_names: list[str], files: dict, spacing, window) -> None:
        self.scorer = SegmentationScorer(class_names)
        self.files, self.spacing, self.window = files, spacing, window
        self.skipped: list[str] = []

    def add(self, pred: np.ndarray, case: str) -> None:
        """Score `pred` (X', Y', Z'), the label map of `case` on the preprocessed grid."""
        if case not in self.files:
            raise ConfigError(f"case {case!r} is processed but missing from the ingest manifest")
        image, label = self.files[case]
        if label is None or not Path(label).is_file():
            self.skipped.append(case)
            return
        mapped = labels_in_original_space(pred, image, self.spacing, self.window)
        truth, spacing = read_label_file(label)
        self.scorer.add(mapped, truth, spacing, case=case)

    def aggregate(self) -> dict:
        """The scorer's metrics plus ``n_skipped_original`` (cases without a label file)."""
        return self.scorer.aggregate() | {"n_skipped_original": len(self.skipped)}
