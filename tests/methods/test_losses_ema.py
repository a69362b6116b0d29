"""Shared loss functions and the EMA update."""

import math

import pytest
import torch
from torch import nn

from semimed.methods.ema import make_teacher, update_ema, warmup_decay
from semimed.methods.losses import masked_cross_entropy, sigmoid_rampup, softmax_mse
from semimed.methods.segmentation.losses import seg_supervised_loss


def test_sigmoid_rampup_endpoints_and_monotone():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(1000, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0  # no ramp
    values = [sigmoid_rampup(s, 10) for s in range(12)]
    assert values == sorted(values)


def test_softmax_mse_zero_iff_same_probabilities():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 4, 4)
    assert softmax_mse(a, a + 5.0).item() == pytest.approx(0.0, abs=1e-7)  # softmax shift-invariant
    b = torch.randn(2, 3, 4, 4)
    expected = ((a.softmax(1) - b.softmax(1)) ** 2).mean()
    torch.testing.assert_close(softmax_mse(a, b), expected)


def test_masked_cross_entropy_averages_over_all_samples():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    full = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    mask = torch.tensor([True, False, True, False])
    torch.testing.assert_close(masked_cross_entropy(logits, targets, mask), full[mask].sum() / 4)
    assert masked_cross_entropy(logits, targets, torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_seg_supervised_loss_low_for_correct_and_weights_apply():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    perfect = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float() * 20
    wrong = torch.roll(perfect, shifts=1, dims=1)
    assert seg_supervised_loss(perfect, labels) < 0.01 < seg_supervised_loss(wrong, labels)
    dice_only = seg_supervised_loss(wrong, labels, dice_weight=1.0, ce_weight=0.0)
    ce_only = seg_supervised_loss(wrong, labels, dice_weight=0.0, ce_weight=1.0)
    torch.testing.assert_close(dice_only + ce_only, seg_supervised_loss(wrong, labels))


def test_make_teacher_is_frozen_copy():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        assert t is not s
        torch.testing.assert_close(t, s)


def test_update_ema_averages_params_and_copies_buffers():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    before = [p.clone() for p in teacher.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student(torch.randn(8, 3))  # changes BatchNorm running stats
    update_ema(teacher, student, decay=0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        torch.testing.assert_close(t, s)
    with pytest.raises(ValueError, match="decay"):
        update_ema(teacher, student, decay=1.5)


def test_warmup_decay():
    assert warmup_decay(0.99, 0) == 0.0  # first update copies the student
    assert warmup_decay(0.99, 1) == 0.5
    assert warmup_decay(0.99, 10_000) == 0.99
