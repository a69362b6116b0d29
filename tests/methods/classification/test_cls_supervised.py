"""Supervised and SupervisedFull classification: labeled terms only, fitting a fixed batch."""

import pytest
from cls_helpers import fits_fixed_batch, make, make_batch

from semimed.methods.classification import Supervised, SupervisedFull


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (Supervised, "label_smoothing", 1.0),
        (Supervised, "label_smoothing", -0.1),
    ],
)
def test_params_reject_bad_values(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        cls.Params(**{field: value})


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
