"""Each method's training-step cost against its intrinsic cost (the ``methods`` section).

Every registered method of a task trains on ONE fixed batch (the stream's first) of the
default network and batch size, each step as the training loop takes it: forward under the
loop's autocast, then `semimed.training.train.optimizer_step` (backward, clipping, optimizer,
schedule) and ``on_step_end``. Methods are timed in interleaved rounds, so load from other
processes spreads over all of them. Times: the fastest wall time of a step with torch's
default threads, and the median CPU time of a step on ONE thread; the ratios use the latter,
which other processes on a shared machine disturb far less (two OpenMP threads wait for each
other whenever one of them is descheduled).

Beside the ratio to ``supervised``: the DECLARED intrinsic cost (each Method class states the
images it forwards and back-propagates per step; cost model forward 1, backward 2 per image,
so ``supervised`` costs 3 B; side layers, copies of the network's output layer trained on
every pass, at their measured share of a pass's FLOPs), the MEASURED passes (`PassCounter`),
the FLOPs of a step (``FlopCounterMode``) and the ops that take most of its CPU time. waste = ratio / intrinsic
ratio: above `table.TARGETS["waste"]` a method spends time its algorithm does not need.
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from semimed import build
from semimed.data.loaders import train_batches
from semimed.methods import METHODS, Method
from semimed.networks import output_layer
from semimed.training import speedups
from semimed.training.optimization import make_optimization, optimizer_step

DEVICE = torch.device("cpu")


def registered(task: str) -> tuple[str, ...]:
    """Every method name registered for ``task``, in registry order (classes come from
    `semimed.build.method_class`)."""
    return tuple(METHODS[task])


def intrinsic_cost(
    cls: type[Method], params, b: int, u: int, side_share: float = 0.0
) -> dict | None:
    """What ``cls`` declares one training step needs (``Method.intrinsic_passes``,
    ``intrinsic_why``, ``intrinsic_side_layers``) for b labeled and u = mu * b unlabeled images
    (segmentation: crops) and its parsed ``params``: images forwarded and back-propagated
    through the task's network(s) and their cost (forward + 2 * backward) in units of
    supervised's 3 b; a pass through a network with k side layers (copies of its output layer)
    costs 1 + k * ``side_share`` (`output_layer_share`). None if ``cls`` declares nothing."""
    rule = getattr(cls, "intrinsic_passes", None)
    if rule is None:
        return None
    fwd, bwd = rule(b, u, params)
    side = cls.intrinsic_side_layers
    exact = (fwd + 2 * bwd) * (1.0 + side * side_share) / (3 * b)
    out = {"fwd": fwd, "bwd": bwd, "cost": round(exact, 3), "exact": exact}
    if side:
        out["side_layers"] = {"count": side, "share": round(side_share, 4)}
    return out | {"why": cls.intrinsic_why}


def output_layer_share(net: torch.nn.Module, x: torch.Tensor) -> float:
    """FLOPs (`FlopCounterMode`) of forward + backward of ``net``'s output layer
    (`semimed.networks.output_layer`; weights and input gradients, as inside the network)
    over those of the whole network, in training mode on the batch ``x``; on copies, so
    ``net`` keeps its gradients."""
    net = copy.deepcopy(net).train()
    captured = []
    output_layer(net).register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
    with FlopCounterMode(display=False) as whole:
        net(x).float().sum().backward()
    layer = copy.deepcopy(output_layer(net))
    with FlopCounterMode(display=False) as one:
        layer(captured[0].requires_grad_()).float().sum().backward()
    return one.get_total_flops() / whole.get_total_flops()


class PassCounter:
    """Counts images through a method's networks (``net`` and its copies: ``net2``, teacher,
    EMA); classifiers are hooked at ``backbone``, which TEAR and SimCLR call directly."""

    def __init__(self, method: torch.nn.Module) -> None:
        self.counts = {"fwd_grad": 0, "fwd_no_grad": 0, "bwd": 0}
        nets = [m for m in method.children() if isinstance(m, type(method.net))]
        self.handles = [getattr(n, "backbone", n).register_forward_hook(self._seen) for n in nets]

    def _seen(self, module, inputs, output) -> None:
        if not torch.is_tensor(output):
            return
        n = len(output)
        if output.requires_grad:
            self.counts["fwd_grad"] += n
            output.register_hook(lambda grad: self.counts.update(bwd=self.counts["bwd"] + n))
        else:
            self.counts["fwd_no_grad"] += n

    def remove(self) -> dict:
        for h in self.handles:
            h.remove()
        return self.counts


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's C++ log lines (written to file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class StepRunner:
    """One method with the loop's optimization (`semimed.training.train.make_optimization`) on a fixed
    batch; ``step()`` is one iteration of `semimed.training.train.train_run` in one process."""

    def __init__(self, cfg, data, name: str, device: torch.device = DEVICE) -> None:
        self.cls = build.method_class(cfg.task, name)
        torch.manual_seed(0)
        self.method = build.method_for_data(cfg, data, self.cls).to(device)
        if cfg.train.channels_last:  # as the loop
            speedups.to_channels_last(self.method, data.spatial_dims)
        stream = train_batches(data, cfg, build.stream_spec(self.cls), seed=0, device=device)
        self.batch = next(stream)
        self.opt = make_optimization(self.method, cfg.train, device)
        self.step_index, self.sums = 0, {}
        self.wall: list[float] = []  # seconds per step, torch's default threads
        self.cpu: list[float] = []  # CPU seconds per step, one thread

    def step(self) -> tuple[float, float]:
        """One training step; (wall seconds, CPU seconds of this process)."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.method.train()
        with self.opt.autocast():
            terms = self.method.training_step(self.batch, self.step_index)
        stepped = optimizer_step(terms["loss"], self.opt, self.method)
        self.method.update_applied = stepped if torch.is_tensor(stepped) else None
        self.method.on_step_end(self.step_index)
        for k, v in terms.items():  # as the loop: summed on the device, no sync
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
        self.step_index += 1
        return time.perf_counter() - wall, time.process_time() - cpu

    def profile(self) -> dict:
        """Passes (hooks) and FLOPs of one step; the ops with most CPU time in another."""
        counter = PassCounter(self.method)
        with FlopCounterMode(display=False) as flops:
            self.step()
        passes = counter.remove()
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            self.step()
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ops)
        top = [
            [e.key.removeprefix("aten::"), round(100 * e.self_cpu_time_total / total)]
            for e in ops[:3]
        ]
        return {"passes": passes, "gflop": flops.get_total_flops() / 1e9, "top_ops": top}


def _timed_rounds(runners: dict, threads: int, rounds: int, steps: int, warmup: int) -> None:
    """Steps of every runner on ``threads`` torch threads, interleaved in rounds; one thread
    records CPU time, more threads wall time."""
    torch.set_num_threads(threads)
    for r in runners.values():
        for _ in range(warmup):
            r.step()
    for _ in range(rounds):
        for r in runners.values():
            for _ in range(steps):
                wall, cpu = r.step()
                (r.cpu if threads == 1 else r.wall).append(cpu if threads == 1 else wall)


def bench_methods(cfg, data, one: tuple, wall: tuple) -> list[dict]:
    """One row per registered method of ``cfg.task`` (see the module docstring); ``one`` and
    ``wall``: (rounds, steps per round, warm-up steps) on one thread and on the default ones."""
    threads = torch.get_num_threads()
    runners = {name: StepRunner(cfg, data, name) for name in registered(cfg.task)}
    try:
        if threads > 1:
            _timed_rounds(runners, threads, *wall)
        _timed_rounds(runners, 1, *one)
        info = {name: r.profile() for name, r in runners.items()}  # one thread, as the ratios
    finally:
        torch.set_num_threads(threads)
    b = cfg.train.batch_size
    u = b * cfg.train.unlabeled_ratio
    base_cpu = statistics.median(runners["supervised"].cpu)
    share = 0.0
    if any(r.cls.intrinsic_side_layers for r in runners.values()):
        base = runners["supervised"]
        share = output_layer_share(base.method.net, base.batch["x_lb"])
    rows = []
    for name, r in runners.items():
        passes, gflop = info[name]["passes"], info[name]["gflop"]
        cpu, wall = statistics.median(r.cpu), min(r.wall or r.cpu)
        row = {
            "method": name,
            "step_ms": round(1e3 * wall, 2),
            "step_ms_median": round(1e3 * statistics.median(r.wall or r.cpu), 2),
            "cpu_ms_1_thread": round(1e3 * cpu, 2),
            "steps_timed": {"one_thread": len(r.cpu), "default_threads": len(r.wall)},
            "ratio": round(cpu / base_cpu, 3),
            "measured_passes": passes,
            "gflop": round(gflop, 4),
            "flop_ratio": round(gflop / info["supervised"]["gflop"], 3),
            "gflops_per_s": round(gflop / wall, 1),
            "top_ops": info[name]["top_ops"],
        }
        declared = intrinsic_cost(r.cls, r.method.params, b, u, share)
        if declared is not None:
            row["intrinsic"] = declared
            row["waste"] = round(cpu / base_cpu / declared.pop("exact"), 3)
        rows.append(row)
    return rows
