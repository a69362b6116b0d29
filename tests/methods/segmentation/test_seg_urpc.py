"""URPC segmentation: the uncertainty-rectified pyramid consistency, its gradient, upsampling."""

import copy
import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make_batch, tiny_unet
from seg_method_helpers import param_grads_reach

from semimed.build import parse_task
from semimed.methods.segmentation.losses import seg_supervised_loss
from semimed.methods.segmentation.urpc import (
    URPC,
    _PyramidConsistency,
    pyramid_uncertainty,
    rectified_pyramid_consistency,
)
from semimed.networks.segmentation import UNetDeepSupervision


def make_urpc(**params):
    torch.manual_seed(0)
    return URPC(lambda: tiny_unet(deep_supervision=True), URPC.Params(**params), NUM_CLASSES, 10)


def test_urpc_unsup_term_nonzero_and_reaches_unet_and_heads():
    method = make_urpc()
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    assert param_grads_reach(method.net.unet.parameters())
    assert param_grads_reach(method.net.heads.parameters())


def test_urpc_supervises_every_scale_and_infers_with_the_main_output():
    method = make_urpc()
    batch = make_batch()
    terms = method.training_step(batch, 0)
    with torch.no_grad():
        out = method.net(torch.cat([batch["x_lb"], batch["x_ulb_w"]]))
        per_scale = [seg_supervised_loss(out[:2, s], batch["y_lb"]) for s in range(out.shape[1])]
    assert out.shape[1] == 2  # channels (4, 8, 16): main + 1 auxiliary output
    assert torch.allclose(terms["sup"], torch.stack(per_scale).mean(), atol=1e-6)
    assert "x_ulb_s" not in batch.read
    model = method.inference_model().eval()
    with torch.no_grad():
        assert model(batch["x_lb"]).shape == (2, NUM_CLASSES, 16, 16, 16)


def test_urpc_disagreeing_scale_gets_higher_uncertainty_and_lower_weight():
    # 1 crop, 3 scales, 2 classes, 2 voxels: at voxel 0 the scales agree (0.9 / 0.1); at
    # voxel 1 scale 2 says 0.2 / 0.8 while scales 0 and 1 say 0.9 / 0.1.
    p0 = torch.tensor([[0.9, 0.9], [0.1, 0.1]])
    p2 = torch.tensor([[0.9, 0.2], [0.1, 0.8]])
    probs = torch.stack([p0, p0, p2])[None]  # (U, S, C, V)
    u, p_mean = pyramid_uncertainty(probs.log())
    m = (0.9 + 0.9 + 0.2) / 3

    def kl(p):  # KL(p_mean || p_s) at voxel 1
        return m * math.log(m / p) + (1 - m) * math.log((1 - m) / (1 - p))

    assert torch.allclose(p_mean[0, 0, :, 1], torch.tensor([m, 1 - m]))
    assert torch.allclose(u[0, :, 0, 0], torch.zeros(3), atol=1e-6)
    assert torch.allclose(u[0, :, 0, 1], torch.tensor([kl(0.9), kl(0.9), kl(0.2)]), atol=1e-6)
    assert kl(0.2) > kl(0.9) > 0  # the disagreeing scale is the most uncertain
    w = torch.exp(-u[0, :, 0, 1])
    assert w[2] < w[0] < 1.0

    # The loss, written out: per scale, exp(-u)-weighted mean squared error + mean(u).
    sq = (probs - p_mean) ** 2  # (U, S, C, V)
    expected = []
    for s in range(3):
        ws = torch.exp(-u[0, s, 0])  # (V,)
        weighted = (ws * sq[0, s]).mean() / ws.mean()
        expected.append(weighted + u[0, s, 0].mean())
    loss = rectified_pyramid_consistency(probs.log())
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6)
    # Rectification: the unweighted error would count the disagreeing voxel fully.
    plain = torch.stack([sq[0, s].mean() + u[0, s, 0].mean() for s in range(3)]).mean()
    assert loss < plain


def test_urpc_refuses_a_network_without_deep_supervision():
    torch.manual_seed(0)
    method = URPC(tiny_unet, URPC.Params(), NUM_CLASSES, 10)
    with pytest.raises(ValueError, match="^urpc: the network must return deep-supervision"):
        method.training_step(make_batch(), 0)


def test_urpc_loop_builds_a_deep_supervision_network(default_params, monkeypatch):
    from semimed.build import make_method
    from semimed.methods import METHODS
    from semimed.networks import DataShape

    assert URPC.deep_supervision
    monkeypatch.setitem(METHODS["segmentation"], "urpc", URPC)
    section = copy.deepcopy(default_params["segmentation"])
    section["methods"] = ["supervised", "urpc"]
    section["network"].update(name="unet", channels=[4, 8, 16, 32])
    shape = DataShape.single(3, 1, NUM_CLASSES)
    method = make_method(parse_task("segmentation", section), "urpc", shape)
    assert isinstance(method.net, UNetDeepSupervision) and len(method.net.heads) == 2


def test_urpc_fits_a_fixed_batch():
    assert fits_fixed_batch(make_urpc())


@pytest.mark.parametrize("field,value", [("consistency", -1.0), ("rampup", 1.5)])
def test_urpc_params_rejected(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        URPC.Params(**{field: value})


@pytest.mark.parametrize("shape,size", [((2, 3, 4, 8, 5), (16, 16, 20)), ((2, 3, 5, 4), (20, 8))])
def test_separable_upsampling_equals_trilinear(shape, size):
    """URPC's auxiliary outputs: one 1D pass per axis gives F.interpolate's bi/trilinear."""
    from semimed.networks.segmentation import upsample_linear

    x = torch.randn(shape, requires_grad=True)
    mode = "trilinear" if len(shape) == 5 else "bilinear"
    want = torch.nn.functional.interpolate(x, size=size, mode=mode, align_corners=False)
    got = upsample_linear(x, size)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    g_want, g_got = (torch.autograd.grad(y.square().sum(), x)[0] for y in (want, got))
    assert torch.allclose(g_got, g_want, atol=1e-5)


def _consistency_by_autograd(logits):
    """The consistency written as plain tensor code (autograd differentiates it)."""
    log_probs = logits.log_softmax(2)
    u, p_mean = pyramid_uncertainty(log_probs)
    w = torch.exp(-u)
    sq = (log_probs.exp() - p_mean) ** 2
    dims = [d for d in range(logits.dim()) if d != 1]
    return ((w * sq).mean(dims) / (w.mean(dims) + 1e-8) + u.mean(dims)).mean()


def test_urpc_consistency_gradient_is_autograds():
    """The closed-form backward: gradcheck in float64, and the same value and gradient as
    autograd's graph of the formula on float32 logits of a 3D batch."""
    torch.manual_seed(0)
    z = (2 * torch.randn(2, 3, 4, 3, 2, 3)).double().requires_grad_()
    assert torch.autograd.gradcheck(_PyramidConsistency.apply, (z,))
    z = (3 * torch.randn(2, 3, 5, 6, 6, 6)).requires_grad_()
    got = rectified_pyramid_consistency(z)
    (g_got,) = torch.autograd.grad(got, z)
    want = _consistency_by_autograd(z)
    (g_want,) = torch.autograd.grad(want, z)
    assert torch.allclose(got, want, rtol=1e-6)
    assert g_got.abs().max() > 0
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-9)
