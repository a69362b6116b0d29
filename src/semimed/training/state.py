"""The state of one training run in one process: what the loop builds for it, where its
files go, how far it got, and what its resumable checkpoint (last.pt) holds.

`Run.checkpoint_state` is last.pt's content, `Run.load_state_dict` reads it back into a
freshly built run: weights, optimizer, schedule and loss scaler, step, best score and weights,
the convergence tracker, and per process the data stream's position, the loss sums since the
last validation and every random state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from semimed.config import TaskConfig
from semimed.runtime import rng_state, set_rng_state
from semimed.training import checkpoint
from semimed.training.skips import DeviceSkips


@dataclass
class Run:
    """One (task, method, seed) run in one process (`rank` of `world`)."""

    cfg: TaskConfig
    method_name: str
    seed: int
    fp: str  # the checkpoint fingerprint (`checkpoint.fingerprint`)
    model_dir: Path
    live_dir: Path
    last: Path  # the resumable checkpoint
    rank: int
    world: int
    device: torch.device
    # built by the loop (`semimed.training.train`)
    t: object = None  # cfg.train with the run's budget as `steps`
    method: torch.nn.Module | None = None
    batches: object = None  # the training stream, maybe behind a `Prefetcher`
    opt: object = None  # `semimed.training.optimization.Optimization`
    tracker: object = None  # `semimed.training.convergence.Tracker`
    skips: DeviceSkips = field(default_factory=DeviceSkips)
    # progress, saved in last.pt
    step: int = 0  # steps done
    best: dict = field(default_factory=lambda: {"score": -math.inf, "step": -1})
    best_weights: dict | None = None  # inference_model() state at `best` (CPU)
    seconds: float = 0.0  # wall time of the run's earlier sessions
    sums: dict = field(default_factory=dict)  # loss terms summed since the last validation
    # this session only
    began: float = 0.0  # perf_counter() before the first step
    first_step: float | None = None  # seconds to the end of this process's first step

    @property
    def name(self) -> str:
        """``<task>/<method>/seed<k>``, as messages and the progress bar name the run."""
        return f"{self.cfg.task}/{self.method_name}/seed{self.seed}"

    @property
    def lead(self) -> bool:
        """Rank 0: the process that validates and writes files."""
        return self.rank == 0

    @property
    def device_name(self) -> str:
        """Where the run trains, as train.json says: ``cpu``, ``cuda:0``, ``2 x cuda``."""
        return str(self.device) if self.world == 1 else f"{self.world} x {self.device.type}"

    def process_state(self) -> dict:
        """This process's share of last.pt: random states, stream position, loss sums."""
        return {
            "rng": rng_state(self.device),
            "stream": self.batches.state_dict(),
            "sums": {k: v.cpu() for k, v in self.sums.items()},
        }

    def checkpoint_state(self, processes: list[dict], elapsed: float) -> dict:
        """last.pt: the run's state after `step`, with every process's `process_state`
        (`processes`, in rank order) and `elapsed` seconds of training in all."""
        return {
            "fingerprint": self.fp,
            "step": self.step,
            "best": self.best,
            "best_weights": self.best_weights,
            "seconds": elapsed,
            "tracker": self.tracker.state_dict(),
            "live": checkpoint.snapshot(self.live_dir),
            "method": self.method.state_dict(),
            **self.opt.state_dict(),
            "processes": processes,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state` (a `checkpoint_state`) in this built run."""
        self.method.load_state_dict(state["method"])
        self.opt.load_state_dict(state)
        self.step, self.best, self.seconds = state["step"], state["best"], state["seconds"]
        self.best_weights = state["best_weights"]
        self.tracker.load_state_dict(state["tracker"])
        mine = state["processes"][self.rank]
        self.batches.load_state_dict(mine["stream"])
        self.sums = {k: v.to(self.device) for k, v in mine["sums"].items()}
        set_rng_state(mine["rng"], self.device)
