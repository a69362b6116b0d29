"""The loop's optional speed-ups of a method's networks: channels-last memory format and
`torch.compile` (`train.channels_last`, `train.compile`); neither changes a checkpoint."""

from __future__ import annotations

import torch

# torch.compile backend of `compile_networks` (tests use "eager": no C++ compiler needed)
COMPILE_BACKEND = "inductor"


def to_channels_last(method: torch.nn.Module, spatial_dims: int) -> None:
    """Every network `method` holds in channels-last memory format (`train.channels_last`):
    the 4D (2D networks) or 5D (3D) weights are restrided in place, the values unchanged;
    convolutions then run and return channels-last, as cuDNN's tensor-core kernels prefer.
    Checkpoints and model folders load either way (state dicts copy values)."""
    method.to(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)


def compile_networks(method: torch.nn.Module) -> None:
    """`torch.compile` each network a method holds (its direct sub-modules with parameters:
    student, teacher, second network, heads), in place: `Module.compile` keeps the
    parameter names, so checkpoints and model folders are the same as without it."""
    for child in method.children():
        if any(True for _ in child.parameters()):
            child.compile(backend=COMPILE_BACKEND)
