"""Shared by the method tests: a batch that records its reads (both tasks); for segmentation a
tiny 3D UNet, a fixed 16^3 batch and helpers."""

import torch

from semimed.networks import DataShape, build_network

NUM_CLASSES = 3


def tiny_unet(deep_supervision=False, dropout=0.0):
    return build_network(
        "unet",
        DataShape.single(3, 1, NUM_CLASSES),
        channels=(4, 8, 16),
        dropout=dropout,
        deep_supervision=deep_supervision,
    )


class RecordingBatch(dict):
    """A batch that remembers which keys a method read."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x_lb = torch.rand(2, 1, 16, 16, 16, generator=g)
    # Labels tied to intensity so the fixed batch is learnable.
    y_lb = (x_lb * NUM_CLASSES).long().clamp(max=NUM_CLASSES - 1)
    x_ulb_w = torch.rand(2, 1, 16, 16, 16, generator=g)
    return RecordingBatch(
        x_lb=x_lb,
        y_lb=y_lb,
        x_ulb_w=x_ulb_w,
        # Aligned with the weak view but with another intensity: tells the two views apart.
        x_ulb_s=(0.5 * x_ulb_w + 0.4).clamp(0, 1),
    )


def make(cls, total_steps=10, **params):
    torch.manual_seed(0)
    return cls(tiny_unet, cls.Params(**params), num_classes=NUM_CLASSES, total_steps=total_steps)


def trainable(method):
    return [p for p in method.parameters() if p.requires_grad]


def loss_drops(method, batch, steps):
    """True if ``steps`` Adam steps on one fixed batch lower the loss (measured at step 0)."""
    opt = torch.optim.Adam(trainable(method), lr=1e-2)
    before = method.training_step(batch, 0)["loss"].item()
    for step in range(steps):
        opt.zero_grad()
        method.training_step(batch, step)["loss"].backward()
        opt.step()
        method.on_step_end(step)
    return method.training_step(batch, 0)["loss"].item() < before


def fits_fixed_batch(method, steps=8):
    """``loss_drops`` on the fixed 16^3 segmentation batch."""
    return loss_drops(method, make_batch(), steps)
