"""Mean Teacher classification: student / teacher views, consistency ramp, frozen EMA teacher."""

import math

import pytest
import torch
import torch.nn.functional as F
from cls_helpers import fits_fixed_batch, make, make_batch, trainable, unsup_alone_reaches_weights

from semimed.methods.classification import MeanTeacher
from semimed.methods.losses import softmax_mse


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (MeanTeacher, "ema_decay", 1.0),
        (MeanTeacher, "ema_decay", -0.1),
        (MeanTeacher, "consistency", -1.0),
        (MeanTeacher, "rampup", 1.5),
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


def test_mean_teacher_student_sees_strong_teacher_sees_weak():
    method = make(MeanTeacher)
    batch = make_batch()
    seen = {"student": [], "teacher": []}
    method.net.register_forward_hook(lambda m, i, o: seen["student"].append((i[0], o)))
    method.teacher.register_forward_hook(lambda m, i, o: seen["teacher"].append((i[0], o)))
    out = method.training_step(batch, step=10)

    assert len(seen["student"]) == 1 and len(seen["teacher"]) == 1
    (student_in, student_out), (teacher_in, teacher_out) = seen["student"][0], seen["teacher"][0]
    # Only the teacher sees the weak view; the student's unlabeled input is the strong view.
    torch.testing.assert_close(student_in, torch.cat([batch["x_lb"], batch["x_ulb_s"]]))
    torch.testing.assert_close(teacher_in, batch["x_ulb_w"])
    assert not teacher_out.requires_grad
    torch.testing.assert_close(out["unsup"], softmax_mse(student_out[4:], teacher_out))
    torch.testing.assert_close(out["sup"], F.cross_entropy(student_out[:4], batch["y_lb"]))
    assert set(out) == {"loss", "sup", "unsup", "weight"}


def test_mean_teacher_unsup_term_alone_reaches_student_weights():
    method = make(MeanTeacher, consistency=1.0)
    out = method.training_step(make_batch(), step=100)  # past the ramp: weight 1
    assert out["weight"] == 1.0
    assert unsup_alone_reaches_weights(method, out)
    assert all(p.grad is None for p in method.teacher.parameters())


def test_mean_teacher_weight_ramps_up():
    method = make(MeanTeacher, total_steps=100, consistency=50.0, rampup=0.4)
    batch = make_batch()
    weights = [method.training_step(batch, s)["weight"].item() for s in (0, 20, 40, 90)]
    assert weights[0] == pytest.approx(50 * math.exp(-5))
    assert weights[1] == pytest.approx(50 * math.exp(-5 * 0.25))
    assert weights[2] == pytest.approx(50) and weights[3] == pytest.approx(50)


def test_mean_teacher_fits_fixed_batch():
    assert fits_fixed_batch(make(MeanTeacher, consistency=1.0))


def test_mean_teacher_teacher_frozen_moves_and_is_evaluated():
    method = make(MeanTeacher, ema_decay=0.99)
    assert method.inference_model() is method.teacher
    assert not {id(p) for p in method.teacher.parameters()} & {id(p) for p in trainable(method)}

    opt = torch.optim.SGD(trainable(method), lr=0.5)
    method.training_step(make_batch(), 10)["loss"].backward()
    assert all(p.grad is None for p in method.teacher.parameters())
    opt.step()
    before = [p.clone() for p in method.teacher.parameters()]
    method.on_step_end(step=1000)  # past the warm-up: decay 0.99
    after = list(method.teacher.parameters())
    assert any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    for b, a, s in zip(before, after, method.net.parameters(), strict=True):
        torch.testing.assert_close(a, 0.99 * b + 0.01 * s)
