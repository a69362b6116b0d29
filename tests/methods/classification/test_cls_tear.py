"""TEAR classification: teacher views and eval mode, distribution alignment, AdaPL, IPH, state."""

import pytest
import torch
from cls_helpers import NUM_CLASSES, NUM_UNLABELED, first_conv, fit, make_tear, tiny_cnn, trainable
from cls_helpers import indexed_batch as make_batch
from cls_helpers import make_indexed as make

from semimed.methods.classification.tear import TEAR, adapl_relaxation, distance
from semimed.methods.losses import masked_cross_entropy


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


def test_tear_teacher_predicts_in_eval_mode_and_modes_come_back():
    method = make_tear(threshold=0.0)
    method.train()
    modes, outputs = [], []

    def record(module, inputs, output):
        modes.append(module.training)
        outputs.append(output.detach().clone())

    method.teacher.backbone.register_forward_hook(record)
    bn = next(m for m in method.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    running = bn.running_mean.clone()
    batch = make_batch()
    method.training_step(batch, 0)
    method.training_step(batch, 1)
    # Eval mode: no dropout (two passes agree), BatchNorm running statistics (not updated).
    assert modes == [False, False]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert torch.equal(bn.running_mean, running)
    assert all(m.training for m in method.modules())  # every mode restored
    method.eval()
    method.training_step(batch, 2)
    assert not any(m.training for m in method.modules())
