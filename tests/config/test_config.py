import pytest
import yaml

from semimed.build import method_params, parse_task
from semimed.config import ConfigError, load_task_section
from semimed.methods import METHODS


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_default_params_parse(task, params):
    cfg = parse_task(task, params[task])
    assert cfg.task == task
    assert cfg.methods and cfg.seeds
    for name in cfg.methods:
        assert name in METHODS[task]
        method_params(cfg, name)  # every method run by default has parseable params


def _error(task, section) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_task(task, section)
    return str(exc.value)


def test_unknown_key_names_path_and_valid_keys(params):
    params["classification"]["train"]["stepz"] = 3
    msg = _error("classification", params["classification"])
    assert "classification.train.stepz: unknown key" in msg
    assert "steps" in msg


def test_bad_choice_lists_choices(params):
    params["classification"]["train"]["optimizer"] = "adamx"
    msg = _error("classification", params["classification"])
    assert msg == "classification.train.optimizer: must be one of sgd, adam, adamw; got 'adamx'"


def test_missing_key(params):
    del params["segmentation"]["split"]["seed"]
    assert _error("segmentation", params["segmentation"]) == "segmentation.split.seed: missing key"


def test_wrong_type(params):
    params["classification"]["train"]["steps"] = "many"
    assert "classification.train.steps: must be an integer" in _error(
        "classification", params["classification"]
    )


def test_value_check(params):
    params["classification"]["split"]["labeled_percent"] = 0
    assert "classification.split.labeled_percent: must be in (0, 100]" in _error(
        "classification", params["classification"]
    )


def test_unknown_method_lists_registry(params):
    params["segmentation"]["methods"] = ["supervised", "fixmatch"]
    msg = _error("segmentation", params["segmentation"])
    assert "segmentation.methods[1]: unknown method 'fixmatch'" in msg
    assert "mean_teacher" in msg


def test_method_params_validated(params):
    params["classification"]["methods_params"]["fixmatch"]["threshold"] = 1.5
    msg = _error("classification", params["classification"])
    assert msg.startswith("classification.methods_params.fixmatch.threshold")


def test_method_params_unknown_key(params):
    params["classification"]["methods_params"]["fixmatch"]["thresh"] = 0.9
    msg = _error("classification", params["classification"])
    assert "classification.methods_params.fixmatch.thresh: unknown key" in msg


def test_load_task_from_file(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_task_section("segmentation", path).train.patch_size == tuple(
        params["segmentation"]["train"]["patch_size"]
    )
    with pytest.raises(ConfigError, match="file not found"):
        load_task_section("segmentation", tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="unknown task"):
        load_task_section("detection", path)
