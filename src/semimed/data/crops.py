"""The segmentation crops of the training stream (MONAI dictionary transforms).

Volumes are padded to at least the patch size once (`_padded_item`, which also indexes the
voxels of each class of a labeled volume); labeled patches are cut class-balanced or uniformly
(`label_crop`), unlabeled ones uniformly (`_random_crop`), each optionally mirrored in-plane
(`_flips`). Every crop transform is seeded (`seed_transform`) from the run's seed.
"""

from __future__ import annotations

from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    RandCropByLabelClassesd,
    RandFlipd,
    RandSpatialCropd,
    SpatialPadd,
)

from semimed.transforms import seed_transform


def _padded_item(volume, patch, num_classes: int | None = None) -> dict:
    """Pad a volume to at least the patch size once; for labeled volumes also precompute the
    voxel indices of each class, so each crop does not rescan the label map."""
    image, label = volume
    if num_classes is None:
        return SpatialPadd("image", spatial_size=patch)({"image": image})
    item = SpatialPadd(["image", "label"], spatial_size=patch)({"image": image, "label": label})
    return ClassesToIndicesd("label", num_classes=num_classes, indices_postfix="_cls")(item)


def _one(crop):
    """The crop of a one-sample crop transform (MONAI's label-driven crops return a list)."""
    return crop[0] if isinstance(crop, list) else crop


def _flips(keys, flip: float) -> list:
    """Mirror along each in-plane axis (x, y of (C, X, Y, Z)) with probability ``flip``, as
    DHC's RandomFlip_LR / RandomFlip_UD; none for 0 (the random streams stay unchanged)."""
    if flip <= 0:
        return []
    return [RandFlipd(keys, prob=flip, spatial_axis=axis) for axis in (0, 1)]


def label_crop(patch, num_classes: int, seed: int, mode: str = "class_balanced", flip=0.0):
    """Crop transform of a labeled item (``image``, ``label`` (1, X, Y, Z), ``label_cls``).

    ``class_balanced``: centred on a voxel of a uniformly drawn class, background included, so
    small organs are seen as often as the liver (MONAI ``RandCropByLabelClassesd``, equal
    ratios). ``random``: anywhere, uniformly (MONAI ``RandSpatialCropd``), as DHC (Wang & Li,
    MICCAI 2023) crops: the crops then carry the data's own class imbalance, the one the
    class-imbalance methods (DHC, CReST, ...) are built to correct. ``flip``: see ``_flips``.
    Returns a crop dict (or a one-element list of it: take it with ``_one``)."""
    keys = ["image", "label"]
    if mode == "random":
        crop = RandSpatialCropd(keys, roi_size=patch, random_size=False)
    elif mode == "class_balanced":
        crop = RandCropByLabelClassesd(
            keys,
            label_key="label",
            spatial_size=patch,
            num_classes=num_classes,
            indices_key="label_cls",
            warn=False,
        )
    else:
        raise ValueError(f"train.label_crop: must be class_balanced or random; got {mode!r}")
    return seed_transform(Compose([crop, *_flips(keys, flip)]), seed % 2**31)


def _random_crop(patch, seed: int, flip: float = 0.0) -> Compose:
    keys = ["image"]
    return seed_transform(
        Compose([RandSpatialCropd(keys, roi_size=patch, random_size=False), *_flips(keys, flip)]),
        seed % 2**31,
    )
