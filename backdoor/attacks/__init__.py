"""Attack registry: CLI name -> Attack class.

Train a backdoored model with any of them through `backdoor.attacks.training.train_backdoored`.
"""
from __future__ import annotations

from typing import Any

from .badnets import BadNets
from .base import Attack
from .blended import Blended
from .inputaware import InputAware
from .lf import LF
from .wanet import WaNet

ATTACKS: dict[str, type[Attack]] = {
    "badnets": BadNets,
    "blended": Blended,
    "lf": LF,
    "inputaware": InputAware,
    "wanet": WaNet,
}


def make_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack; unknown names fail with the list of valid ones."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](**params)


__all__ = ["ATTACKS", "Attack", "make_attack"]
