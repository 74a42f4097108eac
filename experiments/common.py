"""Paths, run set-up and result writing shared by the experiment scripts."""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from backdoor.attacks import Attack, make_attack
from backdoor.checkpoint import (CheckpointError, atomic_write_json, environment, load_checkpoint, load_state_into,
                                 split)
from backdoor.data import ImageData, load_dataset
from backdoor.metrics import make_evaluator
from backdoor.models import make_model
from backdoor.poison import poisoned_test_set
from backdoor.train import default_device

ARTIFACTS = Path(os.environ.get("ARTIFACTS", "artifacts"))


def run_dir(kind: str, profile: str, dataset: str, attack: str) -> Path:
    """artifacts/<kind>/<profile>/<dataset>/<attack>, kind in checkpoints|results."""
    return ARTIFACTS / kind / profile / dataset / attack


def setup(argv_desc: str, config: dict[str, Any]) -> None:
    """Log to stderr and print the resolved config, sorted, before any work."""
    logging.basicConfig(level=os.environ.get("LOGLEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s")
    print(f"== {argv_desc}")
    for k in sorted(config):
        print(f"  {k}: {config[k]}")
    sys.stdout.flush()


def jsonable(obj: Any) -> Any:
    """Dataclasses and tuples to plain JSON types."""
    if is_dataclass(obj):
        return jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Atomically write a results JSON with the checkpoint sidecar's provenance block (`env`) and Slurm job id."""
    result = {**result, "env": environment()}
    if os.environ.get("SLURM_JOB_ID"):
        result = {**result, "slurm_job_id": os.environ["SLURM_JOB_ID"]}
    atomic_write_json(path, jsonable(result))


def read_json(path: Path | str) -> dict[str, Any]:
    """Read a results JSON, with a one-line error naming the Make target when missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the make target that writes it")
    return json.loads(path.read_text())


def load_backdoored(path: Path, device: torch.device) -> tuple[nn.Module, Attack, dict[str, Any]]:
    """Rebuild the backdoored model and its attack from a checkpoint written by `standalone train`."""
    tensors, meta = load_checkpoint(path)
    arch = meta["arch"]
    model = make_model(arch["name"], arch["num_classes"], arch["width"], arch.get("dataset"))
    load_state_into(model, split(tensors, "model"))
    attack = make_attack(meta["attack"]["name"], **meta["attack"]["params"])
    load_state_into(attack, split(tensors, "attack"), what="attack")
    return model.to(device), attack.to(device), meta


def evaluator_for(data: ImageData, attack: Attack, device: torch.device):
    """CA/ASR/RA evaluator on the clean test set and its triggered non-target copy, device-resident."""
    x_bd, y_bd = poisoned_test_set(data.x_test, data.y_test, attack)
    return make_evaluator(data.x_test.to(device), data.y_test, x_bd.to(device), y_bd, attack.target)


def resolve_device(name: str | None) -> torch.device:
    """`--device` value or the default (CUDA if present)."""
    return torch.device(name) if name else default_device()


def load_data(name: str) -> ImageData:
    """Load a dataset by registry name (cached uint8 tensors)."""
    return load_dataset(name)


def run_main(step: Callable[[Any], None], args: Any) -> None:
    """Run a step; user errors (bad names, missing files, bad checkpoints) end in one line, exit 2."""
    try:
        step(args)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        sys.exit(f"error: {e}")
