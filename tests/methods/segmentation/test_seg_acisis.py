"""AcISIS segmentation: fuzzy-rank class scores, sampling rates, stabilised teacher labels."""

import math

import pytest
import torch
from seg_helpers import fits_fixed_batch, make, make_batch
from seg_method_helpers import hand_labels, hand_logits

from semimed.methods.segmentation.acisis import AcISIS, confidence_indicators, fuzzy_rank_scores
from semimed.methods.segmentation.class_weights import class_sampling_mask, sampling_rates


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


@pytest.mark.parametrize("cls", [AcISIS])
def test_fits_a_fixed_batch(cls):
    assert fits_fixed_batch(make(cls))


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (AcISIS, "score_momentum", 1.0),
        (AcISIS, "penalised", -1),
        (AcISIS, "rate_power", 0.0),
    ],
)
def test_bad_params_rejected(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}: must"):
        cls.Params(**{field: value})
