"""Run set-up and result writing shared by the experiment scripts (where files go: experiments/paths.py)."""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.nn as nn

from backdoor.attacks import ATTACKS, Attack, make_attack
from backdoor.checkpoint import (CheckpointError, atomic_write_json, checkpoints_read, environment, load_checkpoint,
                                 load_state_into, positive, require, sidecar_path, split, split_all)
from backdoor import data as _data
from backdoor.data import ImageData, check_data_dir, load_dataset
from backdoor.errors import USER_ERROR, UserExit
from backdoor.metrics import make_evaluator
from backdoor.models import MODELS, make_model
from backdoor.poison import poisoned_test_set
from backdoor.train import default_device

if TYPE_CHECKING:  # experiments.profiles imports this module
    from experiments.profiles import Profile



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
    result = {**result, "checkpoints_read": checkpoints_read(), "env": environment()}
    if os.environ.get("SLURM_JOB_ID"):
        result = {**result, "slurm_job_id": os.environ["SLURM_JOB_ID"]}
    atomic_write_json(path, jsonable(result))


def read_json(path: Path | str) -> dict[str, Any]:
    """Read a results JSON, with a one-line error naming the Make target when missing or the file when invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the make target that writes it")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and run the make target that writes it") \
            from None


def check_backdoored_meta(meta: dict[str, Any], source: Path | str) -> None:
    """Schema of a backdoored checkpoint's sidecar: one CheckpointError naming the file and the first bad field."""
    require(meta, source, "arch", dict, want="a JSON object")
    require(meta, source, "arch.name", str, lambda v: v in MODELS, f"one of: {', '.join(sorted(MODELS))}")
    classes = require(meta, source, "arch.num_classes", int, positive, "a positive integer")
    require(meta, source, "arch.width", int, positive, "a positive integer")
    require(meta, source, "arch.dataset", (str, type(None)), default=None)
    require(meta, source, "attack", dict, want="a JSON object")
    require(meta, source, "attack.name", str, lambda v: v in ATTACKS, f"one of: {', '.join(sorted(ATTACKS))}")
    require(meta, source, "attack.params", dict, want="a JSON object")
    require(meta, source, "attack.params.target", int, lambda v: 0 <= v < classes,
            f"a class index in [0, {classes})")


def rebuild_attack(name: str, params: dict[str, Any], state: dict[str, torch.Tensor], source: Path | str) -> Attack:
    """The attack from its params and saved state; state the constructor accepts by name (Blended's `key`)
    is passed to it, so it need not re-read a source file that may have moved since."""
    accepted = inspect.signature(ATTACKS[name].__init__).parameters
    try:
        attack = make_attack(name, **params, **{k: v for k, v in state.items() if k in accepted and k not in params})
    except TypeError as e:
        raise CheckpointError(f"{sidecar_path(source)}: field attack.params does not fit attack {name!r} ({e})") \
            from None
    load_state_into(attack, state, what="attack")
    return attack


def build_model(arch: dict[str, Any]) -> nn.Module:
    """An untrained model from a checkpoint's `arch` record (name, num_classes, width, dataset)."""
    return make_model(arch["name"], arch["num_classes"], arch["width"], arch.get("dataset"))


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """(model, sidecar meta) of a checkpoint holding one model under `model.` (the clean model)."""
    tensors, meta = load_checkpoint(path)
    model = build_model(meta["arch"])
    load_state_into(model, split(tensors, "model"))
    return model.to(device), meta


def check_provenance(meta: dict[str, Any], source: Path | str, prof: Profile) -> None:
    """Refuse a checkpoint written under another profile, overrides or seed than the step runs (e.g. copied in)."""
    want = {"profile": prof.name, "overrides": jsonable(dict(prof.overrides)), "seed": prof.seed}
    for key, value in want.items():
        if key in meta and meta[key] != value or key == "profile" and key not in meta:
            raise CheckpointError(f"{source}: field {key} is {meta.get(key)!r}, this step runs {value!r}: a checkpoint "
                                  "from another run; delete it (and its .safetensors) and rerun make")


def load_backdoored(path: Path, device: torch.device, prof: Optional[Profile] = None
                    ) -> tuple[nn.Module, Attack, dict[str, Any]]:
    """Rebuild the backdoored model and its attack from a checkpoint written by `standalone train` (with `prof`:
    refused unless that profile, its overrides and seed wrote it)."""
    tensors, meta = load_checkpoint(path)
    check_backdoored_meta(meta, sidecar_path(path))
    if prof is not None:
        check_provenance(meta, sidecar_path(path), prof)
    parts = split_all(tensors, ("model", "attack"), path)
    model = build_model(meta["arch"])
    load_state_into(model, parts["model"])
    attack = rebuild_attack(meta["attack"]["name"], meta["attack"]["params"], parts["attack"], path)
    return model.to(device), attack.to(device), meta


def evaluator_for(data: ImageData, attack: Attack, device: torch.device, *, bf16: bool):
    """CA/ASR/RA evaluator on the clean test set and its triggered non-target copy, device-resident."""
    x_bd, y_bd = poisoned_test_set(data.x_test, data.y_test, attack)
    return make_evaluator(data.x_test.to(device), data.y_test, x_bd.to(device), y_bd, attack.target, bf16=bf16)


def resolve_device(name: str | None) -> torch.device:
    """`--device` value or the default (CUDA if present); ValueError if it is no device or not present here."""
    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA GPU is visible here; use --device cpu (or leave it out)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: only {count} GPU(s) visible (cuda:0..cuda:{count - 1})")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def eval_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of min(n, len) images, as equal per class as the class sizes allow; each class's
    images are a seeded draw, so the subset is the same in every step that evaluates."""
    if n < 1:
        raise ValueError(f"eval_images must be >= 1 (or None for the whole test set), got {n}")
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    if n >= len(labels):
        return torch.arange(len(labels))
    pools = [(labels == c).nonzero().flatten() for c in labels.unique().tolist()]
    gen = torch.Generator().manual_seed(seed)
    pools = [p[torch.randperm(len(p), generator=gen)] for p in pools]
    # Water-filling: the smallest classes first, each taking at most an equal share of what is left.
    quota, left = [0] * len(pools), n
    for j, i in enumerate(sorted(range(len(pools)), key=lambda i: len(pools[i]))):
        quota[i] = min(len(pools[i]), left // (len(pools) - j))
        left -= quota[i]
    return torch.cat([p[:q] for p, q in zip(pools, quota)]).sort().values


def eval_subset(data: ImageData, n: Optional[int], seed: int) -> ImageData:
    """`data` with its test split cut to `eval_indices` (n None: unchanged); the training split is untouched."""
    if n is None:
        return data
    idx = eval_indices(data.y_test, n, seed)
    return replace(data, x_test=data.x_test[idx], y_test=data.y_test[idx])


def load_data(name: str, prof: Optional[Profile] = None) -> ImageData:
    """Load a dataset by registry name (cached uint8 tensors), after checking DATA_DIR; with `prof`, its
    test split is the profile's evaluation subset (`Profile.eval_images`), without it the whole split."""
    check_data_dir()
    data = load_dataset(name)
    return data if prof is None else eval_subset(data, prof.eval_images, prof.seed)


def check_writable(dirs: list[Path], need_bytes: int = 0, where: str = "ARTIFACTS/A") -> None:
    """Create `dirs` and write a probe file in each, and check `need_bytes` of free space, before any long
    work; ValueError with one line naming the directory (and `where`, the setting that moves it)."""
    for d in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-test.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ValueError(f"cannot write to {d} ({e.strerror or e}); make it writable or set {where} "
                             "to a writable directory") from None
        free = shutil.disk_usage(d).free
        if free < need_bytes:
            raise ValueError(f"{d} has {free / 2**20:.0f} MiB free, this step writes about "
                             f"{need_bytes / 2**20:.0f} MiB; free some space or set {where} elsewhere")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _one_line(e: BaseException) -> str:
    """An OSError with a file name as 'reason: file', anything else as its message."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def run_main(step: Callable[[Any], None], args: Any) -> None:
    """Run a step; user errors (bad names, numbers, files, devices, bad checkpoints, failed writes)
    end in one line on stderr and exit status USER_ERROR (2)."""
    try:
        step(args)
    except (ValueError, OSError, CheckpointError) as e:
        message = f"error: {_one_line(e)}"
        print(message, file=sys.stderr)
        raise UserExit(message) from None
