"""Segmentation methods on tiny synthetic 16^3 volumes: terms, gradients, views, EMA, registry."""

import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet, trainable

from semimed.methods import METHODS, get_method
from semimed.methods.losses import softmax_mse
from semimed.methods.segmentation import MeanTeacher, Supervised, SupervisedFull

# Registry -------------------------------------------------------------------------------------


def test_registry_names_and_flags():
    registry = METHODS["segmentation"]
    # Every method of the segmentation suite (DHC and its baselines), in priority order.
    suite = ["uamt", "cps", "urpc", "dhc", "crest", "simis", "depl", "adsh", "cld", "dst"]
    assert [m for m in registry if m in suite + ["ssnet", "acisis"]] == suite + ["ssnet", "acisis"]
    assert registry["supervised"] is Supervised and registry["mean_teacher"] is MeanTeacher
    assert registry["supervised_full"] is SupervisedFull
    for name, cls in METHODS["segmentation"].items():
        assert cls.name == name and get_method("segmentation", name) is cls
    assert SupervisedFull.labeled_pool == "all" and Supervised.labeled_pool == "labeled"
    assert MeanTeacher.uses_unlabeled and not Supervised.uses_unlabeled
    with pytest.raises(ValueError, match="unknown segmentation method 'fixmatch'; choose one of: "):
        get_method("segmentation", "fixmatch")


@pytest.mark.parametrize(
    "cls,kwargs,field",
    [
        (Supervised, {"dice_weight": -1.0}, "dice_weight"),
        (Supervised, {"ce_weight": -0.5}, "ce_weight"),
        (Supervised, {"dice_weight": 0.0, "ce_weight": 0.0}, "dice_weight, ce_weight"),
        (MeanTeacher, {"ema_decay": 1.0}, "ema_decay"),
        (MeanTeacher, {"consistency": -0.1}, "consistency"),
        (MeanTeacher, {"rampup": 1.5}, "rampup"),
    ],
)
def test_params_reject_bad_values(cls, kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**kwargs)


def test_base_rejects_bad_sizes():
    with pytest.raises(ValueError, match="total_steps"):
        Supervised(tiny_unet, Supervised.Params(), num_classes=NUM_CLASSES, total_steps=0)
    with pytest.raises(ValueError, match="num_classes"):
        Supervised(tiny_unet, Supervised.Params(), num_classes=1, total_steps=5)


# Supervised -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Supervised, SupervisedFull])
def test_supervised_ignores_unlabeled_and_fits(cls):
    method = make(cls, dice_weight=1.0, ce_weight=0.5)
    batch = make_batch()
    out = method.training_step(batch, 0)
    assert set(out) == {"loss", "sup"}
    assert batch.read == {"x_lb", "y_lb"}
    assert method.inference_model() is method.net
    assert fits_fixed_batch(method)


# Mean Teacher ---------------------------------------------------------------------------------


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
