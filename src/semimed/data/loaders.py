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
seeded from the run's seed. `TrainStream.state_dict()` holds all of them (and the rest of the
current epochs), so a run resumed from a checkpoint draws exactly what the uninterrupted run
would. Under DDP every process draws the same global batch and keeps its own contiguous share
(`rank` of `world`): two processes with half a batch each see what one process sees.
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
    Randomizable,
    RandSpatialCropd,
    SpatialPadd,
    Transform,
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
    def spatial_dims(self) -> int:
        """Spatial axes of a network input: 2 (images) or 3 (volumes (N, C, D, H, W), CT)."""
        return self.images.ndim - 2 if self.task == "classification" else 3

    @property
    def in_channels(self) -> int:
        """Input channels of the network (1 grayscale, 3 RGB; CT volumes have 1)."""
        return int(self.images.shape[1]) if self.task == "classification" else 1

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
    )


def _label(record: dict, target: str) -> int:
    labels = record["labels"]
    return -1 if labels is None or labels.get(target) is None else labels[target]


class _IndexStream:
    """Endless batches of `size` positions in [0, n): reshuffled epochs, no item twice in
    a batch unless the pool is smaller than the batch. `buf` is the rest of the epoch."""

    def __init__(self, n: int, size: int, gen: torch.Generator):
        self.n, self.size, self.gen = n, size, gen
        self.buf = torch.empty(0, dtype=torch.long)

    def __next__(self) -> torch.Tensor:
        while len(self.buf) < self.size:
            self.buf = torch.cat([self.buf, torch.randperm(self.n, generator=self.gen)])
        out, self.buf = self.buf[: self.size], self.buf[self.size :]
        return out


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
    if method_cls.labeled_pool == "all":  # items without labels stay out
        no_label = set(data.split.get("unlabeled_only", ()))
        ids = ids + [i for i in data.split["train_unlabeled"] if i not in no_label]
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


class TrainStream:
    """Endless training batches for `method_cls` (see the module docstring).

    `rank` / `world`: this process's share of every batch under DDP; `cfg.train.batch_size`
    is the global batch and must divide by `world`. Iterate with `next(stream)`.
    """

    def __init__(
        self,
        data: TaskData,
        cfg: TaskConfig,
        method_cls,
        seed: int,
        device,
        rank: int = 0,
        world: int = 1,
    ):
        lab_ids = labeled_ids(data, method_cls)
        ulb_ids = unlabeled_pool(data, method_cls)
        if method_cls.uses_unlabeled and not ulb_ids:
            raise ConfigError(
                f"{cfg.task}: method {method_cls.name!r} needs unlabeled data but the unlabeled "
                "pool is empty (split.labeled_percent is 100?)"
            )
        self.task, self.device, self.rank, self.world = data.task, device, rank, world
        run_seed = seed * 1_000_003
        self.gen = torch.Generator().manual_seed(run_seed)
        b, mu = cfg.train.batch_size, cfg.train.unlabeled_ratio
        self.lab_stream = _IndexStream(len(lab_ids), b, self.gen)
        self.ulb_stream = _IndexStream(len(ulb_ids), b * mu, self.gen) if ulb_ids else None
        flip = cfg.train.flip if data.task == "classification" else 0.0
        self.weak = seed_transform(weak_augment(data.task, flip=flip), run_seed % 2**31)
        # One transform per view, each with its own random stream: "w" and "w2" are independent.
        self.views = {
            v: seed_transform(
                weak_augment(data.task, flip=flip)
                if v.startswith("w")
                else strong_augment(data.task, flip=flip),
                (run_seed + 1 + k) % 2**31,
            )
            for k, v in enumerate(method_cls.views if ulb_ids else ())
        }
        if data.task == "classification":
            self.x, self.y = data.arrays(lab_ids, all_tasks=len(data.task_sizes) > 1)
            self.u = data.arrays(ulb_ids)[0] if ulb_ids else None
            self.crops = ()
            return
        patch = tuple(cfg.train.patch_size)
        self.crops = (
            _label_crop(patch, data.num_classes, run_seed),
            _random_crop(patch, run_seed + 2),
        )
        self.lab_items = [_padded_item(data.volumes[i], patch, data.num_classes) for i in lab_ids]
        self.ulb_items = [_padded_item(data.volumes[i], patch) for i in ulb_ids]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self._classification() if self.task == "classification" else self._segmentation()
        if self.world == 1:
            return batch
        # the whole global batch was drawn and augmented: keep this rank's contiguous share
        r, w = self.rank, self.world
        return {k: v[r * (len(v) // w) : (r + 1) * (len(v) // w)] for k, v in batch.items()}

    def _classification(self) -> dict[str, torch.Tensor]:
        pos = next(self.lab_stream)
        batch = {
            "x_lb": self.weak({"image": self.x[pos].to(self.device)})["image"],
            "y_lb": self.y[pos].to(self.device),
        }
        if self.u is not None:
            upos = next(self.ulb_stream)
            batch.update(_views(self.views, self.u[upos].to(self.device), upos.to(self.device)))
        return batch

    def _segmentation(self) -> dict[str, torch.Tensor]:
        lab_crop, ulb_crop = self.crops
        crops = [lab_crop(self.lab_items[k])[0] for k in next(self.lab_stream).tolist()]
        batch = {
            "x_lb": _stack([c["image"] for c in crops], self.device),
            "y_lb": _stack([c["label"] for c in crops], self.device).long(),
        }
        if self.ulb_items:
            upos = next(self.ulb_stream)
            u = _stack([ulb_crop(self.ulb_items[k])["image"] for k in upos.tolist()], self.device)
            batch.update(_views(self.views, u, upos.to(self.device)))
        return batch

    def _random_parts(self) -> list[Randomizable]:
        """Every Randomizable of the stream's transforms (nested ones too), in a fixed order."""
        found: dict[int, Randomizable] = {}

        def walk(obj) -> None:
            if id(obj) in found or not isinstance(obj, Transform):
                return
            if isinstance(obj, Randomizable):
                found[id(obj)] = obj
            for v in vars(obj).values():
                if isinstance(v, dict):
                    v = list(v.values())
                for child in v if isinstance(v, list | tuple) else (v,):
                    walk(child)

        for t in (self.weak, *self.views.values(), *self.crops):
            walk(t)
        return list(found.values())

    def state_dict(self) -> dict:
        """Every random state the stream draws from, as tensors and numbers (a checkpoint
        loadable with ``torch.load(weights_only=True)``)."""
        streams = [s for s in (self.lab_stream, self.ulb_stream) if s is not None]
        return {
            "generator": self.gen.get_state(),
            "epochs": [s.buf.clone() for s in streams],
            "transforms": [numpy_rng_state(t.R) for t in self._random_parts()],
        }

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["generator"])
        streams = [s for s in (self.lab_stream, self.ulb_stream) if s is not None]
        parts = self._random_parts()
        if len(state["epochs"]) != len(streams) or len(state["transforms"]) != len(parts):
            raise ValueError("the saved stream state belongs to another method or task")
        for s, buf in zip(streams, state["epochs"], strict=True):
            s.buf = buf.clone()
        for t, rs in zip(parts, state["transforms"], strict=True):
            set_numpy_rng_state(t.R, rs)


def train_batches(
    data: TaskData, cfg: TaskConfig, method_cls, seed: int, device, rank: int = 0, world: int = 1
) -> TrainStream:
    """Endless training batches for `method_cls` (see `TrainStream`)."""
    return TrainStream(data, cfg, method_cls, seed, device, rank, world)


def numpy_rng_state(rs: np.random.RandomState) -> dict:
    """A RandomState's MT19937 state as a tensor and numbers (weights_only-safe)."""
    _, keys, pos, has_gauss, gauss = rs.get_state(legacy=True)
    return {
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "gauss": (has_gauss, gauss),
    }


def set_numpy_rng_state(rs: np.random.RandomState, state: dict) -> None:
    has_gauss, gauss = state["gauss"]
    keys = state["keys"].numpy().astype(np.uint32)
    rs.set_state(("MT19937", keys, int(state["pos"]), int(has_gauss), float(gauss)))


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
