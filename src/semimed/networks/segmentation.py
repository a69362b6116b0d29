"""3D segmentation networks (MONAI): ``unet`` (the CPU default), ``vnet`` (DHC's backbone) and
``dynunet``; deep-supervision outputs for pyramid methods (URPC); the averaged pair of a
two-network method.

Every network maps (B, C_in, D, H, W) -> logits (B, num_classes, D, H, W). Built with
``deep_supervision=True`` (``unet`` and ``dynunet`` only) it returns, in training mode, a stacked
tensor (B, 1 + K, num_classes, D, H, W): the main output first, then K auxiliary outputs of
coarser decoder levels, each upsampled to the input size (MONAI ``DynUNet``'s convention); in
eval mode it returns the main output alone, so inference code never sees the difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import SkipConnection
from monai.networks.nets import DynUNet, UNet, VNet
from torch import Tensor, nn

from semimed.networks.shape import DataShape


def _check_3d(name: str, shape: DataShape) -> None:
    spatial_dims = shape.spatial_dims
    if spatial_dims != 3:
        raise ValueError(
            f"network '{name}' is a 3D segmentation network; got spatial_dims={spatial_dims}"
        )


class UNetDeepSupervision(nn.Module):
    """MONAI ``UNet`` plus a 1x1x1 convolution head on each inner decoder level.

    The heads read the outputs of the UNet's inner up-sampling layers (1/2, 1/4, ... of the
    input size) through forward hooks, so the UNet itself is unchanged and its weights load as
    usual (key prefix ``unet.``). This mirrors URPC's network (Luo et al., MICCAI 2021: a UNet
    with an auxiliary classifier per decoder scale). K = ``len(channels) - 2`` auxiliary outputs.
    """

    def __init__(self, unet: UNet, num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        self.unet = unet
        ups, block = [], unet.model
        # MONAI's UNet nests Sequential(down, SkipConnection(<inner>), up) per level.
        while isinstance(block, nn.Sequential) and isinstance(block[1], SkipConnection):
            ups.append(block[2])
            block = block[1].submodule
        self._captured: list[Tensor] = []
        for up in ups[1:]:
            up.register_forward_hook(self._capture)
        widths = [_out_channels(up) for up in ups[1:]]
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.heads = nn.ModuleList(conv(w, num_classes, kernel_size=1) for w in widths)

    def _capture(self, module: nn.Module, inputs, output: Tensor) -> None:
        if self.training:
            self._captured.append(output)

    def forward(self, x: Tensor) -> Tensor:
        self._captured = []
        main = self.unet(x)
        if not self.training:
            return main
        # Hooks fire innermost level first; report coarse levels after finer ones.
        feats, self._captured = self._captured[::-1], []
        pairs = zip(self.heads, feats, strict=True)
        aux = [upsample_linear(head(f), main.shape[2:]) for head, f in pairs]
        return torch.stack([main, *aux], dim=1)


def upsample_linear(x: Tensor, size) -> Tensor:
    """Bi-/trilinear resize of x (B, C, *spatial) to `size` (align_corners=False), as
    URPC's reference upsamples its auxiliary outputs (SSL4MIS: ``nn.Upsample(mode=
    'trilinear')``), computed as one matrix product per axis: linear interpolation along an
    axis of n values to N is a fixed (N, n) matrix (`interpolation_matrix`, PyTorch's own
    weights), and the trilinear weights are the product of the per-axis ones, so the values
    equal ``F.interpolate(mode="trilinear")``'s within float rounding. Its backward is a matrix
    product too, cheaper on a CPU than the backward of ``F.interpolate``."""
    if len(size) != x.dim() - 2:
        raise ValueError(f"upsample_linear: size {tuple(size)} for input shape {tuple(x.shape)}")
    for axis, n in enumerate(size, start=2):
        n_in, n = x.shape[axis], int(n)
        if n_in == n:
            continue
        m = interpolation_matrix(n_in, n, x.dtype, x.device)
        if axis == x.dim() - 1:
            x = x @ m.T
        else:  # (..., n_in, rest) -> (..., n, rest): the axes after `axis` stay in place
            rest = x.shape[axis + 1 :]
            flat = x.reshape(*x.shape[:axis], n_in, -1)
            x = (m @ flat).reshape(*x.shape[:axis], n, *rest)
    return x


def interpolation_matrix(n_in: int, n_out: int, dtype: torch.dtype, device) -> Tensor:
    """(n_out, n_in) weights of 1D linear interpolation (align_corners=False): row i holds
    the weights of output i, taken from `F.interpolate` applied to the identity."""
    eye = torch.eye(n_in, dtype=torch.float32, device=device).unsqueeze(1)
    weights = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)
    return weights.squeeze(1).T.to(dtype)


def output_layer(net: nn.Module) -> nn.Module:
    """The last convolution of ``net`` in module order: for every network here the layer that
    maps the top decoder features to logits (``unet``: a stride-2 transposed convolution;
    ``dynunet``, ``vnet``: a 1x1x1 convolution)."""
    convs = [m for m in net.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no convolution")
    return convs[-1]


def _out_channels(layer: nn.Module) -> int:
    return output_layer(layer).out_channels


def build_unet(
    shape: DataShape,
    *,
    channels: Sequence[int],
    dropout: float,
    deep_supervision: bool = False,
) -> nn.Module:
    """MONAI UNet (Ronneberger et al. 2015), 2D or 3D, without residual units (cheaper per
    step than `num_res_units=1` and than ``dynunet`` at the same widths).

    One stride-2 level per step between ``channels`` entries, so each spatial size of the input
    must be divisible by ``2 ** (len(channels) - 1)``; instance norm because 3D batches hold
    only a few crops. Output: logits (B, num_classes, *input_spatial); with
    ``deep_supervision`` see ``UNetDeepSupervision``.
    """
    spatial_dims, num_classes = shape.spatial_dims, shape.num_classes
    if spatial_dims not in (2, 3):
        raise ValueError(f"network 'unet' needs spatial_dims 2 or 3; got {spatial_dims}")
    if len(channels) < 2:
        raise ValueError(f"channels: 'unet' needs at least 2 levels, got {list(channels)}")
    if deep_supervision and len(channels) < 3:
        raise ValueError(
            f"channels: deep supervision needs at least 3 levels, got {list(channels)}"
        )
    net = UNet(
        spatial_dims=spatial_dims,
        in_channels=shape.in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=(2,) * (len(channels) - 1),
        num_res_units=0,
        dropout=dropout,
        norm="instance",
    )
    return UNetDeepSupervision(net, num_classes, spatial_dims) if deep_supervision else net


def build_vnet(
    shape: DataShape,
    *,
    channels: Sequence[int],
    dropout: float,
    deep_supervision: bool = False,
) -> nn.Module:
    """MONAI VNet (Milletari et al., 3DV 2016), the backbone of DHC and its baselines.

    Its widths are fixed by MONAI (16 to 256 channels, 4 stride-2 levels: input sizes must be
    divisible by 16), so ``channels`` is not used; ``dropout`` is its dropout probability in
    the deep levels (DHC trains with dropout on). A GPU network. No deep supervision.
    """
    _check_3d("vnet", shape)
    if deep_supervision:
        raise ValueError("network 'vnet' has no deep-supervision outputs; use unet or dynunet")
    p = float(dropout)
    return VNet(
        spatial_dims=3,
        in_channels=shape.in_channels,
        out_channels=shape.num_classes,
        dropout_prob_down=p,
        dropout_prob_up=(p, p),
    )


def build_dynunet(
    shape: DataShape,
    *,
    channels: Sequence[int],
    dropout: float,
    deep_supervision: bool = False,
) -> nn.Module:
    """MONAI DynUNet (the nnU-Net architecture, Isensee et al. 2021): two 3x3x3 convolutions per
    level with instance norm, one level per ``channels`` entry, the first at full resolution and
    each next one stride 2 (input sizes divisible by ``2 ** (len(channels) - 1)``). With
    ``deep_supervision`` it returns ``len(channels) - 2`` auxiliary outputs (MONAI's maximum).
    """
    _check_3d("dynunet", shape)
    levels = len(channels)
    if deep_supervision and levels < 3:
        raise ValueError(
            f"channels: deep supervision needs at least 3 levels, got {list(channels)}"
        )
    return DynUNet(
        spatial_dims=3,
        in_channels=shape.in_channels,
        out_channels=shape.num_classes,
        kernel_size=[3] * levels,
        strides=[1] + [2] * (levels - 1),
        upsample_kernel_size=[2] * (levels - 1),
        filters=list(channels),
        dropout=dropout if dropout > 0 else None,
        norm_name="instance",
        deep_supervision=deep_supervision,
        deep_supr_num=max(1, levels - 2),
    )


class PairAverage(nn.Module):
    """The inference model of a two-network method (CPS, DHC, ...): log of the mean of both
    networks' softmax, so ``argmax`` picks the class of the averaged probabilities. Holds no
    weights of its own (keys ``a.*`` and ``b.*``)."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: Tensor) -> Tensor:
        probs = 0.5 * (self.a(x).float().softmax(1) + self.b(x).float().softmax(1))
        return probs.clamp_min(1e-8).log()


__all__ = ["PairAverage", "UNetDeepSupervision", "build_dynunet", "build_unet", "build_vnet"]
