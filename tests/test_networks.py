"""Networks: output shapes, backbone/head split, registry errors."""

import pytest
import torch
from torch import nn

from semimed.networks import NETWORKS, build_network


def _classifier(name, channels=(8, 16), num_classes=3, in_channels=1):
    return build_network(
        name,
        spatial_dims=2,
        in_channels=in_channels,
        num_classes=num_classes,
        channels=channels,
        dropout=0.1,
    )


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_classifier_shapes_and_split(name):
    torch.manual_seed(0)
    net = _classifier(name).eval()
    with torch.no_grad():
        # Must accept 1-channel 64x64 frames (TMED-2); one sample keeps the test fast.
        assert net(torch.rand(1, 1, 64, 64)).shape == (1, 3)
        x = torch.rand(2, 1, 16, 16)
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


@pytest.mark.parametrize("spatial_dims,shape", [(3, (2, 1, 16, 16, 16)), (2, (2, 1, 16, 32))])
def test_unet_keeps_spatial_shape(spatial_dims, shape):
    torch.manual_seed(0)
    net = build_network(
        "unet",
        spatial_dims=spatial_dims,
        in_channels=1,
        num_classes=4,
        channels=(4, 8, 16),
        dropout=0.0,
    )
    out = net(torch.rand(shape))
    assert out.shape == (shape[0], 4, *shape[2:])


def test_unknown_network_lists_choices():
    with pytest.raises(ValueError, match="unknown network 'vgg'.*cnn, resnet18, unet"):
        _classifier("vgg")
    assert set(NETWORKS) == {"cnn", "resnet18", "unet"}


@pytest.mark.parametrize("name", ["cnn", "resnet18"])
def test_2d_only_nets_reject_3d(name):
    with pytest.raises(ValueError, match=f"'{name}' is 2D only"):
        build_network(
            name, spatial_dims=3, in_channels=1, num_classes=2, channels=(4,), dropout=0.0
        )


def test_bad_dropout_and_channels():
    with pytest.raises(ValueError, match="dropout"):
        build_network("cnn", spatial_dims=2, in_channels=1, num_classes=2, channels=(4,), dropout=1)
    with pytest.raises(ValueError, match="channels"):
        build_network(
            "unet", spatial_dims=3, in_channels=1, num_classes=2, channels=(4,), dropout=0
        )
