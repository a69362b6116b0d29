"""THE training loop: one loop for every method and both tasks.

Methods only compute losses (`Method.training_step`); this loop owns everything else:
device choice, seeding, optimizer and learning-rate schedule, mixed precision, gradient
clipping, EMA/teacher updates (via `on_step_end`), validation-based model selection,
resumable checkpoints and DVCLive logging.

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

Several processes (`train.devices` > 1, DDP): stages/train.py starts `torchrun`, and every
process runs `train_run`. `DistributedDataParallel` averages the gradients; each process
trains on its share of the global batch (`train.batch_size`); buffers (BatchNorm statistics,
methods' running state) are rank 0's after every step, so EMA teachers and method state stay
identical everywhere. Rank 0 alone validates and writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import math
import os
import random
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from monai.metrics import compute_dice, do_metric_reduction
from monai.networks.utils import one_hot
from sklearn.metrics import balanced_accuracy_score
from tqdm import tqdm

from semimed.config import ConfigError, TaskConfig
from semimed.data.loaders import (
    TaskData,
    labeled_class_counts,
    numpy_rng_state,
    set_numpy_rng_state,
    train_batches,
    unlabeled_pool,
)
from semimed.inference import predict_proba, predict_volume
from semimed.io import write_bytes_atomic, write_json_atomic
from semimed.methods import get_method
from semimed.networks import build_network, reparameterize

VAL_METRIC = {"classification": "balanced_accuracy", "segmentation": "dice"}


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def rng_state(device: torch.device) -> dict:
    """This process's global random states (dropout, methods' sampling), weights_only-safe."""
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": numpy_rng_state(np.random),
        "python": (version, torch.tensor(internal, dtype=torch.int64), gauss),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    set_numpy_rng_state(np.random, state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def make_method(
    cfg: TaskConfig,
    name: str,
    num_classes: int,
    in_channels: int = 1,
    num_unlabeled: int = 0,
    task_sizes: tuple[int, ...] | None = None,
    class_counts=None,
    spatial_dims: int | None = None,
):
    """Instantiate method `name` with its params and a factory for the task's network.

    `task_sizes` (classes per target, multi-task) overrides `num_classes` with their sum;
    `class_counts` (labels per class of the labeled pool) feeds class-distribution priors;
    `spatial_dims` / `in_channels` are the data's (`TaskData`); spatial_dims defaults to 2 for
    classification and 3 for segmentation."""
    if task_sizes:
        num_classes = sum(task_sizes)
    cls = get_method(cfg.task, name)
    net = cfg.network
    if spatial_dims is None:
        spatial_dims = 2 if cfg.task == "classification" else 3

    def net_factory():
        return build_network(
            net.name,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            channels=net.channels,
            dropout=net.dropout,
            deep_supervision=cls.deep_supervision,
        )

    return cls(
        net_factory,
        cfg.method_params(name),
        num_classes,
        cfg.train.steps,
        num_unlabeled=num_unlabeled,
        task_sizes=task_sizes,
        class_counts=class_counts,
    )


def method_for_data(cfg: TaskConfig, data: TaskData, name: str):
    """`make_method` for training on `data`: its input shape, classes, unlabeled pool and
    label counts."""
    cls = get_method(cfg.task, name)
    return make_method(
        cfg,
        name,
        data.num_classes,
        in_channels=data.in_channels,
        spatial_dims=data.spatial_dims,
        num_unlabeled=len(unlabeled_pool(data, cls)),
        task_sizes=data.task_sizes,
        class_counts=labeled_class_counts(data, cls),
    )


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


def validate(model: torch.nn.Module, data: TaskData, cfg: TaskConfig, device) -> float:
    """The model-selection score on the validation split only (never the test split)."""
    if data.task == "classification":
        x, y = data.arrays(data.split["val"])  # the primary task selects checkpoints
        probs = predict_proba(model, x, cfg.eval.batch_size, device, data.task_sizes)
        return float(balanced_accuracy_score(y.numpy(), probs[:, : data.num_classes].argmax(1)))
    scores = []  # per volume (1, C - 1), NaN for a class absent from its label
    for vid in data.split["val"]:
        image, label = data.volumes[vid]
        pred = predict_volume(
            model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
        )
        c = data.num_classes
        pred, label = torch.as_tensor(pred)[None, None].long(), torch.as_tensor(label)[None].long()
        scores.append(compute_dice(one_hot(pred, c), one_hot(label, c), False, ignore_empty=True))
    # the mean over every (volume, class) with a label; not DiceMetric.aggregate(), which
    # all-gathers across DDP processes while rank 0 alone validates
    return float(do_metric_reduction(torch.cat(scores), "mean")[0].item())


def fingerprint(cfg: TaskConfig, method: str, seed: int, data_files: list[Path]) -> str:
    """Hash of everything that defines a run; a checkpoint resumes only if it matches."""
    h = hashlib.sha256()
    spec = {
        "task": cfg.task,
        "method": method,
        "seed": seed,
        "train": asdict(cfg.train),
        "network": asdict(cfg.network),
        "params": asdict(cfg.method_params(method)),
        "targets": getattr(cfg.data, "targets", None),
    }
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for path in data_files:
        h.update(Path(path).read_bytes())
    for src in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def _cpu_copy(state: OrderedDict) -> OrderedDict:
    """A state_dict copied to the CPU, with its `_metadata` (module versions)."""
    out = OrderedDict((k, v.detach().to("cpu", copy=True)) for k, v in state.items())
    out._metadata = state._metadata
    return out


def _save(obj, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _load_checkpoint(path: Path, fp: str, verbose: bool = True) -> dict | None:
    """Return the resumable state at `path` if it is readable and matches `fp`."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or corrupt file: start over, loudly
        if verbose:
            print(f"warning: {path} is unreadable ({type(err).__name__}); training from scratch")
        return None
    if state.get("fingerprint") != fp:
        if verbose:
            print(f"note: {path} belongs to other params/data/code; training from scratch")
        return None
    return state


def _rewind(model_dir: Path, live_dir: Path, state: dict | None) -> None:
    """Make the run's folders match `state` (None: a fresh start).

    A kill can leave files newer than the checkpoint: best.pt of a later validation, DVCLive
    rows of later steps or a row cut in half, a torn DVCLive metrics.json (DVCLive writes in
    place), or temporary files of an interrupted atomic write. The steps after the checkpoint
    run again and log again."""
    if state is None:  # stale files of another run must not survive
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(live_dir, ignore_errors=True)
        model_dir.mkdir(parents=True, exist_ok=True)
        return
    for leftover in [*model_dir.glob(".*.tmp"), *live_dir.rglob(".*.tmp")]:
        leftover.unlink()
    if state["best_weights"] is None:
        (model_dir / "best.pt").unlink(missing_ok=True)
    else:
        _save(state["best_weights"], model_dir / "best.pt")
    for tsv in live_dir.rglob("*.tsv"):
        lines = tsv.read_text().split("\n")[:-1]  # what follows the last newline is torn
        if not lines:
            tsv.unlink()
            continue
        col = lines[0].split("\t").index("step")
        kept = [r for r in lines[1:] if int(r.split("\t")[col]) <= state["step"]]
        write_bytes_atomic(tsv, "".join(f"{r}\n" for r in [lines[0], *kept]).encode())
    summary = live_dir / "metrics.json"
    try:
        json.loads(summary.read_text())
    except ValueError:  # DVCLive rewrites it at the next validation
        summary.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------- processes (DDP)
def is_distributed_worker() -> bool:
    """True in a process started by torchrun (it sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_distributed(cfg: TaskConfig) -> None:
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
def _processes(cfg: TaskConfig) -> Iterator[tuple[int, int, torch.device]]:
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


# DDP would copy rank 0's buffers at each forward pass (the keyword's name changed in 2.14)
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


def _gather(obj, world: int) -> list:
    """Every process's `obj`, in rank order (on every process)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _mean_over_processes(sums: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """Per-term sums of this process -> the mean of every process's sums."""
    keys = sorted(sums)
    if world > 1 and keys:
        flat = torch.stack([sums[k] for k in keys])
        dist.all_reduce(flat)
        sums = dict(zip(keys, flat / world, strict=True))
    return {k: float(v) for k, v in sums.items()}


# --------------------------------------------------------------------------- the loop
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
    fp = fingerprint(cfg, method_name, seed, data_files)
    with _processes(cfg) as (rank, world, device):
        lead = rank == 0
        state = _load_checkpoint(model_dir / "last.pt", fp, verbose=lead)
        if state is not None and state["step"] >= t.steps and (model_dir / "train.json").is_file():
            if lead:
                print(f"{cfg.task}/{method_name}/seed{seed}: trained already ({model_dir})")
            return json.loads((model_dir / "train.json").read_text())
        if world > 1:
            dist.barrier()  # every process has read last.pt before rank 0 changes the folder
        if lead:
            _rewind(model_dir, live_dir, state)

        seed_everything(seed)
        method_cls = get_method(cfg.task, method_name)
        method = method_for_data(cfg, data, method_name).to(device)
        if rank:  # the same initial weights, but each process its own dropout masks
            seed_everything(seed * 1_000_003 + rank)
        trainable = [p for p in method.parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, t)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t))
        use_amp = t.amp and device.type == "cuda"
        amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
        autocast = (
            (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else contextlib.nullcontext
        )
        batches = train_batches(data, cfg, method_cls, seed, device, rank, world)
        start, best, best_weights, seconds = 0, {"score": -math.inf, "step": -1}, None, 0.0
        sums: dict[str, torch.Tensor] = {}
        if state is not None:
            method.load_state_dict(state["method"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start, best, seconds = state["step"], state["best"], state["seconds"]
            best_weights = state["best_weights"]
            mine = state["processes"][rank]
            batches.load_state_dict(mine["stream"])
            sums = {k: v.to(device) for k, v in mine["sums"].items()}
            set_rng_state(mine["rng"], device)
            if lead:
                print(f"resuming {cfg.task}/{method_name}/seed{seed} from step {start}")
        step_fn = method.training_step
        if world > 1:
            step_fn = _DDP(
                _Step(method),
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=True,  # e.g. SimCLR's projector once it probes
                **_NO_FORWARD_BUFFER_SYNC,  # synced after each step instead (below)
            )

        metric = VAL_METRIC[cfg.task]
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
                with autocast():
                    terms = step_fn(next(batches), step)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["loss"]).backward()
                if t.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if world > 1:  # rank 0's BatchNorm statistics and method state everywhere
                    for buf in method.buffers():
                        dist.broadcast(buf, 0)
                method.on_step_end(step)
                for k, v in terms.items():  # stays on the device: no sync every step
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                if step % 10 == 0 and lead:
                    bar.set_postfix(
                        {k: f"{float(v.detach()):.3f}" for k, v in terms.items()}, refresh=False
                    )

                done = step + 1
                if done % t.eval_every == 0 or done == t.steps:
                    means = _mean_over_processes(sums, world)
                    sums = {}
                    if lead:
                        score = validate(method.inference_model(), data, cfg, device)
                        live.step = done
                        n = t.eval_every if done % t.eval_every == 0 else done % t.eval_every
                        for k, v in means.items():
                            live.log_metric(f"train/{k}", v / n)
                        live.log_metric("train/lr", scheduler.get_last_lr()[0])
                        live.log_metric(f"val/{metric}", score)
                        live.make_summary()
                        if score > best["score"]:
                            best = {"score": score, "step": done}
                            best_weights = _cpu_copy(method.inference_model().state_dict())
                            _save(best_weights, model_dir / "best.pt")
                    if world > 1:
                        dist.barrier()  # the others wait while rank 0 validates
                if done % t.checkpoint_every == 0 or done == t.steps:
                    processes = _gather(
                        {
                            "rng": rng_state(device),
                            "stream": batches.state_dict(),
                            "sums": {k: v.cpu() for k, v in sums.items()},
                        },
                        world,
                    )
                    if lead:
                        _save(
                            {
                                "fingerprint": fp,
                                "step": done,
                                "best": best,
                                "best_weights": best_weights,
                                "seconds": seconds + time.perf_counter() - began,
                                "method": method.state_dict(),
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "scaler": scaler.state_dict(),
                                "processes": processes,
                            },
                            model_dir / "last.pt",
                        )
        best = _gather(best, world)[0]  # rank 0 validated
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
        if world > 1:
            dist.barrier()
        return summary


def load_best(
    cfg: TaskConfig,
    method_name: str,
    num_classes: int,
    model_dir: Path,
    device,
    task_sizes: tuple[int, ...] | None = None,
    spatial_dims: int | None = None,
    in_channels: int = 1,
):
    """The method's inference model with the weights `train_run` saved as `best.pt`
    (`task_sizes`: classes per target of a multi-task model; `spatial_dims` / `in_channels`:
    the data's, see `make_method`)."""
    path = Path(model_dir) / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run the train stage first")
    method = make_method(
        cfg,
        method_name,
        num_classes,
        in_channels=in_channels,
        task_sizes=task_sizes,
        spatial_dims=spatial_dims,
    )
    model = method.inference_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # eval mode; folds lwn's parallel branches into single convs (a no-op for other networks)
    return reparameterize(model).to(device)
