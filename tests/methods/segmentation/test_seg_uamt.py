"""UA-MT segmentation: the entropy-masked Mean Teacher's mask, threshold ramp and passes."""

import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet
from seg_method_helpers import param_grads_reach

from semimed.methods.segmentation.uamt import UAMT, entropy_mask, masked_softmax_mse


def test_uamt_unsup_term_nonzero_and_reaches_the_student():
    method = make(UAMT)
    # Late in the ramp: the untrained teacher's entropy then passes the threshold somewhere.
    terms = method.training_step(make_batch(), 9)
    assert 0 < terms["mask_ratio"].item() < 1
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    assert param_grads_reach(method.net.parameters())
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
