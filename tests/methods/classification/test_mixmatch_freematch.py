"""MixMatch and FreeMatch on tiny 16x16 images: terms, views, thresholds, gate, checkpoints."""

import pytest
import test_classification_methods
import torch
import torch.nn.functional as F
from test_classification_methods import (
    NUM_CLASSES,
    fits_fixed_batch,
    intensity_net,
    make,
    make_batch,
    tiny_cnn,
    unsup_alone_reaches_weights,
)

from semimed.methods.classification.freematch import (
    FreeMatch,
    fairness_loss,
    gradient_inner_product,
    self_adaptive_mask,
)
from semimed.methods.classification.losses import mixup, sharpen
from semimed.methods.classification.mixmatch import MixMatch
from semimed.methods.losses import masked_cross_entropy


def mixmatch_batch(seed=0):
    """make_batch's keys plus a second weak view ``x_ulb_w2`` (another noise of x_ulb_w)."""
    batch = make_batch(seed)
    g = torch.Generator().manual_seed(seed + 100)
    noise = 0.2 * torch.rand(batch["x_ulb_w"].shape, generator=g)
    batch["x_ulb_w2"] = (batch["x_ulb_w"] + noise).clamp(0, 1)
    return batch


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (MixMatch, "temperature", 0.0),
        (MixMatch, "temperature", 1.5),
        (MixMatch, "alpha", -0.1),
        (MixMatch, "lambda_u", -1.0),
        (MixMatch, "rampup", 1.5),
        (MixMatch, "ema_decay", 1.0),
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


def test_sharpen_and_mixup_helpers():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    torch.testing.assert_close(sharpen(p, 1.0), p)
    torch.testing.assert_close(sharpen(p, 0.5), p**2 / (p**2).sum())
    x, t = torch.arange(3.0)[:, None], torch.eye(3)
    mixed_x, mixed_t = mixup(x, t, 0.75, torch.tensor([2, 0, 1]))
    torch.testing.assert_close(mixed_x[:, 0], torch.tensor([0.5, 0.75, 1.75]))
    torch.testing.assert_close(mixed_t[0], torch.tensor([0.75, 0.0, 0.25]))


# MixMatch ------------------------------------------------------------------------------------


def test_mixmatch_guesses_from_both_weak_views_without_mixup():
    # alpha 0: no MixUp, so the training rows are exactly [x_lb, x_ulb_w, x_ulb_w2].
    method = make(MixMatch, alpha=0.0, rampup=0.0, ema_decay=0.0)
    batch = mixmatch_batch()
    calls = []
    method.net.register_forward_hook(lambda mod, inp, out: calls.append((inp[0], out)))
    out = method.training_step(batch, 0)

    assert batch.read == {"x_lb", "y_lb", "x_ulb_w", "x_ulb_w2"}
    assert len(calls) == 2, "one no-grad guess pass, one training pass"
    (guess_in, guess_out), (train_in, train_out) = calls
    torch.testing.assert_close(guess_in, torch.cat([batch["x_ulb_w"], batch["x_ulb_w2"]]))
    assert not guess_out.requires_grad and train_out.requires_grad
    torch.testing.assert_close(
        train_in, torch.cat([batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_w2"]])
    )
    probs_w, probs_w2 = guess_out.softmax(1).chunk(2)
    guess = sharpen((probs_w + probs_w2) / 2, 0.5)
    torch.testing.assert_close(out["sup"], F.cross_entropy(train_out[:4], batch["y_lb"]))
    expected = F.mse_loss(train_out[4:].softmax(1), torch.cat([guess, guess]))
    torch.testing.assert_close(out["unsup"], expected)
    assert set(out) == {"loss", "sup", "unsup", "weight"}


def test_mixmatch_guess_averages_views_and_ignores_labels():
    # Weak view bright (class 0), second weak view dark (class 1): the guess splits them.
    method = MixMatch(intensity_net, MixMatch.Params(alpha=0.0, temperature=1.0), NUM_CLASSES, 10)
    batch = mixmatch_batch()
    batch["x_ulb_w"] = torch.full((6, 1, 16, 16), 0.9)
    batch["x_ulb_w2"] = torch.full((6, 1, 16, 16), 0.1)
    guesses = []
    method.net.register_forward_hook(
        lambda m, i, o: guesses.append(o.softmax(1)) if not o.requires_grad else None
    )
    units = []
    for y in (torch.zeros(4, dtype=torch.long), torch.full((4,), 2)):
        batch["y_lb"] = y
        units.append(method.training_step(batch, 5)["unsup"])
    guess = guesses[0][:6].add(guesses[0][6:]).div(2)
    assert guess[:, 0].min() > 0.4 and guess[:, 1].min() > 0.4  # both views count
    torch.testing.assert_close(units[0], units[1])  # labels never reach the guess


def test_mixmatch_mixes_with_the_drawn_lambda_and_permutation():
    method = make(MixMatch, rampup=0.0, ema_decay=0.0)
    batch = mixmatch_batch()
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    method.draw_mixup = lambda n: (0.7, perm)
    calls = []
    method.net.register_forward_hook(lambda mod, inp, out: calls.append((inp[0], out)))
    out = method.training_step(batch, 0)

    (_, guess_out), (train_in, train_out) = calls
    probs_w, probs_w2 = guess_out.softmax(1).chunk(2)
    guess = sharpen((probs_w + probs_w2) / 2, 0.5)
    targets = torch.cat([F.one_hot(batch["y_lb"], NUM_CLASSES).float(), guess, guess])
    x = torch.cat([batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_w2"]])
    torch.testing.assert_close(train_in, 0.7 * x + 0.3 * x[perm])
    mixed_t = 0.7 * targets + 0.3 * targets[perm]
    torch.testing.assert_close(out["sup"], F.cross_entropy(train_out[:4], mixed_t[:4]))
    torch.testing.assert_close(out["unsup"], F.mse_loss(train_out[4:].softmax(1), mixed_t[4:]))


def test_mixmatch_draws_are_seeded_and_keep_the_larger_share():
    method = make(MixMatch, alpha=0.75)
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(method.draw_mixup(16))
    assert draws[0][0] == draws[1][0] and torch.equal(draws[0][1], draws[1][1])
    assert draws[0][0] != draws[2][0]
    assert all(0.5 <= lam <= 1.0 and sorted(p.tolist()) == list(range(16)) for lam, p in draws)
    torch.manual_seed(0)
    first = method.training_step(mixmatch_batch(), 0)["loss"]
    torch.manual_seed(0)
    torch.testing.assert_close(method.training_step(mixmatch_batch(), 0)["loss"], first)


def test_mixmatch_unsup_term_alone_reaches_weights():
    method = make(MixMatch, rampup=0.0)
    out = method.training_step(mixmatch_batch(), 0)
    assert out["weight"] == 3.0  # the default lambda_u, unramped
    assert unsup_alone_reaches_weights(method, out)


def test_mixmatch_weight_ramps_up_linearly():
    method = make(MixMatch, total_steps=100, lambda_u=10.0, rampup=0.5)
    batch = mixmatch_batch()
    outs = [method.training_step(batch, s) for s in (0, 25, 50, 90)]
    assert [o["weight"].item() for o in outs] == pytest.approx([0.0, 5.0, 10.0, 10.0])
    torch.testing.assert_close(outs[0]["loss"], outs[0]["sup"])


def test_mixmatch_fits_fixed_batch_and_evaluates_ema(monkeypatch):
    method = make(MixMatch, lambda_u=10.0, rampup=0.0, ema_decay=0.9)
    assert method.inference_model() is method.ema
    # A fixed MixUp draw, so the loss before and after the steps is measured alike.
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    method.draw_mixup = lambda n: (0.7, perm)
    monkeypatch.setattr(test_classification_methods, "make_batch", mixmatch_batch)
    assert fits_fixed_batch(method)
    no_ema = make(MixMatch, ema_decay=0.0)
    assert no_ema.ema is None and no_ema.inference_model() is no_ema.net


# FreeMatch -----------------------------------------------------------------------------------


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


def test_constructors_accept_num_unlabeled():
    for cls in (MixMatch, FreeMatch):
        method = cls(tiny_cnn, cls.Params(), NUM_CLASSES, total_steps=5, num_unlabeled=7)
        assert method.num_unlabeled == 7 and method.uses_unlabeled
    assert MixMatch.views == ("w", "w2") and FreeMatch.views == ("w", "s")
