"""Classification loss helpers (classification/losses.py): sharpen, MixUp, NT-Xent, k-means, IPH."""

import pytest
import torch
import torch.nn.functional as F

from semimed.methods.classification.losses import (
    group_means,
    kmeans_assign,
    matched_prototype_loss,
    mixup,
    nt_xent,
    sharpen,
)


def test_sharpen_and_mixup_helpers():
    p = torch.tensor([[0.6, 0.3, 0.1]])
    torch.testing.assert_close(sharpen(p, 1.0), p)
    torch.testing.assert_close(sharpen(p, 0.5), p**2 / (p**2).sum())
    x, t = torch.arange(3.0)[:, None], torch.eye(3)
    mixed_x, mixed_t = mixup(x, t, 0.75, torch.tensor([2, 0, 1]))
    torch.testing.assert_close(mixed_x[:, 0], torch.tensor([0.5, 0.75, 1.75]))
    torch.testing.assert_close(mixed_t[0], torch.tensor([0.75, 0.0, 0.25]))


def test_nt_xent_matches_the_paper_formula_and_pairs_rows():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / 0.5
    losses = []
    for i in range(6):
        j = (i + 3) % 6
        others = torch.cat([sim[i, :i], sim[i, i + 1 :]])
        losses.append(-(sim[i, j] - torch.logsumexp(others, 0)))
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), torch.stack(losses).mean())
    # Row i of z1 is the positive of row i of z2: aligned views beat shuffled ones.
    assert nt_xent(z1, z1 + 0.01, 0.5) < nt_xent(z1, (z1 + 0.01)[[1, 2, 0]], 0.5)
    assert nt_xent(z1[:1], z2[:1], 0.5) == 0  # one pair: no negatives, nothing to learn


def test_kmeans_is_deterministic_and_finds_separated_groups():
    torch.manual_seed(0)
    centres = torch.eye(3) * 10
    x = torch.cat([c + 0.1 * torch.randn(5, 3) for c in centres])[torch.randperm(15)]
    labels = kmeans_assign(x, 3, iters=5)
    assert torch.equal(labels, kmeans_assign(x, 3, iters=5))
    truth = x.argmax(1)
    for k in range(3):  # each found cluster is exactly one true group
        assert truth[labels == k].unique().numel() == 1 and (labels == k).sum() == 5
    assert kmeans_assign(x[:2], 3, iters=2).max() <= 1  # fewer points than clusters


def test_group_means_marks_empty_groups():
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]])
    means, present = group_means(feats, torch.tensor([0, 0, 2]), 3)
    torch.testing.assert_close(means, torch.tensor([[2.0, 1.0], [0.0, 0.0], [0.0, 5.0]]))
    assert present.tolist() == [True, False, True]


def test_iph_loss_zero_iff_prototypes_coincide_up_to_cluster_order():
    torch.manual_seed(0)
    teacher = torch.randn(3, 8)
    everyone = torch.ones(3, dtype=torch.bool)
    # Cluster indices are arbitrary: a permuted copy of the teacher's prototypes costs nothing.
    student = teacher[[2, 0, 1]].clone().requires_grad_()
    assert matched_prototype_loss(student, everyone, teacher, everyone).item() == pytest.approx(
        0.0, abs=1e-6
    )
    other = torch.randn(3, 8, requires_grad=True)
    loss = matched_prototype_loss(other, everyone, teacher, everyone)
    assert loss > 0.1
    loss.backward()
    assert other.grad.abs().sum() > 0
    # Absent clusters / classes are left out: only the present pair (0, 1) counts.
    one = torch.tensor([True, False, False])
    expected = 1 - F.cosine_similarity(other[0], teacher[1], dim=0)
    got = matched_prototype_loss(other, one, teacher, torch.tensor([False, True, False]))
    torch.testing.assert_close(got, expected)
    assert matched_prototype_loss(other, one, teacher, torch.zeros(3, dtype=torch.bool)) == 0
