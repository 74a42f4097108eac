"""Defence registry: CLI name -> callable(DefenseContext) -> DefenseResult."""
from __future__ import annotations

from typing import Callable

from .abl import ABLConfig, abl
from .ac import ACConfig, activation_clustering
from .base import DefenseContext, DefenseResult
from .common import Budget
from .finetune import PHASE1_MIN_STEPS, SFTConfig, choose_lr_max1, finetune, super_finetune
from .fp import FPConfig, fine_pruning
from .nad import NADConfig, nad
from .nc import NCConfig, neural_cleanse
from .spectral import SpectralConfig, spectral

DEFENSES: dict[str, Callable[[DefenseContext], DefenseResult]] = {
    "ft": finetune,
    "sft": super_finetune,
    "abl": abl,
    "ac": activation_clustering,
    "fp": fine_pruning,
    "nad": nad,
    "nc": neural_cleanse,
    "spectral": spectral,
}


def get_defense(name: str) -> Callable[[DefenseContext], DefenseResult]:
    """Look up a defence; unknown names fail with the list of valid ones."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name]


__all__ = ["DEFENSES", "ABLConfig", "ACConfig", "Budget", "DefenseContext", "DefenseResult", "FPConfig",
           "NADConfig", "NCConfig", "PHASE1_MIN_STEPS", "SFTConfig", "SpectralConfig", "get_defense"]
