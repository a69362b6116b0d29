"""Segmentation method fidelity (issue 15): NaN-free weighted losses, the reference Dice
formulations, DiffDW on absent classes, a Mean Teacher consistency that matters, the logged
unsup/sup ratio, and the shared argmax helper (issue 17)."""

import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, make, make_batch, tiny_unet, trainable
from torch import nn

from semimed.methods import METHODS, mean_teacher
from semimed.methods.classification import MeanTeacher as ClsMeanTeacher
from semimed.methods.losses import add_unsup_ratio, hard_labels, softmax_mse
from semimed.methods.segmentation import DHC, MeanTeacher
from semimed.methods.segmentation.class_weights import hard_dice_per_class
from semimed.methods.segmentation.losses import seg_supervised_loss, weighted_ce

LN2 = math.log(2.0)


def _bias_towards(net: nn.Module, cls: int, value: float) -> None:
    """Add ``value`` to the output bias of class ``cls``: the network then predicts it (or,
    negative, never predicts it) at every voxel."""
    last = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)][-1]
    with torch.no_grad():
        last.bias[cls] += value


# NaN on an all-background batch (15.1) ---------------------------------------------------------


def test_dhc_all_background_batch_gives_a_finite_loss_and_gradients():
    torch.manual_seed(0)
    method = DHC(tiny_unet, DHC.Params(), NUM_CLASSES, 10, class_counts=[1e5, 100.0, 10.0])
    for net in (method.net, method.net2):
        _bias_towards(net, 0, 50.0)  # both networks predict background only
    batch = make_batch()
    batch["y_lb"] = torch.zeros_like(batch["y_lb"])  # background-centred labeled crops
    terms = method.training_step(batch, 5)
    # DistDW gives the only class present (background) weight 0: network b's weighted CE is
    # 0 / 0 on its labeled crops and on its pseudo-labels.
    assert method.dist_weights[0] == 0
    assert torch.isfinite(terms["loss"]) and torch.isfinite(terms["sup"])
    terms["loss"].backward()
    grads = [p.grad for p in trainable(method) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


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


# Dice formulations (15.2), hand-computed -------------------------------------------------------


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


# DiffDW leaves an absent class alone (15.3) -----------------------------------------------------


def test_diffdw_state_of_a_class_absent_from_prediction_and_label_is_unchanged():
    torch.manual_seed(0)
    method = DHC(tiny_unet, DHC.Params(), NUM_CLASSES, 10)
    _bias_towards(method.net, 2, -50.0)  # network a never predicts class 2
    batch = make_batch()
    batch["y_lb"] = batch["y_lb"].clamp(max=1)  # and no label is class 2
    buffers = ("last_dice", "learn", "unlearn", "one_minus_dice")
    before = {k: getattr(method, k).clone() for k in buffers}
    for step in range(3):
        method.training_step(batch, step)
    for k in buffers:
        assert getattr(method, k)[2] == before[k][2], k  # untouched
    assert not torch.equal(method.one_minus_dice[:2], before["one_minus_dice"][:2])
    logits = torch.randn(2, 3, 4, 4, 4)
    logits[:, 2] = -50.0
    assert hard_dice_per_class(logits, torch.zeros(2, 1, 4, 4, 4, dtype=torch.long))[2].isnan()


# Mean Teacher consistency (15.4) and the logged ratio -------------------------------------------


def test_segmentation_mean_teacher_consistency_is_more_than_one_percent_of_the_loss():
    method = make(MeanTeacher, total_steps=40)  # default Params: weight and reduction
    opt = torch.optim.Adam(trainable(method), lr=1e-2)
    for step in range(40):  # a typical state: the teacher lags a student that has learned
        terms = method.training_step(make_batch(step), step)
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        method.on_step_end(step)
    terms = add_unsup_ratio(method.training_step(make_batch(99), 40))
    ratio = (terms["weight"] * terms["unsup"] / terms["sup"]).item()
    assert ratio > 0.01
    bound = 2 * 2.0**-24 * (terms["loss"] + terms["sup"]).item() / terms["sup"].item()
    assert terms["unsup_ratio"].item() == pytest.approx(ratio, abs=bound)


def test_mean_teacher_sums_over_classes_only_for_segmentation():
    student, teacher = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 4, 4, 4)
    mean = softmax_mse(student, teacher)
    torch.testing.assert_close(make(MeanTeacher).consistency_loss(student, teacher), 3 * mean)
    # classification keeps the shared cost (USB's class mean): its numbers do not move
    assert "consistency_loss" not in vars(ClsMeanTeacher)
    assert torch.equal(mean_teacher.MeanTeacher.consistency_loss(None, student, teacher), mean)


@pytest.mark.parametrize(
    "name", [n for n, c in METHODS["segmentation"].items() if c.uses_unlabeled]
)
def test_every_semi_supervised_method_logs_its_unsup_ratio(name):
    cls = METHODS["segmentation"][name]
    torch.manual_seed(0)
    method = cls(
        lambda: tiny_unet(deep_supervision=cls.deep_supervision),
        cls.Params(),
        num_classes=NUM_CLASSES,
        total_steps=10,
        num_unlabeled=4,
    )
    terms = add_unsup_ratio(method.training_step(make_batch(), 9))
    ratio = terms["unsup_ratio"]
    assert not ratio.requires_grad
    expected = terms["weight"] * terms["unsup"] / terms["sup"]
    # (loss - sup) / sup: loss and sup are float32, each within 2^-24 of its value, so the
    # difference carries up to 2^-24 (loss + sup) of rounding; ratio within that over sup
    bound = 2 * 2.0**-24 * (terms["loss"] + terms["sup"]).item() / terms["sup"].item()
    assert ratio.item() == pytest.approx(expected.item(), abs=bound)


# argmax helper (17.2) ---------------------------------------------------------------------------


def test_hard_labels_equal_argmax_with_ties_and_keepdim():
    tied = torch.randint(0, 3, (2, 5, 6, 6, 6)).float()  # many ties among 5 classes
    assert torch.equal(hard_labels(tied), tied.argmax(1))
    assert torch.equal(hard_labels(tied, keepdim=True), tied.argmax(1, keepdim=True))
    flat = torch.zeros(1, 4, 3)
    flat[0, 1:, :] = 1.0  # classes 1-3 tie: the first one wins, as argmax
    assert hard_labels(flat).tolist() == [[1, 1, 1]]
    bf16 = torch.randn(2, 7, 5, 5, 5).bfloat16()
    assert torch.equal(hard_labels(bf16), bf16.argmax(1))
