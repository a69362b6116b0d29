"""Segmentation methods on tiny synthetic 16^3 volumes: terms, gradients, views, EMA, registry."""

import math

import pytest
import torch

from semimed.losses import softmax_mse
from semimed.methods import METHODS, get_method
from semimed.methods.segmentation import MeanTeacher, Supervised, SupervisedFull
from semimed.networks import build_network

NUM_CLASSES = 3


def tiny_unet():
    return build_network(
        "unet",
        spatial_dims=3,
        in_channels=1,
        num_classes=NUM_CLASSES,
        channels=(4, 8, 16),
        dropout=0.0,
    )


class RecordingBatch(dict):
    """A batch that remembers which keys a method read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_lb = torch.rand(2, 1, 16, 16, 16, generator=g)
    # Labels tied to intensity so the fixed batch is learnable.
    y_lb = (x_lb * NUM_CLASSES).long().clamp(max=NUM_CLASSES - 1)
    x_ulb_w = torch.rand(2, 1, 16, 16, 16, generator=g)
    return RecordingBatch(
        x_lb=x_lb,
        y_lb=y_lb,
        x_ulb_w=x_ulb_w,
        # Aligned with the weak view but with another intensity: tells the two views apart.
        x_ulb_s=(0.5 * x_ulb_w + 0.4).clamp(0, 1),
    )


def make(cls, total_steps=10, **params):
    torch.manual_seed(0)
    return cls(tiny_unet, cls.Params(**params), num_classes=NUM_CLASSES, total_steps=total_steps)


def trainable(method):
    return [p for p in method.parameters() if p.requires_grad]


def fits_fixed_batch(method, steps=8):
    """True if a few Adam steps on one fixed batch lower the loss (measured at a fixed step)."""
    batch = make_batch()
    opt = torch.optim.Adam(trainable(method), lr=1e-2)
    before = method.training_step(batch, 0)["loss"].item()
    for step in range(steps):
        opt.zero_grad()
        method.training_step(batch, step)["loss"].backward()
        opt.step()
        method.on_step_end(step)
    return method.training_step(batch, 0)["loss"].item() < before


# Registry -------------------------------------------------------------------------------------


def test_registry_names_and_flags():
    assert METHODS["segmentation"] == {
        "supervised": Supervised,
        "supervised_full": SupervisedFull,
        "mean_teacher": MeanTeacher,
    }
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
    torch.testing.assert_close(out["unsup"], softmax_mse(student_out[2:], teacher_out))
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
