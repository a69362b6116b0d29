"""SimCLR classification: contrastive pretraining, plateau switch, linear probe, lr schedule."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from cls_helpers import first_conv, fit, trainable
from cls_helpers import indexed_batch as make_batch
from cls_helpers import make_indexed as make

from semimed.methods.classification.losses import nt_xent
from semimed.methods.classification.simclr import SimCLR
from semimed.training.optimization import lr_factor


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


T = SimpleNamespace(steps=300, warmup_steps=20, schedule="cosine")


def loop_schedule(k: float) -> float:
    return lr_factor(k, T)


def test_simclr_probe_gets_its_own_warmup_and_peak_rate():
    method = make(SimCLR, total_steps=T.steps)  # max_pretrain_fraction 0.7
    start = method.probe_start.item()
    assert start == math.ceil(0.7 * T.steps) and method.lr_factor(0, loop_schedule) > 0
    factors = [method.lr_factor(s, loop_schedule) for s in range(T.steps)]
    pretrain, probe = factors[:start], factors[start:]
    # Pretraining: the loop's warm-up then a decay that ends near 0 where pretraining ends.
    assert max(pretrain) == pytest.approx(1.0, abs=1e-3) and pretrain[-1] < 0.01
    # The probe warms up again to the peak rate; before, it got the global tail (<= 0.23).
    assert probe[0] < probe[1] < probe[2] and max(probe) == pytest.approx(1.0, abs=1e-3)
    assert max(probe[:10]) > 0.8 and max(loop_schedule(s) for s in range(start, T.steps)) < 0.24
    assert probe[-1] < 0.01


def test_simclr_plateau_switch_reaches_the_loops_scheduler_in_time():
    """The schedule as the loop builds it (LambdaLR over the method's lr_factor): the first probe
    step already runs at the probe's first rate."""
    method = make(SimCLR, total_steps=T.steps, window=2, patience=2)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: method.lr_factor(s, loop_schedule))
    batch, used = make_batch(), []
    for step in range(12):
        out = method.training_step(batch, step)  # no update: every window has the same mean
        used.append((out["phase"].item(), opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()  # the loop steps the schedule before on_step_end
        method.on_step_end(step)
    start = method.probe_start.item()
    assert start == 7  # patience reached after step 5
    assert [phase for phase, _ in used] == [1] * 7 + [2] * 5
    remaining = T.steps - start
    for step in range(start, 12):
        expected = loop_schedule((step - start) * T.steps / remaining)
        assert used[step][1] == pytest.approx(expected)
    assert used[start][1] == pytest.approx(1 / T.warmup_steps)  # warm-up restarts
