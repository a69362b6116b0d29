"""`optimizer_step`'s two ways of skipping a non-finite update: decided on the host (the CPU
path) or on the device (the sync-free path of a fused optimizer, which the loop uses on a GPU
and which these tests force on the CPU), and the EMA update that follows it."""

from __future__ import annotations

import contextlib
import copy
import dataclasses

import pytest
import torch
from test_train import prepared  # noqa: F401  (module fixture: tiny data stages)
from torch import nn

from benchmarks.syncs import HostReads
from semimed.data.taskdata import load_task_data
from semimed.methods.ema import update_ema
from semimed.training.optimization import Optimization, optimizer_step

LOSSES = [1.0, float("nan"), 1.0, float("inf"), 1.0]  # factors of the loss, step by step


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _optimization(model: nn.Module, kind: str, sync_free: bool) -> Optimization:
    params = list(model.parameters())
    if kind == "sgd":
        optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, fused=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=0.1, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return Optimization(optimizer, schedule, scaler, contextlib.nullcontext, params, 1.0, sync_free)


def _loss(model: nn.Module, factor: float) -> torch.Tensor:
    x = torch.linspace(-1, 1, 24).view(6, 4)
    return model(x).square().mean() * factor


def test_sync_free_skip_matches_the_host_path():
    """Finite, NaN, finite, inf, finite losses: the device path returns 1.0 / 0.0 tensors
    (the first update on the host, while the optimizer has no state) and leaves the same
    weights, moments and step counts as the host path, for AdamW and Nesterov SGD."""
    for kind in ("adamw", "sgd"):
        host_model, free_model = _model(), _model()
        host = _optimization(host_model, kind, sync_free=False)
        free = _optimization(free_model, kind, sync_free=True)
        for i, factor in enumerate(LOSSES):
            stepped_host = optimizer_step(_loss(host_model, factor), host)
            stepped_free = optimizer_step(_loss(free_model, factor), free)
            assert stepped_host is (factor == 1.0)
            if i == 0:
                assert stepped_free is True
            else:
                assert torch.is_tensor(stepped_free)
                assert stepped_free.item() == float(stepped_host)
            for a, b in zip(host_model.parameters(), free_model.parameters(), strict=True):
                assert torch.equal(a, b), (kind, i)
        for a, b in zip(host_model.parameters(), free_model.parameters(), strict=True):
            state_a, state_b = host.optimizer.state[a], free.optimizer.state[b]
            assert state_a.keys() == state_b.keys()
            assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
        assert host.scheduler.last_epoch == free.scheduler.last_epoch == len(LOSSES)


def test_sync_free_step_and_ema_read_nothing_back_to_the_host():
    """After the first update, a step (backward, clipping, fused update) and the EMA update
    weighted by the device flag run without one host read; a skipped step leaves the
    teacher's parameters as they were, an applied one equals the plain EMA update."""
    model = _model()
    opt = _optimization(model, "adamw", sync_free=True)
    optimizer_step(_loss(model, 1.0), opt)
    teacher = copy.deepcopy(model).requires_grad_(False)
    for factor in (float("nan"), 1.0):
        loss = _loss(model, factor)
        before = [p.clone() for p in teacher.parameters()]
        expected = copy.deepcopy(teacher)
        with HostReads() as mode:
            applied = optimizer_step(loss, opt)
            update_ema(teacher, model, 0.9, applied)
        assert mode.seen == []
        if factor == 1.0:
            update_ema(expected, model, 0.9)
            pairs = zip(teacher.parameters(), expected.parameters(), strict=True)
        else:
            pairs = zip(teacher.parameters(), before, strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)


# Methods whose step still reads data back to the host on the sync-free path, and why.
HOST_READS_LEFT = {
    "mixmatch": "MixUp's lambda is drawn from a Beta on the CPU (no GPU sync: CPU tensors)",
    "tear": "AdaPL and IPH read their cluster sizes (module docstring: one sync each)",
    "ssnet": "its memory bank keeps a data-dependent number of voxels per class",
}


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_sync_free_steps_of_every_method_read_nothing_back(prepared, task, monkeypatch):  # noqa: F811
    """Each registered method's whole training step (forward, losses, backward, fused update,
    ``on_step_end``) on the sync-free path, as the loop runs it on a GPU with the fused
    optimizer forced here on the CPU: no op reads a tensor back to the host (which would
    make the CPU wait for the GPU every step), except `HOST_READS_LEFT`."""
    from benchmarks.steps import StepRunner, registered
    from benchmarks.syncs import host_syncs
    from semimed.training import optimization

    def fused(params, t):
        kwargs = {"lr": t.lr, "weight_decay": t.weight_decay, "fused": True}
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, momentum=t.momentum, **kwargs)
        return (torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam)(params, **kwargs)

    monkeypatch.setattr(optimization, "build_optimizer", fused)
    cfg, processed, splits = prepared[task]
    if task == "segmentation":  # URPC's deep supervision needs 3 levels
        cfg = dataclasses.replace(
            cfg, network=dataclasses.replace(cfg.network, channels=(4, 8, 16))
        )
    data = load_task_data(cfg, processed, splits)
    reads = {}
    for name in registered(task):
        runner = StepRunner(cfg, data, name)
        runner.step()  # the first update: on the host, while the optimizer has no state
        assert runner.opt.sync_free, name
        reads[name] = host_syncs(runner.step, torch.device("cpu"))
    left = {name for name in HOST_READS_LEFT if name in reads}
    assert {name for name, n in reads.items() if n} == left, reads
