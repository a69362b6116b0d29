"""Supervised and SupervisedFull segmentation: labeled terms only, fitting a fixed batch."""

import pytest
from seg_helpers import fits_fixed_batch, make, make_batch

from semimed.methods.segmentation import Supervised, SupervisedFull


@pytest.mark.parametrize("cls", [Supervised, SupervisedFull])
def test_supervised_ignores_unlabeled_and_fits(cls):
    method = make(cls, dice_weight=1.0, ce_weight=0.5)
    batch = make_batch()
    out = method.training_step(batch, 0)
    assert set(out) == {"loss", "sup"}
    assert batch.read == {"x_lb", "y_lb"}
    assert method.inference_model() is method.net
    assert fits_fixed_batch(method)
