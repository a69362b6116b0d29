"""The declarative value checks (`semimed.config.checks`) on their own, on a config section
(`Train`) and on a method's Params: good values pass, each kind of rule refuses a bad value
with one line naming the field, and open boundaries stay open."""

import dataclasses
from dataclasses import dataclass
from typing import Annotated

import pytest

from semimed.config import (
    Checked,
    ConfigError,
    Distinct,
    Each,
    MinLen,
    Must,
    OneOf,
    Range,
    Regex,
    Train,
    parse_section,
    require,
)


@dataclass(frozen=True)
class Demo(Checked):
    rate: Annotated[float, Range(ge=0, lt=1)] = 0.5
    weight: Annotated[float, Range(gt=0, unit="mm", note="0 is no weight")] = 1.0
    size: Annotated[int, Range(ge=16, le=512, unit="pixels")] = 32
    kind: Annotated[str, OneOf("mse", "kl")] = "mse"
    gate: Annotated[bool, OneOf(True, False)] = False
    names: Annotated[tuple[str, ...], MinLen(1, "names"), Distinct("name")] = ("a",)
    widths: Annotated[tuple[int, ...], Each(Range(gt=0))] = (8, 16)
    window: Annotated[tuple[float, float], Must(lambda w: w[0] < w[1], "be [low, high]")] = (
        0.0,
        1.0,
    )
    pattern: Annotated[str, Regex(groups=1, allow_empty=True)] = ""
    patch: Annotated[tuple[int, int] | None, Each(Range(ge=16))] = None
    warmup: int = 0
    steps: int = 10

    def cross_checks(self) -> None:
        require(self.warmup < self.steps, "warmup", f"must be < steps ({self.steps})")


def _message(cls=Demo, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_good_values_pass():
    Demo()
    Demo(rate=0.0, weight=1e-9, size=512, kind="kl", gate=True, pattern="^(P\\d+)_")
    Demo(names=("a", "b"), widths=(), window=(-1.0, 1.0), patch=(16, 32), warmup=9)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rate": 1.0}, "rate: must be in [0, 1); got 1.0"),
        ({"rate": -0.1}, "rate: must be in [0, 1); got -0.1"),
        ({"rate": float("nan")}, "rate: must be in [0, 1); got nan"),
        ({"rate": "high"}, "rate: must be in [0, 1); got 'high'"),
        ({"weight": 0.0}, "weight: must be > 0 mm (0 is no weight); got 0.0"),
        ({"size": 8}, "size: must be in [16, 512] pixels; got 8"),
        ({"kind": "l1"}, "kind: must be one of mse, kl; got 'l1'"),
        ({"gate": 1}, "gate: must be one of true, false; got 1"),
        ({"names": ()}, "names: must list at least 1 names; got []"),
        ({"names": ("a", "b", "a")}, "names: lists a name twice ('a'); got ['a', 'b', 'a']"),
        ({"widths": (8, 0)}, "widths[1]: must be > 0; got 0"),
        ({"widths": None}, "widths: must be a list; got None"),
        ({"window": (1.0, 0.0)}, "window: must be [low, high]; got [1.0, 0.0]"),
        ({"window": ()}, "window: must be [low, high]; got []"),
        ({"pattern": "^P\\d+_"}, "pattern: must have at least 1 capture group(s); got '^P\\\\d+_'"),
        ({"patch": (16, 8)}, "patch[1]: must be >= 16; got 8"),
        ({"warmup": 10}, "warmup: must be < steps (10)"),
    ],
)
def test_each_rule_refuses_with_one_line(kwargs, message):
    assert _message(**kwargs) == message


def test_invalid_regex_names_the_error():
    assert _message(pattern="(").startswith("pattern: must be a valid regular expression (")


def test_range_needs_a_bound_and_one_per_side():
    with pytest.raises(TypeError):
        Range()
    with pytest.raises(TypeError):
        Range(ge=0, gt=0)


def test_none_is_off_only_where_the_type_allows_it():
    assert Demo(patch=None).patch is None
    assert _message(rate=None) == "rate: must be in [0, 1); got None"


def test_redeclared_field_keeps_or_replaces_its_checks():
    @dataclass(frozen=True)
    class NewDefault(Demo):
        rate: float = 0.9  # no checks of its own: keeps [0, 1)

    @dataclass(frozen=True)
    class NewRule(Demo):
        rate: Annotated[float, Range(ge=0)] = 2.0

    assert NewDefault().rate == 0.9
    assert _message(NewDefault, rate=1.0) == "rate: must be in [0, 1); got 1.0"
    assert NewRule(rate=5.0).rate == 5.0
    assert dataclasses.replace(NewDefault(), rate=0.0).rate == 0.0


# ----------------------------------------------------------------- a config section: Train
@pytest.fixture
def train(params):
    return params["classification"]["train"]


def test_train_open_boundary_stays_open(train):
    assert parse_section(Train, {**train, "momentum": 0.0}, "t").momentum == 0.0
    with pytest.raises(ConfigError) as err:
        parse_section(Train, {**train, "momentum": 1.0}, "classification.train")
    assert str(err.value) == "classification.train.momentum: must be in [0, 1); got 1.0"
    direct = parse_section(Train, train, "t")
    with pytest.raises(ValueError, match=r"^momentum: must be in \[0, 1\); got 1.0$"):
        dataclasses.replace(direct, momentum=1.0)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("lr", -1, "classification.train.lr: must be > 0; got -1.0"),
        ("lr", 0, "classification.train.lr: must be > 0; got 0.0"),
        ("steps", 0, "classification.train.steps: must be >= 1; got 0"),
        ("flip", 1.5, "classification.train.flip: must be in [0, 1] (a probability); got 1.5"),
        ("patch_size", [16, 8, 16], "classification.train.patch_size[1]: must be >= 16"),
        ("warmup_steps", 10**9, "classification.train.warmup_steps: must be < steps"),
        ("devices", 3, "classification.train.batch_size: "),
    ],
)
def test_train_messages_name_the_key_path(train, key, value, message):
    with pytest.raises(ConfigError) as err:
        parse_section(Train, {**train, key: value}, "classification.train")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------- a method's Params
def test_method_params_use_the_same_checks():
    from semimed.methods.classification import FixMatch, MeanTeacher

    assert FixMatch.Params(ema_decay=0.0, threshold=1.0).threshold == 1.0
    assert _message(FixMatch.Params, ema_decay=1.0) == "ema_decay: must be in [0, 1); got 1.0"
    assert _message(FixMatch.Params, temperature=0.0) == "temperature: must be > 0; got 0.0"
    # the task's Mean Teacher only changes a default: the shared rule still applies
    assert MeanTeacher.Params().consistency == 50.0
    assert _message(MeanTeacher.Params, consistency=-1.0) == "consistency: must be >= 0; got -1.0"
    with pytest.raises(ConfigError) as err:
        parse_section(FixMatch.Params, {"threshold": 1.5}, "classification.methods_params.fixmatch")
    assert str(err.value) == (
        "classification.methods_params.fixmatch.threshold: must be in [0, 1]; got 1.5"
    )
