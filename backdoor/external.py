"""Models and data from elsewhere: foreign model files read without running their code, image folders.

Model files: our safetensors checkpoints (sidecar + SHA-256 checked), plain safetensors state
dicts, plain PyTorch state dicts (.pt/.pth/.bin) and BackdoorBench's `attack_result.pt`, all
through `torch.load(weights_only=True)` at most, with numpy's array types as the only extra
globals (BackdoorBench stores its poison indices as numpy arrays). Anything else in a pickle,
such as a whole pickled module or a `__reduce__` payload, is refused, never executed.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import (CheckpointError, load_checkpoint, load_state_into, positive, read_sidecar, remove_stale_tmp,
                         require, sidecar_path, split)
from .metrics import accuracy
from .models import DATASET_STATS, DEFAULT_ARCH, MODELS, make_model, model_names

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff", ".webp")
EXPORT_HINT = ("in a trusted environment export a plain state dict instead: "
               "torch.save(model.state_dict(), 'model.pt')")
BACKDOORBENCH_HINT = ("in BackdoorBench's own environment export its state dict: torch.save(torch.load("
                      "'attack_result.pt', weights_only=False)['model'], 'model.pt'), then pass --model model.pt "
                      "--arch <its model_name> --norm <its clean_data>")

# BackdoorBench's input normalisation per `clean_data` (its get_dataset_normalization); GTSRB and
# CelebA have none. Ours (cifar10/100) come from models.DATASET_STATS, which holds the same numbers.
BACKDOORBENCH_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    **DATASET_STATS,
    "mnist": ((0.5,) * 3, (0.5,) * 3),
    "tiny": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "gtsrb": ((0.0,) * 3, (1.0,) * 3),
    "celeba": ((0.0,) * 3, (1.0,) * 3),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# BackdoorBench model names that are not torchvision's and map to ours (its resnet18, vgg19_bn, ...
# are torchvision's own and load under the same name).
BACKDOORBENCH_MODELS: dict[str, str] = {"preactresnet18": "preactresnet18"}
_BACKDOORBENCH_KEYS = ("model_name", "num_classes", "model")
# A pickle names its arch only inside, so its bound is the largest classifier model_names() builds
# (vit_h_14: 2.52 GB in fp32, tests/test_trust.py) with some room.
MAX_PICKLE_BYTES = 3 * 2**30
SAFETENSORS_MAX_HEADER = 100 * 2**20  # the safetensors format's own header limit


def _numpy_globals() -> list:
    """The numpy types a weights-only load may build: plain arrays, scalars and dtypes (numpy 1 and 2 names)."""
    from numpy._core import multiarray

    # numpy 2 pickles a dtype through its class (numpy.dtypes.Int64DType, ...): plain numbers only.
    numeric = [type(np.dtype(t)) for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                            "uint64", "float16", "float32", "float64")]
    return [np.ndarray, np.dtype, *numeric, multiarray._reconstruct, multiarray.scalar,
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            (multiarray.scalar, "numpy.core.multiarray.scalar")]


@dataclass(frozen=True)
class ModelFile:
    """A model's weights read from a file, with whatever the file says about its architecture."""

    path: Path
    format: str  # checkpoint | safetensors | state_dict | backdoorbench
    state: dict[str, torch.Tensor]
    # Hints from the file: arch, num_classes, width, norm (mean, std), image_size, dataset.
    hints: dict[str, Any] = field(default_factory=dict)


def _unsafe(path: Path, err: Exception) -> CheckpointError:
    # torch's message is long; name the global it refused, else its unpickler's complaint.
    found = re.search(r"GLOBAL ([\w.]+)|but got (<class [^>]+>)|Unsupported operand (\d+)", str(err))
    if found is None:
        why = str(err).strip().splitlines()[-1][:160]
    else:
        glob, cls, op = found.groups()
        why = f"it needs {glob or cls}" if glob or cls else f"pickle opcode {op}, not written by torch.save"
    hint = BACKDOORBENCH_HINT if _looks_backdoorbench(path) else EXPORT_HINT
    return CheckpointError(f"refusing {path}: loading it would run code stored in the file ({why}); {hint}")


def _looks_backdoorbench(path: Path) -> bool:
    """Whether a torch.save file's pickle (read as bytes, never unpickled) has BackdoorBench's result keys."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            data = z.read(pkl) if pkl else b""
    except (zipfile.BadZipFile, OSError):
        data = path.read_bytes()[:1_000_000] if path.is_file() else b""
    return all(k.encode() in data for k in _BACKDOORBENCH_KEYS)


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True and numpy's array types allowed; refuses everything else."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, AttributeError, TypeError, EOFError, RuntimeError, OSError) as e:
        if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in str(e):
            raise _unsafe(path, e) from None
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{path} cannot be read as a torch.save file ({first}): "
                              "truncated or another format") from None


def _is_state(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel's `module.` and torch.compile's `_orig_mod.` when every key has them."""
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _image_side(v: Any) -> bool:
    """BackdoorBench's img_size: (H, W, C) or a side, every entry a positive int."""
    sides = list(v) if isinstance(v, (list, tuple)) else [v]
    return bool(sides) and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides)


def _backdoorbench(path: Path, obj: dict) -> ModelFile:
    """BackdoorBench's attack_result.pt / defense_result.pt: state dict under `model`, name, class count."""
    name = require(obj, path, "model_name", str, bool, "a model name")
    classes = require(obj, path, "num_classes", int, positive, "a positive integer")
    clean = require(obj, path, "clean_data", (str, type(None)), want="a dataset name", default=None)
    size = require(obj, path, "img_size", (int, list, tuple, type(None)), lambda v: v is None or _image_side(v),
                   "positive ints, e.g. [32, 32, 3]", default=None)
    state = obj["model"]
    if not _is_state(state):
        raise CheckpointError(f"{path}: BackdoorBench's 'model' entry is not a state dict; {BACKDOORBENCH_HINT}")
    hints: dict[str, Any] = {"arch": BACKDOORBENCH_MODELS.get(name, name), "num_classes": classes}
    if name.startswith("vit_"):  # BackdoorBench wraps ViTs as Sequential(Resize(224), net)
        state, hints["input_size"] = {k[2:]: v for k, v in state.items() if k.startswith("1.")}, 224
    if clean in BACKDOORBENCH_STATS:
        hints["norm"], hints["dataset"] = BACKDOORBENCH_STATS[clean], clean
    if size is not None:
        hints["image_size"] = size[0] if isinstance(size, (list, tuple)) else size
    return ModelFile(path, "backdoorbench", _strip_prefixes(state), hints)


def _from_pickle(path: Path) -> ModelFile:
    obj = _torch_load(path)
    if isinstance(obj, dict) and all(k in obj for k in _BACKDOORBENCH_KEYS):
        return _backdoorbench(path, obj)
    if _is_state(obj):
        return ModelFile(path, "state_dict", _strip_prefixes(obj))
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and _is_state(obj.get(key)):
            return ModelFile(path, "state_dict", _strip_prefixes(obj[key]))
    keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{path} holds no state dict (found {keys}); {EXPORT_HINT}")


def _from_safetensors(path: Path) -> ModelFile:
    if not sidecar_path(path).is_file():  # a plain safetensors state dict (e.g. from a model hub)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return ModelFile(path, "safetensors", _strip_prefixes(load_file(str(path))))
        except SafetensorError as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({e}); {EXPORT_HINT}") from None
    tensors, meta = load_checkpoint(path)
    side = sidecar_path(path)
    require(meta, side, "arch", dict, want="a JSON object", default={})
    hints = {"arch": require(meta, side, "arch.name", str, default=None),
             "num_classes": require(meta, side, "arch.num_classes", int, positive, "a positive integer", default=None),
             "width": require(meta, side, "arch.width", (int, type(None)), lambda v: v is None or v > 0,
                              "a positive integer", default=None),
             "dataset": require(meta, side, "arch.dataset", (str, type(None)), default=None),
             "input_size": require(meta, side, "arch.input_size", (int, type(None)), lambda v: v is None or v > 0,
                                   "a positive integer", default=None)}
    return ModelFile(path, "checkpoint", split(tensors, "model") or tensors,
                     {k: v for k, v in hints.items() if v is not None})


def state_bytes(arch: str, num_classes: int = 1000, width: int = 64) -> int:
    """Bytes of `arch`'s state dict, counted on the meta device (no memory, a fraction of a second)."""
    with torch.device("meta"):
        model = make_model(arch, num_classes, width)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def size_limit(arch: Optional[str]) -> int:
    """The most bytes a model file of `arch` may declare: 4x its 1000-class state (wider nets, extra entries)
    plus 64 MiB; no arch known (a pickle names it inside): MAX_PICKLE_BYTES."""
    return MAX_PICKLE_BYTES if arch is None else 4 * state_bytes(arch) + 64 * 2**20


def _declared_bytes(path: Path) -> int:
    """What reading `path` whole would allocate, from its header or zip directory alone."""
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8).ljust(8, b"\0"))[0]
            if n > SAFETENSORS_MAX_HEADER:
                return 0  # not safetensors (e.g. a renamed pickle): the reader refuses it in one line
            try:
                header = json.loads(f.read(n))
                ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
            except (ValueError, TypeError, KeyError, IndexError):
                return 0  # not safetensors: the reader refuses it in one line
        return 8 + n + max(ends, default=0)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            inflated = sum(i.file_size for i in z.infolist())
        # torch.save stores its records uncompressed: a zip that inflates was not written by it.
        return inflated if inflated > 2 * path.stat().st_size + 2**20 else path.stat().st_size
    return path.stat().st_size


def check_size(path: Path, arch: Optional[str]) -> None:
    """Refuse a model file that declares (or inflates to) far more bytes than `arch` needs, before reading it."""
    declared, limit = _declared_bytes(path), size_limit(arch)
    if declared > limit:
        raise CheckpointError(f"refusing {path}: it declares {declared / 2**20:.0f} MiB, more than "
                              f"{arch or 'any supported architecture'} can need ({limit / 2**20:.0f} MiB); "
                              "a damaged or hostile file (pass the right --arch if it is real)")


def read_model_file(path: Path | str, arch: Optional[str] = None) -> ModelFile:
    """Read a model file's weights and hints; unsafe, missing, unknown or oversized files raise CheckpointError.

    `arch` (--arch) bounds the file's size; else our sidecar's arch, a plain safetensors' DEFAULT_ARCH."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} not found; pass an existing file with --model")
    if path.suffix not in MODEL_SUFFIXES:
        raise CheckpointError(f"{path}: unknown model file type {path.suffix!r}; "
                              f"use one of {', '.join(MODEL_SUFFIXES)}")
    if arch is None and path.suffix == ".safetensors":
        arch = _sidecar_arch(path)
    check_size(path, arch if arch in model_names() else None)
    mf = _from_safetensors(path) if path.suffix == ".safetensors" else _from_pickle(path)
    if not mf.state:
        raise CheckpointError(f"{path} holds no tensors")
    return mf


def _sidecar_arch(path: Path) -> str:
    """The arch our sidecar names (else DEFAULT_ARCH: a plain safetensors has only --arch to go by)."""
    if not sidecar_path(path).is_file():
        return DEFAULT_ARCH
    arch = read_sidecar(path).get("arch")
    return arch.get("name", DEFAULT_ARCH) if isinstance(arch, dict) else DEFAULT_ARCH


def first_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> Optional[str]:
    """The first key (in the model's order) whose presence or shape differs between model and file, or None."""
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            return f"key {k!r} {tuple(v.shape)} of the model is not in the file"
        if tuple(state[k].shape) != tuple(v.shape):
            return f"key {k!r}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
    extra = next((k for k in state if k not in own), None)
    return None if extra is None else f"key {extra!r} {tuple(state[extra].shape)} of the file is not in the model"


def build_model(mf: ModelFile, arch: str, num_classes: int, norm: tuple, input_size: Optional[int] = None,
                width: Optional[int] = None) -> nn.Module:
    """Our or torchvision's `arch` with the file's weights; a mismatch names the first differing key and shape.

    Normalisation buffers (`mean`/`std`) the file lacks are filled from `norm` (the file's own win), and
    BatchNorm step counters (absent from pre-1.0 files) from the fresh model.
    PreAct-ResNet18's width, unless given, is read off the file's first convolution.
    """
    if arch == "preactresnet18" and width is None and "conv1.weight" in mf.state:
        width = int(mf.state["conv1.weight"].shape[0])
    model = make_model(arch, num_classes, width or 64, norm=norm, input_size=input_size)
    own = model.state_dict()
    defaults = {k: v for k, v in own.items() if k in ("mean", "std") or k.endswith("num_batches_tracked")}
    state = {**defaults, **mf.state}
    problem = first_mismatch(model, state)
    if problem:
        raise CheckpointError(f"{mf.path} does not fit {arch} with {num_classes} classes: {problem}; "
                              f"{fitting_hint(mf.state, arch, num_classes)}")
    load_state_into(model, state)
    return model


# Architectures a file that does not fit the named one is tried against (shapes only, on the meta device).
HINT_ARCHS = ("preactresnet18", "cifar_resnet18", "resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16_bn",
              "vgg19_bn", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "densenet121", "convnext_tiny")


def fitting_hint(state: dict[str, torch.Tensor], arch: str, num_classes: int) -> str:
    """'the file fits --arch X --num-classes N' for the first common architecture whose keys and shapes
    match the file's, else the generic advice."""
    classes = [num_classes] + [int(v.shape[0]) for v in reversed(state.values()) if v.dim() == 2][:1]
    for name in dict.fromkeys((arch, *HINT_ARCHS)):
        for nc in dict.fromkeys(classes):
            if (name, nc) == (arch, num_classes):
                continue
            width = int(state["conv1.weight"].shape[0]) if name == "preactresnet18" and "conv1.weight" in state else 64
            with torch.device("meta"):
                model = make_model(name, nc, width)
            own = {k for k in model.state_dict() if k not in ("mean", "std") and not k.endswith("num_batches_tracked")}
            if own <= state.keys() and first_mismatch(model, {**model.state_dict(), **state}) is None:
                flags = (f"--arch {name}" if name != arch else "") + (f" --num-classes {nc}" if nc != num_classes else "")
                return f"the file fits {flags.strip()}"
    return "pick the right --arch / --num-classes"


NO_NORM = ((0.0,) * 3, (1.0,) * 3)


def norm_candidates(x: torch.Tensor) -> dict[str, tuple]:
    """Normalisations a model without its own may expect: none, each known dataset's, the data's own mean/std."""
    xf = x.float() / 255.0
    own = (tuple(xf.mean((0, 2, 3)).tolist()), tuple(xf.std((0, 2, 3)).clamp_min(1e-3).tolist()))
    out = {"none": NO_NORM}
    for name, stats in sorted(BACKDOORBENCH_STATS.items()):
        if stats not in out.values():
            out[name] = stats
    return {**out, "data": own}


def detect_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int = 512, *, bf16: bool = False
                ) -> tuple[str, tuple, dict[str, float]]:
    """The normalisation under which `model` is most accurate on (up to `n` of) x, y, set into its
    mean/std buffers: (name, (mean, std), CA under each candidate). Ties keep the earlier candidate."""
    x, y = x[:n].to(model.mean.device), y[:n]
    scores: dict[str, float] = {}
    for name, (mean, std) in norm_candidates(x.cpu()).items():
        model.mean.copy_(torch.tensor(mean).view_as(model.mean))
        model.std.copy_(torch.tensor(std).view_as(model.std))
        scores[name] = accuracy(model, x, y, bf16=bf16)
    best = max(scores, key=scores.get)  # max keeps the first of equal scores: "none" before any guess
    mean, std = norm_candidates(x.cpu())[best]
    model.mean.copy_(torch.tensor(mean).view_as(model.mean))
    model.std.copy_(torch.tensor(std).view_as(model.std))
    return best, (mean, std), scores


def arch_of(model: nn.Module, arch: str, num_classes: int, dataset: Optional[str] = None) -> dict[str, Any]:
    """The sidecar `arch` entry that rebuilds `model` (make_model arguments)."""
    width = getattr(model, "width", None) if arch in MODELS else None
    return {"name": arch, "num_classes": num_classes, "width": width, "dataset": dataset,
            "input_size": getattr(model, "input_size", None)}


# ---- image folders ------------------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_classes(folder: Path, num_classes: int) -> dict[str, int]:
    """Class folder name -> label. Integer names are their own labels (so "10" follows "9"); otherwise
    torchvision ImageFolder's sorted order. Every class 0..num_classes-1 must have images."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} not found; "
                                "pass an ImageFolder-layout folder (one sub-folder per class)")
    dirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not dirs or not _images(folder):
        raise ValueError(f"image folder {folder} holds no images in class sub-folders ({', '.join(IMAGE_SUFFIXES)})")
    numeric = all(d.isdigit() for d in dirs)
    classes = {d: int(d) for d in dirs} if numeric else {d: i for i, d in enumerate(dirs)}
    empty = [d for d in dirs if not _images(folder / d)]
    missing = sorted(set(range(num_classes)) - set(classes.values()))
    if missing or empty or max(classes.values()) >= num_classes:
        raise ValueError(f"image folder {folder} does not cover the model's {num_classes} classes "
                         f"(found {len(dirs)} class folders; missing labels {missing[:5]}, empty {empty[:5]}); "
                         "give one non-empty sub-folder per class")
    return classes


def triggered_classes(folder: Path | str, classes: Optional[dict[str, int]]) -> Optional[dict[str, int]]:
    """Labels of a folder of triggered images: None for a flat folder (every image counts towards ASR),
    else its class sub-folders by the clean data's names (or integer names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"triggered-image folder {folder} not found")
    dirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not dirs:
        return None
    known = classes or {}
    unknown = [d for d in dirs if d not in known and not d.isdigit()]
    if unknown:
        raise ValueError(f"triggered-image folder {folder}: sub-folders {unknown[:3]} are not class names; "
                         "use the clean data's class names or a flat folder")
    return {d: known.get(d, int(d) if d.isdigit() else -1) for d in dirs}


def _fingerprint(folder: Path, files: list[Path], size: int) -> str:
    h = hashlib.sha256(f"{folder.resolve()}|{size}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(folder)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _read_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))


def load_image_folder(folder: Path | str, size: int, classes: Optional[dict[str, int]], cache_dir: Path | str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [N,3,size,size] images and int64 labels of a folder (labels -1 when `classes` is None: a flat
    folder). Converted once, cached as safetensors under `cache_dir`, rebuilt when any file changes."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)

    def member(p: Path) -> bool:  # class folders: files inside a known class; flat: files at the top
        parts = p.relative_to(folder).parts
        return len(parts) > 1 and parts[0] in classes if classes is not None else len(parts) == 1

    files = [p for p in _images(folder) if member(p)]
    if not files:
        raise ValueError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    key = _fingerprint(folder, files, size)
    cache = Path(cache_dir) / f"folder-{key[:16]}.safetensors"
    if cache.is_file():
        t = load_file(str(cache))
        return t["x"], t["y"]
    x = torch.from_numpy(np.stack([_read_image(p, size) for p in files])).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([classes[p.relative_to(folder).parts[0]] if classes is not None else -1 for p in files],
                     dtype=torch.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(cache)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        save_file({"x": x, "y": y}, str(tmp), metadata={"folder": str(folder.resolve()),
                                                       "classes": json.dumps(classes)})
        os.replace(tmp, cache)
    finally:
        tmp.unlink(missing_ok=True)
    return x, y
