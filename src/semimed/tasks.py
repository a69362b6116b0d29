"""One description per task: what differs between classification and segmentation.

Code that must behave differently per task reads the task's `TaskSpec` (``TASK_SPECS[task]``
or `spec(task)`) instead of comparing task names. Light on purpose: no torch, no MONAI, so
the data stages and the report can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from semimed.config import TASKS, ConfigError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    # Validation score that selects checkpoints and test metric the report leads with.
    headline: str
    # Test metrics the summary keeps (and so `dvc exp show` / `dvc metrics diff` display),
    # and the prefix of the per-class values it keeps beside them.
    summary_metrics: tuple[str, ...]
    per_class_prefix: str
    # True: labels are dense maps over a volume (N, 1, X, Y, Z): training draws patches,
    # inference slides a window, metrics are per class in mm. False: one label per image
    # and target, batched whole images, probabilities per class.
    dense: bool
    # Spatial axes of a network input when the data do not say (2D images, 3D volumes).
    spatial_dims: int
    # True: labels come as named targets (`data.targets`, multi-task heads).
    has_targets: bool


TASK_SPECS: dict[str, TaskSpec] = {
    "classification": TaskSpec(
        name="classification",
        headline="balanced_accuracy",
        summary_metrics=("accuracy", "balanced_accuracy", "macro_f1", "auc"),
        per_class_prefix="recall_",
        dense=False,
        spatial_dims=2,
        has_targets=True,
    ),
    "segmentation": TaskSpec(
        name="segmentation",
        headline="dice",
        summary_metrics=("dice", "hd95_mm", "asd_mm"),
        per_class_prefix="dice_",
        dense=True,
        spatial_dims=3,
        has_targets=False,
    ),
}
assert tuple(TASK_SPECS) == TASKS, "every task in semimed.config.TASKS needs a TaskSpec"


def spec(task: str) -> TaskSpec:
    """The TaskSpec of `task`; an unknown name is a one-line error listing the tasks."""
    if task not in TASK_SPECS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASK_SPECS)}")
    return TASK_SPECS[task]
