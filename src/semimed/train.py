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
same fingerprint resumes from the saved step; a different one starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from dvclive import Live
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from sklearn.metrics import balanced_accuracy_score
from tqdm import tqdm

from semimed.config import TaskConfig
from semimed.data.loaders import TaskData, labeled_class_counts, train_batches, unlabeled_pool
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


def make_method(
    cfg: TaskConfig,
    name: str,
    num_classes: int,
    in_channels: int = 1,
    num_unlabeled: int = 0,
    task_sizes: tuple[int, ...] | None = None,
    class_counts=None,
):
    """Instantiate method `name` with its params and a factory for the task's network.

    `task_sizes` (classes per target, multi-task) overrides `num_classes` with their sum;
    `class_counts` (labels per class of the labeled pool) feeds class-distribution priors."""
    if task_sizes:
        num_classes = sum(task_sizes)
    cls = get_method(cfg.task, name)
    net = cfg.network

    def net_factory():
        return build_network(
            net.name,
            spatial_dims=2 if cfg.task == "classification" else 3,
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
    dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)
    for vid in data.split["val"]:
        image, label = data.volumes[vid]
        pred = predict_volume(
            model, image, cfg.train.patch_size, cfg.eval.overlap, cfg.eval.sw_batch_size, device
        )
        c = data.num_classes
        dice(
            one_hot(torch.as_tensor(pred)[None, None].long(), c),
            one_hot(torch.as_tensor(label)[None].long(), c),
        )
    return float(dice.aggregate().item())


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


def _save(obj, path: Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _load_checkpoint(path: Path, fp: str) -> dict | None:
    """Return the resumable state at `path` if it is readable and matches `fp`."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or corrupt file: start over, loudly
        print(f"warning: {path} is unreadable ({err.__class__.__name__}); training from scratch")
        return None
    if state.get("fingerprint") != fp:
        print(f"note: {path} belongs to other params/data/code; training from scratch")
        return None
    return state


def train_run(
    cfg: TaskConfig,
    data: TaskData,
    method_name: str,
    seed: int,
    model_dir: Path,
    live_dir: Path,
    data_files: list[Path],
) -> dict:
    """Train one (method, seed) run to completion, resuming if a matching checkpoint exists."""
    t = cfg.train
    model_dir, live_dir = Path(model_dir), Path(live_dir)
    fp = fingerprint(cfg, method_name, seed, data_files)
    state = _load_checkpoint(model_dir / "last.pt", fp)
    if state is None:  # fresh start: stale files of another run must not survive
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(live_dir, ignore_errors=True)
    model_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    device = select_device(t.device)
    num_unlabeled = len(unlabeled_pool(data, get_method(cfg.task, method_name)))
    method = make_method(
        cfg,
        method_name,
        data.num_classes,
        num_unlabeled=num_unlabeled,
        task_sizes=data.task_sizes,
        class_counts=labeled_class_counts(data, get_method(cfg.task, method_name)),
    )
    method = method.to(device)
    trainable = [p for p in method.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, t)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t))
    start, best = 0, {"score": -math.inf, "step": -1}
    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start, best = state["step"], state["best"]
        print(f"resuming {cfg.task}/{method_name}/seed{seed} from step {start}")
    if start >= t.steps:
        return json.loads((model_dir / "train.json").read_text())

    use_amp = t.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else nullcontext
    metric = VAL_METRIC[cfg.task]
    batches = train_batches(data, cfg, type(method), seed, start, device)
    sums: dict[str, torch.Tensor] = {}
    began = time.perf_counter()
    with Live(str(live_dir), resume=start > 0, dvcyaml=False, save_dvc_exp=False) as live:
        bar = tqdm(
            range(start, t.steps),
            initial=start,
            total=t.steps,
            mininterval=2.0,
            desc=f"{cfg.task}/{method_name}/seed{seed}",
            dynamic_ncols=True,
        )
        for step in bar:
            method.train()
            with autocast():
                terms = method.training_step(next(batches), step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            if t.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            method.on_step_end(step)
            for k, v in terms.items():  # stays on the device: no sync every step
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            if step % 10 == 0:
                bar.set_postfix(
                    {k: f"{float(v.detach()):.3f}" for k, v in terms.items()}, refresh=False
                )

            done = step + 1
            if done % t.eval_every == 0 or done == t.steps:
                score = validate(method.inference_model(), data, cfg, device)
                live.step = done
                n = t.eval_every if done % t.eval_every == 0 else done % t.eval_every
                for k, v in sums.items():
                    live.log_metric(f"train/{k}", float(v) / n)
                live.log_metric("train/lr", scheduler.get_last_lr()[0])
                live.log_metric(f"val/{metric}", score)
                live.make_summary()
                sums = {}
                if score > best["score"]:
                    best = {"score": score, "step": done}
                    _save(method.inference_model().state_dict(), model_dir / "best.pt")
            if done % t.checkpoint_every == 0 or done == t.steps:
                _save(
                    {
                        "fingerprint": fp,
                        "step": done,
                        "best": best,
                        "method": method.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                    },
                    model_dir / "last.pt",
                )
    summary = {
        "task": cfg.task,
        "method": method_name,
        "seed": seed,
        "steps": t.steps,
        f"best_val_{metric}": round(best["score"], 6),
        "best_step": best["step"],
        "seconds": round(time.perf_counter() - began, 1),
        "device": str(device),
        "fingerprint": fp,
    }
    write_json_atomic(model_dir / "train.json", summary)
    return summary


def load_best(
    cfg: TaskConfig,
    method_name: str,
    num_classes: int,
    model_dir: Path,
    device,
    task_sizes: tuple[int, ...] | None = None,
):
    """The method's inference model with the weights `train_run` saved as `best.pt`
    (`task_sizes`: classes per target of a multi-task model)."""
    path = Path(model_dir) / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run the train stage first")
    model = make_method(cfg, method_name, num_classes, task_sizes=task_sizes).inference_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # eval mode; folds lwn's parallel branches into single convs (a no-op for other networks)
    return reparameterize(model).to(device)
