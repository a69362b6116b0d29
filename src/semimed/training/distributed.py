"""Several processes for one run (`train.devices` > 1): torchrun launch, process group, DDP.

stages/train.py starts `torchrun` itself (`relaunch`), and every process runs
`semimed.training.train.train_run`. `DistributedDataParallel` averages the gradients; each process
trains on its share of the global batch (`train.batch_size`); buffers (BatchNorm statistics,
methods' running state) are rank 0's after every step (`sync_buffers`), so EMA teachers and
method state stay identical everywhere. Rank 0 alone validates and writes files.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from semimed.config import ConfigError, TaskConfig
from semimed.runtime import select_device


def is_worker() -> bool:
    """True in a process started by torchrun (it sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch(cfg: TaskConfig) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node=<train.devices>``
    running the same command line: dvc.yaml needs no launcher, and the exit status is torchrun's.
    CPU processes use gloo, CUDA ones NCCL with one GPU each."""
    t = cfg.train
    device = select_device(t.device)
    if device.type == "cuda" and torch.cuda.device_count() < t.devices:
        raise ConfigError(
            f"{cfg.task}.train.devices: {t.devices} processes need {t.devices} GPUs; "
            f"found {torch.cuda.device_count()}"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    os.execv(sys.executable, [*launcher, f"--nproc_per_node={t.devices}", *sys.argv])


@contextlib.contextmanager
def processes(cfg: TaskConfig) -> Iterator[tuple[int, int, torch.device]]:
    """(rank, world size, device) of this process; under torchrun, a joined process group."""
    t = cfg.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != t.devices:
        raise ConfigError(
            f"{cfg.task}.train.devices: {t.devices}, but this process is one of {world}; run "
            "stages/train.py, which starts torchrun itself"
        )
    device = select_device(t.device)
    if world == 1:
        yield 0, 1, device
        return
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    # validation on rank 0 can take long: the other processes wait for it at a barrier
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=1))
    try:
        yield rank, world, device
    finally:
        dist.destroy_process_group()


# DDP would copy rank 0's buffers at each forward pass: off, by the keyword this PyTorch's
# DDP takes (``forward_sync_buffers`` where it has it, else ``broadcast_buffers``)
_DDP = torch.nn.parallel.DistributedDataParallel
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(_DDP).parameters
    else {"broadcast_buffers": False}
)


class _Step(torch.nn.Module):
    """`method.training_step` as a module's forward pass, so that DDP averages its gradients."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method

    def forward(self, batch: dict, step: int) -> dict:
        return self.method.training_step(batch, step)


def step_function(method: torch.nn.Module, device: torch.device, world: int):
    """`method.training_step`, wrapped in DDP when several processes train."""
    if world == 1:
        return method.training_step
    return _DDP(
        _Step(method),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # e.g. SimCLR's projector once it probes
        **_NO_FORWARD_BUFFER_SYNC,  # synced after each step instead (`sync_buffers`)
    )


def sync_buffers(module: torch.nn.Module, world: int) -> None:
    """Rank 0's BatchNorm statistics and method state everywhere (a no-op for one process)."""
    if world > 1:
        for buf in module.buffers():
            dist.broadcast(buf, 0)


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def all_min(value: torch.Tensor, world: int) -> torch.Tensor:
    """The minimum of a scalar tensor over every process (itself for one process)."""
    if world > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value


def gather(obj, world: int) -> list:
    """Every process's `obj`, in rank order (on every process)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def mean_over_processes(sums: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Per-term sums of this process -> the mean of every process's sums."""
    keys = sorted(sums)
    if world > 1 and keys:
        flat = torch.stack([sums[k] for k in keys])
        dist.all_reduce(flat)
        sums = dict(zip(keys, flat / world, strict=True))
    return {k: float(v) for k, v in sums.items()}
