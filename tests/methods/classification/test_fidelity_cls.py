"""Classification method fidelity (issue 15): TEAR's teacher in eval mode, SimCLR's per-phase
learning-rate schedule, and method memories fed by every DDP process's batch statistics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_classification_methods import NUM_CLASSES
from test_tear_simclr import make, make_batch

from semimed.methods.classification import TEAR, FreeMatch, SimCLR
from semimed.methods.classification.gather import all_rows
from semimed.networks import DataShape, build_network
from semimed.training.optimization import lr_factor

# TEAR -----------------------------------------------------------------------------------------


def dropout_cnn():
    return build_network("cnn", DataShape.single(2, 1, NUM_CLASSES), channels=(4, 8), dropout=0.5)


def make_tear(**params):
    torch.manual_seed(0)
    return TEAR(dropout_cnn, TEAR.Params(**params), NUM_CLASSES, 100, num_unlabeled=20)


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


# SimCLR ---------------------------------------------------------------------------------------

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


# DDP: memories from every process's rows --------------------------------------------------------


def test_all_rows_is_the_identity_in_one_process():
    x = torch.rand(3, 2)
    assert all_rows(x) is x


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        probs = torch.rand(2 * world, NUM_CLASSES).softmax(dim=1)  # the global batch
        mine = probs.chunk(world)[rank]
        torch.manual_seed(0)
        fm = FreeMatch(dropout_cnn, FreeMatch.Params(momentum=0.5), NUM_CLASSES, 10)
        fm.update_thresholds(mine)
        tear = make_tear(da_length=2)
        tear._align(mine)
        logits = torch.zeros(2, NUM_CLASSES)
        tear._adapl(mine, logits, torch.tensor([2 * rank, 2 * rank + 1]))
        state = {"fm": fm.state_dict(), "tear": tear.state_dict()}
        state |= {"rows": all_rows(torch.tensor([[rank]])), "probs": probs}
        torch.save(state, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memories_update_from_every_process(tmp_path):
    """Two gloo processes, each with half the batch: FreeMatch's EMAs, TEAR's alignment history
    and AdaPL memory equal one process's update on the whole batch, on both processes."""
    world = 2
    init = f"file://{tmp_path}/rendezvous"
    # spawn, not fork: forked after the suite has started torch threads, the children can hang
    mp.start_processes(
        _worker, args=(world, init, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    probs = results[0]["probs"]
    torch.manual_seed(0)
    one = FreeMatch(dropout_cnn, FreeMatch.Params(momentum=0.5), NUM_CLASSES, 10)
    one.update_thresholds(probs)
    tear = make_tear(da_length=2)
    tear._align(probs)
    tear._adapl(probs, torch.zeros(2 * world, NUM_CLASSES), torch.arange(2 * world))
    for r, res in enumerate(results):
        assert res["rows"].flatten().tolist() == [0, 1], r
        for name in ("tau", "p_model", "label_hist"):
            torch.testing.assert_close(res["fm"][name], getattr(one, name))
        for name in ("da_history", "adapl_memory", "adapl_seen"):
            torch.testing.assert_close(res["tear"][name], getattr(tear, name))
    assert tear.adapl_seen[: 2 * world].all() and not tear.adapl_seen[2 * world :].any()
