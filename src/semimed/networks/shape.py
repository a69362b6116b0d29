"""`DataShape`: what a network reads and what it predicts, the data's side of every builder."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataShape:
    """The input and output of a task's network.

    ``spatial_dims``: 2 (images (B, C_in, H, W)) or 3 (volumes (B, C_in, D, H, W));
    ``in_channels``: C_in (1 grayscale, 3 RGB; volumes: one per sequence); ``task_sizes``:
    classes per target, one entry unless the model is multi-task (segmentation: the label
    classes, background included). The network's logits have ``num_classes`` =
    ``sum(task_sizes)`` channels, the targets' blocks in order.
    """

    spatial_dims: int
    in_channels: int
    task_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_sizes", tuple(int(k) for k in self.task_sizes))

    @classmethod
    def single(cls, spatial_dims: int, in_channels: int, num_classes: int) -> DataShape:
        """One target of `num_classes` classes."""
        return cls(spatial_dims, in_channels, (num_classes,))

    @property
    def num_classes(self) -> int:
        """Logit channels of the network: every target's classes."""
        return sum(self.task_sizes)

    @property
    def multitask(self) -> bool:
        return len(self.task_sizes) > 1
