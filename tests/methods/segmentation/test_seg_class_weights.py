"""Class weights and sampling rules (segmentation/class_weights.py): DistDW, DiffDW, rates."""

import torch
from seg_method_helpers import hand_labels, hand_logits

from semimed.methods.segmentation.class_weights import (
    class_sampling_mask,
    difficulty_weights_,
    distribution_weights,
    hard_dice_per_class,
    label_class_sums,
    sampling_rates,
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


def test_hard_dice_per_class():
    y = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    y[..., :2] = 1
    logits = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    # class 2 is in neither map: its Dice is undefined (NaN), not 1
    expected = torch.tensor([1.0, 1.0, float("nan")])
    assert torch.allclose(hard_dice_per_class(logits, y), expected, equal_nan=True)


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
