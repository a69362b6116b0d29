"""THE training loop: one loop for every method and both tasks.

Methods only compute losses (`Method.training_step`); this loop owns everything else:
optimizer and learning-rate schedule, mixed precision, gradient clipping (`optimizer_step`,
which the benchmark calls too), EMA/teacher updates (via `on_step_end`), validation-based
model selection, resumable checkpoints (`semimed.training.checkpoint`) and DVCLive logging. Device and
random states come from `semimed.runtime`, several processes from `semimed.training.distributed`, the
method from `semimed.build`.

Files written for one (task, method, seed) run:

* ``<scratch_dir>/last.pt`` resumable state (method, optimizer, schedule, step, best score,
  validation history, a copy of the DVCLive folder); the stage keeps it in the ignored
  ``.scratch/`` folder, outside every DVC output, so the run cache stays on
* ``<model_dir>/best.pt``  `inference_model()` weights at the best validation score
* ``<model_dir>/train.json`` what happened (budget, best step, convergence diagnostics, time)
* ``<live_dir>/``          DVCLive metrics and plots (every loss term, lr, the val metric)

Budget and early stopping: `semimed.training.convergence`. A step whose loss or gradients are not
finite is skipped (counted, logged) and `train.max_nonfinite` of them in a row stop the run.

Resuming: DVC removes a stage's outputs before running it, the checkpoint survives in the
scratch folder. Its fingerprint (params of this run, data, split and package source) decides:
the same fingerprint resumes from the saved step (and restores best.pt and the DVCLive rows of
that step); a different one starts afresh. `last.pt` also holds every random state (torch,
CUDA, NumPy, Python, the data stream's sampler and augmentations), so a resumed run continues
exactly as the uninterrupted one would (bit-identical on CPU), early stop included. Every file
is written atomically.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from dvclive import Live
from tqdm import tqdm

from semimed import build, process
from semimed.config import TaskConfig
from semimed.data.loaders import TaskData, train_batches
from semimed.data.prefetch import Prefetcher
from semimed.inference import validation_score
from semimed.io import write_json_atomic
from semimed.methods.losses import add_unsup_ratio
from semimed.runtime import rng_state, seed_everything, set_rng_state
from semimed.tasks import spec
from semimed.training import checkpoint, convergence, distributed, speedups
from semimed.training.optimization import make_optimization, optimizer_step


def train_run(
    cfg: TaskConfig,
    data: TaskData,
    method_name: str,
    seed: int,
    model_dir: Path,
    live_dir: Path,
    data_files: list[Path],
    scratch_dir: Path | None = None,
) -> dict:
    """Train one (method, seed) run to its budget or early stop, resuming if a matching
    checkpoint exists in `scratch_dir` (default: `model_dir`).

    Under torchrun every process calls this; rank 0 alone validates and writes files."""
    model_dir, live_dir = Path(model_dir), Path(live_dir)
    last = Path(scratch_dir or model_dir) / "last.pt"
    method_cls = build.method_class(cfg.task, method_name)
    params = build.method_params(cfg, method_cls)
    fp = checkpoint.fingerprint(cfg, method_name, params, seed, data_files)
    with distributed.processes(cfg) as (rank, world, device):
        lead = rank == 0
        state = checkpoint.load_checkpoint(last, fp, verbose=lead)
        distributed.barrier(world)  # every process has read last.pt before rank 0 changes it
        if lead:
            checkpoint.rewind(model_dir, live_dir, state)
        if state is not None and "summary" in state:  # finished: its files are restored
            if lead:
                print(f"{cfg.task}/{method_name}/seed{seed}: trained already ({last})")
                write_json_atomic(model_dir / "train.json", state["summary"])
            distributed.barrier(world)
            return state["summary"]

        seed_everything(seed)
        method = build.method_for_data(cfg, data, method_cls).to(device)
        if rank:  # the same initial weights, but each process its own dropout masks
            seed_everything(seed * 1_000_003 + rank)
        batches = train_batches(data, cfg, build.stream_spec(method_cls), seed, device, rank, world)
        if cfg.train.prefetch:
            batches = Prefetcher(batches, cfg.train.prefetch)
        if cfg.train.channels_last:
            speedups.to_channels_last(method, data.spatial_dims)
        if cfg.train.compile:
            speedups.compile_networks(method)
        steps = convergence.budget(cfg.train.steps, cfg.train.epochs, _pools(batches))
        t = replace(cfg.train, steps=steps)
        opt = make_optimization(method, t, device)  # the schedule spans the budget
        tracker = convergence.Tracker.for_train(t)  # train.stop fixed: no early stop
        start, best, best_weights, seconds = 0, {"score": -math.inf, "step": -1}, None, 0.0
        sums: dict[str, torch.Tensor] = {}
        if state is not None:
            method.load_state_dict(state["method"])
            opt.load_state_dict(state)
            start, best, seconds = state["step"], state["best"], state["seconds"]
            best_weights = state["best_weights"]
            tracker.load_state_dict(state["tracker"])
            mine = state["processes"][rank]
            batches.load_state_dict(mine["stream"])
            sums = {k: v.to(device) for k, v in mine["sums"].items()}
            set_rng_state(mine["rng"], device)
            if lead:
                print(f"resuming {cfg.task}/{method_name}/seed{seed} from step {start}")
        step_fn = distributed.step_function(method, device, world)
        skips = _DeviceSkips()
        run = f"{cfg.task}/{method_name}/seed{seed}"

        metric = spec(cfg.task).headline
        began = time.perf_counter()
        live = None  # DVCLive: rank 0 only
        if lead:
            live = Live(str(live_dir), resume=start > 0, dvcyaml=False, save_dvc_exp=False)
        done = start
        first_step = None  # wall time of this process's first step (compilation included)

        def summary(best: dict, elapsed: float) -> dict:  # train.json, and a finished last.pt
            out = _summary(cfg, t, best, tracker, elapsed, fp)
            out.update(method=method_name, seed=seed, device=_device(device, world))
            if first_step is not None:
                out["compile_first_step_seconds"] = round(first_step, 2)
            return out

        with live or contextlib.nullcontext(), contextlib.closing(batches):
            bar = tqdm(
                range(start, t.steps),
                initial=start,
                total=t.steps,
                mininterval=2.0,
                desc=run,
                dynamic_ncols=True,
                disable=not lead,
            )
            for step in bar:
                method.train()
                batch = next(batches)  # drawn and augmented outside autocast, in fp32
                with opt.autocast():
                    terms = step_fn(batch, step)
                stepped = optimizer_step(terms["loss"], opt, method, world)
                if first_step is None and cfg.train.compile:
                    first_step = time.perf_counter() - began
                # A device flag (sync-free path): counted there; the step's work below runs
                # and is weighted by it. A host bool: counted now; a skipped step ends here.
                on_device = isinstance(stepped, torch.Tensor)
                if on_device:
                    skips.record(stepped, tracker.nonfinite_run)
                else:
                    _count_skip(tracker, stepped, step, run, cfg.task, t.max_nonfinite)
                if on_device or stepped:
                    method.update_applied = stepped if on_device else None
                    method.on_step_end(step)
                    add_unsup_ratio(terms)
                    for k, v in terms.items():  # stays on the device: no sync every step
                        v = v.detach().float()
                        if on_device:  # a skipped step adds 0, as on the host path
                            v = torch.where(stepped > 0, v, 0.0)
                        sums[k] = sums.get(k, 0.0) + v
                if step % 10 == 0 and lead and not opt.sync_free:
                    bar.set_postfix(
                        {k: f"{float(v.detach()):.3f}" for k, v in terms.items()}, refresh=False
                    )

                done = step + 1
                stop = False
                at_eval = done % t.eval_every == 0 or done == t.steps
                if at_eval or done % t.checkpoint_every == 0:  # host syncs here anyway
                    skips.flush(tracker, done, run, cfg.task, t.max_nonfinite)
                if at_eval:
                    means = distributed.mean_over_processes(sums, world)
                    sums = {}
                    if lead:
                        process.release_free_memory()  # the steps' kept blocks: not on top of it
                        score = validation_score(method.inference_model(), data, cfg, device)
                        live.step = done
                        n = t.eval_every if done % t.eval_every == 0 else done % t.eval_every
                        for k, v in means.items():
                            live.log_metric(f"train/{k}", v / n)
                        live.log_metric("train/lr", opt.scheduler.get_last_lr()[0])
                        if tracker.nonfinite:
                            live.log_metric("train/skipped_steps", tracker.nonfinite)
                        live.log_metric(f"val/{metric}", score)
                        live.make_summary()
                        if score > best["score"]:
                            best = {"score": score, "step": done}
                            best_weights = checkpoint.cpu_copy(
                                method.inference_model().state_dict()
                            )
                            checkpoint.save(best_weights, model_dir / "best.pt")
                        stop = tracker.validated(done, score)
                    stop = tracker.stopped = distributed.gather(stop, world)[0]  # rank 0's call
                finished = stop or done == t.steps
                if done % t.checkpoint_every == 0 or finished:
                    processes = distributed.gather(
                        {
                            "rng": rng_state(device),
                            "stream": batches.state_dict(),
                            "sums": {k: v.cpu() for k, v in sums.items()},
                        },
                        world,
                    )
                    if lead:
                        elapsed = seconds + time.perf_counter() - began
                        ckpt = {
                            "fingerprint": fp,
                            "step": done,
                            "best": best,
                            "best_weights": best_weights,
                            "seconds": elapsed,
                            "tracker": tracker.state_dict(),
                            "live": checkpoint.snapshot(live_dir),
                            "method": method.state_dict(),
                            **opt.state_dict(),
                            "processes": processes,
                        }
                        if finished:  # a finished run restores from its checkpoint alone
                            ckpt["summary"] = summary(best, elapsed)
                        checkpoint.save(ckpt, last)
                if finished:
                    break
        best = distributed.gather(best, world)[0]  # rank 0 validated
        result = summary(best, seconds + time.perf_counter() - began)
        if lead:
            write_json_atomic(model_dir / "train.json", result)
            if tracker.stopped:
                print(f"{run}: stopped early at step {done} (train.patience)")
        distributed.barrier(world)
        return result


def _pools(batches) -> list[tuple[int, int]]:
    """(items, items drawn per step) of each pool the stream draws from (the epochs rule)."""
    streams = (batches.lab_stream, batches.ulb_stream)
    return [(s.n, s.size) for s in streams if s is not None]


def _count_skip(tracker, stepped: bool, step: int, run: str, task: str, limit: int) -> None:
    """Count a skipped update; stop the run after `limit` in a row (`train.max_nonfinite`)."""
    streak = tracker.skipped(not stepped)
    if not stepped:
        print(f"warning: {run}: non-finite loss or gradients at step {step + 1}; update skipped")
    _stop_if(streak, limit, step + 1, run, task)


def _stop_if(streak: int, limit: int, step: int, run: str, task: str) -> None:
    if streak >= limit:
        raise RuntimeError(
            f"{run}: {streak} steps in a row with a non-finite loss or gradients (up to step "
            f"{step}); stopping. Lower {task}.train.lr, set {task}.train.grad_clip, or "
            "check the data for NaN"
        )


class _DeviceSkips:
    """Updates skipped on the device (`optimizer_step`'s sync-free path), counted there: one
    tensor (skipped so far, skipped in a row now, longest run in a row) that `flush` reads back
    into the `Tracker` at the loop's validation and checkpoint points. A run of
    `train.max_nonfinite` skips therefore stops the run at the next such point."""

    def __init__(self) -> None:
        self.state = None

    def record(self, applied: torch.Tensor, run_before: int) -> None:
        """Count one step; `applied` is 1.0 or 0.0 (0-dim, on the device)."""
        if self.state is None:  # carries the tracker's run in a row (host steps, resumes)
            self.state = applied.new_tensor([0.0, run_before, run_before])
        skipped = 1.0 - applied
        self.state[0] += skipped
        self.state[1].add_(1.0).mul_(skipped)
        torch.maximum(self.state[2], self.state[1], out=self.state[2])

    def flush(self, tracker, step: int, run: str, task: str, limit: int) -> None:
        """Add the skips since the last flush to `tracker`; warn; stop after `limit` in a row."""
        if self.state is None:
            return
        skipped, in_a_row, longest = (int(v) for v in self.state.tolist())
        self.state = None
        tracker.nonfinite += skipped
        tracker.nonfinite_run = in_a_row
        if skipped:
            print(
                f"warning: {run}: {skipped} update(s) skipped (non-finite loss or gradients) "
                f"by step {step}"
            )
        _stop_if(longest, limit, step, run, task)


def _device(device: torch.device, world: int) -> str:
    return str(device) if world == 1 else f"{world} x {device.type}"


def _summary(cfg, t, best: dict, tracker, seconds: float, fp: str) -> dict:
    """train.json: what happened in one run (see `semimed.training.convergence` for the diagnostics);
    `method`, `seed` and `device` are filled in by `train_run`'s ``summary``."""
    metric = spec(cfg.task).headline
    done = tracker.history[-1][0] if tracker.history else 0
    return {
        "task": cfg.task,
        "method": None,
        "seed": None,
        "steps": done,
        "max_steps": cfg.train.steps,
        "budget_steps": t.steps,
        "last_step": done,
        f"best_val_{metric}": round(best["score"], 6),
        "best_step": best["step"],
        "convergence": tracker.report(done),
        "seconds": round(seconds, 1),
        "device": None,
        "fingerprint": fp,
    }
