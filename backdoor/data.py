"""Image datasets as uint8 NCHW tensors, converted once and cached as safetensors.

Usage: ``python -m backdoor.data [--download] [--data-dir DIR] NAME...``
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DATA_DIR = Path(os.environ.get("DATA_DIR", "data"))
IMAGE_SIZE = 32
_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class ImageData:
    """A dataset split into train/test: images uint8 [N,3,32,32], labels int64 [N]."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


class DatasetMissing(FileNotFoundError):
    """The source files of a dataset are not on disk (and download was not requested)."""

    def __init__(self, name: str, data_dir: Path | str) -> None:
        super().__init__(
            f"dataset {name!r} not found under {Path(data_dir)}/; run: make data DATASETS={name}"
        )


def _nhwc_to_nchw(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> contiguous uint8 NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)


def _torchvision(name: str, data_dir: Path, make: Callable[[], object]) -> object:
    """Build a torchvision dataset, turning its 'not found' RuntimeError into DatasetMissing."""
    try:
        return make()
    except RuntimeError as e:
        if "not found" not in str(e):
            raise
        raise DatasetMissing(name, data_dir) from e


def _cifar_loader(name: str, num_classes: int) -> Callable[[Path, bool], ImageData]:
    """Loader for CIFAR10/100: reads the decoded `.data`/`.targets` arrays, no per-sample PIL work."""

    def load(data_dir: Path, download: bool) -> ImageData:
        from torchvision import datasets

        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        splits = [
            _torchvision(name, data_dir, lambda t=t: cls(str(data_dir), train=t, download=download))
            for t in (True, False)
        ]
        tr, te = ((_nhwc_to_nchw(ds.data), _labels(ds.targets)) for ds in splits)
        return ImageData(name, tr[0], tr[1], te[0], te[1], num_classes)

    return load


def _resize_rgb(img) -> np.ndarray:
    """Whole-image bilinear resize to 32x32, as BackdoorBench does for GTSRB (no ROI crop)."""
    from PIL import Image

    return np.asarray(img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))


def _load_gtsrb(data_dir: Path, download: bool) -> ImageData:
    """GTSRB via torchvision (train 39,209 / test 12,630 images), resized to 32x32."""
    from torchvision import datasets

    out = []
    for split in ("train", "test"):
        ds = _torchvision(
            "gtsrb",
            data_dir,
            lambda s=split: datasets.GTSRB(str(data_dir), split=s, transform=_resize_rgb, download=download),
        )
        pairs = [ds[i] for i in range(len(ds))]
        x = np.stack([p[0] for p in pairs]) if pairs else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        out.append((_nhwc_to_nchw(x), _labels([p[1] for p in pairs])))
    (xtr, ytr), (xte, yte) = out
    return ImageData("gtsrb", xtr, ytr, xte, yte, 43)


def _area_resize(x: np.ndarray, chunk: int = 8192) -> torch.Tensor:
    """uint8 NCHW images -> 32x32 by area averaging (3x3 boxes for STL10's 96x96), rounded, in chunks."""
    out = [
        F.interpolate(torch.from_numpy(np.ascontiguousarray(x[i : i + chunk])).float(), size=(IMAGE_SIZE, IMAGE_SIZE),
                      mode="area").round_().to(torch.uint8)
        for i in range(0, len(x), chunk)
    ]
    return torch.cat(out).contiguous() if out else torch.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)


def _stl10_loader(name: str, train_split: str, test_split: str | None) -> Callable[[Path, bool], ImageData]:
    """Loader for STL10 (96x96, resized to 32x32 as BadEncoder's npz files are); 'unlabeled' has labels -1."""

    def load(data_dir: Path, download: bool) -> ImageData:
        from torchvision import datasets

        parts = []
        for split in (train_split, test_split):
            if split is None:  # the unlabelled set has no test split
                parts.append((torch.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8), _labels([])))
                continue
            ds = _torchvision(name, data_dir, lambda s=split: datasets.STL10(str(data_dir), split=s, download=download))
            parts.append((_area_resize(ds.data), _labels(ds.labels)))
        (xtr, ytr), (xte, yte) = parts
        return ImageData(name, xtr, ytr, xte, yte, 10)

    return load


def _load_svhn(data_dir: Path, download: bool) -> ImageData:
    """SVHN cropped digits (train 73,257 / test 26,032; 'extra' unused), already 32x32; digit 0 is label 0."""
    from torchvision import datasets

    root = str(data_dir / "svhn")
    splits = [_torchvision("svhn", data_dir, lambda s=s: datasets.SVHN(root, split=s, download=download))
              for s in ("train", "test")]
    tr, te = ((torch.from_numpy(np.ascontiguousarray(ds.data)), _labels(ds.labels)) for ds in splits)
    return ImageData("svhn", tr[0], tr[1], te[0], te[1], 10)


def digits_split_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test index split of the digits dataset (stratified, seed 0)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=397, random_state=0, stratify=y)


def _load_digits(data_dir: Path, download: bool) -> ImageData:
    """sklearn's embedded 8x8 digits upsampled to 32x32 RGB; fixed stratified 1,400/397 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).repeat(1, 3, 1, 1).contiguous()
    y = _labels(d.target)
    idx_tr, idx_te = digits_split_indices(d.target)
    return ImageData("digits", x[idx_tr], y[idx_tr], x[idx_te], y[idx_te], 10)


DATASETS: dict[str, Callable[[Path, bool], ImageData]] = {
    "digits": _load_digits,
    "cifar10": _cifar_loader("cifar10", 10),
    "cifar100": _cifar_loader("cifar100", 100),
    "gtsrb": _load_gtsrb,
    "stl10": _stl10_loader("stl10", "train", "test"),
    "stl10_unlabeled": _stl10_loader("stl10_unlabeled", "unlabeled", None),
    "svhn": _load_svhn,
}


def cache_path(name: str, data_dir: Path | str = DATA_DIR) -> Path:
    """Where the converted tensors of `name` are cached."""
    return Path(data_dir) / "cache" / f"{name}.safetensors"


def _read_cache(path: Path, name: str) -> ImageData:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        num_classes = int((f.metadata() or {})["num_classes"])
        t = {k: f.get_tensor(k) for k in _KEYS}
    return ImageData(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"], num_classes)


def _write_cache(path: Path, data: ImageData) -> None:
    """Atomic write: an interrupted run leaves at most a stray .tmp, never a half cache file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: getattr(data, k).contiguous() for k in _KEYS}
    save_file(tensors, str(tmp), metadata={"name": data.name, "num_classes": str(data.num_classes)})
    os.replace(tmp, path)


def load_dataset(name: str, data_dir: Path | str = DATA_DIR, download: bool = False) -> ImageData:
    """Load `name` from the cache, else convert it from its source files and cache the result."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    data_dir = Path(data_dir)
    path = cache_path(name, data_dir)
    if path.exists():
        try:
            return _read_cache(path, name)
        except Exception as e:  # any unreadable cache is just rebuilt from the source
            log.warning("cache %s is unreadable (%s); rebuilding it", path, e)
    data = DATASETS[name](data_dir, download)
    _write_cache(path, data)
    log.info("cached %s at %s", name, path)
    return data


def main(argv: list[str] | None = None) -> None:
    """CLI: convert (and with --download fetch) datasets into the cache."""
    p = argparse.ArgumentParser(prog="python -m backdoor.data", description=main.__doc__)
    p.add_argument("names", nargs="+", choices=sorted(DATASETS), metavar="NAME")
    p.add_argument("--download", action="store_true", help="download missing source files")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in args.names:
        try:
            d = load_dataset(name, args.data_dir, download=args.download)
        except DatasetMissing as e:
            raise SystemExit(str(e)) from None
        print(
            f"{name}: train {tuple(d.x_train.shape)} test {tuple(d.x_test.shape)} "
            f"classes {d.num_classes} -> {cache_path(name, args.data_dir)}"
        )


if __name__ == "__main__":
    main()
