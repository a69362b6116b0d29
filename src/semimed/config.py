"""params.yaml -> frozen dataclasses, with one-line errors for unknown, missing or bad keys.

Every section of `params.yaml` has a dataclass here; field comments live in `params.yaml`
(the user-facing record) and value checks live in `__post_init__`. Parsing is strict: an
unknown key, a missing key, a wrong type or a value outside its choices raises `ConfigError`
whose message names the full key path, e.g.
``params.yaml: classification.train.optimizer: must be one of sgd, adam, adamw; got 'adamx'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

TASKS = ("classification", "segmentation")


class ConfigError(ValueError):
    """A params.yaml problem; the message names the key and what was expected."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class SyntheticEcho:
    num_patients: int
    studies_per_patient: int
    frames_per_study: int
    image_size: int
    seed: int

    def __post_init__(self):
        _check(self.num_patients >= 8, "num_patients: must be >= 8 (train/val/test need patients)")
        _check(self.studies_per_patient >= 1, "studies_per_patient: must be >= 1")
        _check(self.frames_per_study >= 1, "frames_per_study: must be >= 1")
        _check(16 <= self.image_size <= 512, "image_size: must be in [16, 512] pixels")


@dataclass(frozen=True)
class SyntheticCT:
    num_cases: int
    seed: int

    def __post_init__(self):
        _check(self.num_cases >= 6, "num_cases: must be >= 6 (train/val/test need volumes)")


CLS_SOURCES = ("synthetic", "tmed2", "isic2018", "image_folder", "csv", "medmnist")
SEG_SOURCES = ("synthetic", "nifti")


@dataclass(frozen=True)
class Tmed2Source:
    csv: str
    unlabeled_dirs: tuple[str, ...]

    def __post_init__(self):
        _check(bool(self.csv), "csv: must name the label CSV (relative to data.root)")


@dataclass(frozen=True)
class CsvSource:
    file: str
    path_column: str
    labels: dict
    group_column: str
    split_column: str

    def __post_init__(self):
        _check(bool(self.file), "file: must name the manifest CSV (relative to data.root)")
        _check(bool(self.path_column), "path_column: must name the image-path column")
        _check(
            isinstance(self.labels, dict)
            and len(self.labels) >= 1
            and all(
                isinstance(k, str) and isinstance(v, str) and v for k, v in self.labels.items()
            ),
            "labels: must map each target name to its CSV column, e.g. {diagnosis: dx}",
        )


@dataclass(frozen=True)
class MedmnistSource:
    file: str

    def __post_init__(self):
        _check(
            self.file.endswith(".npz"), "file: must name a MedMNIST .npz (relative to data.root)"
        )


@dataclass(frozen=True)
class ClsData:
    source: str
    root: str
    # Labels learned, one head each on a shared backbone; the first is the primary task
    # (stratifies the splits, selects checkpoints, headline metric). The source decides
    # which labels exist; ingest checks the names.
    targets: tuple[str, ...]
    group_regex: str
    tmed2: Tmed2Source
    csv: CsvSource
    medmnist: MedmnistSource
    synthetic: SyntheticEcho

    def __post_init__(self):
        _check(
            self.source in CLS_SOURCES,
            f"source: must be one of {', '.join(CLS_SOURCES)}; got {self.source!r}",
        )
        _check(len(self.targets) >= 1, "targets: must list at least one label, e.g. [view]")
        _check(len(set(self.targets)) == len(self.targets), "targets: lists a label twice")
        _check_regex(self.group_regex)

    @property
    def target(self) -> str:
        """The primary task's label."""
        return self.targets[0]


@dataclass(frozen=True)
class SplitLists:
    train_labeled: str
    train_unlabeled: str
    val: str
    test: str


@dataclass(frozen=True)
class SegData:
    source: str
    root: str
    classes: tuple[str, ...]
    group_regex: str
    split_lists: SplitLists
    synthetic: SyntheticCT

    def __post_init__(self):
        _check(
            self.source in SEG_SOURCES,
            f"source: must be one of {', '.join(SEG_SOURCES)}; got {self.source!r}",
        )
        _check(len(self.classes) != 1, "classes: must be [] (read dataset.json) or >= 2 names")
        _check(len(set(self.classes)) == len(self.classes), "classes: lists a name twice")
        _check_regex(self.group_regex)


def _check_regex(pattern: str) -> None:
    import re

    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"group_regex: must be a valid regular expression ({err})") from None
    _check(
        not pattern or compiled.groups >= 1,
        "group_regex: must have a (capture group) for the patient id, e.g. '^(P\\d+)_'",
    )


@dataclass(frozen=True)
class ClsPreprocess:
    image_size: int
    channels: int

    def __post_init__(self):
        _check(8 <= self.image_size <= 512, "image_size: must be in [8, 512] pixels")
        _check(self.channels in (1, 3), "channels: must be 1 (grayscale) or 3 (RGB)")


@dataclass(frozen=True)
class SegPreprocess:
    spacing: tuple[float, float, float]
    window: tuple[float, float]

    def __post_init__(self):
        _check(all(s > 0 for s in self.spacing), "spacing: must be 3 positive numbers (mm)")
        _check(self.window[0] < self.window[1], "window: must be [low, high] with low < high")


@dataclass(frozen=True)
class Split:
    val_percent: float
    test_percent: float
    labeled_percent: float
    seed: int
    official: bool = False

    def __post_init__(self):
        _check(0 < self.val_percent < 50, "val_percent: must be in (0, 50)")
        _check(0 < self.test_percent < 50, "test_percent: must be in (0, 50)")
        _check(0 < self.labeled_percent <= 100, "labeled_percent: must be in (0, 100]")


@dataclass(frozen=True)
class Network:
    name: str
    channels: tuple[int, ...]
    dropout: float

    def __post_init__(self):
        _check(len(self.channels) >= 2, "channels: must list at least 2 widths")
        _check(all(c > 0 for c in self.channels), "channels: must be positive integers")
        _check(0 <= self.dropout < 1, "dropout: must be in [0, 1)")


@dataclass(frozen=True)
class Train:
    steps: int
    batch_size: int
    unlabeled_ratio: int
    optimizer: Literal["sgd", "adam", "adamw"]
    lr: float
    momentum: float
    weight_decay: float
    schedule: Literal["cosine", "poly", "constant"]
    warmup_steps: int
    grad_clip: float
    eval_every: int
    checkpoint_every: int
    amp: bool
    device: Literal["auto", "cpu", "cuda"]
    devices: int = 1  # processes of one run (DDP); batch_size is split among them
    patch_size: tuple[int, int, int] | None = None  # segmentation only
    flip: float = 0.0  # classification only: mirror probability per image axis (augmentation)

    def __post_init__(self):
        _check(self.steps >= 1, "steps: must be >= 1")
        _check(self.batch_size >= 1, "batch_size: must be >= 1")
        _check(self.unlabeled_ratio >= 1, "unlabeled_ratio: must be >= 1")
        _check(self.lr > 0, "lr: must be > 0")
        _check(0 <= self.momentum < 1, "momentum: must be in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay: must be >= 0")
        _check(0 <= self.warmup_steps < self.steps, "warmup_steps: must be in [0, steps)")
        _check(self.grad_clip >= 0, "grad_clip: must be >= 0 (0 disables)")
        _check(self.eval_every >= 1, "eval_every: must be >= 1")
        _check(self.checkpoint_every >= 1, "checkpoint_every: must be >= 1")
        _check(self.devices >= 1, "devices: must be >= 1")
        _check(
            self.batch_size % self.devices == 0,
            f"batch_size: {self.batch_size} must divide by devices ({self.devices}): it is the "
            "global batch, split among the processes",
        )
        if self.patch_size is not None:
            _check(all(p >= 16 for p in self.patch_size), "patch_size: must be >= 16 per axis")
        _check(0 <= self.flip <= 1, "flip: must be a probability in [0, 1]")


@dataclass(frozen=True)
class ClsEval:
    batch_size: int

    def __post_init__(self):
        _check(self.batch_size >= 1, "batch_size: must be >= 1")


@dataclass(frozen=True)
class SegEval:
    overlap: float
    sw_batch_size: int

    def __post_init__(self):
        _check(0 <= self.overlap < 1, "overlap: must be in [0, 1)")
        _check(self.sw_batch_size >= 1, "sw_batch_size: must be >= 1")


@dataclass(frozen=True)
class ClsAnalysis:
    """``classification.analysis``: the analyze stage (comments and units in params.yaml)."""

    gradcam_images: int  # test images in the Grad-CAM grid, [1, 16]
    kinds: tuple[Literal["noise", "blur", "contrast", "dropout"], ...]  # perturbations swept
    strengths: tuple[float, ...]  # perturbation strengths, each in [0, 1], increasing
    perturb_seed: int  # seed of the random perturbations (the same for every model)
    projection_seed: int  # random_state of t-SNE and UMAP
    umap_neighbors: int  # UMAP n_neighbors, >= 2

    def __post_init__(self):
        _check(1 <= self.gradcam_images <= 16, "gradcam_images: must be in [1, 16]")
        _check(
            bool(self.kinds) and len(set(self.kinds)) == len(self.kinds),
            f"kinds: must list distinct perturbations; got {list(self.kinds)}",
        )
        s = self.strengths
        _check(
            bool(s) and all(0 <= v <= 1 for v in s) and list(s) == sorted(set(s)),
            f"strengths: must be increasing values in [0, 1]; got {list(s)}",
        )
        _check(self.umap_neighbors >= 2, "umap_neighbors: must be >= 2")


@dataclass(frozen=True)
class TaskConfig:
    """One task's section; `methods_params` stays raw until `method_params()` parses it."""

    task: str
    data: Any
    preprocess: Any
    split: Split
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    network: Network
    train: Train
    methods_params: dict = field(default_factory=dict)
    eval: Any = None
    analysis: Any = None  # classification only: ClsAnalysis

    def method_params(self, name: str):
        """The parsed `Params` dataclass of method `name` (defaults where params.yaml is silent)."""
        from semimed.methods import get_method

        cls = get_method(self.task, name)
        raw = self.methods_params.get(name) or {}
        return _parse(cls.Params, raw, f"{self.task}.methods_params.{name}")


_SECTIONS = {
    "classification": dict(
        data=ClsData, preprocess=ClsPreprocess, eval=ClsEval, analysis=ClsAnalysis
    ),
    "segmentation": dict(data=SegData, preprocess=SegPreprocess, eval=SegEval),
}


# --------------------------------------------------------------------------- parsing
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(tp, value, key: str):
    """Convert a YAML value to annotation `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}"
            )
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: must be a list; got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: must be a list of {len(args)} values; got {value!r}")
        return tuple(
            _convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=False))
        )
    if dataclasses.is_dataclass(tp):
        return _parse(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false; got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer; got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: must be a number; got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string; got {value!r}")
        return value
    if tp is dict or tp is Any:
        return value
    raise TypeError(f"unsupported annotation {_type_name(tp)} for {key}")


def _parse(cls, data, key: str, overrides: dict | None = None):
    """Build dataclass `cls` from mapping `data` strictly; `key` is the path for messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: must be a mapping of keys; got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    overrides = overrides or {}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = ", ".join(n for n in fields if n not in overrides)
        raise ConfigError(f"{key}.{unknown[0]}: unknown key; valid keys: {valid}")
    kwargs = dict(overrides)
    for name, f in fields.items():
        if name in overrides:
            continue
        if name not in data:
            has_default = f.default is not dataclasses.MISSING or (
                f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise ConfigError(f"{key}.{name}: missing key")
        tp = hints[name]
        if cls is TaskConfig and name in ("data", "preprocess", "eval", "analysis"):
            tp = _SECTIONS[overrides["task"]].get(name)
            if tp is None:
                raise ConfigError(f"{key}.{name}: unknown key for task {overrides['task']}")
        kwargs[name] = _convert(tp, data[name], f"{key}.{name}")
    try:
        return cls(**kwargs)
    except ValueError as err:  # __post_init__ checks: "<field>: must be ..."
        raise ConfigError(f"{key}.{err}") from None


def parse_section(cls, data, key: str):
    """Strictly build dataclass `cls` from the mapping `data` found at `key` of params.yaml."""
    return _parse(cls, data, key)


def parse_task(task: str, section: dict) -> TaskConfig:
    """Parse and cross-check one task section (methods exist, their params parse)."""
    from semimed.methods import METHODS

    cfg = _parse(TaskConfig, section, task, overrides={"task": task})
    known = METHODS[task]
    for i, name in enumerate(cfg.methods):
        if name not in known:
            raise ConfigError(
                f"{task}.methods[{i}]: unknown method {name!r}; choose from {', '.join(known)}"
            )
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"{task}.methods: lists a method twice: {list(cfg.methods)}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"{task}.seeds: must be a non-empty list of distinct integers")
    for name in cfg.methods_params:
        if name not in known:
            raise ConfigError(
                f"{task}.methods_params.{name}: unknown method; choose from {', '.join(known)}"
            )
        cfg.method_params(name)
    if task == "classification" and len(cfg.data.targets) > 1:
        single = [m for m in cfg.methods if not known[m].multitask]
        if single:
            capable = ", ".join(n for n, c in known.items() if c.multitask)
            raise ConfigError(
                f"{task}.data.targets: {list(cfg.data.targets)} needs multi-task methods, but "
                f"{', '.join(single)} learn one target; multi-task methods: {capable}"
            )
    from semimed.networks import DEEP_SUPERVISION

    needs_ds = [m for m in cfg.methods if known[m].deep_supervision]
    if needs_ds and cfg.network.name not in DEEP_SUPERVISION:
        raise ConfigError(
            f"{task}.network.name: {', '.join(needs_ds)} need deep-supervision outputs, which "
            f"{cfg.network.name!r} lacks; choose one of: {', '.join(DEEP_SUPERVISION)}"
        )
    if task == "segmentation" and cfg.train.patch_size is None:
        raise ConfigError("segmentation.train.patch_size: missing key")
    return cfg


def load_params(path: str | Path = "params.yaml") -> dict:
    """Read params.yaml into a plain dict; a missing or malformed file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (run from the repository root)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping with sections {', '.join(TASKS)}")
    return data


def load_task(task: str, path: str | Path = "params.yaml") -> TaskConfig:
    """Load, validate and return the `task` section of params.yaml."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    data = load_params(path)
    if task not in data:
        raise ConfigError(f"{path}: missing section {task!r}")
    try:
        return parse_task(task, data[task])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
