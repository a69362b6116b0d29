import torch

from semimed.transforms import (
    BatchRandAffined,
    BatchRandCutoutd,
    BatchRandIntensityd,
    seed_transform,
    strong_augment,
    weak_augment,
)


def _batch(*shape):
    torch.manual_seed(0)
    return torch.rand(*shape)


def test_views_keep_shape_dtype_and_change_the_image():
    x = _batch(8, 1, 32, 32)
    for t in (weak_augment("classification"), strong_augment("classification")):
        y = seed_transform(t, 0)({"image": x})["image"]
        assert y.shape == x.shape and y.dtype == x.dtype
        assert (y - x).abs().mean() > 0.01


def test_per_sample_randomness_and_seed_reproducibility():
    x = _batch(1, 1, 32, 32).repeat(4, 1, 1, 1)
    t = BatchRandAffined(["image"], rotate=0.5, translate=0.1, scale=0.1)
    y1 = seed_transform(t, 3)({"image": x})["image"]
    assert not torch.allclose(y1[0], y1[1])  # each image its own parameters
    y2 = seed_transform(t, 3)({"image": x})["image"]
    assert torch.equal(y1, y2)


def test_affine_label_stays_integer_and_aligned():
    img = torch.zeros(2, 1, 32, 32)
    img[:, :, 8:20, 10:24] = 1.0
    lab = (img > 0.5).long()
    t = seed_transform(BatchRandAffined(["image", "label"], rotate=0.3, label_keys=["label"]), 1)
    out = t({"image": img, "label": lab})
    assert out["label"].dtype == torch.long
    assert set(out["label"].unique().tolist()) <= {0, 1}
    agree = ((out["image"] > 0.5).long() == out["label"]).float().mean()
    assert agree > 0.97


def test_intensity_and_cutout_3d():
    x = _batch(2, 1, 16, 16, 12)
    y = seed_transform(BatchRandIntensityd(["image"], gamma=0.3, noise=0.1, blur=1.0, prob=1.0), 0)(
        {"image": x}
    )["image"]
    assert y.shape == x.shape and not torch.allclose(x, y)
    z = seed_transform(BatchRandCutoutd(["image"], size=0.5, prob=1.0), 0)({"image": x})["image"]
    assert (z == 0).sum() >= 2 * 8 * 8 * 6


def test_segmentation_strong_view_is_spatially_aligned():
    x = torch.zeros(2, 1, 16, 16, 16)
    x[:, :, 4:12, 4:12, 4:12] = 1.0
    y = seed_transform(strong_augment("segmentation"), 0)({"image": x})["image"]
    inside = y[:, :, 4:12, 4:12, 4:12].mean()
    outside = y[:, :, :2].mean()
    assert inside > outside + 0.5  # intensity-only: the structure has not moved
    assert len(weak_augment("segmentation").transforms) == 0
