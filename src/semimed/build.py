"""THE composition layer: a task's config + data -> a Method, and a trained run -> a model.

Everything that needs to know which method class a name means lives here, and the class is
resolved once (`method_class`) and handed down: the data stream gets a plain `StreamSpec`
of what to draw, the network builder the method's deep-supervision flag, the method its
parsed `Params`. Config and data never import methods; evaluation, analysis and prediction
build their models here and never import the training loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from semimed import config
from semimed.config import ConfigError, Network, TaskConfig
from semimed.data.loaders import StreamSpec, TaskData, labeled_class_counts, unlabeled_pool
from semimed.methods import METHODS, Method, get_method
from semimed.networks import DEEP_SUPERVISION, build_network, reparameterize
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
    """`config.parse_task` and `check_task`: a task section ready to build methods from."""
    return check_task(config.parse_task(task, section))


def load_task(task: str, path: str | Path = "params.yaml") -> TaskConfig:
    """`config.load_task` and `check_task`; errors name the params file."""
    cfg = config.load_task(task, path)
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


def instantiate(
    method: type[Method],
    params,
    network: Network,
    num_classes: int,
    total_steps: int,
    *,
    in_channels: int = 1,
    spatial_dims: int,
    num_unlabeled: int = 0,
    task_sizes: tuple[int, ...] | None = None,
    class_counts=None,
) -> Method:
    """`method` with its parsed `params` and a factory for `network` (the one place a Method
    is constructed): `make_method` passes params.yaml's sections, a model folder its card's.

    `task_sizes` (classes per target, multi-task) overrides `num_classes` with their sum;
    `class_counts` (labels per class of the labeled pool) feeds class-distribution priors."""
    if task_sizes:
        num_classes = sum(task_sizes)

    def net_factory():
        return build_network(
            network.name,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            channels=network.channels,
            dropout=network.dropout,
            deep_supervision=method.deep_supervision,
        )

    return method(
        net_factory,
        params,
        num_classes,
        total_steps,
        num_unlabeled=num_unlabeled,
        task_sizes=task_sizes,
        class_counts=class_counts,
    )


def make_method(
    cfg: TaskConfig,
    method: str | type[Method],
    num_classes: int,
    in_channels: int = 1,
    num_unlabeled: int = 0,
    task_sizes: tuple[int, ...] | None = None,
    class_counts=None,
    spatial_dims: int | None = None,
) -> Method:
    """`instantiate` `method` (a registry name or its class) as `cfg` describes it: its
    params, the task's network and `train.steps`. `spatial_dims` / `in_channels` are the
    data's (`TaskData`); spatial_dims defaults to the task's (`TaskSpec.spatial_dims`)."""
    cls = _resolve(cfg.task, method)
    return instantiate(
        cls,
        method_params(cfg, cls),
        cfg.network,
        num_classes,
        cfg.train.steps,
        in_channels=in_channels,
        spatial_dims=spec(cfg.task).spatial_dims if spatial_dims is None else spatial_dims,
        num_unlabeled=num_unlabeled,
        task_sizes=task_sizes,
        class_counts=class_counts,
    )


def method_for_data(cfg: TaskConfig, data: TaskData, method: str | type[Method]) -> Method:
    """`make_method` for training on `data`: its input shape, classes, unlabeled pool and
    label counts."""
    cls = _resolve(cfg.task, method)
    stream = stream_spec(cls)
    return make_method(
        cfg,
        cls,
        data.num_classes,
        in_channels=data.in_channels,
        spatial_dims=data.spatial_dims,
        num_unlabeled=len(unlabeled_pool(data, stream)),
        task_sizes=data.task_sizes,
        class_counts=labeled_class_counts(data, stream),
    )


def load_best(
    cfg: TaskConfig,
    method: str | type[Method],
    num_classes: int,
    model_dir: Path,
    device,
    task_sizes: tuple[int, ...] | None = None,
    spatial_dims: int | None = None,
    in_channels: int = 1,
) -> torch.nn.Module:
    """The method's inference model with the weights training saved as `best.pt`
    (`task_sizes`: classes per target of a multi-task model; `spatial_dims` / `in_channels`:
    the data's, see `make_method`), in eval mode on `device`."""
    path = Path(model_dir) / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; run the train stage first")
    model = make_method(
        cfg,
        method,
        num_classes,
        in_channels=in_channels,
        task_sizes=task_sizes,
        spatial_dims=spatial_dims,
    ).inference_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # eval mode; folds lwn's parallel branches into single convs (a no-op for other networks)
    return reparameterize(model).to(device)


def load_for_data(
    cfg: TaskConfig, data: TaskData, method: str | type[Method], model_dir: Path, device
) -> torch.nn.Module:
    """`load_best` with the shape of `data` (classes, targets, dims, channels)."""
    return load_best(
        cfg,
        method,
        data.num_classes,
        model_dir,
        device,
        data.task_sizes,
        spatial_dims=data.spatial_dims,
        in_channels=data.in_channels,
    )
