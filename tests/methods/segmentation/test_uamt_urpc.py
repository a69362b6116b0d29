"""UA-MT (entropy-masked Mean Teacher) and URPC (uncertainty-rectified pyramid consistency)."""

import copy
import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet

from semimed.build import parse_task
from semimed.methods.segmentation.losses import seg_supervised_loss
from semimed.methods.segmentation.uamt import UAMT, entropy_mask, masked_softmax_mse
from semimed.methods.segmentation.urpc import (
    URPC,
    _PyramidConsistency,
    pyramid_uncertainty,
    rectified_pyramid_consistency,
)
from semimed.networks.segmentation import UNetDeepSupervision


def _grads_reach(params):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def make_urpc(**params):
    torch.manual_seed(0)
    return URPC(lambda: tiny_unet(deep_supervision=True), URPC.Params(**params), NUM_CLASSES, 10)


# ------------------------------------------------------------------------------- UA-MT


def test_uamt_unsup_term_nonzero_and_reaches_the_student():
    method = make(UAMT)
    # Late in the ramp: the untrained teacher's entropy then passes the threshold somewhere.
    terms = method.training_step(make_batch(), 9)
    assert 0 < terms["mask_ratio"].item() < 1
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    assert _grads_reach(method.net.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())


def test_uamt_student_sees_the_clean_crop_and_teacher_targets_it():
    # Without noise or dropout the T teacher passes agree, so the target is teacher(x_ulb_w).
    method = make(UAMT, noise_std=0.0, threshold_start=1.0)
    batch = make_batch()
    terms = method.training_step(batch, 3)
    assert "x_ulb_s" not in batch.read
    with torch.no_grad():
        student = method.net(batch["x_ulb_w"])
        teacher = method.teacher(batch["x_ulb_w"]).softmax(1)
        mask, _ = entropy_mask(teacher[None], math.log(NUM_CLASSES))
    assert torch.allclose(terms["unsup"], masked_softmax_mse(student, teacher, mask), atol=1e-6)


def test_uamt_teacher_passes_are_stochastic():
    torch.manual_seed(0)
    method = make(UAMT, passes=3)
    x = make_batch()["x_ulb_w"]
    probs = method.teacher_probs(x)
    assert probs.shape == (3, 2, NUM_CLASSES, 16, 16, 16)
    assert not torch.allclose(probs[0], probs[1])
    # Dropout alone also varies the passes: the teacher runs in train mode.
    torch.manual_seed(0)
    params = UAMT.Params(noise_std=0.0, passes=2, teacher_batch=1)
    dropout = UAMT(lambda: tiny_unet(dropout=0.5), params, NUM_CLASSES, 10)
    probs = dropout.teacher_probs(x)
    assert not torch.allclose(probs[0], probs[1])


def test_uamt_masks_uncertain_voxels_and_the_threshold_ramps():
    # T = 2 passes, 1 crop, 2 classes, 3 voxels: confident and agreeing; passes disagreeing
    # (mean 0.5 / 0.5); agreeing but unsure (0.7 / 0.3).
    p1 = torch.tensor([[0.95, 0.9, 0.7], [0.05, 0.1, 0.3]])
    p2 = torch.tensor([[0.95, 0.1, 0.7], [0.05, 0.9, 0.3]])
    probs = torch.stack([p1, p2])[:, None]  # (T, U, C, V)

    def entropy(*p):
        return -sum(q * math.log(q + 1e-6) for q in p)

    expected_u = [entropy(0.95, 0.05), entropy(0.5, 0.5), entropy(0.7, 0.3)]
    ln2 = math.log(2)
    mask, u = entropy_mask(probs, 0.75 * ln2)
    assert torch.allclose(u.flatten(), torch.tensor(expected_u), atol=1e-6)
    assert mask.flatten().tolist() == [1.0, 0.0, 0.0]
    # A higher threshold (later in the ramp) also keeps the unsure voxel; at ln C every voxel
    # is kept (the 1e-6 inside the log puts even 0.5 / 0.5 just below ln 2).
    mask, _ = entropy_mask(probs, 0.9 * ln2)
    assert mask.flatten().tolist() == [1.0, 0.0, 1.0]
    mask, _ = entropy_mask(probs, ln2)
    assert mask.flatten().tolist() == [1.0, 1.0, 1.0]

    method = make(UAMT)  # 3 classes; ramp over all 10 steps
    assert math.isclose(method.threshold(0.0), 0.75 * math.log(3))
    assert math.isclose(method.threshold(1.0), math.log(3))
    w0 = method.training_step(make_batch(), 0)["weight"].item()
    w10 = method.training_step(make_batch(), 10)["weight"].item()
    assert math.isclose(w0, 1.0 * math.exp(-5), rel_tol=1e-5)
    assert math.isclose(w10, 1.0, rel_tol=1e-6)


def test_masked_softmax_mse_sums_classes_at_kept_voxels():
    logits = torch.zeros(1, 2, 2, requires_grad=True)  # softmax 0.5 everywhere
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # voxel 0 -> class 0, voxel 1 -> class 1
    mask = torch.tensor([[[1.0, 0.0]]])
    # kept voxel 0: (0.5 - 1)^2 + (0.5 - 0)^2 = 0.5 (the class mean was 0.25)
    assert math.isclose(masked_softmax_mse(logits, target, mask).item(), 0.5, rel_tol=1e-6)
    empty = masked_softmax_mse(logits, target, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad


def test_uamt_fits_a_fixed_batch():
    assert fits_fixed_batch(make(UAMT))


@pytest.mark.parametrize(
    "field,value",
    [
        ("passes", 0),
        ("noise_std", -0.1),
        ("noise_clip", -1.0),
        ("threshold_start", 0.0),
        ("threshold_end", 1.5),
        ("teacher_batch", 0),
        ("ema_decay", 1.0),
    ],
)
def test_uamt_params_rejected(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        UAMT.Params(**{field: value})


# -------------------------------------------------------------------------------- URPC


def test_urpc_unsup_term_nonzero_and_reaches_unet_and_heads():
    method = make_urpc()
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    assert _grads_reach(method.net.unet.parameters())
    assert _grads_reach(method.net.heads.parameters())


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
