"""3D segmentation networks: shapes, deep-supervision outputs, the config rule, VNet."""

import copy

import pytest
import torch

from semimed.build import parse_task
from semimed.config import ConfigError
from semimed.networks import DEEP_SUPERVISION, DataShape, build_network


def _net(name, deep_supervision=False, channels=(4, 8, 16), num_classes=3):
    return build_network(
        name,
        DataShape.single(3, 1, num_classes),
        channels=channels,
        dropout=0.0,
        deep_supervision=deep_supervision,
    )


@pytest.mark.parametrize("name", DEEP_SUPERVISION)
def test_deep_supervision_stacks_main_and_aux_in_training_only(name):
    torch.manual_seed(0)
    plain, ds = _net(name), _net(name, deep_supervision=True)
    x = torch.rand(2, 1, 16, 16, 16)
    out = ds.train()(x)
    assert out.shape == (2, 2, 3, 16, 16, 16)  # main + 1 aux for 3 levels
    out.sum().backward()
    assert all(p.grad is not None for p in ds.parameters() if p.requires_grad)
    with torch.no_grad():
        main = ds.eval()(x)
        assert main.shape == (2, 3, 16, 16, 16)
        assert plain.eval()(x).shape == main.shape
    # The auxiliary outputs are not copies of the main one.
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_unet_deep_supervision_keeps_unet_weights_and_copies():
    torch.manual_seed(0)
    ds = _net("unet", deep_supervision=True, channels=(4, 8, 16, 32))
    assert len(ds.heads) == 2
    assert any(k.startswith("unet.") for k in ds.state_dict())
    twin = copy.deepcopy(ds).train()  # an EMA teacher is a deep copy: its hooks must be its own
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert twin(x).shape == (1, 3, 3, 16, 16, 16)
        torch.testing.assert_close(twin(x), ds.train()(x))


def test_networks_without_deep_supervision_refuse_it():
    with pytest.raises(ValueError, match="network 'vnet' has no deep-supervision outputs"):
        _net("vnet", deep_supervision=True)
    with pytest.raises(ValueError, match="network 'cnn' has no deep-supervision outputs"):
        build_network(
            "cnn",
            DataShape.single(2, 1, 2),
            channels=(4, 8),
            dropout=0,
            deep_supervision=True,
        )


def test_vnet_and_dynunet_keep_spatial_shape():
    torch.manual_seed(0)
    with torch.no_grad():
        assert _net("vnet").eval()(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
        assert _net("dynunet").eval()(torch.rand(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="3D segmentation network"):
        build_network("vnet", DataShape.single(2, 1, 2), channels=(4, 8), dropout=0)


def test_config_requires_a_deep_supervision_network(default_params, monkeypatch):
    from semimed.methods import METHODS
    from semimed.methods.segmentation import Supervised

    class NeedsDS(Supervised):
        name = "needs_ds"
        deep_supervision = True

    monkeypatch.setitem(METHODS["segmentation"], "needs_ds", NeedsDS)
    section = copy.deepcopy(default_params["segmentation"])
    section["methods"] = ["supervised", "needs_ds"]
    section["network"]["name"] = "vnet"
    with pytest.raises(
        ConfigError, match="^segmentation.network.name: needs_ds need deep-supervision"
    ):
        parse_task("segmentation", section)
    section["network"]["name"] = "unet"
    assert parse_task("segmentation", section).methods == ("supervised", "needs_ds")
