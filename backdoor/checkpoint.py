"""Safe model files: safetensors weights + a JSON sidecar, written atomically, never unpickled.

A downloaded checkpoint is exactly how a backdoor arrives, so loading refuses anything
that is not safetensors, checks the file's SHA-256 against the sidecar, checks that the
sidecar says what the weights file itself records (its metadata is inside the hashed
bytes), and checks the architecture and dtypes before copying a single tensor.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import struct
import subprocess
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load, save

SUFFIX = ".safetensors"
# Provenance and wall-clock fields: not signed, since they differ between two runs of one seeded
# step (whose weights, and so whose SHA-256, are identical) and change nothing a later step computes.
UNSIGNED = frozenset({"sha256", "env", "slurm_job_id"})
VOLATILE_SUFFIXES = ("seconds", "device_hours")
META_KEY = "meta"  # key of the signed metadata inside the safetensors header


class CheckpointError(ValueError):
    """A checkpoint that is missing, unsafe, tampered with, or for another architecture."""


def sidecar_path(path: Path | str) -> Path:
    """The JSON metadata file that belongs to a checkpoint."""
    return Path(path).with_suffix(".json")


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded beside every result."""
    sha, dirty = _git("rev-parse", "--short", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"torch": torch.__version__, "python": platform.python_version(), "git": sha or None,
            "git_dirty": None if sha is None else bool(dirty), "device": device, "host": platform.node(),
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _git(*args: str) -> Optional[str]:
    """`git args` output in the current directory, or None outside a repository (or without git)."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's live process
        return True
    return True


def remove_stale_tmp(path: Path) -> list[Path]:
    """Remove the hidden `.<name>.<pid>.tmp` siblings of `path` left by writers that are gone (killed mid-write)."""
    gone = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2: -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                gone.append(tmp)
    return gone


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename, so readers never see half a file (stale siblings removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        # On a read-only or full filesystem the unlink fails too: keep the write's error, not this one.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Atomic JSON write (indent 1, keys kept in order)."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=1, default=str) + "\n").encode())


def signed_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The part of `meta` the weights file records: all but provenance (UNSIGNED) and wall-clock times."""
    def strip(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if not str(k).endswith(VOLATILE_SUFFIXES)}
        return [strip(v) for v in obj] if isinstance(obj, list) else obj
    return strip({k: v for k, v in meta.items() if k not in UNSIGNED})


def _canonical(obj: Any) -> str:
    # Sorted keys, NaN written as NaN: two equal metas give one string (a dict compare fails on NaN).
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def save_checkpoint(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Save tensors as safetensors (with `meta` signed in its header) plus `meta`, env and SHA-256 in the sidecar."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"checkpoint names must end in {SUFFIX}, got {path.name}")
    meta = json.loads(json.dumps(meta, default=str))  # the JSON types the sidecar will read back
    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                metadata={META_KEY: _canonical(signed_meta(meta))})
    meta = {**meta, "sha256": hashlib.sha256(blob).hexdigest(), "env": environment()}
    # Weights are renamed into place last: their presence means the pair is complete.
    atomic_write_json(sidecar_path(path), meta)
    try:
        atomic_write_bytes(path, blob)
    except OSError:  # e.g. a full disk: no sidecar without its weights
        with contextlib.suppress(OSError):
            sidecar_path(path).unlink()
        raise
    return path


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """The sidecar of checkpoint `path` as a dict; CheckpointError naming the file if it is not a JSON object."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{side} is not valid JSON ({e}); delete it and re-run the step that writes it") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{side}: the sidecar must be a JSON object, got a JSON {type(meta).__name__}")
    return meta


def _header_meta(blob: bytes) -> Optional[str]:
    """The signed metadata string in a safetensors header (None if the file has none)."""
    n = struct.unpack("<Q", blob[:8])[0]
    return (json.loads(blob[8 : 8 + n]).get("__metadata__") or {}).get(META_KEY)


def first_difference(a: Any, b: Any, where: str = "") -> Optional[str]:
    """Dotted name of the first field where two JSON values differ (None if they are equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = first_difference(a.get(k, ...), b.get(k, ...), f"{where}.{k}" if where else str(k))
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := first_difference(x, y, f"{where}[{i}]"))), None)
    return None if _canonical(a) == _canonical(b) else (where or "(whole sidecar)")


def load_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return (tensors, meta) after checking format, sidecar, SHA-256 and signed metadata; raises CheckpointError."""
    path = Path(path)
    if path.suffix != SUFFIX:
        raise CheckpointError(f"refusing {path}: only {SUFFIX} files are loaded (pickle files can run code)")
    if not path.is_file() or not sidecar_path(path).is_file():
        raise CheckpointError(f"checkpoint {path} or its sidecar {sidecar_path(path).name} is missing; "
                              "re-run the step that writes it")
    blob = path.read_bytes()
    meta = read_sidecar(path)
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{path} does not match the SHA-256 in its sidecar: truncated or tampered; "
                              "delete it and re-run the step that writes it")
    try:
        tensors, signed = load(blob), _header_meta(blob)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    if signed is None:
        raise CheckpointError(f"{path} records no signed metadata (written by an older version); "
                              "delete it and re-run the step that writes it")
    field = first_difference(signed_meta(meta), json.loads(signed))
    if field:
        raise CheckpointError(f"{sidecar_path(path)}: field {field} differs from the value recorded in the "
                              "weights file: sidecar edited or tampered; delete both and re-run the step")
    _READ[str(path)] = meta["sha256"]
    return tensors, meta


# Every checkpoint this process has loaded (path -> verified SHA-256): each result names what it was computed from.
_READ: dict[str, str] = {}


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoints_read() -> dict[str, str]:
    """{path: SHA-256} of every checkpoint `load_checkpoint` has verified in this process, in load order."""
    return dict(_READ)


def positive(v: Any) -> bool:
    """A predicate for `require`: the value is > 0."""
    return v > 0


def require(meta: dict[str, Any], source: Path | str, field: str, kind: type | tuple[type, ...],
            ok: Callable[[Any], bool] = lambda v: True, want: str = "", default: Any = ...) -> Any:
    """The value of dotted `field` in `meta`, or CheckpointError naming `source` and the field."""
    value: Any = meta
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            if default is not ...:
                return default
            raise CheckpointError(f"{source}: required field {field} is missing")
        value = value[part]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds) or not ok(value):
        names = want or " or ".join(k.__name__ for k in kinds)
        raise CheckpointError(f"{source}: field {field} must be {names}, got {value!r}")
    return value


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


def split_all(tensors: dict[str, torch.Tensor], prefixes: tuple[str, ...],
              source: Path | str = "checkpoint") -> dict[str, dict[str, torch.Tensor]]:
    """{prefix: split(tensors, prefix)}, refusing tensors under any other prefix (they would be ignored)."""
    stray = sorted(k for k in tensors if not k.startswith(tuple(p + "." for p in prefixes)))
    if stray:
        raise CheckpointError(f"{source} holds tensors outside {', '.join(p + '.' for p in prefixes)}: "
                              f"{stray[:3]}; it was not written by this code")
    return {p: split(tensors, p) for p in prefixes}


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], what: str = "model") -> None:
    """Copy `state` into `module`, failing clearly on a different architecture, class count or dtype kind."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or bad:
        detail = "; ".join(f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad[:3])
        raise CheckpointError(f"{what} checkpoint does not fit this architecture "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}{'; ' + detail if detail else ''})")
    # load_state_dict would cast an int64 tensor into a float weight (and back) without a word.
    kinds = [k for k in own if own[k].is_floating_point() != state[k].is_floating_point()
             or (own[k].dtype == torch.bool) != (state[k].dtype == torch.bool)]
    if kinds:
        raise CheckpointError(f"{what} checkpoint has the wrong dtype kind for " + "; ".join(
            f"{k}: file {state[k].dtype} vs model {own[k].dtype}" for k in kinds[:3]))
    module.load_state_dict(state)
