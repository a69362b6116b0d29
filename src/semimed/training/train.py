"""THE training loop: one loop for every method and both tasks.

Methods only compute losses (`Method.training_step`); this loop owns everything else:
optimizer and learning-rate schedule, mixed precision, gradient clipping (`optimizer_step`,
which the benchmark calls too), EMA/teacher updates (via `on_step_end`), validation-based
model selection, resumable checkpoints (`semimed.training.checkpoint`) and DVCLive logging.
Device and random states come from `semimed.runtime`, several processes from
`semimed.training.distributed`, the method from `semimed.build`.

Files written for one (task, method, seed) run:

* ``<scratch_dir>/last.pt`` resumable state (method, optimizer, schedule, step, best score,
  validation history, a copy of the DVCLive folder); the stage keeps it in the ignored
  ``.scratch/`` folder, outside every DVC output, so the run cache stays on
* ``<model_dir>/best.pt``  `inference_model()` weights at the best validation score
* ``<model_dir>/train.json`` what happened (budget, best step, convergence diagnostics, time;
  `semimed.training.record`)
* ``<live_dir>/``          DVCLive metrics and plots (every loss term, lr, the val metric)

Budget and early stopping: `semimed.training.convergence`. A step whose loss or gradients are
not finite is skipped (counted, logged: `semimed.training.skips`) and `train.max_nonfinite` of
them in a row stop the run.

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
from semimed.runtime import seed_everything
from semimed.tasks import spec
from semimed.training import checkpoint, convergence, distributed, record, speedups
from semimed.training.optimization import make_optimization, optimizer_step
from semimed.training.skips import count_skip
from semimed.training.state import Run


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
        r = Run(cfg, method_name, seed, fp, model_dir, live_dir, last, rank, world, device)
        state = _restore(r)
        if state is not None and "summary" in state:  # finished: its files are restored
            if r.lead:
                print(f"{r.name}: trained already ({last})")
                write_json_atomic(model_dir / "train.json", state["summary"])
            distributed.barrier(world)
            return state["summary"]

        _build(r, data, method_cls)
        if state is not None:
            r.load_state_dict(state)
            if r.lead:
                print(f"resuming {r.name} from step {r.step}")
        step_fn = distributed.step_function(r.method, device, world)
        r.began = time.perf_counter()
        live = None  # DVCLive: rank 0 only
        if r.lead:
            live = Live(str(live_dir), resume=r.step > 0, dvcyaml=False, save_dvc_exp=False)
        with live or contextlib.nullcontext(), contextlib.closing(r.batches):
            bar = _progress(r)
            for step in bar:
                r.method.train()
                batch = next(r.batches)  # drawn and augmented outside autocast, in fp32
                with r.opt.autocast():
                    terms = step_fn(batch, step)
                stepped = optimizer_step(terms["loss"], r.opt, r.method, world)
                if r.first_step is None and cfg.train.compile:
                    r.first_step = time.perf_counter() - r.began
                _account(r, stepped, terms, step)
                if step % 10 == 0 and r.lead and not r.opt.sync_free:
                    bar.set_postfix(
                        {k: f"{float(v.detach()):.3f}" for k, v in terms.items()}, refresh=False
                    )

                r.step = done = step + 1
                at_eval = done % r.t.eval_every == 0 or done == r.t.steps
                if at_eval or done % r.t.checkpoint_every == 0:  # host syncs here anyway
                    r.skips.flush(r.tracker, done, r.name, cfg.task, r.t.max_nonfinite)
                stop = at_eval and _validate(r, data, live)
                finished = stop or done == r.t.steps
                if done % r.t.checkpoint_every == 0 or finished:
                    _save_last(r, finished)
                if finished:
                    break
        best = distributed.gather(r.best, world)[0]  # rank 0 validated
        result = _summary(r, best, r.seconds + time.perf_counter() - r.began)
        if r.lead:
            write_json_atomic(model_dir / "train.json", result)
            if r.tracker.stopped:
                print(f"{r.name}: stopped early at step {r.step} (train.patience)")
        distributed.barrier(world)
        return result


def _restore(r: Run) -> dict | None:
    """The checkpoint at `r.last` if it matches the run (None: start afresh); rank 0 makes
    the run's folders match it (`checkpoint.rewind`)."""
    state = checkpoint.load_checkpoint(r.last, r.fp, verbose=r.lead)
    distributed.barrier(r.world)  # every process has read last.pt before rank 0 changes it
    if r.lead:
        checkpoint.rewind(r.model_dir, r.live_dir, state)
    return state


def _build(r: Run, data: TaskData, method_cls) -> None:
    """The run's method on its device, batch stream, optional speed-ups, budget, optimization
    over that budget and convergence tracker."""
    cfg, seed = r.cfg, r.seed
    seed_everything(seed)
    r.method = build.method_for_data(cfg, data, method_cls).to(r.device)
    if r.rank:  # the same initial weights, but each process its own dropout masks
        seed_everything(seed * 1_000_003 + r.rank)
    stream = build.stream_spec(method_cls)
    r.batches = train_batches(data, cfg, stream, seed, r.device, r.rank, r.world)
    if cfg.train.prefetch:
        r.batches = Prefetcher(r.batches, cfg.train.prefetch)
    if cfg.train.channels_last:
        speedups.to_channels_last(r.method, data.spatial_dims)
    if cfg.train.compile:
        speedups.compile_networks(r.method)
    steps = convergence.budget(cfg.train.steps, cfg.train.epochs, _pools(r.batches))
    r.t = replace(cfg.train, steps=steps)
    r.opt = make_optimization(r.method, r.t, r.device)  # the schedule spans the budget
    r.tracker = convergence.Tracker.for_train(r.t)  # train.stop fixed: no early stop


def _pools(batches) -> list[tuple[int, int]]:
    """(items, items drawn per step) of each pool the stream draws from (the epochs rule)."""
    streams = (batches.lab_stream, batches.ulb_stream)
    return [(s.n, s.size) for s in streams if s is not None]


def _progress(r: Run) -> tqdm:
    """The steps left, as a progress bar (rank 0's shown)."""
    return tqdm(
        range(r.step, r.t.steps),
        initial=r.step,
        total=r.t.steps,
        mininterval=2.0,
        desc=r.name,
        dynamic_ncols=True,
        disable=not r.lead,
    )


def _account(r: Run, stepped: bool | torch.Tensor, terms: dict, step: int) -> None:
    """After `optimizer_step`: count a skipped update, run the method's end-of-step hook and
    add the step's loss terms to `r.sums` (on the device: no sync every step).

    A device flag (sync-free path) is counted there; the hook and the sums run, weighted by
    it. A host bool is counted now; a skipped step ends here."""
    on_device = isinstance(stepped, torch.Tensor)
    if on_device:
        r.skips.record(stepped, r.tracker.nonfinite_run)
    else:
        count_skip(r.tracker, stepped, step, r.name, r.cfg.task, r.t.max_nonfinite)
    if not (on_device or stepped):
        return
    r.method.update_applied = stepped if on_device else None
    r.method.on_step_end(step)
    add_unsup_ratio(terms)
    for k, v in terms.items():
        v = v.detach().float()
        if on_device:  # a skipped step adds 0, as on the host path
            v = torch.where(stepped > 0, v, 0.0)
        r.sums[k] = r.sums.get(k, 0.0) + v


def _validate(r: Run, data: TaskData, live: Live | None) -> bool:
    """Rank 0 validates, logs to DVCLive and saves best.pt on a new best score; True (on every
    process) when early stopping says stop now."""
    means = distributed.mean_over_processes(r.sums, r.world)
    r.sums = {}
    stop = False
    if r.lead:
        process.release_free_memory()  # the steps' kept blocks: not on top of it
        score = validation_score(r.method.inference_model(), data, r.cfg, r.device)
        _log(r, live, means, score)
        if score > r.best["score"]:
            r.best = {"score": score, "step": r.step}
            r.best_weights = checkpoint.cpu_copy(r.method.inference_model().state_dict())
            checkpoint.save(r.best_weights, r.model_dir / "best.pt")
        stop = r.tracker.validated(r.step, score)
    stop = r.tracker.stopped = distributed.gather(stop, r.world)[0]  # rank 0's call
    return stop


def _log(r: Run, live: Live, means: dict[str, float], score: float) -> None:
    """One DVCLive row at `r.step`: the mean of each loss term since the last validation, the
    learning rate, the skipped steps so far (if any) and the validation score."""
    done, every = r.step, r.t.eval_every
    live.step = done
    n = every if done % every == 0 else done % every  # steps since the last validation
    for k, v in means.items():
        live.log_metric(f"train/{k}", v / n)
    live.log_metric("train/lr", r.opt.scheduler.get_last_lr()[0])
    if r.tracker.nonfinite:
        live.log_metric("train/skipped_steps", r.tracker.nonfinite)
    live.log_metric(f"val/{spec(r.cfg.task).headline}", score)
    live.make_summary()


def _save_last(r: Run, finished: bool) -> None:
    """Write last.pt (rank 0) with every process's share (`Run.process_state`); a finished
    run's also holds its summary, from which the run restores alone."""
    processes = distributed.gather(r.process_state(), r.world)
    if not r.lead:
        return
    elapsed = r.seconds + time.perf_counter() - r.began
    ckpt = r.checkpoint_state(processes, elapsed)
    if finished:
        ckpt["summary"] = _summary(r, r.best, elapsed)
    checkpoint.save(ckpt, r.last)


def _summary(r: Run, best: dict, elapsed: float) -> dict:
    """train.json (`semimed.training.record.summary`), also a finished last.pt's summary."""
    return record.summary(
        r.cfg,
        r.t,
        best,
        r.tracker,
        elapsed,
        r.fp,
        method=r.method_name,
        seed=r.seed,
        device=r.device_name,
        first_step=r.first_step,
    )
