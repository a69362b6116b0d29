"""Classification methods on tiny synthetic 16x16 images: terms, gradients, EMA, registry."""

import math

import pytest
import torch
import torch.nn.functional as F
from seg_helpers import RecordingBatch, loss_drops, trainable
from torch import nn

from semimed.methods import METHODS, get_method
from semimed.methods.classification import (
    TEAR,
    FixMatch,
    FreeMatch,
    MeanTeacher,
    MixMatch,
    PseudoLabel,
    SimCLR,
    Supervised,
    SupervisedFull,
)
from semimed.methods.losses import masked_cross_entropy, softmax_mse
from semimed.networks import DataShape, build_network

NUM_CLASSES = 3


def tiny_cnn():
    return build_network("cnn", DataShape.single(2, 1, NUM_CLASSES), channels=(4, 8), dropout=0.0)


def make_batch(seed=0, n_lb=4, n_ulb=6):
    g = torch.Generator().manual_seed(seed)
    x_ulb_w = torch.rand(n_ulb, 1, 16, 16, generator=g)
    return RecordingBatch(
        x_lb=torch.rand(n_lb, 1, 16, 16, generator=g),
        y_lb=torch.randint(0, NUM_CLASSES, (n_lb,), generator=g),
        x_ulb_w=x_ulb_w,
        # A different image per sample, so the strong view's predictions differ from the weak's.
        x_ulb_s=(x_ulb_w + 0.3 * torch.rand(n_ulb, 1, 16, 16, generator=g)).clamp(0, 1),
    )


def make(cls, total_steps=100, **params):
    torch.manual_seed(0)
    return cls(tiny_cnn, cls.Params(**params), num_classes=NUM_CLASSES, total_steps=total_steps)


def intensity_net():
    """Class set by mean intensity: bright images -> class 0, dark images -> class 1."""
    head = nn.Linear(1, NUM_CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[10.0], [-10.0], [0.0]]))
        head.bias.copy_(torch.tensor([-5.0, 5.0, 0.0]))
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def bright_weak_dark_strong(batch):
    """Weak views bright (class 0), strong views dark (class 1): weak targets make CE high.

    The two intensities sit at different distances from the decision boundary (0.5), so the
    CE with the views swapped (about 8.0) differs from the right one (about 6.0).
    """
    batch["x_ulb_w"] = torch.full((6, 1, 16, 16), 0.9)
    batch["x_ulb_s"] = torch.full((6, 1, 16, 16), 0.2)
    return batch


def unsup_alone_reaches_weights(method, out):
    """Back-propagate the unsupervised term alone; True if it reaches head and first conv."""
    assert out["unsup"] > 0
    out["unsup"].backward()
    net = method.net
    assert all(p.grad is not None for p in net.parameters())
    first_conv = next(net.backbone.parameters())
    return net.head.weight.grad.abs().sum() > 0 and first_conv.grad.abs().sum() > 0


def fits_fixed_batch(method, steps=15):
    """``loss_drops`` on the fixed classification batch."""
    return loss_drops(method, make_batch(), steps)


# Registry -------------------------------------------------------------------------------------


def test_registry_names_and_flags():
    assert METHODS["classification"] == {
        "supervised": Supervised,
        "supervised_full": SupervisedFull,
        "fixmatch": FixMatch,
        "mean_teacher": MeanTeacher,
        "pseudo_label": PseudoLabel,
        "mixmatch": MixMatch,
        "freematch": FreeMatch,
        "tear": TEAR,
        "simclr": SimCLR,
    }
    for name, cls in METHODS["classification"].items():
        assert cls.name == name
        assert get_method("classification", name) is cls
    assert not Supervised.uses_unlabeled and Supervised.labeled_pool == "labeled"
    assert not SupervisedFull.uses_unlabeled and SupervisedFull.labeled_pool == "all"
    for cls in (FixMatch, MeanTeacher, PseudoLabel, MixMatch, FreeMatch, TEAR, SimCLR):
        assert cls.uses_unlabeled and cls.labeled_pool == "labeled"
    assert SimCLR.unlabeled_pool == "all" and MixMatch.views == ("w", "w2")


def test_registry_errors_list_choices():
    with pytest.raises(
        ValueError,
        match="unknown classification method 'remixmatch'; choose one of: "
        "supervised, supervised_full, fixmatch, mean_teacher, pseudo_label, mixmatch, ",
    ):
        get_method("classification", "remixmatch")
    with pytest.raises(ValueError, match="unknown task 'detection'.*classification, segmentation"):
        get_method("detection", "fixmatch")


def test_wrong_params_type_rejected():
    with pytest.raises(TypeError, match="params must be"):
        FixMatch(tiny_cnn, Supervised.Params(), num_classes=NUM_CLASSES, total_steps=10)


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (Supervised, "label_smoothing", 1.0),
        (Supervised, "label_smoothing", -0.1),
        (FixMatch, "threshold", 1.5),
        (FixMatch, "lambda_u", -1.0),
        (FixMatch, "temperature", 0.0),
        (FixMatch, "ema_decay", 1.0),
        (MeanTeacher, "ema_decay", 1.0),
        (MeanTeacher, "ema_decay", -0.1),
        (MeanTeacher, "consistency", -1.0),
        (MeanTeacher, "rampup", 1.5),
        (PseudoLabel, "threshold", -0.1),
        (PseudoLabel, "lambda_u", -1.0),
        (PseudoLabel, "rampup", -0.1),
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


# Supervised -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Supervised, SupervisedFull])
def test_supervised_ignores_unlabeled(cls):
    method = make(cls, label_smoothing=0.1)
    batch = make_batch()
    out = method.training_step(batch, 0)
    assert set(out) == {"loss", "sup"}
    assert batch.read == {"x_lb", "y_lb"}
    # Works without unlabeled keys at all.
    method.training_step({"x_lb": batch["x_lb"], "y_lb": batch["y_lb"]}, 0)
    assert method.inference_model() is method.net


@pytest.mark.parametrize("cls", [Supervised, SupervisedFull])
def test_supervised_fits_fixed_batch(cls):
    assert fits_fixed_batch(make(cls))


# FixMatch -------------------------------------------------------------------------------------


def test_fixmatch_one_forward_pass_weak_targets_strong_predictions():
    # threshold 0: every pseudo-label counts, so the unsupervised term must be non-zero.
    method = make(FixMatch, threshold=0.0)
    batch = make_batch()
    calls = []
    method.net.register_forward_hook(lambda mod, inp, out: calls.append((inp[0], out)))
    out = method.training_step(batch, 0)

    assert len(calls) == 1, "FixMatch must make exactly one forward pass"
    x, logits = calls[0]
    torch.testing.assert_close(x, torch.cat([batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]]))
    logits_w, logits_s = logits[4:10], logits[10:]
    # Targets come from the weak view, predictions from the strong view, never the reverse.
    expected = masked_cross_entropy(logits_s, logits_w.argmax(1), torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(out["unsup"], expected)
    assert out["unsup"] > 0 and out["mask_ratio"] == 1.0
    assert set(out) == {"loss", "sup", "unsup", "mask_ratio"}


def test_fixmatch_pseudo_labels_come_from_weak_view():
    method = FixMatch(intensity_net, FixMatch.Params(threshold=0.9), NUM_CLASSES, total_steps=10)
    batch = bright_weak_dark_strong(make_batch())
    out = method.training_step(batch, 0)
    logits_s = method.net(batch["x_ulb_s"])
    expected = F.cross_entropy(logits_s, torch.zeros(6, dtype=torch.long))
    assert out["mask_ratio"] == 1.0
    torch.testing.assert_close(out["unsup"], expected)
    assert out["unsup"] > 5


@pytest.mark.parametrize("cls", [FixMatch, PseudoLabel])
def test_unsup_gradient_flows_only_through_strong_view(cls):
    method = make(cls, threshold=0.0)
    captured = {}

    def keep_output(mod, inp, out):
        out.retain_grad()
        captured["logits"] = out

    method.net.register_forward_hook(keep_output)
    method.training_step(make_batch(), 0)["unsup"].backward()
    grad = captured["logits"].grad  # rows: 4 labeled, 6 weak, 6 strong
    assert grad[:10].abs().sum() == 0 and grad[10:].abs().sum() > 0


def test_fixmatch_unsup_term_alone_reaches_weights():
    method = make(FixMatch, threshold=0.0)
    assert unsup_alone_reaches_weights(method, method.training_step(make_batch(), 0))


def test_fixmatch_threshold_one_masks_everything():
    method = make(FixMatch, threshold=1.0)
    out = method.training_step(make_batch(), 0)
    assert out["mask_ratio"] == 0.0 and out["unsup"] == 0.0
    torch.testing.assert_close(out["loss"], out["sup"])


def test_fixmatch_fits_fixed_batch():
    assert fits_fixed_batch(make(FixMatch, threshold=0.5))


def test_fixmatch_ema_is_frozen_moves_and_is_evaluated():
    method = make(FixMatch, threshold=0.0, ema_decay=0.9)
    assert method.inference_model() is method.ema
    ema_ids = {id(p) for p in method.ema.parameters()}
    assert not ema_ids & {id(p) for p in trainable(method)}

    opt = torch.optim.SGD(trainable(method), lr=0.1)
    method.training_step(make_batch(), 0)["loss"].backward()
    assert all(p.grad is None for p in method.ema.parameters())
    opt.step()
    before = [p.clone() for p in method.ema.parameters()]
    method.on_step_end(step=100)  # past the warm-up: decay 0.9
    moved = [not torch.equal(b, p) for b, p in zip(before, method.ema.parameters(), strict=True)]
    assert any(moved)
    for b, p, s in zip(before, method.ema.parameters(), method.net.parameters(), strict=True):
        torch.testing.assert_close(p, 0.9 * b + 0.1 * s)


def test_fixmatch_without_ema_evaluates_student():
    method = make(FixMatch, ema_decay=0.0)
    assert method.ema is None and method.inference_model() is method.net
    method.on_step_end(0)  # no-op, no error


# Mean Teacher ---------------------------------------------------------------------------------


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


# Pseudo-Label ---------------------------------------------------------------------------------


def test_pseudo_label_one_forward_pass_weak_targets_strong_predictions():
    method = make(PseudoLabel, threshold=0.0, rampup=0.0)
    batch = make_batch()
    calls = []
    method.net.register_forward_hook(lambda mod, inp, out: calls.append((inp[0], out)))
    out = method.training_step(batch, 0)

    assert len(calls) == 1
    x, logits = calls[0]
    torch.testing.assert_close(x, torch.cat([batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]]))
    logits_w, logits_s = logits[4:10], logits[10:]
    expected = masked_cross_entropy(logits_s, logits_w.argmax(1), torch.ones(6, dtype=torch.bool))
    torch.testing.assert_close(out["unsup"], expected)
    assert out["unsup"] > 0 and out["mask_ratio"] == 1.0 and out["weight"] == 1.0
    assert set(out) == {"loss", "sup", "unsup", "mask_ratio", "weight"}


def test_pseudo_label_targets_come_from_weak_view():
    params = PseudoLabel.Params(threshold=0.9, rampup=0.0)
    method = PseudoLabel(intensity_net, params, NUM_CLASSES, total_steps=10)
    batch = bright_weak_dark_strong(make_batch())
    out = method.training_step(batch, 0)
    expected = F.cross_entropy(method.net(batch["x_ulb_s"]), torch.zeros(6, dtype=torch.long))
    assert out["mask_ratio"] == 1.0
    torch.testing.assert_close(out["unsup"], expected)
    assert out["unsup"] > 5


def test_pseudo_label_unsup_term_alone_reaches_weights():
    method = make(PseudoLabel, threshold=0.0)
    assert unsup_alone_reaches_weights(method, method.training_step(make_batch(), 0))


def test_pseudo_label_weight_ramps_up_linearly():
    method = make(PseudoLabel, total_steps=100, threshold=0.0, lambda_u=2.0, rampup=0.4)
    batch = make_batch()
    outs = [method.training_step(batch, s) for s in (0, 20, 40, 90)]
    assert [o["weight"].item() for o in outs] == pytest.approx([0.0, 1.0, 2.0, 2.0])
    torch.testing.assert_close(outs[0]["loss"], outs[0]["sup"])


def test_pseudo_label_fits_fixed_batch():
    assert fits_fixed_batch(make(PseudoLabel, threshold=0.5, rampup=0.0))


def test_pseudo_label_evaluates_student_without_ema():
    method = make(PseudoLabel)
    assert method.inference_model() is method.net
    assert list(method.children()) == [method.net]
    method.on_step_end(0)  # no-op, no error
