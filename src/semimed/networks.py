"""Networks, by name: ``build_network("cnn" | "lwn" | "resnet18" | "densenet121" | "unet" | "vnet" |
"dynunet", ...)``; the 3D segmentation ones live in ``semimed.seg_networks``.

Classification nets map images (B, C_in, H, W) or volumes (B, C_in, D, H, W) (``spatial_dims``
2 or 3; any ``in_channels`` >= 1: grayscale, RGB) -> logits (B, num_classes) and expose
``.backbone`` (x -> features (B, F)) and ``.head`` (``nn.Linear(F, num_classes)``), so methods
that need features (prototypes, projections, linear probes) can take them apart. ``cnn``,
``resnet18`` and ``densenet121`` take both; ``lwn`` (Haar wavelets, echo frames) is 2D only.
The 2D networks are built exactly as before 3D support came (same modules, parameter names and
initialisation draws), so 2D runs reproduce.
Segmentation nets map (B, C_in, D, H, W) -> logits (B, num_classes, D, H, W) of the same
spatial size as the input.

Every builder takes the same keyword arguments, so ``params.yaml`` can switch networks by name;
a builder ignores the arguments that do not apply to it (stated in its docstring).
``reparameterize(model)`` folds the training-time branches of ``lwn`` into single convs for
inference (a no-op on the other networks).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.networks.nets import DenseNet121
from monai.networks.nets import resnet18 as monai_resnet18
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights
from torchvision.models import resnet18

from semimed.seg_networks import build_dynunet, build_unet, build_vnet


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


def _check_dims(name: str, spatial_dims: int, in_channels: int) -> None:
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


def build_cnn(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> Classifier:
    """Small VGG-style CNN, 2D or 3D (MONAI layer factories): per entry c of ``channels``, two
    3x3[x3] conv-BN-ReLU then a stride-2 max-pool.

    With ``channels=[16, 32, 64, 128]`` a 64x64 image is pooled to 4x4 and a 28^3 volume to
    1^3 (28 -> 14 -> 7 -> 3 -> 1) before the global average pool, so the backbone returns
    (B, channels[-1]). Inputs need a side of at least 2 ** len(channels).
    """
    _check_dims("cnn", spatial_dims, in_channels)
    if not channels:
        raise ValueError("channels: must list at least one stage width for 'cnn', got []")
    d = spatial_dims
    layers: list[nn.Module] = []
    prev = in_channels
    for width in channels:
        layers += _conv_bn_relu(d, prev, width) + _conv_bn_relu(d, width, width)
        layers += [Pool[Pool.MAX, d](2)]
        prev = width
    layers += [Pool[Pool.ADAPTIVEAVG, d](1), nn.Flatten(), nn.Dropout(dropout)]
    net = Classifier(nn.Sequential(*layers), nn.Linear(prev, num_classes))
    if d == 3:
        # Channels-last conv weights: on a CPU the backward of 3D convs this narrow runs 2-3x
        # faster (a (16, 1, 28, 28, 28) step with channels [8, 16, 32, 64]: 1.05 s -> 0.55 s).
        net = net.to(memory_format=torch.channels_last_3d)
    return net


# --- LWN: lightweight echo network (seed 000) -------------------------------------------------

# Orthonormal one-level 2D Haar filter bank (4, 2, 2): the approximation LL, then the details
# that respond to horizontal edges (LH), vertical edges (HL) and diagonals (HH).
_HAAR = 0.5 * torch.tensor(
    [
        [[1.0, 1.0], [1.0, 1.0]],
        [[1.0, 1.0], [-1.0, -1.0]],
        [[1.0, -1.0], [1.0, -1.0]],
        [[1.0, -1.0], [-1.0, 1.0]],
    ]
)
LWN_BLOCKS = (2, 2, 6, 2)  # blocks per stage, as in seed 000's LWN


def haar_dwt(x: Tensor) -> Tensor:
    """One-level 2D Haar wavelet transform: (B, C, H, W), H and W even -> (B, 4C, H/2, W/2).

    The fixed filters above, stride 2, applied to each channel; the sub-bands are concatenated
    band-major (channels ``[k*C, (k+1)*C)`` hold band k = LL, LH, HL, HH of every input
    channel). The filters are orthonormal, so the transform is orthogonal: it keeps the energy
    ``sum(x**2)`` and its inverse is its transpose (``conv_transpose2d`` with the same filters).
    """
    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"haar_dwt: H and W must be even, got {h}x{w}")
    bands = F.conv2d(x.reshape(b * c, 1, h, w), _HAAR.to(x)[:, None], stride=2)
    return bands.reshape(b, c, 4, h // 2, w // 2).transpose(1, 2).reshape(b, 4 * c, h // 2, w // 2)


class _PadToEven(nn.Module):
    """Repeat the last row/column of an odd-sized map so a 2x2 stride-2 step keeps every pixel."""

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2), mode="replicate")


class _ConvBN(nn.Sequential):
    """Conv (no bias, 'same' padding) then BatchNorm; ``fused()`` folds them into one conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1):
        conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        super().__init__(conv, nn.BatchNorm2d(out_channels))

    def fused(self) -> nn.Conv2d:
        return fuse_conv_bn_eval(self[0], self[1])


class HaarDown(nn.Module):
    """Haar wavelet downsampling (HWD, Xu et al., Pattern Recognition 2023), as used by LWN:
    sub-bands concatenated, mixed by a 1x1 conv-BN, GELU.

    (B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2)); odd sizes are padded by repetition.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pad = _PadToEven()
        self.mix = _ConvBN(4 * in_channels, out_channels, 1)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.mix(haar_dwt(self.pad(x))))

    def fused(self) -> nn.Sequential:
        # Haar then a 1x1 conv is one 2x2 stride-2 conv whose weights are written in the Haar
        # basis: kernel[o, c] = sum_k W[o, k*C + c] * filter_k.
        mix = self.mix.fused()
        out_channels, in_channels = mix.out_channels, mix.in_channels // 4
        conv = nn.Conv2d(in_channels, out_channels, 2, stride=2)
        weight = mix.weight.reshape(out_channels, 4, in_channels)
        conv.weight.copy_(torch.einsum("okc,kij->ocij", weight, _HAAR.to(weight)))
        conv.bias.copy_(mix.bias)
        return nn.Sequential(self.pad, conv, self.act)


class RepMixer(nn.Module):
    """Re-parameterisable depthwise token mixer (MobileOne, Vasu et al. CVPR 2023; FastViT,
    ICCV 2023): 3x3 depthwise conv-BN + 1x1 depthwise conv-BN + BN identity, summed.

    (B, C, H, W) -> (B, C, H, W). The identity branch plays the residual; ``fused()`` returns the
    single 3x3 depthwise conv (with bias) that computes the same sum in eval mode.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = _ConvBN(channels, channels, 3, groups=channels)
        self.conv1 = _ConvBN(channels, channels, 1, groups=channels)
        self.skip = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(x) + self.conv1(x) + self.skip(x)

    def fused(self) -> nn.Conv2d:
        conv3, conv1, bn = self.conv3.fused(), self.conv1.fused(), self.skip
        channels = bn.num_features
        identity = torch.zeros_like(conv3.weight)
        identity[:, 0, 1, 1] = 1.0
        w_id, b_id = fuse_conv_bn_weights(
            identity, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        conv.weight.copy_(conv3.weight + F.pad(conv1.weight, (1, 1, 1, 1)) + w_id)
        conv.bias.copy_(conv3.bias + conv1.bias + b_id)
        return conv


class LWNBlock(nn.Module):
    """``m = mixer(x); out = m + ffn(m)``, (B, C, H, W) -> (B, C, H, W). The FFN is FastViT's
    conv FFN without its 7x7 depthwise conv: 1x1 conv-BN to 3C, GELU, 1x1 conv-BN back to C."""

    def __init__(self, channels: int, expansion: int = 3) -> None:
        super().__init__()
        self.mixer = RepMixer(channels)
        self.ffn = nn.Sequential(
            _ConvBN(channels, expansion * channels, 1),
            nn.GELU(),
            _ConvBN(expansion * channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.mixer(x)
        return x + self.ffn(x)


def build_lwn(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> Classifier:
    """LWN, the lightweight network of seed 000: 4 stages of widths ``channels`` (paper:
    24, 48, 96, 192) with 2, 2, 6, 2 blocks; each stage starts with ``HaarDown`` (so 48x48 ends
    at 3x3), then ``LWNBlock``s; global average pool, dropout, linear head.

    There is no stem: stage 1 downsamples the image itself. Blocks per stage are fixed, so
    ``channels`` must list exactly 4 widths. Call ``reparameterize(model)`` before inference to
    fold every branch and BatchNorm into plain convs. Backbone output: (B, channels[-1]).
    """
    _check_dims("lwn", spatial_dims, in_channels)
    if len(channels) != len(LWN_BLOCKS) or min(channels) < 1:
        raise ValueError(
            f"channels: 'lwn' needs 4 positive stage widths (blocks fixed at 2, 2, 6, 2), "
            f"got {list(channels)}"
        )
    layers: list[nn.Module] = []
    prev = in_channels
    for width, blocks in zip(channels, LWN_BLOCKS, strict=True):
        layers += [HaarDown(prev, width)] + [LWNBlock(width) for _ in range(blocks)]
        prev = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
    return Classifier(nn.Sequential(*layers), nn.Linear(prev, num_classes))


_FUSABLE = (_ConvBN, HaarDown, RepMixer)


@torch.no_grad()
def reparameterize(model: nn.Module) -> nn.Module:
    """Fold, in place, every re-parameterisable part of ``model`` (LWN's mixers, Haar
    downsamplers, conv-BN pairs) into plain convs; returns ``model``, in eval mode.

    Outputs are unchanged in eval mode (up to float rounding) but the model can no longer be
    trained (its BatchNorms are gone), so fuse a copy, or a model loaded for inference only.
    Networks without such parts are returned unchanged (but in eval mode).
    """
    model.eval()
    for name, child in list(model.named_children()):
        if isinstance(child, _FUSABLE):
            setattr(model, name, child.fused())
        else:
            reparameterize(child)
    return model


def build_resnet18(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> Classifier:
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
    _check_dims("resnet18", spatial_dims, in_channels)
    if spatial_dims == 3:
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
        trunk = resnet18(weights=None)
        trunk.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        trunk.maxpool = nn.Identity()
        trunk.fc = nn.Identity()
    return Classifier(nn.Sequential(trunk, nn.Dropout(dropout)), nn.Linear(512, num_classes))


def build_densenet121(
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
) -> Classifier:
    """MONAI DenseNet-121 (Huang et al., CVPR 2017), 2D or 3D, randomly initialised
    (``pretrained`` stays False: nothing is downloaded); ``channels`` ignored. One of TEAR's
    backbones (seed 002).

    2D: kept in its ImageNet layout (7x7 stride-2 stem, max-pool, 3 transitions: /32), so it
    needs inputs of at least 32x32 and a 48x48 frame reaches the last dense block at 1x1: about
    10x fewer FLOPs than our small-image ``resnet18`` at the same size, with 7.0M parameters.
    3D: the stem max-pool is dropped (/16), so MedMNIST's 28^3 volumes fit (28 -> 14 -> 7 -> 3
    -> 1) and 64^3 ones reach the last block at 4^3; 11.2M parameters, forward 6.2 GFLOPs at
    28^3 (0.45 G for a 64x64 image in 2D). Smaller inputs fail at the first call with a
    message naming the minimum size. Our ``dropout`` goes before the head; DenseNet's own
    dropout inside dense layers stays 0. Backbone output: (B, 1024).
    """
    _check_dims("densenet121", spatial_dims, in_channels)
    net = DenseNet121(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
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


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "cnn": build_cnn,
    "lwn": build_lwn,
    "resnet18": build_resnet18,
    "densenet121": build_densenet121,
    "unet": build_unet,
    "vnet": build_vnet,
    "dynunet": build_dynunet,
}
# Networks that can return deep-supervision outputs (``build_network(..., deep_supervision=True)``).
DEEP_SUPERVISION = ("unet", "dynunet")


def build_network(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    num_classes: int,
    channels: Sequence[int],
    dropout: float,
    deep_supervision: bool = False,
) -> nn.Module:
    """Build the network registered as ``name`` in ``NETWORKS``; see each builder for shapes.

    ``deep_supervision``: also return coarser decoder outputs in training mode (URPC); only the
    networks in ``DEEP_SUPERVISION`` have them."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network '{name}'; choose one of: {', '.join(NETWORKS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {dropout}")
    if deep_supervision and name not in DEEP_SUPERVISION:
        raise ValueError(
            f"network '{name}' has no deep-supervision outputs; use one of: "
            + ", ".join(DEEP_SUPERVISION)
        )
    extra = {"deep_supervision": True} if deep_supervision else {}
    return NETWORKS[name](
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        channels=channels,
        dropout=dropout,
        **extra,
    )


__all__ = [
    "CLASSIFIERS_3D",
    "DEEP_SUPERVISION",
    "NETWORKS",
    "Classifier",
    "build_network",
    "haar_dwt",
    "reparameterize",
]
