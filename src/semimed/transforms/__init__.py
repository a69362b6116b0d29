"""Weak and strong augmentations, and robustness perturbations, as batched MONAI dictionary
transforms, split by job as MONAI splits functional / array / dictionary:

- `kernels`: the functional tensor kernels (noise, blur, boxes, window shuffles, fan-sector
  gain), plain functions on batches `(B, C, H, W[, D])` with the parameters passed in;
- `base`: the base of the strong-view operations (`_BatchRandOpd`) and `MAX_SEED`;
- `dictionary`: the batched MONAI dictionary transforms (`MapTransform` + `Randomizable`) that
  draw per-image parameters and apply the kernels: `BatchRandAffined`, `BatchRandIntensityd`,
  `BatchRandSomeOfd` and `BatchByInputKindd` (with `input_kind`);
- `ops`: the per-image random operations of the strong views, batched dictionary transforms
  (`_BatchRandOpd` subclasses: cutout, noise in-painting, local shuffle, signal dropout,
  brightness, blur, contrast, Gaussian noise, colour jitter);
- `policies`: the weak / strong views per task and input kind (`weak_augment`,
  `strong_augment`, `STRONG_OPS`, `seed_transform`);
- `perturb`: the deterministic robustness perturbations (`perturb`, `PERTURBATIONS`).

Imports run one way: policies -> ops / dictionary -> base and kernels (two leaves), and
perturb -> kernels. The names below are re-exported so that `from semimed.transforms import
...` keeps working.
"""

from semimed.transforms.base import MAX_SEED
from semimed.transforms.dictionary import (
    BatchByInputKindd,
    BatchRandAffined,
    BatchRandIntensityd,
    BatchRandSomeOfd,
    input_kind,
)
from semimed.transforms.kernels import FAN_HALF_ANGLE, _shuffle_windows, _shuffle_windows_nd
from semimed.transforms.ops import (
    BatchRandBrightnessd,
    BatchRandColourd,
    BatchRandContrastd,
    BatchRandCutoutd,
    BatchRandGaussianBlurd,
    BatchRandGaussianNoised,
    BatchRandLocalShuffled,
    BatchRandNoiseInpaintd,
    BatchRandSignalDropoutd,
)
from semimed.transforms.perturb import PERTURBATIONS, perturb
from semimed.transforms.policies import (
    ECHO_ROTATE,
    STRONG_OPS,
    colour_strong_ops,
    echo_strong_ops,
    seed_transform,
    strong_augment,
    volume_strong_ops,
    weak_augment,
)

__all__ = [
    "ECHO_ROTATE",
    "FAN_HALF_ANGLE",
    "MAX_SEED",
    "PERTURBATIONS",
    "STRONG_OPS",
    "BatchByInputKindd",
    "BatchRandAffined",
    "BatchRandBrightnessd",
    "BatchRandColourd",
    "BatchRandContrastd",
    "BatchRandCutoutd",
    "BatchRandGaussianBlurd",
    "BatchRandGaussianNoised",
    "BatchRandIntensityd",
    "BatchRandLocalShuffled",
    "BatchRandNoiseInpaintd",
    "BatchRandSignalDropoutd",
    "BatchRandSomeOfd",
    "_shuffle_windows",
    "_shuffle_windows_nd",
    "colour_strong_ops",
    "echo_strong_ops",
    "input_kind",
    "perturb",
    "seed_transform",
    "strong_augment",
    "volume_strong_ops",
    "weak_augment",
]
