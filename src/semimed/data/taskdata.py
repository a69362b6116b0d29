"""A task's preprocessed data and its split, in memory (`TaskData`, `load_task_data`).

Preprocessed data is small enough to live in memory, so items are gathered by index rather
than through a DataLoader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semimed.config import ConfigError, TaskConfig
from semimed.data.intensity import Intensity, from_window
from semimed.tasks import spec


@dataclass
class TaskData:
    """A task's preprocessed data with its split.

    classification: `images` (N, 1, H, W) float32 tensor, `labels` (N,) int64.
    segmentation: `volumes[id] = (image (C, X, Y, Z) float32, label (1, X, Y, Z) uint8)`,
    C input channels, normalised as `intensity` says (`semimed.data.intensity`).
    """

    task: str
    class_names: list[str]
    split: dict
    index: dict  # id -> row (classification)
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    volumes: dict | None = None
    spacing: tuple[float, float, float] | None = None
    # Multi-task classification: every target's name, class names and labels (N, T);
    # `class_names` / `labels` are the primary (first) target's.
    targets: tuple[str, ...] = ()
    task_classes: tuple[list[str], ...] = ()
    all_labels: torch.Tensor | None = None
    # segmentation: the preprocess stage's normalisation and the input channels' names
    intensity: Intensity | None = None
    channel_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        """Classes of the primary target (segmentation: labels incl. background)."""
        return len(self.class_names)

    @property
    def spatial_dims(self) -> int:
        """Spatial axes of a network input: 2 (images) or 3 (volumes (N, C, D, H, W), CT)."""
        return 3 if spec(self.task).dense else self.images.ndim - 2

    @property
    def in_channels(self) -> int:
        """Input channels of the network (1 grayscale, 3 RGB; volumes: one per sequence)."""
        if spec(self.task).dense:
            return self.intensity.channels if self.intensity else 1
        return int(self.images.shape[1])

    @property
    def task_sizes(self) -> tuple[int, ...]:
        """Classes per target: the network's logits are their concatenation."""
        return tuple(len(c) for c in self.task_classes) or (self.num_classes,)

    def arrays(self, ids: list[str], all_tasks: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Classification images (N, 1, H, W) and labels (N,), or (N, T) with `all_tasks`."""
        rows = torch.as_tensor([self.index[i] for i in ids], dtype=torch.long)
        return self.images[rows], (self.all_labels if all_tasks else self.labels)[rows]


def load_task_data(cfg: TaskConfig, processed: Path, splits_path: Path) -> TaskData:
    """Read the preprocess and split outputs; ids in the split must exist in the manifest."""
    processed = Path(processed)
    manifest = json.loads((processed / "manifest.json").read_text())
    split = json.loads(Path(splits_path).read_text())
    known = {r["id"] for r in manifest["records"]}
    for name in ("train_labeled", "train_unlabeled", "val", "test"):
        missing = [i for i in split[name] if i not in known]
        if missing:
            raise ConfigError(f"{splits_path}: {name} lists unknown id {missing[0]!r}")
    if not spec(cfg.task).dense:
        targets = cfg.data.targets
        images = torch.from_numpy(np.load(processed / "images.npy"))
        # -1: unknown label (an unlabeled item: only ever drawn by the unlabeled stream)
        labels = torch.tensor(
            [[_label(r, t) for t in targets] for r in manifest["records"]], dtype=torch.long
        )
        index = {r["id"]: k for k, r in enumerate(manifest["records"])}
        classes = tuple(manifest["classes"][t] for t in targets)
        return TaskData(
            "classification",
            classes[0],
            split,
            index,
            images,
            labels[:, 0].contiguous(),
            targets=tuple(targets),
            task_classes=classes,
            all_labels=labels,
        )
    volumes = {}
    for rec in manifest["records"]:
        image = np.load(processed / f"{rec['id']}_image.npy")
        labeled = rec.get("labeled", True)
        label = np.load(processed / f"{rec['id']}_label.npy") if labeled else None
        volumes[rec["id"]] = (image, label)
    return TaskData(
        "segmentation",
        manifest["classes"],
        split,
        {},
        volumes=volumes,
        spacing=tuple(manifest["spacing"]),
        intensity=(
            Intensity.from_dict(manifest["intensity"], f"{processed / 'manifest.json'}: intensity")
            if "intensity" in manifest
            else from_window(cfg.preprocess.window)
        ),
        channel_names=manifest.get("channel_names"),
    )


def _label(record: dict, target: str) -> int:
    labels = record["labels"]
    return -1 if labels is None or labels.get(target) is None else labels[target]
