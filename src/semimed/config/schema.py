"""The sections of params.yaml as frozen dataclasses; each field declares its value checks.

Field comments for users live in `params.yaml` (the record of what ran); the accepted values
live here, beside each field (`semimed.config.checks`). One task's sections together make its
`TaskConfig` (`semimed.config.task`).
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from semimed.config.checks import (
    Checked,
    Distinct,
    Each,
    MinLen,
    Must,
    OneOf,
    Range,
    Regex,
    require,
)

TASKS = ("classification", "segmentation")
CLS_SOURCES = ("synthetic", "tmed2", "isic2018", "image_folder", "csv", "medmnist")
SEG_SOURCES = ("synthetic", "nifti")

# Patient-grouping regex: '' = one group per image, else a (capture group) for the patient id.
PatientRegex = Annotated[
    str, Regex(groups=1, allow_empty=True, note="for the patient id, e.g. '^(P\\d+)_'")
]


def _label_map(labels: Any) -> bool:
    return (
        isinstance(labels, dict)
        and len(labels) >= 1
        and all(isinstance(k, str) and isinstance(v, str) and v for k, v in labels.items())
    )


def _increasing(values: tuple) -> bool:
    return list(values) == sorted(set(values))


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SyntheticEcho(Checked):
    num_patients: Annotated[int, Range(ge=8, note="train/val/test need patients")]
    studies_per_patient: Annotated[int, Range(ge=1)]
    frames_per_study: Annotated[int, Range(ge=1)]
    image_size: Annotated[int, Range(ge=16, le=512, unit="pixels")]
    seed: int


@dataclass(frozen=True)
class SyntheticCT(Checked):
    num_cases: Annotated[int, Range(ge=6, note="train/val/test need volumes")]
    seed: int


@dataclass(frozen=True)
class Tmed2Source(Checked):
    csv: Annotated[str, Must(bool, "name the label CSV (relative to data.root)")]
    unlabeled_dirs: tuple[str, ...]


@dataclass(frozen=True)
class CsvSource(Checked):
    file: Annotated[str, Must(bool, "name the manifest CSV (relative to data.root)")]
    path_column: Annotated[str, Must(bool, "name the image-path column")]
    labels: Annotated[
        dict, Must(_label_map, "map each target name to its CSV column, e.g. {diagnosis: dx}")
    ]
    group_column: str
    split_column: str


@dataclass(frozen=True)
class MedmnistSource(Checked):
    file: Annotated[
        str, Must(lambda f: f.endswith(".npz"), "name a MedMNIST .npz (relative to data.root)")
    ]


@dataclass(frozen=True)
class ClsData(Checked):
    source: Annotated[str, OneOf(*CLS_SOURCES)]
    root: str
    # Labels learned, one head each on a shared backbone; the first is the primary task
    # (stratifies the splits, selects checkpoints, headline metric). The source decides
    # which labels exist; ingest checks the names.
    targets: Annotated[tuple[str, ...], MinLen(1, "label", "e.g. [view]"), Distinct("label")]
    group_regex: PatientRegex
    tmed2: Tmed2Source
    csv: CsvSource
    medmnist: MedmnistSource
    synthetic: SyntheticEcho

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
class SegData(Checked):
    source: Annotated[str, OneOf(*SEG_SOURCES)]
    root: str
    classes: Annotated[
        tuple[str, ...],
        Must(lambda c: len(c) != 1, "be [] (read dataset.json) or >= 2 names"),
        Distinct("name"),
    ]
    group_regex: PatientRegex
    split_lists: SplitLists
    synthetic: SyntheticCT


# --------------------------------------------------------------------------- preprocess, split
@dataclass(frozen=True)
class ClsPreprocess(Checked):
    image_size: Annotated[int, Range(ge=8, le=512, unit="pixels")]
    channels: Annotated[int, OneOf(1, 3, note="1 grayscale, 3 RGB")]


@dataclass(frozen=True)
class SegPreprocess(Checked):
    spacing: Annotated[tuple[float, float, float], Each(Range(gt=0, unit="mm"))]
    window: Annotated[
        tuple[float, float], Must(lambda w: w[0] < w[1], "be [low, high] with low < high")
    ]
    # NaN / infinite image voxels: refuse the file at ingest, or set them to 0 after scaling
    nan_policy: Annotated[str, OneOf("error", "zero", note="error refuses the file")] = "error"
    # intensity rule (semimed.data.intensity): auto = from dataset.json's channel names
    # (CT or none named -> ct_window, other modalities -> zscore)
    normalize: Annotated[
        str,
        OneOf("auto", "ct_window", "zscore", "percentile", note="ct_window uses window"),
    ] = "auto"


@dataclass(frozen=True)
class Split(Checked):
    val_percent: Annotated[float, Range(gt=0, lt=50)]
    test_percent: Annotated[float, Range(gt=0, lt=50)]
    labeled_percent: Annotated[float, Range(gt=0, le=100)]
    seed: int
    official: bool = False


# --------------------------------------------------------------------------- network, train
@dataclass(frozen=True)
class Network(Checked):
    name: str
    channels: Annotated[tuple[int, ...], MinLen(2, "widths"), Each(Range(gt=0))]
    dropout: Annotated[float, Range(ge=0, lt=1)]


@dataclass(frozen=True)
class Train(Checked):
    steps: Annotated[int, Range(ge=1)]
    batch_size: Annotated[int, Range(ge=1)]
    unlabeled_ratio: Annotated[int, Range(ge=1)]
    optimizer: Literal["sgd", "adam", "adamw"]
    lr: Annotated[float, Range(gt=0)]
    momentum: Annotated[float, Range(ge=0, lt=1)]
    weight_decay: Annotated[float, Range(ge=0)]
    schedule: Literal["cosine", "poly", "constant"]
    warmup_steps: Annotated[int, Range(ge=0)]  # and < steps (cross_checks)
    grad_clip: Annotated[float, Range(ge=0, note="0 disables")]
    eval_every: Annotated[int, Range(ge=1)]
    checkpoint_every: Annotated[int, Range(ge=1)]
    amp: bool
    device: Literal["auto", "cpu", "cuda"]
    # processes of one run (DDP); batch_size is split among them
    devices: Annotated[int, Range(ge=1)] = 1
    # segmentation only (required there, see TaskConfig)
    patch_size: Annotated[tuple[int, int, int] | None, Each(Range(ge=16, note="per axis"))] = None
    # classification only: mirror probability per image axis (augmentation)
    flip: Annotated[float, Range(ge=0, le=1, note="a probability")] = 0.0
    # segmentation only: where labeled crops lie (class_balanced: centred on a voxel of a
    # uniformly drawn class; random: uniform, as DHC) and the probability of mirroring every
    # crop along each in-plane axis (DHC's flips: 0.5)
    label_crop: Literal["class_balanced", "random"] = "class_balanced"
    crop_flip: Annotated[float, Range(ge=0, le=1, note="a probability")] = 0.0
    # budget and early stopping (semimed.training.convergence): stop = the budget protocol (fixed:
    # every run `steps` steps, patience ignored, epochs refused; early: the stop rule);
    # epochs = passes over the largest pool (null: `steps` alone); patience in validations
    # (0: off); min_delta in val-metric units; smooth = validations in the running mean the
    # stop rule and the "converged" flag judge (1: the raw scores)
    stop: Literal["early", "fixed"] = "early"
    epochs: Annotated[float, Range(gt=0, note="passes over the data; null = off")] | None = None
    patience: Annotated[int, Range(ge=0, note="validations; 0 disables")] = 0
    min_steps: Annotated[int, Range(ge=0)] = 0
    min_delta: Annotated[float, Range(ge=0)] = 0.0
    smooth: Annotated[int, Range(ge=1, note="validations; 1 = raw scores")] = 1
    # consecutive non-finite steps (skipped) before the run stops
    max_nonfinite: Annotated[int, Range(ge=1)] = 20
    # batches drawn ahead in a background thread (semimed.data.prefetch; 0: none). Changes
    # no number: the stream has its own random generators
    prefetch: Annotated[int, Range(ge=0, le=8, note="batches; 0 disables")] = 0
    # torch.compile the method's networks (Module.compile, in place); the first step's wall
    # time (compilation included) goes to train.json
    compile: bool = False
    # convolution weights in channels-last memory format (NHWC / NDHWC), which the GPU's
    # tensor-core convolutions prefer (the gpu preset); the same model, no gain on a CPU
    channels_last: bool = False

    def cross_checks(self) -> None:
        require(
            self.warmup_steps < self.steps,
            "warmup_steps",
            f"must be < steps ({self.steps}); got {self.warmup_steps}",
        )
        require(
            self.batch_size % self.devices == 0,
            "batch_size",
            f"{self.batch_size} must divide by devices ({self.devices}): it is the global "
            "batch, split among the processes",
        )
        require(
            self.stop == "early" or self.epochs is None,
            "epochs",
            f"must be null when stop is fixed (every run takes steps = {self.steps}); got "
            f"{self.epochs}",
        )


# --------------------------------------------------------------------------- eval, analysis
@dataclass(frozen=True)
class ClsEval(Checked):
    batch_size: Annotated[int, Range(ge=1)]


@dataclass(frozen=True)
class SegEval(Checked):
    overlap: Annotated[float, Range(ge=0, lt=1)]
    sw_batch_size: Annotated[int, Range(ge=1)]


@dataclass(frozen=True)
class ClsAnalysis(Checked):
    """``classification.analysis``: the analyze stage (comments and units in params.yaml)."""

    # test images in the Grad-CAM grid
    gradcam_images: Annotated[int, Range(ge=1, le=16)]
    # perturbations swept
    kinds: Annotated[
        tuple[Literal["noise", "blur", "contrast", "dropout"], ...],
        MinLen(1, "perturbation"),
        Distinct("perturbation"),
    ]
    # perturbation strengths, increasing
    strengths: Annotated[
        tuple[float, ...],
        MinLen(1, "strength"),
        Each(Range(ge=0, le=1)),
        Must(_increasing, "be increasing"),
    ]
    perturb_seed: int  # seed of the random perturbations (the same for every model)
    projection_seed: int  # random_state of t-SNE and UMAP
    umap_neighbors: Annotated[int, Range(ge=2)]  # UMAP n_neighbors


# --------------------------------------------------------------------------- one task
@dataclass(frozen=True)
class PredictParams(Checked):
    """``<task>.predict``: the optional predict_<task> stages (docs/predict.md)."""

    model: str  # model folder, e.g. models/<task>/supervised/seed0
    inputs: tuple[str, ...] = ()  # files, folders or CSVs; one stage each; [] = no stage
    output: str = ""  # predictions of input <i> go to <output>/<i>
    batch_size: Annotated[int, Range(ge=1)] | None = None  # images / windows per forward
    probabilities: bool = False  # segmentation: also per-class probability maps
    path_column: str = "path"  # the path column of CSV inputs
