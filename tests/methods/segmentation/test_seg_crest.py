"""CReST segmentation: rarity weights from labeled counts, then from the own argmax."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, tiny_unet
from seg_method_helpers import one_hot_logits

from semimed.methods.segmentation.crest import CReST, crest_weights


def test_crest_rarer_classes_get_larger_weights():
    # mu = (N / N_max)^(1/3) = [1, 0.2, 0.5]; ranks mirrored: the rarest class gets 1.
    w = crest_weights(torch.tensor([1000.0, 8.0, 125.0]), 1 / 3)
    assert torch.allclose(w, torch.tensor([0.2, 1.0, 0.5]), atol=1e-5)
    assert torch.equal(crest_weights(torch.full((4,), 7.0), 1 / 3), torch.ones(4))


def test_crest_weights_start_from_labeled_counts_and_follow_own_unlabeled_argmax():
    torch.manual_seed(0)
    counts = [1000.0, 8.0, 125.0]
    method = CReST(tiny_unet, CReST.Params(), NUM_CLASSES, 10, class_counts=counts)
    prior = torch.tensor([0.2, 1.0, 0.5])
    assert torch.allclose(method.weights, prior.repeat(2, 1), atol=1e-5)
    # One labeled row (ignored), one unlabeled row: a predicts [0 x 6, 1, 2], b [0 x 7, 2].
    a = one_hot_logits([[1] * 8, [0] * 6 + [1, 2]])
    b = one_hot_logits([[1] * 8, [0] * 7 + [2]])
    w_a, w_b = method.class_weights(a, b, None, 1)
    # a: N = [6, 1, 1] -> mu = [1, 0.55, 0.55] -> weights [0.55, 0.55, 1] (stable ties).
    mu = (1 / 6) ** (1 / 3)
    assert torch.allclose(w_a, 0.99 * prior + 0.01 * torch.tensor([mu, mu, 1.0]), atol=1e-5)
    # b: N = [7, 0, 1] -> class 1 (absent) is rarest: weights [(1e-8 / 7)^(1/3), 1, (1/7)^(1/3)].
    rule_b = torch.tensor([(1e-8 / 7) ** (1 / 3), 1.0, (1 / 7) ** (1 / 3)])
    assert torch.allclose(w_b, 0.99 * prior + 0.01 * rule_b, atol=1e-5)
    assert torch.equal(method.weights[0], w_a)


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (CReST, "alpha", 0.0),
        (CReST, "momentum", 1.0),
        (CReST, "cps_weight", -1.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
