"""Segmentation losses (segmentation/losses.py) against hand-computed values, and hard_labels."""

import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, make_batch

from semimed.methods.losses import hard_labels
from semimed.methods.segmentation.losses import seg_supervised_loss, weighted_ce, weighted_dice_ce

LN2 = math.log(2.0)


def test_weighted_dice_ce_with_unit_weights_is_the_plain_loss():
    batch = make_batch()
    logits = torch.randn(2, NUM_CLASSES, 16, 16, 16)
    plain = seg_supervised_loss(logits, batch["y_lb"])
    ones = weighted_dice_ce(logits, batch["y_lb"], torch.ones(NUM_CLASSES))
    assert torch.allclose(plain, ones, atol=1e-5)
    # Weighting a class changes both terms.
    w = torch.tensor([0.0, 1.0, 3.0])
    assert not torch.allclose(
        weighted_dice_ce(logits, batch["y_lb"], w, 0.0, 1.0),
        weighted_dice_ce(logits, batch["y_lb"], None, 0.0, 1.0),
    )
    assert not torch.allclose(
        weighted_dice_ce(logits, batch["y_lb"], w, 1.0, 0.0),
        weighted_dice_ce(logits, batch["y_lb"], None, 1.0, 0.0),
    )


def test_weighted_ce_is_torchs_weighted_mean_and_zero_when_no_voxel_weighs():
    logits = torch.randn(2, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    w = torch.tensor([0.0, 1.0, 2.5])
    torch_ce = torch.nn.functional.cross_entropy(logits, labels[:, 0], weight=w)
    torch.testing.assert_close(weighted_ce(logits, labels, w), torch_ce)
    zero = weighted_ce(logits.requires_grad_(), torch.zeros_like(labels), w)
    assert zero.item() == 0.0
    zero.backward()
    assert torch.isfinite(logits.grad).all()


def _uniform_two_voxels():
    """B=1, C=2, two voxels labelled 0 and 1; zero logits: p = 0.5 everywhere."""
    return torch.zeros(1, 2, 2, 1, 1), torch.tensor([0, 1]).view(1, 1, 2, 1, 1)


@pytest.mark.parametrize(
    "form,weights,expected",
    [
        # per class (each sample): Dice (2 * 0.5 + 1e-5) / (1 + 1 + 1e-5) ~ 1/2; CE = ln 2
        ("monai", None, LN2 + 0.5),
        # foreground only, smooth 1: (2 * 0.5 + 1) / (1 + 1 + 1) = 2/3 -> 1/3
        ("dhc", None, LN2 + 1 / 3),
        # weights [0, 2]: Dice 2 * 1/3; CE (0 * ln2 + 2 * ln2) / (0 + 2) = ln 2
        ("dhc", torch.tensor([0.0, 2.0]), LN2 + 2 / 3),
        # squared denominator: (2 * 0.5) / (0.25 + 0.25 + 1) = 2/3 per class; 0.5 (CE + Dice)
        ("ssl4mis", None, 0.5 * (LN2 + 1 / 3)),
    ],
)
def test_dice_formulations_match_hand_computed_values(form, weights, expected):
    logits, labels = _uniform_two_voxels()
    loss = seg_supervised_loss(logits, labels, dice=form, class_weights=weights)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_weighted_dhc_dice_is_dhcs_formula_with_many_classes():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 4, 5, 5, 5), torch.randint(0, 4, (2, 1, 5, 5, 5))
    w = torch.tensor([0.0, 0.5, 1.0, 3.0])
    p = logits.softmax(1)
    g = torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).float()
    tp, ps, gs = (p * g).sum((0, 2, 3, 4)), p.sum((0, 2, 3, 4)), g.sum((0, 2, 3, 4))
    dc = (2 * tp + 1) / (ps + gs + 1)  # DHC's SoftDiceLoss: batch, smooth 1
    expected = (w[1:] * (1 - dc[1:])).mean()  # foreground, weighted
    dice = seg_supervised_loss(logits, labels, 1.0, 0.0, "dhc", w)
    assert dice.item() == pytest.approx(expected.item(), abs=1e-5)


def test_hard_labels_equal_argmax_with_ties_and_keepdim():
    tied = torch.randint(0, 3, (2, 5, 6, 6, 6)).float()  # many ties among 5 classes
    assert torch.equal(hard_labels(tied), tied.argmax(1))
    assert torch.equal(hard_labels(tied, keepdim=True), tied.argmax(1, keepdim=True))
    flat = torch.zeros(1, 4, 3)
    flat[0, 1:, :] = 1.0  # classes 1-3 tie: the first one wins, as argmax
    assert hard_labels(flat).tolist() == [[1, 1, 1]]
    bf16 = torch.randn(2, 7, 5, 5, 5).bfloat16()
    assert torch.equal(hard_labels(bf16), bf16.argmax(1))
