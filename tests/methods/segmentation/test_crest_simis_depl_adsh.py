"""CReST, SimiS, DePL and Adsh on CPS (DHC's class-imbalance baselines): their rules on
hand-built tensors, the unsupervised term's gradient, fitting a fixed batch, bad params."""

import pytest
import torch
import torch.nn.functional as F
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet

from semimed.methods.segmentation.adsh import Adsh, adaptive_thresholds, score_statistics
from semimed.methods.segmentation.crest import CReST, crest_weights
from semimed.methods.segmentation.depl import DePL, debias
from semimed.methods.segmentation.simis import SimiS, simis_weights

# DePL keeps only voxels whose debiased confidence reaches 0.9, which an untrained network
# never does; confidence 0 lets the gradient test see every voxel.
METHODS = [(CReST, {}), (SimiS, {}), (DePL, {"confidence": 0.0}), (Adsh, {})]


def one_hot_logits(labels, scale=5.0):
    """Logits (N, C, V) whose argmax is ``labels`` (N, V)."""
    return scale * F.one_hot(torch.tensor(labels), NUM_CLASSES).movedim(-1, 1).float()


@pytest.mark.parametrize("cls,params", METHODS)
def test_unsup_term_nonzero_and_reaches_both_networks(cls, params):
    method = make(cls, **params)
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    for net in (method.net, method.net2):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("cls,params", METHODS)
def test_fits_a_fixed_batch(cls, params):
    assert fits_fixed_batch(make(cls, **params))


def test_dhc_defaults_of_weight_and_rampup():
    """DHC's published protocol (-w 0.1 -r) for every baseline: weight 0.1, ramp over the run."""
    got = {cls: (cls.Params().cps_weight, cls.Params().rampup) for cls, _ in METHODS}
    assert got == {CReST: (0.1, 1.0), SimiS: (0.1, 1.0), DePL: (0.1, 1.0), Adsh: (0.1, 1.0)}


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
        (CReST, "alpha", 0.0),
        (CReST, "momentum", 1.0),
        (CReST, "cps_weight", -1.0),
        (SimiS, "momentum", -0.1),
        (DePL, "debias", -1.0),
        (DePL, "momentum", 1.0),
        (DePL, "confidence", 1.5),
        (Adsh, "tau_major", 1.0),
        (Adsh, "bank_share", 0.0),
        (Adsh, "rampup", 2.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
