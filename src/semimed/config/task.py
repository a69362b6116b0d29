"""One task's section of params.yaml: `TaskConfig` (its sections, each value checked), parsed
from a mapping (`parse_task_section`) or read from the file (`load_task_section`).

The method names and their params are not checked here: `semimed.build.parse_task` and
`semimed.build.load_task` add the checks that need the method registry and the networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from semimed.config.checks import Checked, Distinct, MinLen, require
from semimed.config.parse import ConfigError, _parse, load_params
from semimed.config.schema import (
    TASKS,
    ClsAnalysis,
    ClsData,
    ClsEval,
    ClsPreprocess,
    Network,
    PredictParams,
    SegData,
    SegEval,
    SegPreprocess,
    Split,
    Train,
)


@dataclass(frozen=True)
class TaskConfig(Checked):
    """One task's section; `methods_params` stays raw (the build layer parses each method's)."""

    task: str
    data: Any
    preprocess: Any
    split: Split
    methods: Annotated[tuple[str, ...], Distinct("method")]
    seeds: Annotated[tuple[int, ...], MinLen(1, "seed"), Distinct("seed")]
    network: Network
    train: Train
    methods_params: dict = field(default_factory=dict)
    eval: Any = None
    analysis: Any = None  # classification only: ClsAnalysis
    predict: PredictParams | None = None  # the optional predict stage

    def cross_checks(self) -> None:
        # Segmentation trains on random crops of this size; classification on whole images.
        if self.task == "segmentation":
            require(self.train.patch_size is not None, "train.patch_size", "missing key")


# The task-specific sections of TaskConfig, by task.
_SECTIONS = {
    "classification": dict(
        data=ClsData, preprocess=ClsPreprocess, eval=ClsEval, analysis=ClsAnalysis
    ),
    "segmentation": dict(data=SegData, preprocess=SegPreprocess, eval=SegEval),
}


def parse_task_section(task: str, section: dict) -> TaskConfig:
    """The `task` section `section` (a mapping) as a `TaskConfig`, every value checked."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    sections = _SECTIONS[task]
    if isinstance(section, dict):
        for name in ("data", "preprocess", "eval", "analysis"):
            if name in section and name not in sections:
                raise ConfigError(f"{task}.{name}: unknown key for task {task}")
    return _parse(TaskConfig, section, task, overrides={"task": task}, field_types=sections)


def load_task_section(task: str, path: str | Path = "params.yaml") -> TaskConfig:
    """`parse_task_section` of the `task` section of the params file `path`; errors name
    the file."""
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    data = load_params(path, TASKS)
    if task not in data:
        raise ConfigError(f"{path}: missing section {task!r}")
    try:
        return parse_task_section(task, data[task])
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
