"""TEAR and SimCLR on tiny 16x16 images, and their shared helpers (NT-Xent, k-means, IPH)."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_classification_methods import NUM_CLASSES, RecordingBatch, tiny_cnn

from semimed.methods.classification.losses import (
    group_means,
    kmeans_assign,
    matched_prototype_loss,
    nt_xent,
)
from semimed.methods.classification.simclr import SimCLR
from semimed.methods.classification.tear import TEAR, adapl_relaxation, distance
from semimed.methods.losses import masked_cross_entropy

NUM_UNLABELED = 20


def make_batch(seed=0, n_lb=4, n_ulb=6):
    g = torch.Generator().manual_seed(seed)
    x_ulb = torch.rand(n_ulb, 1, 16, 16, generator=g)

    def noisy():  # an independent perturbation of the same images
        return (x_ulb + 0.3 * torch.rand(n_ulb, 1, 16, 16, generator=g)).clamp(0, 1)

    return RecordingBatch(
        x_lb=torch.rand(n_lb, 1, 16, 16, generator=g),
        y_lb=torch.randint(0, NUM_CLASSES, (n_lb,), generator=g),
        x_ulb_w=x_ulb,
        x_ulb_s=noisy(),
        x_ulb_s2=noisy(),
        i_ulb=torch.tensor([2, 5, 7, 11, 13, 17]),
    )


def make(cls, total_steps=100, **params):
    torch.manual_seed(0)
    return cls(
        tiny_cnn,
        cls.Params(**params),
        num_classes=NUM_CLASSES,
        total_steps=total_steps,
        num_unlabeled=NUM_UNLABELED,
    )


def trainable(method):
    return [p for p in method.parameters() if p.requires_grad]


def first_conv(net):
    return next(net.backbone.parameters())


def fit(method, batch, steps, lr=1e-2):
    """Adam steps on one fixed batch, as the loop does them; returns the losses before / after."""
    opt = torch.optim.Adam(trainable(method), lr=lr)
    before = method.training_step(batch, 0)["loss"].item()
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        method.training_step(batch, step)["loss"].backward()
        opt.step()
        method.on_step_end(step)
    return before, method.training_step(batch, 0)["loss"].item()


# Shared helpers -------------------------------------------------------------------------------


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


# TEAR -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("threshold", 1.5),
        ("lambda_u", -1.0),
        ("ema_decay", 1.0),
        ("da_length", 0),
        ("lambda_adapl", -0.1),
        ("adapl_distance", "emd"),
        ("adapl_gamma", 0.5),
        ("adapl_gamma", 5.0),
        ("adapl_k", 0.5),
        ("adapl_min_weight", 1.5),
        ("adapl_momentum", 1.0),
        ("lambda_iph", -1.0),
        ("iph_iters", 0),
    ],
)
def test_tear_params_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        TEAR.Params(**{field: value})


def test_tear_flags_and_teacher_is_evaluated():
    assert TEAR.name == "tear" and TEAR.uses_unlabeled and TEAR.views == ("w", "s")
    method = make(TEAR)
    assert method.inference_model() is method.teacher
    assert not {id(p) for p in method.teacher.parameters()} & {id(p) for p in trainable(method)}
    with pytest.raises(RuntimeError, match="num_unlabeled"):
        TEAR(tiny_cnn, TEAR.Params(), NUM_CLASSES, 10).training_step(make_batch(), 0)


@pytest.mark.parametrize("term", ["unsup", "adapl", "iph"])
def test_tear_each_unsupervised_term_alone_reaches_student_weights(term):
    method = make(TEAR, threshold=0.0)
    out = method.training_step(make_batch(), 0)
    assert set(out) == {"loss", "sup", "unsup", "adapl", "iph", "mask_ratio", "adapl_weight"}
    assert out[term] > 0
    out[term].backward()
    assert first_conv(method.net).grad.abs().sum() > 0
    if term != "iph":  # IPH acts on features, before the head
        assert method.net.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.parameters())


def test_tear_views_teacher_sees_weak_student_trains_strong():
    method = make(TEAR, threshold=0.0)
    batch = make_batch()
    seen = {"student": [], "teacher": [], "head": []}

    def keep(name):
        def hook(mod, inp, out):
            if out.requires_grad:
                out.retain_grad()
            seen[name].append((inp[0], out))

        return hook

    method.net.backbone.register_forward_hook(keep("student"))
    method.teacher.backbone.register_forward_hook(keep("teacher"))
    method.net.head.register_forward_hook(keep("head"))
    out = method.training_step(batch, 0)

    assert len(seen["student"]) == 1 and len(seen["teacher"]) == 1
    torch.testing.assert_close(
        seen["student"][0][0], torch.cat([batch["x_lb"], batch["x_ulb_w"], batch["x_ulb_s"]])
    )
    torch.testing.assert_close(seen["teacher"][0][0], batch["x_ulb_w"])
    assert not seen["teacher"][0][1].requires_grad
    assert batch.read == {"x_lb", "y_lb", "x_ulb_w", "x_ulb_s", "i_ulb"}

    # Targets come from the teacher's (aligned) weak view; the strong view is trained.
    logits = seen["head"][0][1]
    teacher_probs = method.teacher.head(seen["teacher"][0][1]).softmax(1)
    aligned = teacher_probs / method.da_history.mean(0)
    expected = masked_cross_entropy(logits[10:], aligned.argmax(1), torch.ones(6, dtype=bool))
    torch.testing.assert_close(out["unsup"], expected)
    (out["unsup"] + out["adapl"]).backward(retain_graph=True)
    assert logits.grad[:10].abs().sum() == 0 and logits.grad[10:].abs().sum() > 0
    # IPH trains the student's weak-view features only.
    features = seen["student"][0][1]
    features.grad = None
    out["iph"].backward()
    assert features.grad[4:10].abs().sum() > 0
    assert features.grad[:4].abs().sum() == 0 and features.grad[10:].abs().sum() == 0


def test_tear_distribution_alignment_history_is_a_ring_of_batch_means():
    method = make(TEAR, da_length=2)
    batch = make_batch()
    means = []
    hook = method.teacher.head.register_forward_hook(
        lambda m, i, o: means.append(o.softmax(1).mean(0).detach())
    )
    uniform = torch.full((NUM_CLASSES,), 1 / NUM_CLASSES)
    torch.testing.assert_close(method.da_history, torch.stack([uniform, uniform]))
    method.training_step(batch, 0)
    torch.testing.assert_close(method.da_history, torch.stack([means[0], uniform]))
    assert method.da_next == 1
    with torch.no_grad():
        method.teacher.head.bias.add_(torch.tensor([1.0, 0.0, -1.0]))  # shift the predictions
    method.training_step(batch, 1)
    method.training_step(batch, 2)  # wraps: overwrites row 0
    hook.remove()
    torch.testing.assert_close(method.da_history, torch.stack([means[2], means[1]]))
    assert method.da_next == 1 and not torch.allclose(means[0], means[1])


def test_tear_adapl_memory_updates_only_at_batch_indices_as_an_ema():
    method = make(TEAR, adapl_momentum=0.75)
    batch = make_batch()
    index = batch["i_ulb"]
    out = method.training_step(batch, 0)
    assert out["adapl"] > 0
    untouched = torch.ones(NUM_UNLABELED, dtype=torch.bool)
    untouched[index] = False
    assert (method.adapl_memory[untouched] == 0).all() and not method.adapl_seen[untouched].any()
    assert method.adapl_seen[index].all() and (method.adapl_memory[index] > 0).all()

    first = method.adapl_memory.clone()
    with torch.no_grad():
        method.net.head.bias.add_(torch.tensor([2.0, 0.0, -2.0]))  # the student now disagrees
    batch["i_ulb"] = torch.tensor([2, 3, 4, 5, 6, 7])  # 2, 5, 7 seen before; 3, 4, 6 new
    captured = {}
    method.net.head.register_forward_hook(lambda m, i, o: captured.update(logits=o[10:].detach()))
    method.training_step(batch, 1)
    method.teacher.eval()  # as training_step runs it
    teacher_logits = method.teacher(batch["x_ulb_w"])
    aligned = teacher_logits.softmax(1) / method.da_history.mean(0)
    d = distance(aligned / aligned.sum(1, keepdim=True), captured["logits"], "mse")
    seen_before = torch.tensor([True, False, False, True, False, True])
    expected = torch.where(seen_before, 0.75 * first[batch["i_ulb"]] + 0.25 * d, d)
    torch.testing.assert_close(method.adapl_memory[batch["i_ulb"]], expected)
    assert method.adapl_memory[[11, 13, 17]].equal(first[[11, 13, 17]])  # not in this batch


def test_adapl_relaxation_softens_and_downweights_high_loss_samples():
    estimate = torch.tensor([0.0, 0.2, 1.0, 100.0])
    temperature, weight = adapl_relaxation(estimate, gamma=2.0, k=1.0, min_weight=0.5)
    torch.testing.assert_close(temperature, 1 / (1 + torch.exp(-2 * estimate)))
    assert temperature[0] == 0.5 and temperature[-1] == pytest.approx(1.0)
    assert temperature.diff().gt(0).all()  # higher loss estimate -> softer target
    assert weight[0] == 1.0 and weight[-1] == 0.5 and weight.diff().le(0).all()
    temperature, weight = adapl_relaxation(estimate, gamma=1.0, k=2.0, min_weight=0.0)
    assert temperature[0] == pytest.approx(1 / 3) and temperature[-1] == pytest.approx(0.5)
    assert weight[0] == pytest.approx(1.0) and weight[-1] == pytest.approx(0.0, abs=1e-6)


def test_tear_terms_survive_bf16_autocast():
    method = make(TEAR, threshold=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.training_step(make_batch(), 0)
    for term in ("unsup", "adapl", "iph"):
        assert out[term].dtype == torch.float32 and out[term] > 0, term
    assert method.adapl_memory.dtype == method.da_history.dtype == torch.float32


def test_tear_kl_distance_and_fits_fixed_batch():
    before, after = fit(make(TEAR, threshold=0.5, adapl_distance="kl"), make_batch(), steps=15)
    assert after < before


def test_tear_state_dict_round_trip_keeps_memories():
    method = make(TEAR)
    method.training_step(make_batch(), 0)
    method.on_step_end(0)
    copy = make(TEAR)
    copy.load_state_dict(method.state_dict())
    for name in ("da_history", "da_next", "adapl_memory", "adapl_seen"):
        assert torch.equal(getattr(copy, name), getattr(method, name)), name
    assert copy.adapl_seen.any()


# SimCLR ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("temperature", 0.0),
        ("proj_hidden", 0),
        ("proj_dim", 0),
        ("window", 0),
        ("patience", 0),
        ("min_delta", -0.1),
        ("max_pretrain_fraction", 0.0),
        ("max_pretrain_fraction", 1.0),
    ],
)
def test_simclr_params_reject_bad_values(field, value):
    with pytest.raises(ValueError, match=f"^{field}: must be"):
        SimCLR.Params(**{field: value})


def test_simclr_flags_and_projector_outside_inference_model():
    assert SimCLR.name == "simclr" and SimCLR.uses_unlabeled
    assert SimCLR.views == ("s", "s2") and SimCLR.unlabeled_pool == "all"
    method = make(SimCLR, proj_hidden=16, proj_dim=5)
    assert method.inference_model() is method.net
    assert method.projector[0].in_features == method.net.head.in_features == 8
    assert method.projector[-1].out_features == 5
    # The head starts at zero: before the probe every image gets equal logits (chance score).
    assert method.net.head.weight.abs().sum() == 0 and method.net.head.bias.abs().sum() == 0
    net_ids = {id(p) for p in method.net.parameters()}
    assert not net_ids & {id(p) for p in method.projector.parameters()}


def test_simclr_pretraining_pairs_the_two_strong_views():
    method = make(SimCLR)
    batch = make_batch()
    seen = []
    method.net.backbone.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    projections = []
    method.projector.register_forward_hook(lambda m, i, o: projections.append(o))
    out = method.training_step(batch, 0)

    assert set(out) == {"loss", "sup", "contrastive", "phase"} and out["phase"] == 1
    assert batch.read == {"x_ulb_s", "x_ulb_s2"}
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], torch.cat([batch["x_ulb_s"], batch["x_ulb_s2"]]))
    z = projections[0]
    torch.testing.assert_close(out["contrastive"], nt_xent(z[:6], z[6:], 0.5))
    torch.testing.assert_close(out["loss"], out["contrastive"])
    assert out["contrastive"] > 0 and out["sup"] == 0


def test_simclr_contrastive_gradient_reaches_backbone_and_projector_not_head():
    method = make(SimCLR)
    method.training_step(make_batch(), 0)["contrastive"].backward()
    assert first_conv(method.net).grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.projector.parameters())
    assert all(p.grad is None for p in method.net.head.parameters())


def test_simclr_pretraining_and_probe_fit_fixed_batch():
    method = make(SimCLR)
    before, after = fit(method, make_batch(), steps=10)
    assert after < before and not method._probing
    method.phase.fill_(2)
    method.load_state_dict(method.state_dict())  # the phase is read back from the buffer
    before, after = fit(method, make_batch(), steps=10, lr=5e-2)
    assert method._probing and after < before


def test_simclr_switches_on_plateau_after_patience_windows():
    # No optimizer step: every window has the same mean loss, so only the first improves.
    method = make(SimCLR, window=2, patience=2, min_delta=0.0)
    batch = make_batch()
    phases = []
    for step in range(8):
        phases.append(method.training_step(batch, step)["phase"].item())
        method.on_step_end(step)
    # Windows end after steps 1 (best), 3 (stale 1) and 5 (stale 2 = patience): the loop has
    # set step 6's learning rate already, so the probe starts at step 7.
    assert phases == [1, 1, 1, 1, 1, 1, 1, 2]
    assert method.phase == 2 and method.probe_start == 7


def test_simclr_window_mean_leaves_out_a_skipped_non_finite_step():
    """A NaN loss (a step the loop skips) neither poisons the window sum nor counts in it."""
    method = make(SimCLR, window=2, patience=5)
    batch = make_batch()
    finite = method.training_step(batch, 0)["contrastive"].item()
    method.on_step_end(0)
    bad = {k: v.clone() for k, v in batch.items()}
    bad["x_ulb_s"][0] = float("nan")
    assert not math.isfinite(method.training_step(bad, 1)["contrastive"].item())
    assert math.isfinite(method.window_sum.item()) and method.window_steps.item() == 1
    method.on_step_end(1)  # window closes: its mean is the one finite step's loss
    assert math.isclose(method.best_window.item(), finite, rel_tol=1e-5)
    assert method.window_sum.item() == 0.0 and method.window_steps.item() == 0


def test_simclr_improving_windows_keep_pretraining_until_max_fraction():
    method = make(SimCLR, total_steps=20, window=2, patience=1, min_delta=0.1)
    batch, phases = make_batch(), []
    for step in range(20):
        phases.append(method.training_step(batch, step)["phase"].item())
        if step % 2 == 1:  # each window's mean beats the last by 1 > min_delta
            method.window_sum.fill_(2 * (10.0 - step / 2))
        method.on_step_end(step)
    assert phases == [1] * 14 + [2] * 6  # 0.7 * 20 steps of pretraining
    assert method.probe_start == 14 and method.stale_windows == 0


def test_simclr_probe_freezes_backbone_and_leaves_its_grads_none():
    method = make(SimCLR)
    method.phase.fill_(2)
    method.load_state_dict(method.state_dict())
    batch = make_batch()
    bn = next(m for m in method.net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running_mean = bn.running_mean.clone()
    method.train()
    out = method.training_step(batch, 0)
    assert batch.read == {"x_lb", "y_lb"}
    assert out["phase"] == 2 and out["contrastive"] == 0
    torch.testing.assert_close(out["loss"], out["sup"])
    torch.testing.assert_close(
        out["sup"], F.cross_entropy(method.net(batch["x_lb"]), batch["y_lb"])
    )
    out["loss"].backward()
    assert not method.net.backbone.training and torch.equal(bn.running_mean, running_mean)
    assert all(p.grad is None for p in method.net.backbone.parameters())
    assert all(p.grad is None for p in method.projector.parameters())
    assert method.net.head.weight.grad.abs().sum() > 0
    # AdamW skips None grads: neither a step nor weight decay moves the frozen parts.
    frozen = [p.clone() for p in method.net.backbone.parameters()]
    torch.optim.AdamW(trainable(method), lr=0.1, weight_decay=0.5).step()
    assert all(
        torch.equal(a, b) for a, b in zip(frozen, method.net.backbone.parameters(), strict=True)
    )


def test_simclr_state_dict_round_trip_resumes_phase_and_tracker():
    method = make(SimCLR, window=2, patience=5)
    batch = make_batch()
    for step in range(4):
        method.training_step(batch, step)
        method.on_step_end(step)
    copy = make(SimCLR, window=2, patience=5)
    copy.load_state_dict(method.state_dict())
    for name in ("phase", "window_sum", "best_window", "stale_windows", "probe_start"):
        assert torch.equal(getattr(copy, name), getattr(method, name)), name
    assert copy.stale_windows == 1 and not copy._probing

    method.phase.fill_(2)
    copy.load_state_dict(method.state_dict())
    assert copy._probing and copy.training_step(batch, 4)["phase"] == 2
