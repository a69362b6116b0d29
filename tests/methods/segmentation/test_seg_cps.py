"""Cross pseudo-supervision segmentation: the other network's argmax, the averaged pair."""

import pytest
import torch
from seg_helpers import make, make_batch

from semimed.methods.segmentation import CrossPseudoSupervision
from semimed.methods.segmentation.losses import seg_supervised_loss, weighted_ce
from semimed.networks.segmentation import PairAverage


def test_cps_targets_are_the_other_networks_argmax():
    method = make(CrossPseudoSupervision)
    batch = make_batch()
    terms = method.training_step(batch, 0)
    x = torch.cat([batch["x_lb"], batch["x_ulb_w"]])
    with torch.no_grad():
        a, b = method.net(x), method.net2(x)
        expected = weighted_ce(a, b.argmax(1, keepdim=True)) + weighted_ce(
            b, a.argmax(1, keepdim=True)
        )
        y = batch["y_lb"]  # CPS trains with DHC's Dice by default
        sup = seg_supervised_loss(a[:2], y, dice="dhc") + seg_supervised_loss(b[:2], y, dice="dhc")
    assert torch.allclose(terms["unsup"], expected, atol=1e-6)
    assert torch.allclose(terms["sup"], sup, atol=1e-6)


def test_pair_is_two_initialisations_and_inference_averages_softmax():
    method = make(CrossPseudoSupervision)
    w_a = next(method.net.parameters())
    w_b = next(method.net2.parameters())
    assert not torch.equal(w_a, w_b)
    model = method.inference_model()
    assert isinstance(model, PairAverage)
    assert {k.split(".")[0] for k in model.state_dict()} == {"a", "b"}
    model.eval()
    x = make_batch()["x_lb"]
    with torch.no_grad():
        mean = 0.5 * (method.net(x).softmax(1) + method.net2(x).softmax(1))
        assert torch.allclose(model(x).exp(), mean, atol=1e-5)


@pytest.mark.parametrize("field,value", [("cps_weight", -1.0), ("rampup", 2.0)])
def test_cps_params_rejected(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        CrossPseudoSupervision.Params(**{field: value})
