"""params.yaml -> frozen dataclasses, with one-line errors for unknown, missing or bad keys.

A leaf: imports nothing from semimed outside this package.

* `checks`: the declarative value checks every params dataclass uses (config sections and
  each method's ``Params``): ``Annotated[float, Range(ge=0, lt=1)]`` beside the field; the
  rules themselves are in `rules`.
* `parse`: the generic strict parser (`parse_section`, `ConfigError`, `load_params`).
* `schema`: the sections of params.yaml.
* `task`: one task's `TaskConfig`, `parse_task_section` / `load_task_section`.
"""

from semimed.config.checks import (
    Check,
    Checked,
    Distinct,
    Each,
    MinLen,
    Must,
    OneOf,
    Range,
    Regex,
    require,
    validate,
)
from semimed.config.parse import ConfigError, load_params, parse_section
from semimed.config.schema import (
    CLS_SOURCES,
    SEG_SOURCES,
    TASKS,
    ClsAnalysis,
    ClsData,
    ClsEval,
    ClsPreprocess,
    CsvSource,
    MedmnistSource,
    Network,
    PredictParams,
    SegData,
    SegEval,
    SegPreprocess,
    Split,
    SplitLists,
    SyntheticCT,
    SyntheticEcho,
    Tmed2Source,
    Train,
)
from semimed.config.task import TaskConfig, load_task_section, parse_task_section

__all__ = [
    "CLS_SOURCES",
    "SEG_SOURCES",
    "TASKS",
    "Check",
    "Checked",
    "ClsAnalysis",
    "ClsData",
    "ClsEval",
    "ClsPreprocess",
    "ConfigError",
    "CsvSource",
    "Distinct",
    "Each",
    "MedmnistSource",
    "MinLen",
    "Must",
    "Network",
    "PredictParams",
    "OneOf",
    "Range",
    "Regex",
    "SegData",
    "SegEval",
    "SegPreprocess",
    "Split",
    "SplitLists",
    "SyntheticCT",
    "SyntheticEcho",
    "TaskConfig",
    "Tmed2Source",
    "Train",
    "load_params",
    "load_task_section",
    "parse_section",
    "parse_task_section",
    "require",
    "validate",
]
