"""MixMatch classification: guesses from two weak views, MixUp draws, weight ramp, EMA."""

import cls_helpers
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

from semimed.methods.classification.losses import sharpen
from semimed.methods.classification.mixmatch import MixMatch


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
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


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
    monkeypatch.setattr(cls_helpers, "make_batch", mixmatch_batch)
    assert fits_fixed_batch(method)
    no_ema = make(MixMatch, ema_decay=0.0)
    assert no_ema.ema is None and no_ema.inference_model() is no_ema.net
