"""Segmentation data and model selection fidelity: where labeled crops lie
(``train.label_crop``), DHC's flips (``train.crop_flip``), and validation under the test
scorer's empty rule."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from semimed.data.crops import _one, label_crop
from semimed.data.loaders import StreamSpec, train_batches
from semimed.data.taskdata import TaskData
from semimed.evaluate.segmentation import SegmentationScorer
from semimed.inference import validation_score

PATCH = (16, 16, 16)


def _imbalanced_item(num_classes=3):
    """A 48^3 volume (1, X, Y, Z): background, a 6^3 organ (class 1), a 3^3 organ (class 2);
    the image encodes the label so flips of image and label can be compared."""
    from semimed.data.crops import _padded_item

    label = np.zeros((1, 48, 48, 48), np.uint8)
    label[0, 6:12, 30:36, 20:26] = 1
    label[0, 40:43, 5:8, 40:43] = 2
    return _padded_item((label.astype(np.float32) / 2, label), PATCH, num_classes)


def _foreground_share(mode, flip=0.0, draws=60):
    crop = label_crop(PATCH, 3, seed=0, mode=mode, flip=flip)
    item = _imbalanced_item()
    crops = [_one(crop(dict(item))) for _ in range(draws)]
    for c in crops:  # image and label stay aligned through crop and flips
        assert torch.equal(torch.as_tensor(c["image"]) * 2, torch.as_tensor(c["label"]).float())
    hist = sum(np.bincount(np.asarray(c["label"]).ravel(), minlength=3) for c in crops)
    return hist / hist.sum()


def test_random_label_crops_keep_the_class_imbalance_class_balanced_removes():
    balanced, uniform = _foreground_share("class_balanced"), _foreground_share("random")
    # every class centres 1/3 of the class-balanced crops; uniform crops rarely meet an organ
    assert balanced[1] > 5 * uniform[1] and balanced[2] > 5 * uniform[2]
    assert uniform[0] > 0.98 > balanced[0]


def test_crop_flip_mirrors_image_and_label_together():
    _foreground_share("random", flip=0.5)  # asserts alignment on every crop
    plain = label_crop(PATCH, 3, 0, "class_balanced")(_imbalanced_item())
    flipped = label_crop(PATCH, 3, 0, "class_balanced", flip=1.0)(_imbalanced_item())
    # the same crop (same seeds for the crop), mirrored along x and y
    torch.testing.assert_close(
        torch.as_tensor(_one(flipped)["label"]), torch.as_tensor(_one(plain)["label"]).flip(1, 2)
    )
    with pytest.raises(ValueError, match="train.label_crop"):
        label_crop(PATCH, 3, 0, "centre")


def _toy_data(volumes, val):
    return TaskData(
        task="segmentation",
        class_names=["background", "a", "b", "c"][
            : 1 + max(int(v[1].max()) for v in volumes.values())
        ],
        split={"train_labeled": list(volumes), "train_unlabeled": [], "val": val},
        index={},
        volumes=volumes,
        spacing=(1.0, 1.0, 1.0),
    )


def test_train_stream_uses_the_configured_label_crop(tiny):
    cfg = tiny("segmentation")
    item = _imbalanced_item()
    data = _toy_data({"v0": (item["image"], item["label"])}, [])
    shares = {}
    for mode in ("class_balanced", "random"):
        train = dataclasses.replace(cfg.train, label_crop=mode, batch_size=4)
        stream = train_batches(
            data, dataclasses.replace(cfg, train=train), StreamSpec("s"), 0, "cpu"
        )
        labels = torch.cat([next(stream)["y_lb"] for _ in range(10)])
        shares[mode] = (labels > 0).float().mean().item()
    assert shares["class_balanced"] > 5 * shares["random"]


class LabelFromImage(nn.Module):
    """A 'network' whose prediction is the image's value rounded (image = a label map)."""

    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        labels = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        return 10.0 * nn.functional.one_hot(labels, self.num_classes).movedim(-1, 1).float()


def test_validation_scores_a_hallucinated_organ_as_the_test_scorer_does(tiny):
    cfg = tiny("segmentation")
    shape = (1, 20, 20, 20)
    label = np.zeros(shape, np.uint8)
    label[0, 2:8, 2:8, 2:8] = 1
    label[0, 12:16, 12:16, 12:16] = 2
    pred_b = label.copy()
    pred_b[0, 12:16, 12:16, 12:16] = 0  # class 2 in neither map ...
    label_b = pred_b.copy()
    pred_b[0, 14:18, 2:6, 2:6] = 3  # ... and class 3 hallucinated: Dice 0 in the test
    label[0, 0, 0, 0] = 3  # volume a holds class 3 (one voxel), predicted right
    volumes = {
        "a": (label.astype(np.float32), label),
        "b": (pred_b.astype(np.float32), label_b),
    }
    data = _toy_data(volumes, ["a", "b"])
    score = validation_score(LabelFromImage(4), data, cfg, "cpu")
    scorer = SegmentationScorer(data.class_names)
    scorer.add(label[0], label[0], (1, 1, 1))
    scorer.add(pred_b[0], label_b[0], (1, 1, 1))
    # class 1: (1 + 1) / 2; class 2: 1 (volume a only); class 3: (1 + 0) / 2
    # Each Dice here is exactly 1, 0.5 or 0; only the mean over classes rounds (one float32
    # rounding, ~6e-8), so 1e-6 holds on any processor.
    assert scorer.aggregate()["dice"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-6)
    assert score == pytest.approx(scorer.aggregate()["dice"], abs=1e-6)
