"""BadNets (Gu et al. 2017) as BackdoorBench v1 runs it: a white square pasted into a corner.

BackdoorBench's `bottom_right_3by3_white.npy` is 255 at rows/cols 29-31 of a 32x32
image, flush with the bottom-right border; pixels under the patch are replaced.
"""
from __future__ import annotations

from typing import Any

import torch

from .base import Attack


class BadNets(Attack):
    """Replace a `size` x `size` patch, `margin` pixels from the bottom-right corner, by `value`."""

    name = "badnets"

    def __init__(self, target: int = 0, size: int = 3, margin: int = 0, value: float = 1.0):
        super().__init__(target)
        if size < 1 or margin < 0 or not 0.0 <= value <= 1.0:
            raise ValueError(f"invalid BadNets patch: size={size}, margin={margin}, value={value}")
        self.size, self.margin, self.value = size, margin, value

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        r0, c0 = h - self.margin - self.size, w - self.margin - self.size
        if r0 < 0 or c0 < 0:
            raise ValueError(f"BadNets patch of size {self.size} does not fit a {h}x{w} image")
        out = x.clone()
        out[..., r0 : r0 + self.size, c0 : c0 + self.size] = self.value
        return out

    def params(self) -> dict[str, Any]:
        return {**super().params(), "size": self.size, "margin": self.margin, "value": self.value}
