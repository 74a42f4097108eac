"""The attack interface: an nn.Module whose `apply` maps clean images to triggered ones.

Every hook `train_backdoored` (backdoor/attacks/training.py) calls is declared here with its default,
so an attack states what it does instead of being probed for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional

import torch
import torch.nn as nn

from ..models import DEFAULT_ARCH

# How an attack's poison reaches training (Attack.poisoning):
#   baked      triggered copies of round(ratio * N) training images, saved as uint8 (BadNets, Blended, LF)
#   per_batch  drawn inside each batch by `fit`'s batch hook (WaNet, InputAware)
#   encoder    poisons a self-supervised encoder, not a classifier (BadEncoder: train_badencoder)
POISONING = ("baked", "per_batch", "encoder")


@dataclass(frozen=True)
class PerBatchTraining:
    """What a per-batch attack hands `fit` (config, batch hook, evaluator) and calls after it (`finish`)."""

    cfg: Any  # TrainConfig of the classifier's run
    batch_hook: Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
    evaluate: Optional[Callable[[nn.Module], dict]]
    finish: Callable[[], dict]  # -> poison info: the materialised poisoned set and the counts drawn


class Attack(nn.Module):
    """Triggers images in float [0,1], shape [B,3,H,W], on any device.

    Trigger state (key images, patterns, warp grids, generators) lives in buffers or
    submodules so that it travels with `.to(device)` and is saved in checkpoints.
    """

    name: ClassVar[str] = "attack"
    poisoning: ClassVar[str] = "baked"  # one of POISONING
    # True while the trigger itself trains with the model (InputAware's generator): every evaluation
    # must rebuild the triggered test set.
    learns_trigger: ClassVar[bool] = False

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

    def prepare_trigger(self, data: Any, cfg: Any, width: int, seed: int, arch: str = DEFAULT_ARCH,
                        cache_dir: Optional[Path] = None) -> None:
        """Build the trigger before the training set is poisoned (LF trains an `arch` model for it, cached in
        `cache_dir` if given); default: none."""

    def cross_count(self, nb: int, batch: int) -> int:
        """Images beside `nb` poisoned ones in a batch that get a non-target (cross/noise) trigger; default 0."""
        return 0

    def per_batch_training(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, cfg: Any,
                           ratio: float, seed: int, evaluate: Optional[Callable] = None) -> PerBatchTraining:
        """For `poisoning == "per_batch"`: set up the stages before `fit` and return what `fit` needs."""
        raise NotImplementedError(f"attack {self.name!r} poisons {self.poisoning!r}, not per batch")
