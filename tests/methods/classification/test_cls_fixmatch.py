"""FixMatch classification: weak-view targets, strong-view predictions, threshold, EMA."""

import pytest
import torch
import torch.nn.functional as F
from cls_helpers import (
    NUM_CLASSES,
    bright_weak_dark_strong,
    fits_fixed_batch,
    intensity_net,
    make,
    make_batch,
    trainable,
    unsup_alone_reaches_weights,
)

from semimed.methods.classification import FixMatch
from semimed.methods.losses import masked_cross_entropy


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (FixMatch, "threshold", 1.5),
        (FixMatch, "lambda_u", -1.0),
        (FixMatch, "temperature", 0.0),
        (FixMatch, "ema_decay", 1.0),
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


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
