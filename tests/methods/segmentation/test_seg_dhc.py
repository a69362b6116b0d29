"""DHC segmentation: DistDW / DiffDW weights in both terms, all-background and absent classes."""

import pytest
import torch
from seg_helpers import NUM_CLASSES, make, make_batch, tiny_unet, trainable
from torch import nn

from semimed.methods.segmentation import DHC, CrossPseudoSupervision
from semimed.methods.segmentation.class_weights import distribution_weights, hard_dice_per_class


def _bias_towards(net: nn.Module, cls: int, value: float) -> None:
    """Add ``value`` to the output bias of class ``cls``: the network then predicts it (or,
    negative, never predicts it) at every voxel."""
    last = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)][-1]
    with torch.no_grad():
        last.bias[cls] += value


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


@pytest.mark.parametrize("field,value", [("dist_momentum", 1.0), ("diff_window", 0)])
def test_dhc_params_rejected(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        DHC.Params(**{field: value})


def test_dhc_all_background_batch_gives_a_finite_loss_and_gradients():
    torch.manual_seed(0)
    method = DHC(tiny_unet, DHC.Params(), NUM_CLASSES, 10, class_counts=[1e5, 100.0, 10.0])
    for net in (method.net, method.net2):
        _bias_towards(net, 0, 50.0)  # both networks predict background only
    batch = make_batch()
    batch["y_lb"] = torch.zeros_like(batch["y_lb"])  # background-centred labeled crops
    terms = method.training_step(batch, 5)
    # DistDW gives the only class present (background) weight 0: network b's weighted CE is
    # 0 / 0 on its labeled crops and on its pseudo-labels.
    assert method.dist_weights[0] == 0
    assert torch.isfinite(terms["loss"]) and torch.isfinite(terms["sup"])
    terms["loss"].backward()
    grads = [p.grad for p in trainable(method) if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_diffdw_state_of_a_class_absent_from_prediction_and_label_is_unchanged():
    torch.manual_seed(0)
    method = DHC(tiny_unet, DHC.Params(), NUM_CLASSES, 10)
    _bias_towards(method.net, 2, -50.0)  # network a never predicts class 2
    batch = make_batch()
    batch["y_lb"] = batch["y_lb"].clamp(max=1)  # and no label is class 2
    buffers = ("last_dice", "learn", "unlearn", "one_minus_dice")
    before = {k: getattr(method, k).clone() for k in buffers}
    for step in range(3):
        method.training_step(batch, step)
    for k in buffers:
        assert getattr(method, k)[2] == before[k][2], k  # untouched
    assert not torch.equal(method.one_minus_dice[:2], before["one_minus_dice"][:2])
    logits = torch.randn(2, 3, 4, 4, 4)
    logits[:, 2] = -50.0
    assert hard_dice_per_class(logits, torch.zeros(2, 1, 4, 4, 4, dtype=torch.long))[2].isnan()
