"""Labeled and unlabeled training streams with weak/strong views, and the held-out splits.

Preprocessed data is small enough to live in memory (the default echo set is 11 MB, the
CT set ~30 MB), so items are gathered by index rather than through a DataLoader.
`train_batches` yields the `Batch` dict of CONTRACTS / DESIGN:

* ``x_lb``  (B, 1, ...) labeled images, weakly augmented (echo) or cropped patches (CT)
* ``y_lb``  (B,) class indices, or (B, 1, X, Y, Z) label patches
* ``x_ulb_<v>`` (B*mu, 1, ...) for each view ``v`` in the method's ``views`` (default "w",
  "s"): independent weak ("w...") or strong ("s...") draws of the same unlabeled images, and
  ``i_ulb`` (B*mu,) their positions in the unlabeled pool -- only for methods with
  ``uses_unlabeled``. The pool is the unlabeled split, or every train image for methods with
  ``unlabeled_pool = "all"`` (self-supervised pretraining).

Sampling is driven by one `torch.Generator` and the augmentations' own RandomStates, all
seeded from (seed, start step): a run resumed at step k draws what a fresh run would from k.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    RandCropByLabelClassesd,
    RandSpatialCropd,
    SpatialPadd,
)

from semimed.config import ConfigError, TaskConfig
from semimed.transforms import seed_transform, strong_augment, weak_augment


@dataclass
class TaskData:
    """A task's preprocessed data with its split.

    classification: `images` (N, 1, H, W) float32 tensor, `labels` (N,) int64.
    segmentation: `volumes[id] = (image (1, X, Y, Z) float32, label (1, X, Y, Z) uint8)`.
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

    @property
    def num_classes(self) -> int:
        """Classes of the primary target (segmentation: labels incl. background)."""
        return len(self.class_names)

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
    if cfg.task == "classification":
        targets = cfg.data.targets
        images = torch.from_numpy(np.load(processed / "images.npy"))
        labels = torch.tensor([[r["labels"][t] for t in targets] for r in manifest["records"]])
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
        label = np.load(processed / f"{rec['id']}_label.npy")
        volumes[rec["id"]] = (image, label)
    return TaskData(
        "segmentation",
        manifest["classes"],
        split,
        {},
        volumes=volumes,
        spacing=tuple(manifest["spacing"]),
    )


def _index_stream(n: int, size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of `size` positions in [0, n): reshuffled epochs, no item twice in
    a batch unless the pool is smaller than the batch."""
    buf = torch.empty(0, dtype=torch.long)
    while True:
        while len(buf) < size:
            buf = torch.cat([buf, torch.randperm(n, generator=gen)])
        yield buf[:size]
        buf = buf[size:]


def unlabeled_pool(data: TaskData, method_cls) -> list[str]:
    """Ids of the unlabeled stream of `method_cls` (``i_ulb`` indexes this list)."""
    if not method_cls.uses_unlabeled:
        return []
    if method_cls.unlabeled_pool == "all":
        return data.split["train_labeled"] + data.split["train_unlabeled"]
    return data.split["train_unlabeled"]


def labeled_ids(data: TaskData, method_cls) -> list[str]:
    """Ids of the labeled stream of `method_cls` (every train label for upper bounds)."""
    ids = data.split["train_labeled"]
    if method_cls.labeled_pool == "all":
        ids = ids + data.split["train_unlabeled"]
    return ids


def labeled_class_counts(data: TaskData, method_cls) -> list[float]:
    """Labels per class of `method_cls`'s labeled pool: voxels (segmentation, counted on the
    preprocessed volumes) or images of the primary target (classification)."""
    ids = labeled_ids(data, method_cls)
    c = data.num_classes
    if data.task == "classification":
        labels = data.arrays(ids)[1].reshape(-1).long()
        return torch.bincount(labels, minlength=c).float().tolist()
    counts = np.zeros(c, dtype=np.float64)
    for i in ids:
        counts += np.bincount(np.asarray(data.volumes[i][1]).reshape(-1), minlength=c)[:c]
    return counts.tolist()


def train_batches(
    data: TaskData, cfg: TaskConfig, method_cls, seed: int, start_step: int, device
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless training batches for `method_cls` (see the module docstring)."""
    lab_ids = labeled_ids(data, method_cls)
    ulb_ids = unlabeled_pool(data, method_cls)
    if method_cls.uses_unlabeled and not ulb_ids:
        raise ConfigError(
            f"{cfg.task}: method {method_cls.name!r} needs unlabeled data but the unlabeled "
            "pool is empty (split.labeled_percent is 100?)"
        )
    run_seed = seed * 1_000_003 + start_step
    gen = torch.Generator().manual_seed(run_seed)
    b, mu = cfg.train.batch_size, cfg.train.unlabeled_ratio
    lab_stream = _index_stream(len(lab_ids), b, gen)
    ulb_stream = _index_stream(len(ulb_ids), b * mu, gen) if ulb_ids else None
    weak = seed_transform(weak_augment(data.task), run_seed % 2**31)
    # One transform per view, each with its own random stream: "w" and "w2" are independent.
    views = {
        v: seed_transform(
            weak_augment(data.task) if v.startswith("w") else strong_augment(data.task),
            (run_seed + 1 + k) % 2**31,
        )
        for k, v in enumerate(method_cls.views if ulb_ids else ())
    }

    if data.task == "classification":
        x_all, y_all = data.arrays(lab_ids, all_tasks=len(data.task_sizes) > 1)
        u_all = data.arrays(ulb_ids)[0] if ulb_ids else None
        while True:
            pos = next(lab_stream)
            batch = {
                "x_lb": weak({"image": x_all[pos].to(device)})["image"],
                "y_lb": y_all[pos].to(device),
            }
            if u_all is not None:
                upos = next(ulb_stream)
                batch.update(_views(views, u_all[upos].to(device), upos.to(device)))
            yield batch

    patch = tuple(cfg.train.patch_size)
    lab_crop = _label_crop(patch, data.num_classes, run_seed)
    ulb_crop = _random_crop(patch, run_seed + 2)
    lab_items = [_padded_item(data.volumes[i], patch, data.num_classes) for i in lab_ids]
    ulb_items = [_padded_item(data.volumes[i], patch) for i in ulb_ids]
    while True:
        crops = [lab_crop(lab_items[k])[0] for k in next(lab_stream).tolist()]
        batch = {
            "x_lb": _stack([c["image"] for c in crops], device),
            "y_lb": _stack([c["label"] for c in crops], device).long(),
        }
        if ulb_items:
            upos = next(ulb_stream)
            u = _stack([ulb_crop(ulb_items[k])["image"] for k in upos.tolist()], device)
            batch.update(_views(views, u, upos.to(device)))
        yield batch


def _views(views: dict, images: torch.Tensor, positions: torch.Tensor) -> dict:
    """``x_ulb_<v>`` for every view transform, and ``i_ulb`` (pool positions)."""
    out = {f"x_ulb_{v}": t({"image": images})["image"] for v, t in views.items()}
    out["i_ulb"] = positions
    return out


def _stack(arrays, device) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(a)) for a in arrays]).to(device)


def _padded_item(volume, patch, num_classes: int | None = None) -> dict:
    """Pad a volume to at least the patch size once; for labeled volumes also precompute the
    voxel indices of each class, so each crop does not rescan the label map."""
    image, label = volume
    if num_classes is None:
        return SpatialPadd("image", spatial_size=patch)({"image": image})
    item = SpatialPadd(["image", "label"], spatial_size=patch)({"image": image, "label": label})
    return ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_cls")(item)


def _label_crop(patch, num_classes: int, seed: int) -> Compose:
    """Crop centred on a voxel of a uniformly drawn class: small organs
    are seen as often as the liver (MONAI `RandCropByLabelClassesd`, equal ratios)."""
    keys = ["image", "label"]
    return seed_transform(
        Compose(
            [
                RandCropByLabelClassesd(
                    keys,
                    label_key="label",
                    spatial_size=patch,
                    num_classes=num_classes,
                    indices_key="label_cls",
                    warn=False,
                ),
            ]
        ),
        seed % 2**31,
    )


def _random_crop(patch, seed: int) -> Compose:
    keys = ["image"]
    return seed_transform(
        Compose([RandSpatialCropd(keys, roi_size=patch, random_size=False)]),
        seed % 2**31,
    )
