"""The Method interface: a method computes named losses; the one training loop updates.

A method owns its network(s) (student, EMA teacher, ...) as sub-modules, so
``method.state_dict()`` is a complete checkpoint. The loop optimises
``[p for p in method.parameters() if p.requires_grad]``, calls ``training_step`` then
backward / clipping / ``optimizer.step()`` and finally ``on_step_end``; it validates and
saves ``inference_model()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from semimed.methods.ema import make_teacher, update_ema, warmup_decay


class Method(nn.Module):
    """Base class: subclasses set ``name`` and ``Params`` and implement ``training_step``."""

    name: ClassVar[str]
    # True -> the loop also draws unlabeled batches, one key ``x_ulb_<v>`` per entry of
    # ``views`` plus ``i_ulb`` (U,), each image's index in the unlabeled pool.
    uses_unlabeled: ClassVar[bool] = False
    # Views of the same unlabeled images drawn each step: a name starting with "w" is an
    # independent weak-augmentation draw, "s" an independent strong one (MixMatch: ("w", "w2")).
    views: ClassVar[tuple[str, ...]] = ("w", "s")
    # "unlabeled" -> the unlabeled split; "all" -> every train image, labels hidden (SimCLR).
    unlabeled_pool: ClassVar[str] = "unlabeled"
    # "labeled" -> the labeled split only; "all" -> every train-split label (upper bound).
    labeled_pool: ClassVar[str] = "labeled"
    # True -> trains one head per task when params list several targets (``y_lb`` (B, T));
    # the other methods learn the primary target only and the build layer refuses several.
    multitask: ClassVar[bool] = False
    # True -> the network is built with deep-supervision outputs (training mode returns
    # (B, 1 + K, C, ...), see semimed.networks.segmentation); the build layer then requires such a network.
    deep_supervision: ClassVar[bool] = False
    # Frozen dataclass of hyper-parameters, a ``semimed.config.Checked``: each field declares
    # its accepted values (``Annotated[float, Range(ge=0, lt=1)]``), checked on construction.
    Params: ClassVar[type]
    # Intrinsic cost of one training step, the benchmark's yardstick for what a step should
    # cost: ``intrinsic_passes(b, u, params) -> (forwarded, back_propagated)``, the images
    # forwarded and back-propagated through the task's network(s) per step for b labeled and
    # u unlabeled images (segmentation: crops) and this method's Params; cost = forward
    # + 2 * backward (``supervised``: 3 b). A staticmethod, so ``cls.intrinsic_passes(...)``
    # works on the class; shared rules live in ``semimed.methods.cost``. ``intrinsic_why``:
    # one line saying where those passes come from. Every registered method declares both
    # (a subclass inherits them unless it declares its own).
    intrinsic_passes: ClassVar[Callable[[int, int, Any], tuple[int, int]]]
    intrinsic_why: ClassVar[str]
    # Copies of the network's output layer (`semimed.networks.output_layer`) that the method
    # trains beside it, on the same input, in every pass (DST's pseudo and worst-case heads);
    # the benchmark prices a pass at 1 + this * the output layer's share of a pass's FLOPs.
    intrinsic_side_layers: ClassVar[int] = 0
    # Set by the loop before ``on_step_end`` when it skips non-finite updates on the device
    # (`semimed.training.optimization.optimizer_step`'s sync-free path, a GPU): a 0-dim tensor, 1.0 if
    # this step's update took effect, else 0.0; None = it did (the loop calls ``on_step_end``
    # only after an applied update). EMA updates pass it to `semimed.methods.ema.update_ema`.
    update_applied: Tensor | None = None

    def __init__(
        self,
        net_factory: Callable[[], nn.Module],
        params: Any,
        num_classes: int,
        total_steps: int,
        num_unlabeled: int = 0,
        task_sizes: tuple[int, ...] | None = None,
        class_counts: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{self.name}: params must be {self.Params.__qualname__}, got {params!r}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes: must be >= 2, got {num_classes}")
        bad = [v for v in self.views if not v.startswith(("w", "s"))]
        if bad or self.unlabeled_pool not in ("unlabeled", "all"):
            raise TypeError(
                f"{self.name}: views must start with 'w' or 's' and unlabeled_pool be "
                f"'unlabeled' or 'all'; got views={self.views}, pool={self.unlabeled_pool!r}"
            )
        # Classes per task; the network outputs their concatenated logits (num_classes columns).
        self.task_sizes = tuple(task_sizes or (num_classes,))
        if sum(self.task_sizes) != num_classes or (len(self.task_sizes) > 1 and not self.multitask):
            raise ValueError(
                f"{self.name}: task_sizes {self.task_sizes} must sum to num_classes "
                f"{num_classes}, and several tasks need a multi-task method"
            )
        if total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {total_steps}")
        self.params = params
        self.num_classes = num_classes
        self.total_steps = total_steps
        # Size of the unlabeled pool, for per-sample memories indexed by ``batch["i_ulb"]``.
        self.num_unlabeled = num_unlabeled
        # Label counts per class of the labeled pool (segmentation: voxels; classification:
        # images of the primary target), for class-distribution priors (DHC's DistDW starts
        # from them); None when unknown (inference), so methods must fall back to a uniform prior.
        if class_counts is not None and len(class_counts) != self.task_sizes[0]:
            raise ValueError(
                f"{self.name}: class_counts needs {self.task_sizes[0]} entries, "
                f"got {len(class_counts)}"
            )
        self.class_counts = None if class_counts is None else tuple(float(c) for c in class_counts)
        self.net = net_factory()

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Return ``{"loss": scalar with grad, <term>: scalar, ...}``; no backward here.

        Loss terms keep their graph, so tests can back-propagate one term alone; log them
        with ``.item()`` / ``.detach()``.
        """
        raise NotImplementedError

    def on_step_end(self, step: int) -> None:
        """Called after ``optimizer.step()`` of 0-based ``step`` (EMA updates, banks)."""

    def lr_factor(self, step: int, schedule: Callable[[float], float]) -> float:
        """Learning-rate factor of 0-based ``step``; ``schedule`` is the loop's (warm-up and
        decay over the run's budget). Phased methods (SimCLR) give each phase its own."""
        return schedule(step)

    def inference_model(self) -> nn.Module:
        """The network validation and evaluation use; the student by default."""
        return self.net


class EvaluatesEMA(Method):
    """A method whose validated and saved model is an EMA of the student (FixMatch, Sohn et al.
    2020; USB evaluates this way): ``Params.ema_decay`` in [0, 1), 0 = the student itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ema = make_teacher(self.net) if self.params.ema_decay > 0 else None

    def on_step_end(self, step: int) -> None:
        if self.ema is not None:
            decay = warmup_decay(self.params.ema_decay, step)
            update_ema(self.ema, self.net, decay, self.update_applied)

    def inference_model(self) -> nn.Module:
        return self.net if self.ema is None else self.ema
