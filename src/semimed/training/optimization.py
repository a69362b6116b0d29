"""What updates a method's weights: optimizer, learning-rate schedule, mixed precision and
the update step (`optimizer_step`: backward, clipping, skipping non-finite updates, DDP buffer
sync). THE loop (`semimed.training.train`) and the benchmark's step runner share these functions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from semimed.runtime import autocast_for
from semimed.training import distributed


def build_optimizer(params, t) -> torch.optim.Optimizer:
    """`t.optimizer` over `params`; on CUDA the fused kernels (one launch per step for all
    parameters; PyTorch's default there is the multi-tensor `foreach` path), on the CPU
    PyTorch's default implementation."""
    params = list(params)
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=t.lr,
            momentum=t.momentum,
            nesterov=t.momentum > 0,
            weight_decay=t.weight_decay,
            **fused,
        )
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, **fused)


def lr_factor(step: int, t) -> float:
    """Linear warm-up to 1, then cosine to 0, poly (power 0.9, as DHC) or constant."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
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
    # Skip a non-finite update on the device instead of deciding on the host: the optimizer's
    # fused kernels take a ``found_inf`` flag (as under a GradScaler); see `optimizer_step`.
    sync_free: bool = False

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
    schedule = getattr(method, "lr_factor", None)  # a Method's own phases (SimCLR), if any
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        (lambda s: schedule(s, lambda k: lr_factor(k, t)))
        if schedule
        else (lambda s: lr_factor(s, t)),
    )
    autocast, dtype = autocast_for(device, t.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    # Fused kernels (CUDA: `build_optimizer`) accept found_inf; fp16's GradScaler sets its own.
    sync_free = bool(optimizer.defaults.get("fused")) and not scaler.is_enabled()
    return Optimization(
        optimizer, scheduler, scaler, autocast, trainable, t.grad_clip, sync_free=sync_free
    )


def optimizer_step(
    loss: torch.Tensor, opt: Optimization, method: torch.nn.Module | None = None, world: int = 1
) -> bool | torch.Tensor:
    """Backward `loss`, clip, step the optimizer and the schedule; under DDP (`world` > 1)
    copy rank 0's buffers of `method` to every process afterwards.

    A non-finite loss or gradient norm (on any process) skips the update: the gradients are
    dropped, the schedule still advances (the learning rate stays a function of the step), and
    False is returned so the loop can count it. With fp16 the GradScaler handles overflowing
    gradients itself, as usual.

    Sync-free path (`Optimization.sync_free`: a fused optimizer, on CUDA, once it holds state):
    the decision stays on the device. The fused kernels receive ``found_inf`` = 1 - finite and
    leave parameters, moments and step counts as they were when it is 1 (PyTorch's GradScaler
    protocol), and the return value is that 0-dim float tensor (1.0 applied, 0.0 skipped),
    which the loop reads back only at its validation and checkpoint points: no host
    synchronisation in the step. The first update always takes the host path: SGD's fused
    kernel would keep momentum buffers it allocated but never wrote."""
    opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.scale(loss).backward()
    finite = torch.isfinite(loss.detach()).float()
    if opt.grad_clip > 0:
        opt.scaler.unscale_(opt.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(opt.trainable, opt.grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in opt.trainable if p.grad is not None])
    if not opt.scaler.is_enabled():
        finite = finite * torch.isfinite(norm).float()
    finite = distributed.all_min(finite, world)  # every process decides alike
    if opt.sync_free and opt.optimizer.state:
        opt.optimizer.found_inf, opt.optimizer.grad_scale = 1.0 - finite, None
        try:
            opt.optimizer.step()
        finally:
            opt.optimizer.found_inf = None
        stepped: bool | torch.Tensor = finite
    else:
        stepped = bool(finite.item())
        if stepped:
            opt.scaler.step(opt.optimizer)
        else:
            opt.optimizer.zero_grad(set_to_none=True)
    opt.scaler.update()
    opt.scheduler.step()
    if method is not None:
        distributed.sync_buffers(method, world)
    return stepped
