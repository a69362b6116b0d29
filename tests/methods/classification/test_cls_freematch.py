"""FreeMatch classification: self-adaptive thresholds, fairness term, gradient gate, state."""

import pytest
import torch
import torch.nn.functional as F
from cls_helpers import (
    NUM_CLASSES,
    fits_fixed_batch,
    intensity_net,
    make,
    make_batch,
    unsup_alone_reaches_weights,
)

from semimed.methods.classification.freematch import (
    FreeMatch,
    fairness_loss,
    gradient_inner_product,
    self_adaptive_mask,
)
from semimed.methods.losses import masked_cross_entropy


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (FreeMatch, "momentum", 1.0),
        (FreeMatch, "momentum", -0.1),
        (FreeMatch, "lambda_u", -1.0),
        (FreeMatch, "lambda_f", -0.01),
        (FreeMatch, "gate", "yes"),
        (FreeMatch, "ema_decay", 1.0),
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


def test_self_adaptive_mask_hand_made_case():
    tau, p_model = torch.tensor(0.8), torch.tensor([0.5, 0.25, 0.25])  # thresholds .8 .4 .4
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.85, 0.1, 0.05], [0.3, 0.3, 0.4]])
    mask, labels = self_adaptive_mask(probs, tau, p_model)
    assert mask.tolist() == [False, True, True, True]
    assert labels.tolist() == [0, 1, 0, 2]

    method = make(FreeMatch)
    method.tau.fill_(0.8)
    method.p_model.copy_(p_model)
    torch.testing.assert_close(method.class_thresholds(), torch.tensor([0.8, 0.4, 0.4]))


def test_freematch_buffers_start_uniform_and_update_as_ema():
    method = make(FreeMatch, momentum=0.5)
    third = torch.full((NUM_CLASSES,), 1 / 3)
    torch.testing.assert_close(method.tau, torch.tensor(1 / 3))
    torch.testing.assert_close(method.p_model, third)
    torch.testing.assert_close(method.label_hist, third)

    calls = []
    method.net.register_forward_hook(lambda mod, inp, out: calls.append(out))
    batch = make_batch()
    out = method.training_step(batch, 0)
    probs_w = calls[0][4:10].detach().softmax(1)
    hist = F.one_hot(probs_w.argmax(1), NUM_CLASSES).float().mean(0)
    torch.testing.assert_close(method.tau, 0.5 / 3 + 0.5 * probs_w.max(1).values.mean())
    torch.testing.assert_close(method.p_model, 0.5 * third + 0.5 * probs_w.mean(0))
    torch.testing.assert_close(method.label_hist, 0.5 * third + 0.5 * hist)
    torch.testing.assert_close(out["tau"], method.tau)
    # The mask uses the updated thresholds; the strong view is trained on weak-view labels.
    mask, labels = self_adaptive_mask(probs_w, method.tau, method.p_model)
    torch.testing.assert_close(out["unsup"], masked_cross_entropy(calls[0][10:], labels, mask))
    assert set(out) == {"loss", "sup", "unsup", "fairness", "mask_ratio", "tau"}


def test_freematch_pseudo_labels_come_from_weak_view():
    method = FreeMatch(intensity_net, FreeMatch.Params(), NUM_CLASSES, total_steps=10)
    batch = make_batch()
    batch["x_ulb_w"] = torch.full((6, 1, 16, 16), 0.9)  # bright: class 0, confident
    batch["x_ulb_s"] = torch.full((6, 1, 16, 16), 0.2)  # dark: class 1
    out = method.training_step(batch, 0)
    assert batch.read == {"x_lb", "y_lb", "x_ulb_w", "x_ulb_s"}
    expected = F.cross_entropy(method.net(batch["x_ulb_s"]), torch.zeros(6, dtype=torch.long))
    assert out["mask_ratio"] == 1.0
    torch.testing.assert_close(out["unsup"], expected)
    assert out["unsup"] > 5


def test_fairness_formula_on_hand_made_case():
    # Two masked samples predict class 0, one class 1; class 2 is absent and left out.
    logits = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 9.0]])
    mask = torch.tensor([True, True, True, False])
    p_model, label_hist = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.4, 0.4, 0.2])
    pbar, hbar = logits[:3].softmax(1).mean(0), torch.tensor([2 / 3, 1 / 3])
    ratio = pbar[:2] / hbar
    a = (p_model / label_hist) / (p_model / label_hist).sum()
    expected = (a[:2] * (ratio / ratio.sum()).log()).sum()
    torch.testing.assert_close(fairness_loss(logits, mask, p_model, label_hist), expected)
    assert fairness_loss(logits, torch.zeros(4, dtype=torch.bool), p_model, label_hist) == 0


def test_freematch_unsup_term_alone_reaches_weights():
    method = make(FreeMatch, momentum=0.0)  # tau = this batch's mean confidence
    out = method.training_step(make_batch(), 0)
    assert 0 < out["mask_ratio"] < 1
    assert unsup_alone_reaches_weights(method, out)


def test_freematch_fairness_term_alone_reaches_weights():
    # All weak views confident (class 0); strong views predict two classes, so hbar has two.
    method = FreeMatch(intensity_net, FreeMatch.Params(), NUM_CLASSES, total_steps=10)
    batch = make_batch()
    batch["x_ulb_w"] = torch.full((6, 1, 16, 16), 0.9)
    batch["x_ulb_s"] = torch.tensor([0.9, 0.2] * 3).view(6, 1, 1, 1).expand(6, 1, 16, 16)
    out = method.training_step(batch, 0)
    assert out["mask_ratio"] == 1.0 and out["fairness"] != 0
    out["fairness"].backward()
    assert all(p.grad.abs().sum() > 0 for p in method.net.parameters())


def test_freematch_fits_fixed_batch():
    assert fits_fixed_batch(make(FreeMatch, momentum=0.9, ema_decay=0.9))


def test_freematch_state_dict_round_trip_keeps_buffers():
    method = make(FreeMatch, momentum=0.5)
    method.training_step(make_batch(), 0)
    state = method.state_dict()
    assert {"tau", "p_model", "label_hist"} <= set(state)
    fresh = make(FreeMatch, momentum=0.5)
    assert not torch.equal(fresh.p_model, method.p_model)
    fresh.load_state_dict(state)
    for name in ("tau", "p_model", "label_hist"):
        torch.testing.assert_close(getattr(fresh, name), getattr(method, name))
    assert fresh.inference_model() is fresh.ema


def gate_case(y_lb):
    """intensity_net: bright weak and strong views are pseudo-labeled 0; the labels are y_lb."""
    method = FreeMatch(intensity_net, FreeMatch.Params(gate=True), NUM_CLASSES, total_steps=10)
    batch = make_batch()
    batch["x_lb"] = torch.full((4, 1, 16, 16), 0.9)
    batch["y_lb"] = torch.full((4,), y_lb)
    batch["x_ulb_w"] = batch["x_ulb_s"] = torch.full((6, 1, 16, 16), 0.9)
    return method, method.training_step(batch, 0)


def test_gate_closes_when_gradients_conflict():
    # Labels say class 1 for the bright images, pseudo-labels say class 0.
    method, out = gate_case(y_lb=1)
    unlabeled = out["unsup"] + 0.01 * out["fairness"]
    assert out["unsup"] > 0 and out["mask_ratio"] == 1.0
    assert gradient_inner_product(out["sup"], unlabeled, list(method.net.parameters())) < 0
    assert out["gate_open"] == 0.0
    torch.testing.assert_close(out["loss"], out["sup"])
    assert all(p.grad is None for p in method.net.parameters())  # autograd.grad only
    out["loss"].backward()  # the loop's backward still works


def test_gate_stays_open_when_gradients_agree():
    method, out = gate_case(y_lb=0)
    assert out["gate_open"] == 1.0 and out["unsup"] > 0
    torch.testing.assert_close(out["loss"], out["sup"] + out["unsup"] + 0.01 * out["fairness"])


def test_gradient_inner_product_matches_flat_dot():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    unused = torch.nn.Parameter(torch.tensor(3.0))
    inner = gradient_inner_product((w**2).sum(), (w * torch.tensor([1.0, -1.0])).sum(), [w, unused])
    assert inner.item() == pytest.approx(2 * 1 - 4 * 1)
    assert w.grad is None
