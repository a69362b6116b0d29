"""SimiS segmentation: weights from the gap to the most frequent class, over the whole batch."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, tiny_unet
from seg_method_helpers import one_hot_logits

from semimed.methods.segmentation.simis import SimiS, simis_weights


def test_simis_weights_are_the_gap_to_the_most_frequent_class():
    w = simis_weights(torch.tensor([600.0, 300.0, 100.0]))
    assert torch.allclose(w, torch.tensor([0.0, 0.9, 1.5]), atol=1e-6)


def test_simis_starts_near_c_and_counts_the_whole_batch():
    torch.manual_seed(0)
    method = SimiS(tiny_unet, SimiS.Params(), NUM_CLASSES, 10, class_counts=[600, 300, 100])
    start = torch.tensor([2.97, 2.979, 2.985])  # 0.99 * 3 + 0.01 * [0, 0.9, 1.5]
    assert torch.allclose(method.weights, start.repeat(2, 1), atol=1e-6)
    # Labeled and unlabeled rows both count: a predicts [0 x 5, 1 x 3, 2 x 2] of 10 voxels.
    a = one_hot_logits([[0, 0, 0, 1, 1], [0, 0, 1, 2, 2]])
    w_a, _ = method.class_weights(a, a, None, 1)
    assert torch.allclose(w_a, 0.99 * start + 0.01 * torch.tensor([0.0, 0.6, 0.9]), atol=1e-6)


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (SimiS, "momentum", -0.1),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
