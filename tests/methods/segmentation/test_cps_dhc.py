"""CPS and DHC: cross pseudo-supervision, the averaged pair, DistDW and DiffDW rules."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet

from semimed.methods.segmentation import DHC, CrossPseudoSupervision
from semimed.methods.segmentation.class_weights import (
    difficulty_weights_,
    distribution_weights,
    hard_dice_per_class,
)
from semimed.methods.segmentation.losses import (
    seg_supervised_loss,
    weighted_ce,
    weighted_dice_ce,
)
from semimed.networks.segmentation import PairAverage


@pytest.mark.parametrize("cls", [CrossPseudoSupervision, DHC])
def test_unsup_term_nonzero_and_reaches_both_networks(cls):
    method = make(cls)
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    for net in (method.net, method.net2):
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads)


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


def test_cps_and_dhc_fit_a_fixed_batch():
    assert fits_fixed_batch(make(CrossPseudoSupervision))
    assert fits_fixed_batch(make(DHC))


def test_weighted_dice_ce_with_unit_weights_is_the_plain_loss():
    batch = make_batch()
    logits = torch.randn(2, NUM_CLASSES, 16, 16, 16)
    plain = seg_supervised_loss(logits, batch["y_lb"])
    ones = weighted_dice_ce(logits, batch["y_lb"], torch.ones(NUM_CLASSES))
    assert torch.allclose(plain, ones, atol=1e-5)
    # Weighting a class changes both terms.
    w = torch.tensor([0.0, 1.0, 3.0])
    assert not torch.allclose(
        weighted_dice_ce(logits, batch["y_lb"], w, 0.0, 1.0),
        weighted_dice_ce(logits, batch["y_lb"], None, 0.0, 1.0),
    )
    assert not torch.allclose(
        weighted_dice_ce(logits, batch["y_lb"], w, 1.0, 0.0),
        weighted_dice_ce(logits, batch["y_lb"], None, 1.0, 0.0),
    )


def test_distdw_gives_rarer_classes_larger_weights():
    w = distribution_weights(torch.tensor([1000.0, 100.0, 10.0, 0.0]))
    assert w[0] == 0 and w[0] < w[1] < w[2] < w[3]
    assert torch.isclose(w[3], torch.tensor(4.0))
    assert torch.equal(distribution_weights(torch.tensor([5.0, 5.0])), torch.ones(2))


def test_diffdw_raises_the_weight_of_a_class_whose_dice_stalls():
    c = 3
    last, learn, unlearn, omd = (
        torch.full((c,), 1e-8),
        torch.zeros(c),
        torch.zeros(c),
        torch.ones(c),
    )
    # background near-perfect; class 1 improves steadily; class 2 rises once then drops back.
    history = [
        [0.9, 0.1, 0.3],
        [0.95, 0.2, 0.4],
        [0.96, 0.3, 0.35],
        [0.97, 0.4, 0.3],
        [0.97, 0.5, 0.3],
    ]
    for dice in history:
        w = difficulty_weights_(torch.tensor(dice), last, learn, unlearn, omd, 0.9)
    assert w[2] > w[1] > w[0]
    assert torch.isclose(w.max(), torch.tensor(float(c)))


def test_dhc_weights_feed_both_terms_and_buffers_move():
    torch.manual_seed(0)
    counts = [10000.0, 500.0, 20.0]
    method = DHC(tiny_unet, DHC.Params(), NUM_CLASSES, 10, class_counts=counts)
    assert torch.allclose(method.dist_weights, distribution_weights(torch.tensor(counts)))
    prior = method.dist_weights.clone()
    batch = make_batch()
    terms = method.training_step(batch, 3)
    assert not torch.equal(method.dist_weights, prior)
    assert method.learn.abs().sum() + method.unlearn.abs().sum() > 0
    # The same step of plain CPS on the same networks differs in both terms.
    cps = make(CrossPseudoSupervision)
    cps.load_state_dict(method.state_dict(), strict=False)
    plain = cps.training_step(batch, 3)
    assert not torch.isclose(terms["sup"], plain["sup"])
    assert not torch.isclose(terms["unsup"], plain["unsup"])


def test_hard_dice_per_class():
    y = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    y[..., :2] = 1
    logits = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    # class 2 is in neither map: its Dice is undefined (NaN), not 1
    expected = torch.tensor([1.0, 1.0, float("nan")])
    assert torch.allclose(hard_dice_per_class(logits, y), expected, equal_nan=True)


@pytest.mark.parametrize("field,value", [("cps_weight", -1.0), ("rampup", 2.0)])
def test_cps_params_rejected(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        CrossPseudoSupervision.Params(**{field: value})


@pytest.mark.parametrize("field,value", [("dist_momentum", 1.0), ("diff_window", 0)])
def test_dhc_params_rejected(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        DHC.Params(**{field: value})


def test_dist_weights_read_nothing_back_to_the_host():
    """DHC's DistDW weights from a label map without a host sync (on a GPU `if tensor` or
    bincount's output sizing would stall every step): no scalar read, no data-dependent shape."""
    from benchmarks.syncs import HostReads
    from semimed.methods.segmentation.class_weights import class_counts

    labels = torch.tensor([[[0, 1, 1], [3, 3, 3]]])
    with HostReads() as mode:
        counts = class_counts(labels, 4)
        weights = distribution_weights(counts)
        uniform = distribution_weights(class_counts(torch.arange(4), 4))
    assert mode.seen == []
    assert torch.equal(counts, torch.tensor([1.0, 2.0, 0.0, 3.0]))
    assert torch.allclose(weights, distribution_weights(torch.tensor([1.0, 2.0, 0.0, 3.0])))
    assert torch.equal(uniform, torch.ones(4))
