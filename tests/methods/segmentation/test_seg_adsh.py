"""Adsh segmentation: adaptive per-class thresholds from score statistics, the thresholded CE."""

import pytest
import torch
import torch.nn.functional as F
from seg_helpers import NUM_CLASSES, make, tiny_unet

from semimed.methods.segmentation.adsh import Adsh, adaptive_thresholds, score_statistics


def adsh_probs():
    """(1, 3, 16) probabilities: 10 voxels predicted 0, 4 predicted 1, 2 predicted 2."""
    rows = (
        [(0.9555, 0.0245, 0.02)] * 5
        + [(0.8555, 0.0945, 0.05)] * 5
        + [(0.1445, 0.7555, 0.1), (0.1545, 0.7455, 0.1)]
        + [(0.2445, 0.6555, 0.1), (0.2545, 0.6455, 0.1)]
        + [(0.1445, 0.2, 0.6555), (0.2445, 0.2, 0.5555)]
    )
    return torch.tensor(rows).T[None]


def test_adsh_keeps_the_majority_share_of_every_class_so_rare_classes_get_lower_thresholds():
    hist, predicted, confident = score_statistics(adsh_probs(), 0.9)
    assert predicted.tolist() == [10, 4, 2] and confident.tolist() == [5, 0, 0]
    assert hist.sum(1).tolist() == [16, 16, 16] and hist[2, 655] == 1
    # rho = 5 / 10: class 0 keeps its 5 best voxels, class 1 its 2, class 2 its 1.
    thr = adaptive_thresholds(hist, predicted, confident)
    assert torch.allclose(thr, torch.tensor([0.856, 0.656, 0.556]), atol=1e-6)
    kept = (adsh_probs()[0] > thr[:, None]).sum(1)
    assert kept.tolist() == [5, 2, 1]
    # No statistics yet: everything passes.
    assert torch.equal(adaptive_thresholds(hist * 0, predicted * 0, confident * 0), torch.zeros(3))


def test_adsh_thresholds_come_from_previous_steps_over_a_pool_share_window():
    torch.manual_seed(0)
    params = Adsh.Params(bank_share=0.25)
    method = Adsh(tiny_unet, params, NUM_CLASSES, 10, num_unlabeled=8)  # window 2 crops
    probs = adsh_probs()[..., None, None]  # (1, 3, 16, 1, 1)
    method.update_thresholds_(probs, probs)
    assert torch.equal(method.thresholds, torch.zeros(2, 3))  # step 0: everything passes
    method.update_thresholds_(probs, probs)  # momentum 1 - 1 / 2: the statistics just scale
    assert torch.allclose(method.thresholds[1], torch.tensor([0.856, 0.656, 0.556]), atol=1e-6)
    assert torch.allclose(method.predicted[0], torch.tensor([7.5, 3.0, 1.5]))


@pytest.mark.parametrize("logit_mask", [True, False])
def test_adsh_mask_follows_the_teachers_per_class_thresholds(logit_mask):
    method = make(Adsh, logit_mask=logit_mask)
    teacher = adsh_probs()
    thr = torch.tensor([0.856, 0.656, 0.556])
    student = torch.randn(1, 3, 16)
    loss = method.thresholded_ce(student, teacher, thr)
    target = teacher.argmax(1)
    keep = teacher > thr[None, :, None]
    if logit_mask:  # DHC: the logits of the classes the teacher is unsure of are zeroed
        expected = F.cross_entropy(student * keep, target)
    else:  # Adsh: voxels whose pseudo-label class fails its threshold are dropped
        voxel = torch.tensor([True] * 5 + [False] * 5 + [True] * 2 + [False] * 2 + [True, False])
        assert torch.equal(keep.gather(1, target[:, None])[0, 0], voxel)
        expected = (F.cross_entropy(student, target, reduction="none") * voxel).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (Adsh, "tau_major", 1.0),
        (Adsh, "bank_share", 0.0),
        (Adsh, "rampup", 2.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
