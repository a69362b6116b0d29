"""Mean Teacher segmentation: views, class-summed consistency and its ramp, EMA teacher."""

import math

import pytest
import torch
from seg_helpers import fits_fixed_batch, make, make_batch, trainable

from semimed.methods import mean_teacher
from semimed.methods.classification import MeanTeacher as ClsMeanTeacher
from semimed.methods.losses import add_unsup_ratio, softmax_mse
from semimed.methods.segmentation import MeanTeacher


def test_mean_teacher_student_sees_strong_teacher_sees_weak():
    method = make(MeanTeacher)
    batch = make_batch()
    seen = {}
    method.net.register_forward_hook(lambda m, i, o: seen.update(student=(i[0], o)))
    method.teacher.register_forward_hook(lambda m, i, o: seen.update(teacher=(i[0], o)))
    out = method.training_step(batch, step=10)

    student_in, student_out = seen["student"]
    teacher_in, teacher_out = seen["teacher"]
    torch.testing.assert_close(student_in, torch.cat([batch["x_lb"], batch["x_ulb_s"]]))
    torch.testing.assert_close(teacher_in, batch["x_ulb_w"])
    assert not teacher_out.requires_grad
    # The consistency compares the student's STRONG output with the teacher's weak output.
    expected = softmax_mse(student_out[2:], teacher_out, sum_classes=True)
    torch.testing.assert_close(out["unsup"], expected)
    assert set(out) == {"loss", "sup", "unsup", "weight"}


def test_mean_teacher_unsup_term_alone_reaches_student_weights():
    method = make(MeanTeacher, consistency=1.0)
    out = method.training_step(make_batch(), step=10)  # past the ramp: weight 1
    assert out["weight"] == 1.0 and out["unsup"] > 0
    out["unsup"].backward()
    grads = [p.grad for p in method.net.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert next(method.net.parameters()).grad.abs().sum() > 0  # reaches the first conv
    assert all(p.grad is None for p in method.teacher.parameters())


def test_mean_teacher_weight_ramps_up():
    method = make(MeanTeacher, total_steps=100, consistency=0.1, rampup=0.4)
    batch = make_batch()
    weights = [method.training_step(batch, s)["weight"].item() for s in (0, 20, 40, 90)]
    assert weights[0] == pytest.approx(0.1 * math.exp(-5))
    assert weights[1] == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert weights[2] == pytest.approx(0.1) and weights[3] == pytest.approx(0.1)


def test_mean_teacher_fits_fixed_batch():
    assert fits_fixed_batch(make(MeanTeacher, consistency=1.0))


def test_mean_teacher_teacher_frozen_moves_and_is_evaluated():
    method = make(MeanTeacher, ema_decay=0.99)
    assert method.inference_model() is method.teacher
    teacher_ids = {id(p) for p in method.teacher.parameters()}
    assert not teacher_ids & {id(p) for p in trainable(method)}

    opt = torch.optim.SGD(trainable(method), lr=0.5)
    method.training_step(make_batch(), 10)["loss"].backward()
    opt.step()
    before = [p.clone() for p in method.teacher.parameters()]
    method.on_step_end(step=1000)
    after = list(method.teacher.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    for b, a, s in zip(before, after, method.net.parameters(), strict=True):
        torch.testing.assert_close(a, 0.99 * b + 0.01 * s)
    assert set(method.state_dict()) >= {f"teacher.{k}" for k in method.teacher.state_dict()}


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
