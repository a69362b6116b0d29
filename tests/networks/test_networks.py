"""Networks: output shapes, backbone/head split, LWN's Haar transform and fusion, registry
errors."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import float32_sum_tol
from torch import nn

from semimed.networks import (
    CLASSIFIERS_3D,
    NETWORKS,
    DataShape,
    build_network,
    haar_dwt,
    reparameterize,
)
from semimed.networks.lwn import LWN_BLOCKS

# Per classification network: stage widths (ignored by some) and the smallest input side it
# takes here (densenet121 keeps ImageNet's /32 layout).
CLASSIFIERS = {
    "cnn": ((8, 16), 16),
    "lwn": ((4, 8, 8, 12), 16),
    "resnet18": ((8, 16), 16),
    "densenet121": ((8, 16), 32),
}


def _classifier(name, channels=(8, 16), num_classes=3, in_channels=1, dropout=0.1):
    return build_network(
        name,
        DataShape.single(2, in_channels, num_classes),
        channels=channels,
        dropout=dropout,
    )


def test_every_classifier_is_tested():
    assert set(CLASSIFIERS) == set(NETWORKS) - {"unet", "vnet", "dynunet"}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifier_shapes_and_split(name):
    torch.manual_seed(0)
    channels, side = CLASSIFIERS[name]
    net = _classifier(name, channels=channels).eval()
    with torch.no_grad():
        # Must accept 1-channel 64x64 frames (TMED-2); one sample keeps the test fast.
        assert net(torch.rand(1, 1, 64, 64)).shape == (1, 3)
        x = torch.rand(2, 1, side, side)
        logits, features = net(x), net.backbone(x)
    assert logits.shape == (2, 3)
    assert features.ndim == 2 and features.shape[0] == 2
    assert isinstance(net.head, nn.Linear)
    assert net.head.in_features == features.shape[1] and net.head.out_features == 3
    torch.testing.assert_close(net.head(features), logits)


def test_cnn_feature_width_is_last_channel():
    net = _classifier("cnn", channels=(4, 8, 12))
    assert net.head.in_features == 12
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_resnet18_stem_is_small_image_variant():
    net = _classifier("resnet18", in_channels=2)
    trunk = net.backbone[0]
    assert trunk.conv1.in_channels == 2 and trunk.conv1.stride == (1, 1)
    assert isinstance(trunk.maxpool, nn.Identity)
    assert net.head.in_features == 512


def test_densenet121_features_and_input_channels():
    net = _classifier("densenet121", in_channels=2)
    assert net.head.in_features == 1024
    assert net(torch.rand(2, 2, 32, 32)).shape == (2, 3)


def test_haar_dwt_is_orthogonal_and_halves_the_size():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    y = haar_dwt(x)
    assert y.shape == (2, 12, 4, 3)
    torch.testing.assert_close(y.square().sum(), x.square().sum())  # energy kept
    # The filters are the responses to the 4 one-pixel 2x2 images: orthonormal.
    responses = haar_dwt(torch.eye(4, dtype=torch.float64).reshape(4, 1, 2, 2)).reshape(4, 4)
    torch.testing.assert_close(responses @ responses.T, torch.eye(4, dtype=torch.float64))
    # Inverse = transpose: put each channel's 4 bands back through the same filters.
    bands = y.reshape(2, 4, 3, 4, 3).transpose(1, 2).reshape(6, 4, 4, 3)
    back = F.conv_transpose2d(bands, responses.T.reshape(4, 1, 2, 2), stride=2)
    torch.testing.assert_close(back.reshape(2, 3, 8, 6), x)
    # A constant image has only an approximation band (2x the value), no detail.
    const = haar_dwt(torch.full((1, 1, 4, 4), 3.0))
    torch.testing.assert_close(const[:, 0], torch.full((1, 2, 2), 6.0))
    assert const[:, 1:].abs().max() == 0


def test_haar_dwt_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        haar_dwt(torch.rand(1, 1, 5, 4))


def test_lwn_layout():
    net = _classifier("lwn", channels=(4, 8, 8, 12))
    stages = [type(m).__name__ for m in net.backbone]
    assert stages.count("HaarDown") == 4 and stages.count("LWNBlock") == sum(LWN_BLOCKS)
    with torch.no_grad():
        maps = net.backbone[:-3](torch.rand(1, 1, 48, 48))  # everything before pool/flatten/drop
    assert maps.shape == (1, 12, 3, 3)
    # Odd sizes are padded, not cropped: 20 -> 10 -> 5 -> 3 -> 2.
    with torch.no_grad():
        assert net.backbone[:-3](torch.rand(1, 1, 20, 20)).shape == (1, 12, 2, 2)


def _randomize_batchnorms(net):
    # Fresh BNs are identities; fusion must also hold with real statistics and affines.
    g = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.mark.parametrize("side", [16, 20])
def test_lwn_fused_matches_unfused(side):
    torch.manual_seed(0)
    net = _classifier("lwn", channels=(4, 8, 8, 12), num_classes=5)
    _randomize_batchnorms(net)
    net.eval()
    fused = reparameterize(copy.deepcopy(net))
    x = torch.rand(3, 1, side, side)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), atol=1e-5, rtol=1e-5)
    kinds = {type(m).__name__ for m in fused.modules()}
    assert not kinds & {"BatchNorm2d", "RepMixer", "HaarDown", "_ConvBN"}
    assert len(list(fused.modules())) < len(list(net.modules())) // 2
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in net.parameters())
    assert isinstance(fused.head, nn.Linear) and not fused.training


def test_reparameterize_is_a_no_op_on_plain_nets():
    net = _classifier("cnn").eval()
    before = copy.deepcopy(net.state_dict())
    assert reparameterize(net) is net
    assert net.state_dict().keys() == before.keys()


def test_lwn_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = _classifier("lwn", channels=(4, 4, 8, 8), dropout=0.0)
    net(torch.rand(4, 1, 16, 16)).logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize("spatial_dims,shape", [(3, (2, 1, 16, 16, 16)), (2, (2, 1, 16, 32))])
def test_unet_keeps_spatial_shape(spatial_dims, shape):
    torch.manual_seed(0)
    net = build_network(
        "unet",
        DataShape.single(spatial_dims, 1, 4),
        channels=(4, 8, 16),
        dropout=0.0,
    )
    out = net(torch.rand(shape))
    assert out.shape == (shape[0], 4, *shape[2:])


def test_unknown_network_lists_choices():
    with pytest.raises(ValueError, match="unknown network 'vgg'.*cnn, lwn, resnet18, densenet121"):
        _classifier("vgg")
    assert set(NETWORKS) == {"cnn", "lwn", "resnet18", "densenet121", "unet", "vnet", "dynunet"}


def test_lwn_rejects_3d_naming_the_param():
    with pytest.raises(ValueError, match="^classification.network.name: lwn is 2D only") as err:
        build_network("lwn", DataShape.single(3, 1, 2), channels=(4,), dropout=0)
    assert "cnn, resnet18, densenet121" in str(err.value) and "\n" not in str(err.value)
    assert set(CLASSIFIERS_3D) == set(CLASSIFIERS) - {"lwn"}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_classifiers_reject_bad_dims_and_channels(name):
    with pytest.raises(ValueError, match="spatial_dims 2 or 3"):
        build_network(name, DataShape.single(1, 1, 2), channels=(4,), dropout=0)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        _classifier(name, channels=CLASSIFIERS[name][0], in_channels=0)


# Fingerprints of freshly built 2D 3-channel networks after torch.manual_seed(0): (sum of all
# state tensors, sum weighted by a ramp, number of tensors). The draws must not move; each
# value may round differently on another processor (vectorised normal/uniform fills, a few
# float32 roundings each), so the sums are compared within 8 roundings per value.
INIT_2D = {
    "cnn": (91.00094616300703, 0.715532234539347, 26),
    "lwn": (1391.7072374324416, -1.1531577254886183, 374),
    "resnet18": (9557.282685776872, -124.27254414627424, 122),
    "densenet121": (83325.56979715364, -40.402604023574526, 727),
}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_2d_networks_are_built_as_before(name):
    # Same modules, parameter names and initialisation draws: 2D runs reproduce.
    torch.manual_seed(0)
    channels = (4, 8, 8, 12) if name == "lwn" else (8, 16) if name == "cnn" else (8,)
    state = _classifier(name, channels=channels, in_channels=3).state_dict()
    values = torch.cat([v.double().flatten() for v in state.values()])
    ramps = torch.cat(
        [torch.linspace(-1, 1, v.numel(), dtype=torch.float64) for v in state.values()]
    )
    expected = INIT_2D[name]
    assert len(state) == expected[2]
    assert values.sum().item() == pytest.approx(expected[0], abs=float32_sum_tol(values, 8))
    ramp = (values * ramps).sum().item()
    assert ramp == pytest.approx(expected[1], abs=float32_sum_tol(values * ramps, 8))
    first = {"cnn": "backbone.0.weight", "lwn": "backbone.0.mix.0.weight"}
    first |= {"resnet18": "backbone.0.conv1.weight", "densenet121": "backbone.0.conv0.weight"}
    assert next(iter(state)) == first[name]


def test_densenet121_names_the_minimum_size():
    net = _classifier("densenet121")
    with pytest.raises(ValueError, match="densenet121 needs inputs of at least 32 per side"):
        net(torch.rand(2, 1, 28, 28))


@pytest.mark.parametrize("channels", [(8, 16), (4, 8, 16, 32, 64), (4, 8, 0, 16)])
def test_lwn_rejects_bad_channels(channels):
    with pytest.raises(ValueError, match="^channels: 'lwn' needs 4 positive") as err:
        _classifier("lwn", channels=channels)
    assert "\n" not in str(err.value)


def test_bad_dropout_and_channels():
    with pytest.raises(ValueError, match="dropout"):
        build_network("cnn", DataShape.single(2, 1, 2), channels=(4,), dropout=1)
    with pytest.raises(ValueError, match="channels"):
        build_network("unet", DataShape.single(3, 1, 2), channels=(4,), dropout=0)
