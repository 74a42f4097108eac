"""What every defence receives and returns, so that all of them share one call shape."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from backdoor.train import TrainConfig


@dataclass
class DefenseContext:
    """Inputs of a defence: the suspect model, the defender's data, and budgets.

    `x_clean`/`y_clean` is the defender's clean set (standalone: the clean training set).
    `x_train`/`y_train` is the (possibly poisoned) training set the model was trained on,
    with `poison_idx` known only for scoring detection defences, never for deciding.
    `target_label` is the attack's target, which only BackdoorBench's Spectral reads (its config names it).
    """

    model: nn.Module
    x_clean: torch.Tensor
    y_clean: torch.Tensor
    train: TrainConfig
    evaluate: Optional[Callable[[nn.Module], dict]] = None
    x_train: Optional[torch.Tensor] = None
    y_train: Optional[torch.Tensor] = None
    poison_idx: Optional[torch.Tensor] = None
    num_classes: int = 10
    target_label: Optional[int] = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DefenseResult:
    """The defended model, its per-epoch history, and defence-specific facts (e.g. detection scores)."""

    model: nn.Module
    history: list[dict]
    info: dict[str, Any] = field(default_factory=dict)
