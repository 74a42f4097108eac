"""Safe model files: safetensors weights + a JSON sidecar, written atomically, never unpickled.

A downloaded checkpoint is exactly how a backdoor arrives, so loading refuses anything
that is not safetensors, checks the weights' SHA-256 against the sidecar, and checks the
architecture before copying a single tensor.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load, save

SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unsafe, tampered with, or for another architecture."""


def sidecar_path(path: Path | str) -> Path:
    """The JSON metadata file that belongs to a checkpoint."""
    return Path(path).with_suffix(".json")


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded beside every result."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "python": platform.python_version(), "git": sha, "device": device,
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Atomic JSON write (indent 1, keys kept in order)."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=1, default=str) + "\n").encode())


def save_checkpoint(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save tensors as safetensors plus `meta` (with env and SHA-256) in the sidecar; sidecar first."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"checkpoint names must end in {SUFFIX}, got {path.name}")
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    meta = {**meta, "sha256": hashlib.sha256(blob).hexdigest(), "env": environment()}
    # Weights are renamed into place last: their presence means the pair is complete.
    atomic_write_json(sidecar_path(path), meta)
    atomic_write_bytes(path, blob)
    return path


def load_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (tensors, meta) after checking format, sidecar and SHA-256; raises CheckpointError."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"refusing {path}: only {SUFFIX} files are loaded (pickle files can run code)")
    if not path.is_file() or not sidecar_path(path).is_file():
        raise CheckpointError(f"checkpoint {path} or its sidecar {sidecar_path(path).name} is missing; "
                              "re-run the step that writes it")
    blob = path.read_bytes()
    meta = json.loads(sidecar_path(path).read_text())
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{path} does not match the SHA-256 in its sidecar: truncated or tampered; "
                              "delete it and re-run the step that writes it")
    try:
        return load(blob), meta
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None


def save_model(path: Path | str, model: nn.Module, meta: dict[str, Any],
               attack: Optional[nn.Module] = None) -> Path:
    """Save a model (and optionally the attack that backdoored it, under `attack.`)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if attack is not None:
        tensors.update({f"attack.{k}": v for k, v in attack.state_dict().items()})
    return save_checkpoint(path, tensors, meta)


def split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The sub-dict under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], what: str = "model") -> None:
    """Copy `state` into `module`, failing clearly on a different architecture or class count."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        detail = "; ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad[:3])
        raise CheckpointError(f"{what} checkpoint does not fit this architecture "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}{'; ' + detail if detail else ''})")
    module.load_state_dict(state)
