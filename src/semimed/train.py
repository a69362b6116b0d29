"""THE training loop: one loop for every method and both tasks.

Methods only compute losses (`Method.training_step`); this loop owns everything else:
optimizer and learning-rate schedule, mixed precision, gradient clipping (`optimizer_step`,
which the benchmark calls too), EMA/teacher updates (via `on_step_end`), validation-based
model selection, resumable checkpoints (`semimed.checkpoint`) and DVCLive logging. Device and
random states come from `semimed.runtime`, several processes from `semimed.distributed`, the
method from `semimed.build`.

Files written for one (task, method, seed) run:

* ``<model_dir>/last.pt``  resumable state (method, optimizer, schedule, step, best score)
* ``<model_dir>/best.pt``  `inference_model()` weights at the best validation score
* ``<model_dir>/train.json`` what happened (best step, val score, time, device)
* ``<live_dir>/``          DVCLive metrics and plots (every loss term, lr, the val metric)

Resuming: the stage's outputs are `persist: true`, so after a crash `dvc repro` finds
`last.pt`. Its fingerprint (params of this run, data, split and package source) decides: the
same fingerprint resumes from the saved step; a different one starts afresh. `last.pt` also
holds every random state (torch, CUDA, NumPy, Python, the data stream's sampler and
augmentations) and the best weights so far, so a resumed run continues exactly as the
uninterrupted one would (bit-identical on CPU). Every file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from semimed import build, checkpoint, distributed
from semimed.config import TaskConfig
from semimed.data.loaders import TaskData, train_batches
from semimed.inference import validation_score
from semimed.io import write_json_atomic
from semimed.runtime import autocast_for, rng_state, seed_everything, set_rng_state
from semimed.tasks import spec


def build_optimizer(params, t) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=t.lr,
            momentum=t.momentum,
            nesterov=t.momentum > 0,
            weight_decay=t.weight_decay,
        )
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def lr_factor(step: int, t) -> float:
    """Linear warm-up to 1, then cosine to 0, poly (power 0.9, as DHC) or constant."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    if t.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if t.schedule == "poly":
        return (1 - progress) ** 0.9
    return 1.0


@dataclass
class Optimization:
    """What updates a method's weights: optimizer, schedule, loss scaler (fp16 only),
    autocast context, the trainable parameters and the clipping norm (0: none)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: object  # () -> context manager
    trainable: list
    grad_clip: float

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def make_optimization(method: torch.nn.Module, t, device: torch.device) -> Optimization:
    """`train`'s optimizer and schedule for `method`'s trainable parameters on `device`
    (bf16 autocast with `train.amp` on a CUDA device; fp16 adds a GradScaler)."""
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t))
    autocast, dtype = autocast_for(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    return Optimization(optimizer, scheduler, scaler, autocast, trainable, t.grad_clip)


def optimizer_step(
    loss: torch.Tensor, opt: Optimization, method: torch.nn.Module | None = None, world: int = 1
) -> None:
    """Backward `loss`, clip, step the optimizer and the schedule; under DDP (`world` > 1)
    copy rank 0's buffers of `method` to every process afterwards."""
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    if opt.grad_clip > 0:
        opt.scaler.unscale_(opt.optimizer)
        torch.nn.utils.clip_grad_norm_(opt.trainable, opt.grad_clip)
    opt.scaler.step(opt.optimizer)
    opt.scaler.update()
    opt.scheduler.step()
    if method is not None:
        distributed.sync_buffers(method, world)


def train_run(
    cfg: TaskConfig,
    data: TaskData,
    method_name: str,
    seed: int,
    model_dir: Path,
    live_dir: Path,
    data_files: list[Path],
) -> dict:
    """Train one (method, seed) run to completion, resuming if a matching checkpoint exists.

    Under torchrun every process calls this; rank 0 alone validates and writes files."""
    t = cfg.train
    model_dir, live_dir = Path(model_dir), Path(live_dir)
    method_cls = build.method_class(cfg.task, method_name)
    params = build.method_params(cfg, method_cls)
    fp = checkpoint.fingerprint(cfg, method_name, params, seed, data_files)
    with distributed.processes(cfg) as (rank, world, device):
        lead = rank == 0
        state = checkpoint.load_checkpoint(model_dir / "last.pt", fp, verbose=lead)
        if state is not None and state["step"] >= t.steps and (model_dir / "train.json").is_file():
            if lead:
                print(f"{cfg.task}/{method_name}/seed{seed}: trained already ({model_dir})")
            return json.loads((model_dir / "train.json").read_text())
        distributed.barrier(world)  # every process has read last.pt before rank 0 changes it
        if lead:
            checkpoint.rewind(model_dir, live_dir, state)

        seed_everything(seed)
        method = build.method_for_data(cfg, data, method_cls).to(device)
        if rank:  # the same initial weights, but each process its own dropout masks
            seed_everything(seed * 1_000_003 + rank)
        opt = make_optimization(method, t, device)
        batches = train_batches(data, cfg, build.stream_spec(method_cls), seed, device, rank, world)
        start, best, best_weights, seconds = 0, {"score": -math.inf, "step": -1}, None, 0.0
        sums: dict[str, torch.Tensor] = {}
        if state is not None:
            method.load_state_dict(state["method"])
            opt.load_state_dict(state)
            start, best, seconds = state["step"], state["best"], state["seconds"]
            best_weights = state["best_weights"]
            mine = state["processes"][rank]
            batches.load_state_dict(mine["stream"])
            sums = {k: v.to(device) for k, v in mine["sums"].items()}
            set_rng_state(mine["rng"], device)
            if lead:
                print(f"resuming {cfg.task}/{method_name}/seed{seed} from step {start}")
        step_fn = distributed.step_function(method, device, world)

        metric = spec(cfg.task).headline
        began = time.perf_counter()
        live = None  # DVCLive: rank 0 only
        if lead:
            live = Live(str(live_dir), resume=start > 0, dvcyaml=False, save_dvc_exp=False)
        with live or contextlib.nullcontext():
            bar = tqdm(
                range(start, t.steps),
                initial=start,
                total=t.steps,
                mininterval=2.0,
                desc=f"{cfg.task}/{method_name}/seed{seed}",
                dynamic_ncols=True,
                disable=not lead,
            )
            for step in bar:
                method.train()
                with opt.autocast():
                    terms = step_fn(next(batches), step)
                optimizer_step(terms["loss"], opt, method, world)
                method.on_step_end(step)
                for k, v in terms.items():  # stays on the device: no sync every step
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                if step % 10 == 0 and lead:
                    bar.set_postfix(
                        {k: f"{float(v.detach()):.3f}" for k, v in terms.items()}, refresh=False
                    )

                done = step + 1
                if done % t.eval_every == 0 or done == t.steps:
                    means = distributed.mean_over_processes(sums, world)
                    sums = {}
                    if lead:
                        score = validation_score(method.inference_model(), data, cfg, device)
                        live.step = done
                        n = t.eval_every if done % t.eval_every == 0 else done % t.eval_every
                        for k, v in means.items():
                            live.log_metric(f"train/{k}", v / n)
                        live.log_metric("train/lr", opt.scheduler.get_last_lr()[0])
                        live.log_metric(f"val/{metric}", score)
                        live.make_summary()
                        if score > best["score"]:
                            best = {"score": score, "step": done}
                            best_weights = checkpoint.cpu_copy(
                                method.inference_model().state_dict()
                            )
                            checkpoint.save(best_weights, model_dir / "best.pt")
                    distributed.barrier(world)  # the others wait while rank 0 validates
                if done % t.checkpoint_every == 0 or done == t.steps:
                    processes = distributed.gather(
                        {
                            "rng": rng_state(device),
                            "stream": batches.state_dict(),
                            "sums": {k: v.cpu() for k, v in sums.items()},
                        },
                        world,
                    )
                    if lead:
                        checkpoint.save(
                            {
                                "fingerprint": fp,
                                "step": done,
                                "best": best,
                                "best_weights": best_weights,
                                "seconds": seconds + time.perf_counter() - began,
                                "method": method.state_dict(),
                                **opt.state_dict(),
                                "processes": processes,
                            },
                            model_dir / "last.pt",
                        )
        best = distributed.gather(best, world)[0]  # rank 0 validated
        summary = {
            "task": cfg.task,
            "method": method_name,
            "seed": seed,
            "steps": t.steps,
            f"best_val_{metric}": round(best["score"], 6),
            "best_step": best["step"],
            "seconds": round(seconds + time.perf_counter() - began, 1),
            "device": str(device) if world == 1 else f"{world} x {device.type}",
            "fingerprint": fp,
        }
        if lead:
            write_json_atomic(model_dir / "train.json", summary)
        distributed.barrier(world)
        return summary
