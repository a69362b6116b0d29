"""Labeled and unlabeled training streams with weak/strong views, and the pools they draw from.

Preprocessed data is small enough to live in memory, so items are gathered by index rather
than through a DataLoader. `train_batches` yields the `Batch` dict that the methods'
`training_step` reads:

* ``x_lb``  (B, C, ...) labeled images, weakly augmented (echo) or cropped patches (CT, MR)
* ``y_lb``  (B,) class indices, or (B, 1, X, Y, Z) label patches
* ``x_ulb_<v>`` (B*mu, C, ...) for each view ``v`` in the method's ``views`` (default "w",
  "s"): independent weak ("w...") or strong ("s...") draws of the same unlabeled images, and
  ``i_ulb`` (B*mu,) their positions in the unlabeled pool -- only for methods with
  ``uses_unlabeled`` (a `StreamSpec`, which `semimed.build` derives from the method). The
  pool is the unlabeled split, or every train image with ``unlabeled_pool = "all"``
  (self-supervised pretraining).

Classification batches gather whole images; segmentation batches gather patches cut by the
crop transforms of `semimed.data.crops`.

Sampling is driven by one `torch.Generator` and the augmentations' own RandomStates, all
seeded from the run's seed. `TrainStream.state_dict()` holds all of them (and the rest of the
current epochs), so a run resumed from a checkpoint draws exactly what the uninterrupted run
would. Under DDP every process draws the same global batch and keeps its own contiguous share
(`rank` of `world`): two processes with half a batch each see what one process sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Randomizable, Transform

from semimed.config import ConfigError, TaskConfig
from semimed.data.crops import _one, _padded_item, _random_crop, label_crop
from semimed.data.taskdata import TaskData
from semimed.data.track_meta import plain_tensors
from semimed.runtime import numpy_rng_state, set_numpy_rng_state
from semimed.tasks import spec
from semimed.transforms import seed_transform, strong_augment, weak_augment


@dataclass(frozen=True)
class StreamSpec:
    """What a training stream draws, in plain terms (built from a method by `semimed.build`).

    ``uses_unlabeled``: also draw unlabeled batches, one key ``x_ulb_<v>`` per entry of
    ``views`` ("w..." an independent weak draw, "s..." a strong one) plus ``i_ulb``;
    ``unlabeled_pool``: "unlabeled" (the unlabeled split) or "all" (every train item, labels
    hidden); ``labeled_pool``: "labeled" (the labeled split) or "all" (every train label)."""

    name: str
    uses_unlabeled: bool = False
    views: tuple[str, ...] = ("w", "s")
    unlabeled_pool: str = "unlabeled"
    labeled_pool: str = "labeled"


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


def unlabeled_pool(data: TaskData, stream: StreamSpec) -> list[str]:
    """Ids of the unlabeled stream (``i_ulb`` indexes this list)."""
    if not stream.uses_unlabeled:
        return []
    if stream.unlabeled_pool == "all":
        return data.split["train_labeled"] + data.split["train_unlabeled"]
    return data.split["train_unlabeled"]


def labeled_ids(data: TaskData, stream: StreamSpec) -> list[str]:
    """Ids of the labeled stream (every train label for upper bounds)."""
    ids = data.split["train_labeled"]
    if stream.labeled_pool == "all":  # items without labels stay out
        no_label = set(data.split.get("unlabeled_only", ()))
        ids = ids + [i for i in data.split["train_unlabeled"] if i not in no_label]
    return ids


def labeled_class_counts(data: TaskData, stream: StreamSpec) -> list[float]:
    """Labels per class of the stream's labeled pool: voxels (segmentation, counted on the
    preprocessed volumes) or images of the primary target (classification)."""
    ids = labeled_ids(data, stream)
    c = data.num_classes
    if not spec(data.task).dense:
        labels = data.arrays(ids)[1].reshape(-1).long()
        return torch.bincount(labels, minlength=c).float().tolist()
    counts = np.zeros(c, dtype=np.float64)
    for i in ids:
        counts += np.bincount(np.asarray(data.volumes[i][1]).reshape(-1), minlength=c)[:c]
    return counts.tolist()


class TrainStream:
    """Endless training batches as `stream` describes them (see the module docstring).

    `rank` / `world`: this process's share of every batch under DDP; `cfg.train.batch_size`
    is the global batch and must divide by `world`. Iterate with `next(stream)`.
    """

    def __init__(
        self,
        data: TaskData,
        cfg: TaskConfig,
        stream: StreamSpec,
        seed: int,
        device,
        rank: int = 0,
        world: int = 1,
    ):
        lab_ids = labeled_ids(data, stream)
        ulb_ids = unlabeled_pool(data, stream)
        if stream.uses_unlabeled and not ulb_ids:
            raise ConfigError(
                f"{cfg.task}: method {stream.name!r} needs unlabeled data but the unlabeled "
                "pool is empty (split.labeled_percent is 100?)"
            )
        self.dense, self.device, self.rank, self.world = spec(data.task).dense, device, rank, world
        run_seed = seed * 1_000_003
        self.gen = torch.Generator().manual_seed(run_seed)
        b, mu = cfg.train.batch_size, cfg.train.unlabeled_ratio
        self.lab_stream = _IndexStream(len(lab_ids), b, self.gen)
        self.ulb_stream = _IndexStream(len(ulb_ids), b * mu, self.gen) if ulb_ids else None
        flip = 0.0 if spec(data.task).dense else cfg.train.flip
        unit_range = data.intensity is None or data.intensity.unit_range  # [0, 1] intensities
        self.weak = seed_transform(weak_augment(data.task, flip=flip), run_seed % 2**31)
        # One transform per view, each with its own random stream: "w" and "w2" are independent.
        self.views = {
            v: seed_transform(
                weak_augment(data.task, flip=flip)
                if v.startswith("w")
                else strong_augment(data.task, flip=flip, unit_range=unit_range),
                (run_seed + 1 + k) % 2**31,
            )
            for k, v in enumerate(stream.views if ulb_ids else ())
        }
        if not spec(data.task).dense:
            self.x, self.y = data.arrays(lab_ids, all_tasks=len(data.task_sizes) > 1)
            self.u = data.arrays(ulb_ids)[0] if ulb_ids else None
            self.crops = ()
            return
        patch = tuple(cfg.train.patch_size)
        t = cfg.train
        self.crops = (
            label_crop(patch, data.num_classes, run_seed, t.label_crop, t.crop_flip),
            _random_crop(patch, run_seed + 2, t.crop_flip),
        )
        self.lab_items = [_padded_item(data.volumes[i], patch, data.num_classes) for i in lab_ids]
        self.ulb_items = [_padded_item(data.volumes[i], patch) for i in ulb_ids]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = self._segmentation() if self.dense else self._classification()
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
        with plain_tensors():
            return self._crops()

    def _crops(self) -> dict[str, torch.Tensor]:
        lab_crop, ulb_crop = self.crops
        crops = [_one(lab_crop(self.lab_items[k])) for k in next(self.lab_stream).tolist()]
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

    def close(self) -> None:
        """Nothing to release (`Prefetcher.close` stops its thread): the loop closes either."""

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
    data: TaskData,
    cfg: TaskConfig,
    stream: StreamSpec,
    seed: int,
    device,
    rank: int = 0,
    world: int = 1,
) -> TrainStream:
    """Endless training batches as `stream` describes them (see `TrainStream`)."""
    return TrainStream(data, cfg, stream, seed, device, rank, world)


def _views(views: dict, images: torch.Tensor, positions: torch.Tensor) -> dict:
    """``x_ulb_<v>`` for every view transform, and ``i_ulb`` (pool positions)."""
    out = {f"x_ulb_{v}": t({"image": images})["image"] for v, t in views.items()}
    out["i_ulb"] = positions
    return out


def _stack(arrays, device) -> torch.Tensor:
    return torch.stack([torch.as_tensor(np.asarray(a)) for a in arrays]).to(device)
