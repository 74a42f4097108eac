"""The attack interface: an nn.Module whose `apply` maps clean images to triggered ones."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn


class Attack(nn.Module):
    """Triggers images in float [0,1], shape [B,3,H,W], on any device.

    Trigger state (key images, patterns, warp grids, generators) lives in buffers or
    submodules so that it travels with `.to(device)` and is saved in checkpoints.
    """

    name: ClassVar[str] = "attack"
    # Data-poisoning attacks bake their trigger into the uint8 training set; attacks
    # that poison on the fly (per batch) or train generators set this to True.
    trains_own_loop: ClassVar[bool] = False

    def __init__(self, target: int = 0):
        super().__init__()
        if target < 0:
            raise ValueError(f"target class must be >= 0, got {target}")
        self.target = target

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def params(self) -> dict[str, Any]:
        """JSON-able constructor arguments, enough (with the buffers) to rebuild the attack."""
        return {"target": self.target}
