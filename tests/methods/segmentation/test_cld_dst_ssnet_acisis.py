"""CLD, DST, SS-Net and AcISIS (Basak et al.): the DHC class-imbalance baselines, batch B."""

import math

import pytest
import torch
from seg_helpers import NUM_CLASSES, fits_fixed_batch, make, make_batch, tiny_unet, trainable

from semimed.methods.segmentation.acisis import AcISIS, confidence_indicators, fuzzy_rank_scores
from semimed.methods.segmentation.class_weights import (
    class_sampling_mask,
    label_class_sums,
    sampling_rates,
)
from semimed.methods.segmentation.cld import CLD, cld_weights
from semimed.methods.segmentation.dst import (
    DST,
    GradientReversal,
    grl_coefficient,
    worst_case_loss,
)
from semimed.methods.segmentation.ssnet import SSNet, soft_dice_distance, unit_per_sample
from semimed.networks.segmentation import PairAverage

METHODS = [CLD, DST, SSNet, AcISIS]


def grads_reach(module):
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable(module))


def hand_logits(columns):
    """Logits (1, C, V, 1, 1) whose softmax has the given per-voxel probability columns."""
    probs = torch.tensor(columns, dtype=torch.float32).T  # (C, V)
    return probs.log().reshape(1, len(probs), -1, 1, 1)


def hand_labels(labels):
    return torch.tensor(labels).reshape(1, 1, -1, 1, 1)


# ------------------------------------------------------------------ shared behaviour


@pytest.mark.parametrize("cls", METHODS)
def test_unsup_term_nonzero_and_reaches_every_trained_network(cls):
    method = make(cls)
    terms = method.training_step(make_batch(), 5)
    assert terms["unsup"].item() > 0 and terms["weight"].item() > 0
    terms["unsup"].backward()
    trained = [method.net] + [
        getattr(method, k) for k in ("net2", "projection") if hasattr(method, k)
    ]
    for module in trained:
        assert grads_reach(module), type(module).__name__


@pytest.mark.parametrize("cls", METHODS)
def test_fits_a_fixed_batch(cls):
    assert fits_fixed_batch(make(cls))


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (CLD, "gamma", 0.0),
        (CLD, "confs_iter", 0),
        (CLD, "confs_momentum", 1.0),
        (CLD, "weight_power", -1.0),
        (DST, "threshold", 1.5),
        (DST, "grl_steps", 0),
        (DST, "eta", -1.0),
        (SSNet, "vat_eps", 0.0),
        (SSNet, "memory_size", 1),
        (SSNet, "contrast_voxels", -1),
        (SSNet, "rampup", 2.0),
        (AcISIS, "score_momentum", 1.0),
        (AcISIS, "penalised", -1),
        (AcISIS, "rate_power", 0.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})


# ------------------------------------------------------------------ shared sampling rules


def test_sampling_rates_favour_the_least_confident_class():
    rates = sampling_rates(torch.tensor([0.9, 0.6, 0.2]), 0.5)
    assert torch.allclose(rates, torch.tensor([0.125, 0.5, 1.0]).sqrt())
    assert torch.allclose(sampling_rates(torch.tensor([0.9, 0.6, 0.2]), 2.5)[2], torch.tensor(1.0))


def test_class_sampling_mask_keeps_each_class_at_its_rate():
    torch.manual_seed(0)
    pred = torch.arange(3).repeat_interleave(20000)
    logits = torch.nn.functional.one_hot(pred, 3).T.float().reshape(1, 3, -1)
    keep = class_sampling_mask(logits, torch.tensor([0.0, 0.5, 1.0]))[0]
    assert keep[pred == 0].sum() == 0 and keep[pred == 2].min() == 1
    assert abs(keep[pred == 1].mean().item() - 0.5) < 0.02


def test_label_class_sums():
    values = hand_logits([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]).exp()
    sums, counts = label_class_sums(values, hand_labels([0, 0, 2]))
    assert torch.allclose(sums, torch.tensor([1.4, 0.0, 0.7]))
    assert torch.equal(counts, torch.tensor([2.0, 0.0, 1.0]))


# ------------------------------------------------------------------ CLD


def test_cld_weights_grow_with_rarity():
    w = cld_weights(torch.tensor([1000.0, 100.0, 10.0, 0.0]))
    expected = torch.tensor([1.0, 10.0, 100.0, 1000.0]).pow(1 / 3)
    assert torch.allclose(w, expected)
    torch.manual_seed(0)
    method = CLD(tiny_unet, CLD.Params(), NUM_CLASSES, 10, class_counts=[1000.0, 100.0, 10.0])
    assert torch.allclose(method.weights, expected[:3])
    assert torch.equal(make(CLD).weights, torch.ones(NUM_CLASSES))


def test_cld_bank_pools_confs_iter_steps_then_ema():
    method = make(CLD, confs_iter=2, confs_momentum=0.5)
    y = hand_labels([0, 0, 1, 2])
    # Each class's probability on its own voxels: 0.9 (class 0), 0.6 (class 1), 0.2 (class 2).
    step1 = hand_logits([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.4, 0.4, 0.2]])
    for _ in range(2):
        method.update_banks((step1, step1), y)
    assert torch.allclose(method.confs[0], torch.tensor([0.9, 0.6, 0.2]))
    # The least confident class is sampled at rate 1, the most confident least often.
    assert torch.allclose(method.rates()[0], torch.tensor([0.125, 0.5, 1.0]).sqrt())
    # The next pooled estimate (class 2 now at 0.6) enters with momentum 0.5.
    step2 = hand_logits([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])
    method.update_banks((step2, step2), y)
    assert torch.allclose(method.confs[0, 2], torch.tensor(0.2))  # pooled, not yet applied
    method.update_banks((step2, step2), y)
    assert torch.allclose(method.confs[0, 2], torch.tensor(0.4))

    # A resumed run counts on from the checkpoint's step (the host copy follows the buffer):
    # one more pooled step, then the update fires on the same step as in the first run.
    method.update_banks((step1, step1), y)
    resumed = make(CLD, confs_iter=2, confs_momentum=0.5)
    resumed.load_state_dict(method.state_dict())
    assert resumed._conf_steps == int(method.conf_steps) == 5
    for m in (method, resumed):
        m.update_banks((step1, step1), y)
    assert torch.equal(resumed.confs, method.confs) and int(resumed.conf_steps) == 6


def test_cld_cps_term_is_class_weighted_and_sampled_by_own_prediction():
    torch.manual_seed(0)
    method = CLD(tiny_unet, CLD.Params(confs_iter=100), NUM_CLASSES, 10, class_counts=[9, 3, 1])
    method.confs.copy_(torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.5]]))
    batch = make_batch()
    torch.manual_seed(1)
    terms = method.training_step(batch, 10)
    torch.manual_seed(1)
    x = torch.cat([batch["x_lb"], batch["x_ulb_w"]])
    with torch.no_grad():
        a, b = method.net(x), method.net2(x)
        expected = 0.0
        for student, teacher, rates in ((a, b, method.rates()[0]), (b, a, method.rates()[1])):
            target = teacher.argmax(1)
            keep = class_sampling_mask(student, rates)
            ce = torch.nn.functional.cross_entropy(student, target, reduction="none")
            expected += (ce * method.weights[target] * keep).mean()
    assert torch.allclose(terms["unsup"], expected, atol=1e-5)


# ------------------------------------------------------------------ DST


def test_dst_pseudo_labels_train_the_pseudo_head_not_the_main_head():
    method = make(DST, threshold=0.0)
    terms = method.training_step(make_batch(), 5)
    assert terms["pseudo"].item() > 0
    terms["pseudo"].backward()
    for net, heads in ((method.net, method.heads), (method.net2, method.heads2)):
        output_layer = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][
            -1
        ]
        assert grads_reach(heads.pseudo)
        assert output_layer.weight.grad is None or output_layer.weight.grad.abs().sum() == 0
        assert not grads_reach(heads.worst)
        # The shared features below the heads do learn from the pseudo-labels.
        assert grads_reach(net)


def test_dst_worst_case_head_behind_gradient_reversal():
    x = torch.ones(3, requires_grad=True)
    (GradientReversal.apply(x, 0.3) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.3, -0.6, -0.9]))
    assert grl_coefficient(0, 0.1, 1.0, 500) == 0.0
    assert math.isclose(grl_coefficient(500, 0.1, 1.0, 500), 0.2 / (1 + math.exp(-1)) - 0.1)
    # Main head: labeled voxel -> class 0, unlabeled voxel -> class 1; the worst head is uniform:
    # CE = log 2 on the labeled row, -log(1 - 0.5) on the unlabeled one; eta' = 2.
    main = torch.tensor([[3.0, 0.0], [0.0, 3.0]]).reshape(2, 2, 1)
    loss = worst_case_loss(main, torch.zeros(2, 2, 1), 1, 2.0)
    assert math.isclose(loss.item(), 3 * math.log(2), rel_tol=1e-4)
    method = make(DST)
    terms = method.training_step(make_batch(), 5)
    terms["worst"].backward()
    assert grads_reach(method.heads.worst) and grads_reach(method.net)
    assert not grads_reach(method.heads.pseudo)


def test_dst_inference_is_the_plain_pair():
    method = make(DST)
    model = method.inference_model()
    assert isinstance(model, PairAverage)
    method.eval()
    x = make_batch()["x_lb"]
    with torch.no_grad():
        mean = 0.5 * (method.net(x).softmax(1) + method.net2(x).softmax(1))
        assert torch.allclose(model(x).exp(), mean, atol=1e-5)
    assert method.heads._features is None


# ------------------------------------------------------------------ SS-Net


def test_ssnet_adversarial_perturbation_has_the_norm_and_raises_the_distance():
    method = make(SSNet, vat_xi=3.0, vat_eps=3.0)
    batch = make_batch()
    x = torch.cat([batch["x_lb"], batch["x_ulb_w"]])
    with torch.no_grad():
        probs = method.net(x).softmax(1)
    d = method.adversarial_direction(x, probs)
    assert torch.allclose((3.0 * d).flatten(1).norm(dim=1), torch.full((4,), 3.0), atol=1e-3)
    with torch.no_grad():
        adversarial = soft_dice_distance(method.net(x + 3.0 * d), probs)
        clean = soft_dice_distance(method.net(x), probs)
        randoms = [
            soft_dice_distance(method.net(x + 3.0 * unit_per_sample(torch.randn_like(x))), probs)
            for _ in range(3)
        ]
    assert adversarial > max(randoms) > clean - 1e-4
    # The direction's search leaves no gradient on the weights.
    assert not grads_reach(method.net)


def test_ssnet_contrast_pulls_features_to_their_class_memory():
    method = make(SSNet, feat_dim=2)
    for selector in (method.selectors[1], method.memory_selectors[1]):
        torch.nn.init.zeros_(selector[-1].weight)  # constant scores -> uniform weights
    method.memory[1, :2] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    method.memory_len[1] = 2
    labels = torch.tensor([1, 1, 0])
    z = torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    # Distances 1 - cos: [[0, 1], [1, 0]] -> mean 0.5, over C = 3 classes; class 0 has no memory.
    assert torch.isclose(method.contrast(z, labels), torch.tensor(0.5 / NUM_CLASSES))
    # Features parallel to every entry of their class's memory cost nothing.
    method.memory[1, :2] = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    assert torch.isclose(method.contrast(z[[0, 0, 2]], labels), torch.tensor(0.0), atol=1e-6)


def test_ssnet_memory_holds_correct_foreground_predictions_only():
    method = make(SSNet, memory_size=2, contrast_voxels=0)
    y = hand_labels([0, 0, 1, 1, 1, 2, 2, 2])
    # Background and class 1 right (three voxels), class 2 predicted as class 1.
    columns = [[0.8, 0.1, 0.1]] * 2 + [[0.1, 0.8, 0.1]] * 3 + [[0.1, 0.8, 0.1]] * 3
    logits = torch.cat([hand_logits(columns), hand_logits(columns)]).requires_grad_(True)
    method.separation_loss(logits, y, 1)
    assert method.memory_len.tolist() == [0, 2, 0]


# ------------------------------------------------------------------ AcISIS


def test_acisis_raises_the_rate_of_a_poorly_learned_class():
    method = make(AcISIS, score_momentum=0.0, penalised=1)
    y = hand_labels([0, 0, 0, 1, 1, 1, 2, 2])
    # Classes 0 and 1 confidently right; class 2 predicted as class 0.
    columns = [[0.9, 0.05, 0.05]] * 3 + [[0.05, 0.85, 0.1]] * 3 + [[0.7, 0.1, 0.2]] * 2
    rates = method.update_rates(hand_logits(columns), y)
    assert rates[2] == 1.0 and rates[0] < 0.2 and rates[1] < 0.2
    assert torch.allclose(method.class_scores.max(), torch.tensor(1.0))


def test_acisis_fuzzy_rank_scores_numbers():
    ind = torch.tensor([[-5.0, -2.0, -1.0], [0.9, 0.5, 0.2], [0.0, 0.3, 0.6]])
    norm = ind.softmax(1)
    rank = 1 - torch.exp(-torch.exp(-2 * norm))
    score = (1 - norm.sum(0) / 3) * rank.sum(0)
    assert torch.allclose(fuzzy_rank_scores(ind, 0), score / score.max())
    # Penalising the top Gompertz rank of each indicator: G := 1 - 1/e, R := 0 there.
    top = rank.argmax(1)
    rank[torch.arange(3), top] = 1 - math.exp(-1)
    norm[torch.arange(3), top] = 0
    score = (1 - norm.sum(0) / 3) * rank.sum(0)
    assert torch.allclose(fuzzy_rank_scores(ind, 1), score / score.max())
    # The indicators of hand-built predictions: entropy term, confidence, gap to the top.
    got = confidence_indicators(
        hand_logits([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]), hand_labels([0, 1])
    )
    log_sum = math.log(0.5 * 0.3 * 0.2)
    expected = [[0.5 * log_sum, 0.3 * log_sum, 0], [0.5, 0.3, 0], [0, 0.2, 0]]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


def test_acisis_pseudo_labels_from_teacher_sampled_and_stabilised():
    method = make(AcISIS)
    with torch.no_grad():  # a teacher that disagrees with the student
        for p in method.teacher.parameters():
            p.add_(0.5 * torch.randn_like(p))
    batch = make_batch()
    torch.manual_seed(3)
    terms = method.training_step(batch, 4)
    assert "x_ulb_s" not in batch.read
    torch.manual_seed(3)
    with torch.no_grad():
        student = method.net(torch.cat([batch["x_lb"], batch["x_ulb_w"]]))[2:]
        target = method.teacher(batch["x_ulb_w"]).argmax(1)
        rates = sampling_rates(method.class_scores, 2.5)
        keep = class_sampling_mask(student, rates) * student.softmax(1).amax(1).pow(1.5)
        ce = torch.nn.functional.cross_entropy(student, target, reduction="none")
        assert not torch.equal(target, student.argmax(1))
    assert torch.allclose(terms["unsup"], (ce * keep).mean(), atol=1e-6)
    assert method.inference_model() is method.net
