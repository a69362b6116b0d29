"""THE composition layer: a task's config + data -> a Method (`instantiate`, the one place a
Method is constructed).

Everything that needs to know which method class a name means lives here, and the class is
resolved once (`method_class`) and handed down: the data stream gets a plain `StreamSpec`
of what to draw, the network builder the data's `DataShape` and the method's
deep-supervision flag, the method its parsed `Params`. Config and data never import methods.
A trained run's model is rebuilt from its model card (`semimed.serving.model_folder`, which
calls `instantiate` with the card's settings); evaluation, analysis and prediction load it
there and never import the training loop.
"""

from __future__ import annotations

from pathlib import Path

from semimed import config
from semimed.config import ConfigError, Network, TaskConfig
from semimed.data.loaders import StreamSpec, TaskData, labeled_class_counts, unlabeled_pool
from semimed.methods import METHODS, Method, get_method
from semimed.networks import DEEP_SUPERVISION, DataShape, build_network
from semimed.tasks import spec


def method_class(task: str, name: str) -> type[Method]:
    """The Method class registered for `task` under `name`; ConfigError lists the choices."""
    try:
        return get_method(spec(task).name, name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _resolve(task: str, method: str | type[Method]) -> type[Method]:
    return method_class(task, method) if isinstance(method, str) else method


def method_params(cfg: TaskConfig, method: str | type[Method]):
    """The parsed `Params` of a method (defaults where params.yaml is silent)."""
    cls = _resolve(cfg.task, method)
    raw = cfg.methods_params.get(cls.name) or {}
    return config.parse_section(cls.Params, raw, f"{cfg.task}.methods_params.{cls.name}")


def stream_spec(method: type[Method]) -> StreamSpec:
    """What the training stream must draw for `method` (pools and views)."""
    return StreamSpec(
        name=method.name,
        uses_unlabeled=method.uses_unlabeled,
        views=tuple(method.views),
        unlabeled_pool=method.unlabeled_pool,
        labeled_pool=method.labeled_pool,
    )


def check_task(cfg: TaskConfig) -> TaskConfig:
    """Cross-check a parsed task section against the method registry and the networks:
    methods exist, their params parse, several targets only with multi-task methods, and
    deep-supervision methods only with a network that has such outputs."""
    task, known = cfg.task, METHODS[cfg.task]
    for i, name in enumerate(cfg.methods):
        if name not in known:
            raise ConfigError(
                f"{task}.methods[{i}]: unknown method {name!r}; choose from {', '.join(known)}"
            )
    for name in cfg.methods_params:
        if name not in known:
            raise ConfigError(
                f"{task}.methods_params.{name}: unknown method; choose from {', '.join(known)}"
            )
        method_params(cfg, known[name])
    if spec(task).has_targets and len(cfg.data.targets) > 1:
        single = [m for m in cfg.methods if not known[m].multitask]
        if single:
            capable = ", ".join(n for n, c in known.items() if c.multitask)
            raise ConfigError(
                f"{task}.data.targets: {list(cfg.data.targets)} needs multi-task methods, but "
                f"{', '.join(single)} learn one target; multi-task methods: {capable}"
            )
    needs_ds = [m for m in cfg.methods if known[m].deep_supervision]
    if needs_ds and cfg.network.name not in DEEP_SUPERVISION:
        raise ConfigError(
            f"{task}.network.name: {', '.join(needs_ds)} need deep-supervision outputs, which "
            f"{cfg.network.name!r} lacks; choose one of: {', '.join(DEEP_SUPERVISION)}"
        )
    return cfg


def parse_task(task: str, section: dict) -> TaskConfig:
    """`config.parse_task_section` and `check_task`: a task section ready to build methods
    from."""
    return check_task(config.parse_task_section(task, section))


def load_task(task: str, path: str | Path = "params.yaml") -> TaskConfig:
    """`config.load_task_section` and `check_task`: the `task` section of the params file
    `path`, ready to build methods from; errors name the file."""
    cfg = config.load_task_section(task, path)
    try:
        return check_task(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def check_unlabeled_pool(cfg: TaskConfig, split: dict) -> None:
    """Semi-supervised methods need unlabeled items: say so at the split, not deep in training."""
    ssl = [
        m
        for m in cfg.methods
        if method_class(cfg.task, m).uses_unlabeled
        and method_class(cfg.task, m).unlabeled_pool != "all"
    ]
    if ssl and not split["train_unlabeled"]:
        raise ConfigError(
            f"{cfg.task}.split: the unlabeled pool is empty, but {', '.join(ssl)} need unlabeled "
            "data; lower split.labeled_percent or add unlabeled items to data.root"
        )


def data_shape(data: TaskData) -> DataShape:
    """The network input and output of `data`: its spatial dims, input channels and classes
    per target."""
    return DataShape(data.spatial_dims, data.in_channels, data.task_sizes)


def instantiate(
    method: type[Method],
    params,
    network: Network,
    shape: DataShape,
    total_steps: int,
    *,
    num_unlabeled: int = 0,
    class_counts=None,
) -> Method:
    """`method` with its parsed `params` and a factory for `network` on data of `shape` (the
    one place a Method is constructed): `make_method` passes params.yaml's sections, a model
    folder its card's.

    `num_unlabeled`: the size of the unlabeled pool (per-sample memories); `class_counts`
    (labels per class of the labeled pool) feeds class-distribution priors."""

    def net_factory():
        return build_network(
            network.name,
            shape,
            channels=network.channels,
            dropout=network.dropout,
            deep_supervision=method.deep_supervision,
        )

    return method(
        net_factory,
        params,
        shape.num_classes,
        total_steps,
        num_unlabeled=num_unlabeled,
        task_sizes=shape.task_sizes,
        class_counts=class_counts,
    )


def make_method(
    cfg: TaskConfig,
    method: str | type[Method],
    shape: DataShape,
    *,
    num_unlabeled: int = 0,
    class_counts=None,
) -> Method:
    """`instantiate` `method` (a registry name or its class) for data of `shape` as `cfg`
    describes it: its params, the task's network and `train.steps`."""
    cls = _resolve(cfg.task, method)
    return instantiate(
        cls,
        method_params(cfg, cls),
        cfg.network,
        shape,
        cfg.train.steps,
        num_unlabeled=num_unlabeled,
        class_counts=class_counts,
    )


def method_for_data(cfg: TaskConfig, data: TaskData, method: str | type[Method]) -> Method:
    """`make_method` for training on `data`: its shape, unlabeled pool and label counts."""
    cls = _resolve(cfg.task, method)
    stream = stream_spec(cls)
    return make_method(
        cfg,
        cls,
        data_shape(data),
        num_unlabeled=len(unlabeled_pool(data, stream)),
        class_counts=labeled_class_counts(data, stream),
    )
