"""Networks, by name: ``build_network("cnn" | "resnet18" | "unet", ...)``.

Classification nets map (B, C_in, H, W) -> logits (B, num_classes) and expose
``.backbone`` (x -> features (B, F)) and ``.head`` (``nn.Linear(F, num_classes)``), so methods
that need features (prototypes, projections, linear probes) can take them apart.
Segmentation nets map (B, C_in, D, H, W) -> logits (B, num_classes, D, H, W) of the same
spatial size as the input.

Every builder takes the same keyword arguments, so ``params.yaml`` can switch networks by name;
a builder ignores the arguments that do not apply to it (stated in its docstring).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.networks.nets import UNet
from torch import Tensor, nn
from torchvision.models import resnet18


class Classifier(nn.Module):
    """``forward(x) = head(backbone(x))``: images (B, C_in, H, W) -> logits (B, num_classes).

    Dropout is the last layer of ``backbone`` rather than part of ``head`` so that ``head`` is a
    plain ``nn.Linear`` (the contract) while dropout still acts just before it.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x))


def _require_2d(name: str, spatial_dims: int) -> None:
    if spatial_dims != 2:
        raise ValueError(f"network '{name}' is 2D only; got spatial_dims={spatial_dims}")


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No conv bias: BatchNorm's shift makes it redundant.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def build_cnn(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> Classifier:
    """Small VGG-style 2D CNN: per entry c of ``channels``, two 3x3 conv-BN-ReLU then 2x2 max-pool.

    With ``channels=[16, 32, 64, 128]`` a 64x64 image is pooled to 4x4 before the global average
    pool, so the backbone returns (B, channels[-1]).
    """
    _require_2d("cnn", spatial_dims)
    if not channels:
        raise ValueError("channels: must list at least one stage width for 'cnn', got []")
    layers: list[nn.Module] = []
    prev = in_channels
    for width in channels:
        layers += _conv_bn_relu(prev, width) + _conv_bn_relu(width, width) + [nn.MaxPool2d(2)]
        prev = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
    return Classifier(nn.Sequential(*layers), nn.Linear(prev, num_classes))


def build_resnet18(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> Classifier:
    """torchvision ResNet-18 (He et al., CVPR 2016), randomly initialised; ``channels`` ignored.

    Adapted to small images (64x64 TMED-2 frames) the way CIFAR ResNets are: the 7x7 stride-2
    stem conv becomes a 3x3 stride-1 conv taking ``in_channels`` and the stem max-pool is
    removed, so a 64x64 input reaches layer4 at 8x8 instead of 2x2 (about 16x the FLOPs of the
    ImageNet layout at the same input size). Weights are never downloaded (``weights=None``).
    Backbone output: (B, 512).
    """
    _require_2d("resnet18", spatial_dims)
    trunk = resnet18(weights=None)
    trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    trunk.maxpool = nn.Identity()
    trunk.fc = nn.Identity()
    return Classifier(nn.Sequential(trunk, nn.Dropout(dropout)), nn.Linear(512, num_classes))


def build_unet(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> nn.Module:
    """MONAI UNet (Ronneberger et al. 2015), 2D or 3D, without residual units: on a 2-core CPU
    a 32^3 training step is ~2.8x faster than with `num_res_units=1`.

    One stride-2 level per step between ``channels`` entries, so each spatial size of the input
    must be divisible by ``2 ** (len(channels) - 1)``; instance norm because 3D batches hold
    only a few crops. Output: logits (B, num_classes, *input_spatial).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"network 'unet' needs spatial_dims 2 or 3; got {spatial_dims}")
    if len(channels) < 2:
        raise ValueError(f"channels: 'unet' needs at least 2 levels, got {list(channels)}")
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=0,
        dropout=dropout,
        norm="instance",
    )


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "resnet18": build_resnet18,
    "unet": build_unet,
}


def build_network(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> nn.Module:
    """Build the network registered as ``name`` in ``NETWORKS``; see each builder for shapes."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network '{name}'; choose one of: {', '.join(NETWORKS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
    return NETWORKS[name](
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        channels=channels,
        dropout=dropout,
    )


__all__ = ["NETWORKS", "Classifier", "build_network"]
