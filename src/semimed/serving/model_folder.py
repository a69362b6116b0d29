"""A self-describing model folder: weights plus the card needed to use them without params.yaml.

Every trained run (``models/<task>/<method>/seed<k>/``) holds

* ``best.pt``     the state dict of the method's ``inference_model()`` at its best validation
  score (written by the training loop);
* ``train.json``  what happened during training (steps, best step and score, fingerprint);
* ``model.json``  the model card (`write_model_card`): task, method and its parsed ``Params``,
  network (name, channels, dropout, deep-supervision flag), input channels and spatial dims,
  targets and class names, the preprocessing chain's settings (segmentation: with the
  resolved intensity normalisation and its dataset statistics), the inference settings
  (sliding window), the training record and the sha256 of ``best.pt``.

`load_model` rebuilds the inference network from the card alone, through the composition
layer (`semimed.build.instantiate`), checks that the weights are the card's (hash, keys and
shapes) and returns it fused (`semimed.networks.reparameterize`) and in eval mode: the one way
a trained model is loaded (the evaluate and analyze stages, `semimed predict`, `semimed
export`). A folder whose files are missing or disagree is refused with one line naming the
file (`ModelFolderError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from semimed import build
from semimed.config import ConfigError, Network, parse_section
from semimed.data.intensity import from_window
from semimed.io import write_json_atomic
from semimed.networks import DataShape, reparameterize
from semimed.tasks import spec

CARD, WEIGHTS, TRAIN_INFO = "model.json", "best.pt", "train.json"
FORMAT = "semimed-model/1"  # bump when the card's keys change meaning
# Keys a card must have (`model_card` writes them all).
KEYS = (
    "task", "method", "method_params", "network", "in_channels", "spatial_dims", "targets",
    "class_names", "task_sizes", "preprocess", "inference", "weights",
)  # fmt: skip


class ModelFolderError(ConfigError):
    """A model folder that cannot be used; the one-line message names the file (a
    ConfigError, so stages and the console script end with that line, exit code 2)."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _version() -> str:
    try:
        return metadata.version("semimed")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def model_card(cfg, data, method_name: str, train_info: dict, weights_sha256: str) -> dict:
    """The card of a run of `method_name` trained with `cfg` (TaskConfig) on `data` (TaskData).

    `train_info`: the run's train.json; `weights_sha256`: the hash of its best.pt."""
    cls = build.method_class(cfg.task, method_name)
    params = build.method_params(cfg, cls)
    task = spec(cfg.task)
    if task.has_targets:
        targets, classes = list(data.targets), [list(c) for c in data.task_classes]
        preprocess = {
            "chain": "classification_chain",
            "image_size": cfg.preprocess.image_size,
            "channels": cfg.preprocess.channels,
        }
        inference = {"batch_size": cfg.eval.batch_size}
    else:
        targets, classes = ["label"], [list(data.class_names)]
        intensity = data.intensity or from_window(cfg.preprocess.window)
        preprocess = {
            "chain": "segmentation_chain",
            "orientation": "RAS",
            "spacing": list(cfg.preprocess.spacing),  # mm (x, y, z)
            "window": list(cfg.preprocess.window),  # HU window -> [0, 1] (ct_window)
            # the resolved normalisation with its dataset statistics (semimed.data.intensity)
            "intensity": intensity.to_dict(),
            "channel_names": data.channel_names,  # input channels, in file order (_0000, ...)
            "nan_policy": cfg.preprocess.nan_policy,  # non-finite voxels: error | zero
            "crop": "foreground, margin 2" if intensity.unit_range else "non-zero, margin 2",
        }
        inference = {
            "patch_size": list(cfg.train.patch_size),  # sliding-window size, voxels
            "overlap": cfg.eval.overlap,
            "sw_batch_size": cfg.eval.sw_batch_size,
            "mode": "gaussian",
        }
    metric = task.headline
    return {
        "format": FORMAT,
        "semimed_version": _version(),
        "task": cfg.task,
        "method": cls.name,
        "method_params": dataclasses.asdict(params),
        "network": {**dataclasses.asdict(cfg.network), "deep_supervision": cls.deep_supervision},
        "in_channels": data.in_channels,
        "spatial_dims": data.spatial_dims,
        "targets": targets,
        "class_names": dict(zip(targets, classes, strict=True)),
        "task_sizes": [len(c) for c in classes],
        "preprocess": preprocess,
        "inference": inference,
        "training": {
            "seed": train_info.get("seed"),
            "steps": train_info.get("steps"),
            "best_step": train_info.get("best_step"),
            "val_metric": metric,
            "val_score": train_info.get(f"best_val_{metric}"),
            "fingerprint": train_info.get("fingerprint"),
        },
        "weights": {"file": WEIGHTS, "sha256": weights_sha256},
    }


def write_model_card(model_dir: str | Path, cfg, data, method_name: str) -> dict:
    """Write ``model_dir/model.json`` for a finished run and return the card.

    Reads ``model_dir/train.json`` and ``model_dir/best.pt``; checks that the weights load
    into the network the card describes before writing, so a card never lies."""
    model_dir = Path(model_dir)
    info_path, weights = model_dir / TRAIN_INFO, model_dir / WEIGHTS
    for path in (info_path, weights):
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing; run the train stage first")
    info = json.loads(info_path.read_text())
    card = model_card(cfg, data, method_name, info, sha256_file(weights))
    model = network_from_card(card, model_dir / CARD)
    _check_weights(model, _read_weights(weights), weights, card)
    write_json_atomic(model_dir / CARD, card)
    return card


def read_card(folder: str | Path) -> dict:
    """The card of a model folder, after checking the folder's files agree with it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    path = folder / CARD
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; not a model folder (or trained before cards)")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        got = card.get("format") if isinstance(card, dict) else None
        raise ModelFolderError(f"{path}: format {got!r} is not {FORMAT!r}")
    missing = [k for k in KEYS if k not in card]
    if missing or not isinstance(card["weights"], dict) or "sha256" not in card["weights"]:
        raise ModelFolderError(f"{path}: missing key {(missing or ['weights.sha256'])[0]!r}")
    weights = folder / card["weights"]["file"]
    if not weights.is_file():
        raise ModelFolderError(f"{weights}: missing (named by {path})")
    if sha256_file(weights) != card["weights"]["sha256"]:
        raise ModelFolderError(f"{weights}: sha256 differs from the one in {path}")
    return card


def network_from_card(card: dict, source: str | Path = CARD) -> nn.Module:
    """The card's inference network (unfused, freshly initialised weights), built by the
    composition layer exactly as training built it: ``instantiate(...).inference_model()``
    with the card's method params, network and data shape. `source`: the card's path, for
    messages."""
    try:
        task = card["task"]
        cls = build.method_class(task, card["method"])
        net = card["network"]
        if bool(net.get("deep_supervision")) != cls.deep_supervision:
            raise ConfigError(f"network.deep_supervision disagrees with method {cls.name}")
        network = Network(name=net["name"], channels=tuple(net["channels"]), dropout=net["dropout"])
        params = parse_section(cls.Params, card["method_params"], "method_params")
        shape = DataShape(card["spatial_dims"], card["in_channels"], tuple(card["task_sizes"]))
        # total steps 1: only schedules read it, and inference runs none
        method = build.instantiate(cls, params, network, shape, 1)
    except (ConfigError, ValueError, TypeError, KeyError) as err:
        raise ModelFolderError(f"{source}: cannot build its model ({err})") from None
    return method.inference_model()


def _read_weights(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torn, corrupt or not a state dict: one line, not a traceback
        raise ModelFolderError(f"{path}: unreadable ({err.__class__.__name__})") from None


def _check_weights(model: nn.Module, state: dict, path: Path, card: dict) -> None:
    """Refuse weights whose keys or shapes are not those of the card's network."""
    want = model.state_dict()
    net = card["network"]
    what = f"{card['method']} with {net['name']} {list(net['channels'])}"
    if not isinstance(state, dict):
        raise ModelFolderError(f"{path}: not a state dict")
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        key = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ModelFolderError(
            f"{path}: weights do not fit the card's network ({what}): {key} "
            f"({len(missing)} missing, {len(extra)} unexpected keys)"
        )
    for k, v in want.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ModelFolderError(
                f"{path}: weights do not fit the card's network ({what}): {k} has shape "
                f"{list(state[k].shape)}, the card's network {list(v.shape)}"
            )


@dataclass
class LoadedModel:
    """A model folder ready for inference.

    `network` maps (B, C_in, H, W) -> logits (B, sum(task_sizes)) for classification, or
    (B, C_in, X, Y, Z) -> logits (B, C, X, Y, Z) for segmentation (a two-network method's
    log of averaged softmax); it is fused and in eval mode on `device`."""

    network: nn.Module
    card: dict
    folder: Path
    device: torch.device

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def targets(self) -> list[str]:
        return self.card["targets"]

    @property
    def task_sizes(self) -> tuple[int, ...]:
        return tuple(self.card["task_sizes"])

    def class_names(self, target: str | None = None) -> list[str]:
        """Class names of `target` (default: the first, primary one)."""
        return self.card["class_names"][target or self.targets[0]]


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder: the card checked against its files, the inference network
    rebuilt from the card, its weights loaded, LWN branches fused, eval mode, on `device`."""
    folder = Path(folder)
    card = read_card(folder)
    weights = folder / card["weights"]["file"]
    model = network_from_card(card, folder / CARD)
    state = _read_weights(weights)
    _check_weights(model, state, weights, card)
    model.load_state_dict(state)
    device = torch.device(device)
    return LoadedModel(reparameterize(model).to(device), card, folder, device)
