"""Pseudo-Label classification: weak-view targets, linear weight ramp, no EMA."""

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
    unsup_alone_reaches_weights,
)

from semimed.methods.classification import PseudoLabel
from semimed.methods.losses import masked_cross_entropy


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (PseudoLabel, "threshold", -0.1),
        (PseudoLabel, "lambda_u", -1.0),
        (PseudoLabel, "rampup", -0.1),
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


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
