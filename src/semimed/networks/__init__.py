"""Networks, by name: ``build_network("cnn" | "lwn" | "resnet18" | "densenet121" | "unet" |
"vnet" | "dynunet", shape, channels=..., dropout=...)``; classifiers in ``classifiers``, LWN in
``lwn``, the segmentation ones in ``segmentation``; the data's side of every builder is a
`DataShape` (``shape``).

Classification nets map images (B, C_in, H, W) or volumes (B, C_in, D, H, W) (``spatial_dims``
2 or 3; any ``in_channels`` >= 1: grayscale, RGB) -> logits (B, num_classes) and expose
``.backbone`` (x -> features (B, F)) and ``.head`` (``nn.Linear(F, num_classes)``), so methods
that need features (prototypes, projections, linear probes) can take them apart. ``cnn``,
``resnet18`` and ``densenet121`` take both; ``lwn`` (Haar wavelets, echo frames) is 2D only.
Segmentation nets map (B, C_in, D, H, W) -> logits (B, num_classes, D, H, W) of the same
spatial size as the input.

Every builder takes a `DataShape` and the widths (``channels``) and ``dropout`` of
``<task>.network``, so ``params.yaml`` can switch networks by name; a builder ignores the
arguments that do not apply to it (stated in its docstring); the segmentation builders also
take ``deep_supervision``.
``reparameterize(model)`` folds the training-time branches of ``lwn`` into single convs for
inference (a no-op on the other networks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from semimed.networks.classifiers import (
    CLASSIFIERS_3D,
    Classifier,
    build_cnn,
    build_densenet121,
    build_resnet18,
)
from semimed.networks.lwn import build_lwn, haar_dwt, reparameterize
from semimed.networks.segmentation import build_dynunet, build_unet, build_vnet, output_layer
from semimed.networks.shape import DataShape

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
    shape: DataShape,
    *,
    channels: Sequence[int],
    dropout: float,
    deep_supervision: bool = False,
) -> nn.Module:
    """The network registered as ``name`` in ``NETWORKS`` for data of `shape`, freshly
    initialised; see each builder for its input and output.

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
    return NETWORKS[name](shape, channels=channels, dropout=dropout, **extra)


__all__ = [
    "CLASSIFIERS_3D",
    "DEEP_SUPERVISION",
    "NETWORKS",
    "Classifier",
    "DataShape",
    "build_network",
    "haar_dwt",
    "output_layer",
    "reparameterize",
]
