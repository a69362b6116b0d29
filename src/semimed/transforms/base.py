"""The base of the strong-view operations (`_BatchRandOpd`) and the seed bound `MAX_SEED`.

An operation changes each image of a batch `(B, C, H, W[, D])` with its own random
parameters: it draws them (`randomize`, from the transform's own `numpy.random.RandomState`
`self.R`) apart from applying them (`apply`). `transforms.ops` holds the operations and
`BatchRandSomeOfd` (`transforms.dictionary`) gives each image a random subset of them; both
import this module, which imports neither.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable

MAX_SEED = 2**31 - 1


class _BatchRandOpd(Randomizable, MapTransform):
    """Base of the strong-view operations: each image of a batch (B, C, H, W[, D]) is changed
    with probability `prob`, with its own parameters (shared by its channels).

    Subclasses draw parameters for every image (`randomize`: arrays whose first axis is B,
    drawn whether or not the image is selected, so the draws do not depend on the selection)
    and apply them deterministically (`apply`, on the helpers that `perturb` uses too).
    `transform(x, on)` lets `BatchRandSomeOfd` choose the images instead of `prob`.
    """

    def __init__(self, keys: Sequence[Hashable], prob: float):
        MapTransform.__init__(self, keys)
        self.prob = prob

    def randomize(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: dict, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def transform(self, x: torch.Tensor, on: np.ndarray | None = None) -> torch.Tensor:
        """Change the images of x where `on` (B,) is true (default: each with `prob`)."""
        if on is None:
            on = self.R.uniform(size=x.shape[0]) < self.prob
        params = self.randomize(x)
        gen = torch.Generator(device=x.device).manual_seed(int(self.R.randint(MAX_SEED)))
        idx = np.flatnonzero(on)
        if idx.size == 0:
            return x
        if idx.size == len(on):
            return self.apply(x.float(), params, gen).to(x.dtype)
        sel = torch.as_tensor(idx, device=x.device)
        out = x.clone()
        sub = {k: v[idx] for k, v in params.items()}
        out[sel] = self.apply(x[sel].float(), sub, gen).to(x.dtype)
        return out

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d
