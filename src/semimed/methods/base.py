"""The Method interface: a method computes named losses; the one training loop updates.

A method owns its network(s) (student, EMA teacher, ...) as sub-modules, so
``method.state_dict()`` is a complete checkpoint. The loop optimises
``[p for p in method.parameters() if p.requires_grad]``, calls ``training_step`` then
backward / clipping / ``optimizer.step()`` and finally ``on_step_end``; it validates and
saves ``inference_model()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn


class Method(nn.Module):
    """Base class: subclasses set ``name`` and ``Params`` and implement ``training_step``."""

    name: ClassVar[str]
    # True -> the loop also draws unlabeled batches ("x_ulb_w", "x_ulb_s").
    uses_unlabeled: ClassVar[bool] = False
    # "labeled" -> the labeled split only; "all" -> every train-split label (upper bound).
    labeled_pool: ClassVar[str] = "labeled"
    # Frozen dataclass of hyper-parameters; validated in its __post_init__.
    Params: ClassVar[type]

    def __init__(
        self,
        net_factory: Callable[[], nn.Module],
        params: Any,
        num_classes: int,
        total_steps: int,
    ) -> None:
        super().__init__()
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{self.name}: params must be {self.Params.__qualname__}, got {params!r}"
            )
        if num_classes < 2:
            raise ValueError(f"num_classes: must be >= 2, got {num_classes}")
        if total_steps < 1:
            raise ValueError(f"total_steps: must be >= 1, got {total_steps}")
        self.params = params
        self.num_classes = num_classes
        self.total_steps = total_steps
        self.net = net_factory()

    def training_step(self, batch: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """Return ``{"loss": scalar with grad, <term>: scalar, ...}``; no backward here.

        Loss terms keep their graph, so tests can back-propagate one term alone; log them
        with ``.item()`` / ``.detach()``.
        """
        raise NotImplementedError

    def on_step_end(self, step: int) -> None:
        """Called after ``optimizer.step()`` of 0-based ``step`` (EMA updates, banks)."""

    def inference_model(self) -> nn.Module:
        """The network validation and evaluation use; the student by default."""
        return self.net
