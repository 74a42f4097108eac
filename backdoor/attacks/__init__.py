"""Attack registry: CLI name -> Attack class."""
from __future__ import annotations

from typing import Any

from .badnets import BadNets
from .base import Attack
from .blended import Blended

ATTACKS: dict[str, type[Attack]] = {
    "badnets": BadNets,
    "blended": Blended,
}


def make_attack(name: str, **params: Any) -> Attack:
    """Build a registered attack; unknown names fail with the list of valid ones."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name](**params)


__all__ = ["ATTACKS", "Attack", "make_attack"]
