"""One backbone, one head per task: block softmax, summed losses, config checks."""

import copy

import pytest
import torch
import torch.nn.functional as F

from semimed.build import parse_task
from semimed.config import ConfigError
from semimed.methods.classification import Supervised
from semimed.networks import DataShape, build_network
from semimed.networks.multitask import blockwise_softmax, multitask_cross_entropy, split_logits


def net():
    """A tiny cnn with 5 logits: tasks of 3 and 2 classes."""
    return build_network("cnn", DataShape.single(2, 1, 5), channels=(4, 8), dropout=0.0)


def test_single_task_is_plain_cross_entropy():
    logits, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(multitask_cross_entropy(logits, y, (4,)), F.cross_entropy(logits, y))


def test_blocks_are_independent_tasks():
    logits = torch.randn(6, 5)
    y = torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0], [1, 1], [2, 0]])
    a, b = split_logits(logits, (3, 2))
    expected = F.cross_entropy(a, y[:, 0]) + F.cross_entropy(b, y[:, 1])
    torch.testing.assert_close(multitask_cross_entropy(logits, y, (3, 2)), expected)
    probs = blockwise_softmax(logits, (3, 2))
    torch.testing.assert_close(probs[:, :3].sum(1), torch.ones(6))
    torch.testing.assert_close(probs[:, 3:].sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="targets must be"):
        multitask_cross_entropy(logits, y[:, 0], (3, 2))
    with pytest.raises(ValueError, match="columns"):
        split_logits(logits, (3, 3))


def test_supervised_trains_every_head():
    torch.manual_seed(0)

    method = Supervised(net, Supervised.Params(), 5, 10, task_sizes=(3, 2))
    batch = {
        "x_lb": torch.rand(4, 1, 16, 16),
        "y_lb": torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0]]),
    }
    method.training_step(batch, 0)["loss"].backward()
    grad = method.net.head.weight.grad
    assert grad[:3].abs().sum() > 0 and grad[3:].abs().sum() > 0  # both task heads learn


def test_single_target_methods_refuse_several_tasks(default_params):
    from semimed.methods.classification import FixMatch

    with pytest.raises(ValueError, match="multi-task"):
        FixMatch(net, FixMatch.Params(), 5, 10, task_sizes=(3, 2))
    section = copy.deepcopy(default_params["classification"])
    section["data"]["targets"] = ["view", "severity"]
    section["methods"] = ["supervised", "fixmatch"]
    with pytest.raises(ConfigError, match=r"classification.data.targets: .*fixmatch"):
        parse_task("classification", section)
    section["methods"] = ["supervised", "supervised_full"]
    assert parse_task("classification", section).data.targets == ("view", "severity")
    section["data"]["targets"] = ["view", "view"]
    with pytest.raises(ConfigError, match="targets: lists a label twice"):
        parse_task("classification", section)


def test_simclr_probes_one_head_per_task():
    from semimed.methods.classification import SimCLR

    torch.manual_seed(0)

    method = SimCLR(net, SimCLR.Params(), 5, 10, task_sizes=(3, 2))
    method.phase.fill_(2)
    method.load_state_dict(method.state_dict())  # the phase is read back from the buffer
    batch = {
        "x_lb": torch.rand(4, 1, 16, 16),
        "y_lb": torch.tensor([[0, 1], [1, 0], [2, 1], [0, 0]]),
        "x_ulb_s": torch.rand(6, 1, 16, 16),
        "x_ulb_s2": torch.rand(6, 1, 16, 16),
    }
    method.training_step(batch, 9)["loss"].backward()
    grad = method.net.head.weight.grad
    assert grad[:3].abs().sum() > 0 and grad[3:].abs().sum() > 0
