"""Weak and strong views per task and input kind, built from the batched transforms of
`transforms.dictionary` and the strong-view operations of `transforms.ops`.

Classification views read the input kind from the batch at each call (`input_kind`), so the
same `weak_augment` / `strong_augment` serve every data set; an image's channels always get
the same geometry, and intensity changes are drawn per image:

| input | weak view | strong view: the weak warp (own draw), then `BatchRandSomeOfd` of |
| --- | --- | --- |
| grey 2D (B, 1, H, W): echo, grey MedMNIST | rotate 15 deg, shift 8 %, zoom 10 %; no flips | echo ops: noise in-painting, local shuffle, cutout, signal dropout, brightness, blur |
| colour 2D (B, C>1, H, W): ISIC, Derma/BloodMNIST | as grey (`flip=0.5` for orientation-free images) | colour ops: the echo ops less signal dropout, plus colour jitter (saturation, per-channel gain) |
| volume (B, C, D, H, W): MedMNIST 3D | as grey, rotating in the (H, W) plane only | volume ops: in-painting, local shuffle and cutout with cubic boxes, contrast, brightness, blur, Gaussian noise |

Echo strong view (the lightweight echo SSL model (TMED-2 view/AS)): noise in-painting, local
pixel shuffle, cutout, ultrasound signal dropout, brightness and Gaussian blur, of which each
image gets a random subset (`BatchRandSomeOfd`). Each operation draws its parameters
(`randomize`) apart from applying them (`apply`); `perturb` calls the same code at a fixed
strength for the robustness sweep. A grey 2D batch draws the same random numbers as the echo
transforms alone would (`BatchByInputKindd` seeds every input kind's child alike).
"""

from __future__ import annotations

import math

from monai.transforms import Compose

from semimed.transforms.base import _BatchRandOpd
from semimed.transforms.dictionary import (
    BatchByInputKindd,
    BatchRandAffined,
    BatchRandIntensityd,
    BatchRandSomeOfd,
)
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

# max rotation of echo views (the lightweight echo SSL model (TMED-2 view/AS): RandomRotation(15))
ECHO_ROTATE = math.radians(15)


def _structure_ops(keys) -> list[_BatchRandOpd]:
    """The operations that hide or scramble structure, shared by every input kind."""
    return [
        BatchRandNoiseInpaintd(keys, size=(0.2, 0.4)),
        BatchRandLocalShuffled(keys, window=(2, 4), fraction=0.5),
        BatchRandCutoutd(keys, size=0.3),
    ]


def echo_strong_ops(keys=("image",)) -> list[_BatchRandOpd]:
    """Seed 000's echo operations in its order, with our defaults for 48-112 px frames."""
    return _structure_ops(keys) + [
        BatchRandSignalDropoutd(keys, width=(0.1, 0.3), depth=(0.0, 0.5), residual=(0.0, 0.5)),
        BatchRandBrightnessd(keys, brightness=0.5),
        BatchRandGaussianBlurd(keys, sigma=(0.1, 1.5)),
    ]


def colour_strong_ops(keys=("image",)) -> list[_BatchRandOpd]:
    """Colour 2D images (dermoscopy, blood smears): the echo operations with colour jitter
    (as RandAugment's colour operations) in place of the ultrasound signal dropout."""
    return _structure_ops(keys) + [
        BatchRandColourd(keys, saturation=0.3, gain=0.1),
        BatchRandBrightnessd(keys, brightness=0.5),
        BatchRandGaussianBlurd(keys, sigma=(0.1, 1.5)),
    ]


def volume_strong_ops(keys=("image",)) -> list[_BatchRandOpd]:
    """CT/MR volumes: the echo operations in 3D (cubic boxes and windows) less the signal
    dropout, plus contrast (window width) and Gaussian noise; a softer gain and blur than
    echo's, as CT intensities are calibrated (Hounsfield units) and 28^3 volumes are small."""
    return _structure_ops(keys) + [
        BatchRandContrastd(keys, contrast=0.4),
        BatchRandBrightnessd(keys, brightness=0.3),
        BatchRandGaussianBlurd(keys, sigma=(0.1, 1.0)),
        BatchRandGaussianNoised(keys, noise=0.1),
    ]


# Strong-view operations per input kind (`input_kind`).
STRONG_OPS = {
    "grey2d": echo_strong_ops,
    "colour2d": colour_strong_ops,
    "volume": volume_strong_ops,
}


def _some_of(ops: list[_BatchRandOpd], keys) -> BatchRandSomeOfd:
    return BatchRandSomeOfd(keys, ops, num_ops=(1, len(ops)), prob=0.5)


def _classification_warp(keys, label_keys=(), flip: float = 0.0) -> BatchRandAffined:
    return BatchRandAffined(
        keys, rotate=ECHO_ROTATE, translate=0.08, scale=0.1, label_keys=label_keys, flip=flip
    )


def weak_augment(task: str, keys=("image",), label_keys=(), flip: float = 0.0) -> Compose:
    """Weak view.

    Classification, every input kind: rotation up to 15 deg (as the lightweight echo SSL model
    (TMED-2 view/AS)), shift up to 8 % and zoom +-10 %, one warp per image shared by its
    channels; volumes (B, C, D, H, W) rotate in the (H, W) plane only (patients lie on the
    table: roll, not tilt). No flips by default:
    in echo, upside-down flips put the apex at the bottom, and left-right flips swap the sides
    of the screen on which each chamber is shown -- view-specific under the usual display
    convention, which the classifier should be able to rely on (the synthetic set mirrors 25 %
    of studies, as some labs do; `BatchRandAffined(hflip=...)` turns flips on there); in CT/MR,
    left-right is anatomy (OrganMNIST3D has left and right kidney, femur and lung classes) and
    flips make bodies that do not exist. `flip` (probability per axis) is for images with no
    canonical orientation: dermoscopy (ISIC), blood smears (BloodMNIST), 0.5 there.
    CT patches (segmentation): none beyond the random crop, so that labels stay aligned."""
    if task == "classification":
        return Compose([_classification_warp(keys, label_keys, flip)])
    return Compose([])


def strong_augment(
    task: str, keys=("image",), flip: float = 0.0, unit_range: bool = True
) -> Compose:
    """Strong view. Classification: an independent weak-view warp, then, as in the code of
    the lightweight echo SSL model (TMED-2 view/AS), each image with probability 0.5 gets
    k ~ U{1..n} distinct operations of the set for its input kind (`STRONG_OPS`), each with its
    own parameters: echo operations for grey frames, colour operations for colour images,
    volume operations for volumes. Segmentation: intensity changes and
    noise only (spatially aligned with the weak view); `unit_range` false for z-scored volumes
    (`BatchRandIntensityd`)."""
    if task == "classification":
        some_of = {kind: _some_of(make(keys), keys) for kind, make in STRONG_OPS.items()}
        return Compose([_classification_warp(keys, flip=flip), BatchByInputKindd(keys, some_of)])
    return Compose(
        [
            BatchRandIntensityd(
                keys, gamma=0.3, brightness=0.1, noise=0.1, prob=0.8, unit_range=unit_range
            )
        ]
    )


def seed_transform(transform: Compose, seed: int) -> Compose:
    """Seed every random transform of a Compose (MONAI's `set_random_state`)."""
    return transform.set_random_state(seed=seed)
