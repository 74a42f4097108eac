"""Attack registry: CLI name -> Attack class.

Train a backdoored model with any of them through `backdoor.attacks.training.train_backdoored`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

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


# Constructor arguments that name a trigger file (Blended's key image, LF's BackdoorBench pattern).
TRIGGER_FILE_PARAMS = ("key_image", "pattern_file")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def trigger_record(attack: Attack) -> dict[str, Any]:
    """Which trigger a run used: SHA-256 of each trigger file it was given (by parameter name) and of
    the trigger itself (params + every buffer and parameter: generated and built-in triggers count too)."""
    params = attack.params()
    files = {k: {"path": str(params[k]), "sha256": file_sha256(params[k])}
             for k in TRIGGER_FILE_PARAMS if isinstance(params.get(k), str) and Path(params[k]).is_file()}
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())  # BadNets: params only
    for name, t in sorted(attack.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return {"files": files, "state_sha256": h.hexdigest()}


__all__ = ["ATTACKS", "Attack", "TRIGGER_FILE_PARAMS", "file_sha256", "make_attack", "trigger_record"]
