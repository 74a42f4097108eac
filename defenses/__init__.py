"""Defence registry: CLI name -> callable(DefenseContext) -> DefenseResult."""
from __future__ import annotations

from typing import Callable

from .base import DefenseContext, DefenseResult
from .finetune import SFTConfig, finetune, super_finetune

DEFENSES: dict[str, Callable[[DefenseContext], DefenseResult]] = {
    "ft": finetune,
    "sft": super_finetune,
}


def get_defense(name: str) -> Callable[[DefenseContext], DefenseResult]:
    """Look up a defence; unknown names fail with the list of valid ones."""
    if name not in DEFENSES:
        raise ValueError(f"unknown defense {name!r}; choose one of: {', '.join(sorted(DEFENSES))}")
    return DEFENSES[name]


__all__ = ["DEFENSES", "DefenseContext", "DefenseResult", "SFTConfig", "get_defense"]
