"""Classification networks: ``cnn``, ``resnet18``, ``densenet121`` (2D or 3D), and the
`Classifier` contract (``.backbone`` -> features, ``.head`` -> logits) that ``lwn`` follows too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.networks.nets import DenseNet121
from monai.networks.nets import resnet18 as monai_resnet18
from torch import Tensor, nn

from semimed.networks.shape import DataShape


class Classifier(nn.Module):
    """``forward(x) = head(backbone(x))``: (B, C_in, H, W[, D]) -> logits (B, num_classes).

    Dropout is the last layer of ``backbone`` rather than part of ``head`` so that ``head`` is a
    plain ``nn.Linear`` (the contract) while dropout still acts just before it.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


# Classification networks that also take 3D volumes (``spatial_dims=3``); lwn is 2D only.
CLASSIFIERS_3D = ("cnn", "resnet18", "densenet121")


def check_dims(name: str, shape: DataShape) -> None:
    """Refuse a `shape` network `name` cannot take (3D for a 2D-only network, other dims,
    no input channel)."""
    spatial_dims, in_channels = shape.spatial_dims, shape.in_channels
    if spatial_dims == 3 and name not in CLASSIFIERS_3D:
        raise ValueError(
            f"classification.network.name: {name} is 2D only; choose one of "
            f"{', '.join(CLASSIFIERS_3D)} for 3D volumes"
        )
    if spatial_dims not in (2, 3):
        raise ValueError(f"network '{name}' takes spatial_dims 2 or 3, got {spatial_dims}")
    if in_channels < 1:
        raise ValueError(f"network '{name}': in_channels must be >= 1, got {in_channels}")


def _conv_bn_relu(dims: int, in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant.
    return [
        Conv[Conv.CONV, dims](in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        Norm[Norm.BATCH, dims](out_channels),
        nn.ReLU(inplace=True),
    ]


def build_cnn(shape: DataShape, *, channels: Sequence[int], dropout: float) -> Classifier:
    """Small VGG-style CNN, 2D or 3D (MONAI layer factories): per entry c of ``channels``, two
    3x3[x3] conv-BN-ReLU then a stride-2 max-pool.

    With ``channels=[16, 32, 64, 128]`` a 64x64 image is pooled to 4x4 and a 28^3 volume to
    1^3 (28 -> 14 -> 7 -> 3 -> 1) before the global average pool, so the backbone returns
    (B, channels[-1]). Inputs need a side of at least 2 ** len(channels).
    """
    check_dims("cnn", shape)
    if not channels:
        raise ValueError("channels: must list at least one stage width for 'cnn', got []")
    d = shape.spatial_dims
    layers: list[nn.Module] = []
    prev = shape.in_channels
    for width in channels:
        layers += _conv_bn_relu(d, prev, width) + _conv_bn_relu(d, width, width)
        layers += [Pool[Pool.MAX, d](2)]
        prev = width
    layers += [Pool[Pool.ADAPTIVEAVG, d](1), nn.Flatten(), nn.Dropout(dropout)]
    net = Classifier(nn.Sequential(*layers), nn.Linear(prev, shape.num_classes))
    if d == 3:
        # Channels-last conv weights: the layout in which a CPU runs the backward of narrow
        # 3D convs fastest.
        net = net.to(memory_format=torch.channels_last_3d)
    return net


def build_resnet18(shape: DataShape, *, channels: Sequence[int], dropout: float) -> Classifier:
    """ResNet-18 (He et al., CVPR 2016), randomly initialised; ``channels`` ignored.

    Adapted to small inputs (64x64 TMED-2 frames, 28^3 / 64^3 MedMNIST volumes) the way CIFAR
    ResNets are: the 7x7 stride-2 stem conv becomes a 3x3[x3] stride-1 conv taking
    ``in_channels`` and the stem max-pool is removed, so a 64x64 input reaches layer4 at 8x8
    instead of 2x2 (about 16x the FLOPs of the ImageNet layout at the same input size) and a
    28^3 volume at 4^3 (MedMNIST v2's 3D ResNet-18 does the same). 2D: torchvision's ResNet-18
    (11.2M parameters); 3D: MONAI's ``resnet18`` with the same blocks in 3D (33.2M parameters;
    forward FLOPs per input: 4.4 G at 64x64, 36 G at 28^3, 411 G at 64^3 -- a GPU job).
    Weights are never downloaded.
    Backbone output: (B, 512).
    """
    check_dims("resnet18", shape)
    in_channels = shape.in_channels
    if shape.spatial_dims == 3:
        trunk = monai_resnet18(
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=3,
            conv1_t_stride=1,
            no_max_pool=True,
            feed_forward=False,  # no fc: the trunk returns the pooled (B, 512) features
        )
        trunk.maxpool = nn.Identity()  # skipped by no_max_pool already; shown for the reader
    else:
        from torchvision.models import resnet18  # here: only the 2D net needs torchvision

        trunk = resnet18(weights=None)
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        trunk.maxpool = nn.Identity()
        trunk.fc = nn.Identity()
    backbone = nn.Sequential(trunk, nn.Dropout(dropout))
    return Classifier(backbone, nn.Linear(512, shape.num_classes))


def build_densenet121(shape: DataShape, *, channels: Sequence[int], dropout: float) -> Classifier:
    """MONAI DenseNet-121 (Huang et al., CVPR 2017), 2D or 3D, randomly initialised
    (``pretrained`` stays False: nothing is downloaded); ``channels`` ignored. One of TEAR's
    backbones (TEAR).

    2D: kept in its ImageNet layout (7x7 stride-2 stem, max-pool, 3 transitions: /32), so it
    needs inputs of at least 32x32 and a 48x48 frame reaches the last dense block at 1x1: about
    10x fewer FLOPs than our small-image ``resnet18`` at the same size, with 7.0M parameters.
    3D: the stem max-pool is dropped (/16), so MedMNIST's 28^3 volumes fit (28 -> 14 -> 7 -> 3
    -> 1) and 64^3 ones reach the last block at 4^3; 11.2M parameters, forward 6.2 GFLOPs at
    28^3 (0.45 G for a 64x64 image in 2D). Smaller inputs fail at the first call with a
    message naming the minimum size. Our ``dropout`` goes before the head; DenseNet's own
    dropout inside dense layers stays 0. Backbone output: (B, 1024).
    """
    check_dims("densenet121", shape)
    spatial_dims = shape.spatial_dims
    net = DenseNet121(
        spatial_dims=spatial_dims,
        in_channels=shape.in_channels,
        out_channels=shape.num_classes,
        pretrained=False,
    )
    if spatial_dims == 3:
        net.features.pool0 = nn.Identity()
    # A parameter-free first child: parameter names (features.conv0...) stay as they were.
    check = _MinSide("densenet121", 32 if spatial_dims == 2 else 16)
    features = nn.Sequential(OrderedDict([("size_check", check), *net.features.named_children()]))
    top = net.class_layers  # relu, pool, flatten, out
    backbone = nn.Sequential(features, top.relu, top.pool, top.flatten, nn.Dropout(dropout))
    return Classifier(backbone, top.out)


class _MinSide(nn.Module):
    """Identity that rejects inputs with a spatial side below ``min_side`` with a message that
    says what to change, instead of a pooling error deep inside the network."""

    def __init__(self, name: str, min_side: int) -> None:
        super().__init__()
        self.name, self.min_side = name, min_side

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[2:]) < self.min_side:
            raise ValueError(
                f"{self.name} needs inputs of at least {self.min_side} per side, got "
                f"{tuple(x.shape[2:])}: raise the image size or use cnn / resnet18"
            )
        return x
