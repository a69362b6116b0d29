"""DePL segmentation: debiased pseudo-labels, the confidence mask and the marginal update."""

import pytest
import torch
import torch.nn.functional as F
from seg_helpers import make

from semimed.methods.segmentation.depl import DePL, debias


def test_depl_debiasing_pushes_down_an_over_predicted_class():
    logits = torch.tensor([2.0, 1.5, -1.0])[None, :, None]  # (1, C, 1): argmax 0
    q = torch.tensor([0.7, 0.2, 0.1])  # class 0 is predicted most often
    probs = debias(logits, q, 1.0).softmax(1)[0, :, 0]
    assert torch.allclose(probs, torch.tensor([0.288071, 0.611534, 0.100395]), atol=1e-5)
    method = make(DePL, confidence=0.6)
    target, mask = method.debiased_labels(logits, q)
    assert target.item() == 1 and mask.item()
    assert not make(DePL).debiased_labels(logits, q)[1].item()  # 0.61 < 0.9
    # Uniform q changes nothing.
    assert torch.allclose(
        debias(logits, torch.full((3,), 1 / 3), 1.0).softmax(1), logits.softmax(1)
    )


@pytest.mark.parametrize("marginal", [False, True])
def test_depl_cps_loss_masks_and_updates_q(marginal):
    method = make(DePL, confidence=0.5, marginal=marginal)
    # Rows: 1 labeled + 1 unlabeled, 4 voxels each.
    a = torch.tensor([[[3.0, 0, 0, 1], [0, 3, 0, 1], [0, 0, 3, 1]]]).repeat(2, 1, 1)
    b = torch.tensor([[[0.0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 0.5, 0]]]).repeat(2, 1, 1)
    a.requires_grad_(True)
    loss = method.cps_loss(a, b, None, None, 1)
    q_a = 0.99 / 3 + 0.01 * a[1].detach().softmax(0).mean(1)
    q_b = 0.99 / 3 + 0.01 * b[1].softmax(0).mean(1)
    assert torch.allclose(method.mean_probs, torch.stack([q_a, q_b]), atol=1e-6)
    # Labels for a come from b with the uniform q before the update: b is confident (>= 0.5)
    # on voxels 0 (class 1) and 1 (class 0) only.
    target_a = torch.tensor([1, 0, 2, 0]).repeat(2, 1)
    mask_a = torch.tensor([True, True, False, False]).repeat(2, 1)
    student_a = a + q_b.log()[None, :, None] if marginal else a
    per_voxel = F.cross_entropy(student_a, target_a, reduction="none")
    # Labels for b come from a, confident everywhere but on voxel 3 (uniform).
    student_b = b + q_a.log()[None, :, None] if marginal else b
    per_voxel_b = F.cross_entropy(student_b, a.detach().argmax(1), reduction="none")
    mask_b = torch.tensor([True, True, True, False]).repeat(2, 1)
    expected = (per_voxel * mask_a).mean() + (per_voxel_b * mask_b).mean()
    assert torch.allclose(loss, expected, atol=1e-5)


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (DePL, "debias", -1.0),
        (DePL, "momentum", 1.0),
        (DePL, "confidence", 1.5),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
