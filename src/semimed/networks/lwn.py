"""LWN: the lightweight echo network of the TMED-2 view/AS paper (Haar wavelets, RepMixer
blocks), 2D only, and `reparameterize`, which folds its training-time branches into single convs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

from semimed.networks.classifiers import Classifier, check_dims
from semimed.networks.shape import DataShape

# --- LWN: lightweight echo network (TMED-2 view/AS paper) -----------------------------------

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
LWN_BLOCKS = (2, 2, 6, 2)  # blocks per stage, as in the TMED-2 paper's LWN


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


def build_lwn(shape: DataShape, *, channels: Sequence[int], dropout: float) -> Classifier:
    """LWN, the lightweight network of the TMED-2 view/AS paper: 4 stages of widths
    ``channels`` (paper: 24, 48, 96, 192) with 2, 2, 6, 2 blocks; each stage starts with
    ``HaarDown`` (so 48x48 ends at 3x3), then ``LWNBlock``s; global average pool, dropout,
    linear head.

    There is no stem: stage 1 downsamples the image itself. Blocks per stage are fixed, so
    ``channels`` must list exactly 4 widths. Call ``reparameterize(model)`` before inference to
    fold every branch and BatchNorm into plain convs. Backbone output: (B, channels[-1]).
    """
    check_dims("lwn", shape)
    if len(channels) != len(LWN_BLOCKS) or min(channels) < 1:
        raise ValueError(
            f"channels: 'lwn' needs 4 positive stage widths (blocks fixed at 2, 2, 6, 2), "
            f"got {list(channels)}"
        )
    layers: list[nn.Module] = []
    prev = shape.in_channels
    for width, blocks in zip(channels, LWN_BLOCKS, strict=True):
        layers += [HaarDown(prev, width)] + [LWNBlock(width) for _ in range(blocks)]
        prev = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout)]
    return Classifier(nn.Sequential(*layers), nn.Linear(prev, shape.num_classes))


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
