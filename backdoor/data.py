"""Image datasets as uint8 NCHW tensors, read from each dataset's own files, converted once and cached.

Usage: ``python -m backdoor.data [--download] [--data-dir DIR] [NAME...]`` (no NAME: every dataset
``make all`` reads); ``python -m backdoor.data --fake DIR [--n N]`` writes synthetic stand-ins in the
real on-disk formats (`write_fake`), which the loaders read unchanged.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from numpy._core.multiarray import _reconstruct

from .errors import UserExit

log = logging.getLogger(__name__)

DATA_DIR = Path(os.environ.get("DATA_DIR", "data"))
IMAGE_SIZE = 32
_KEYS = ("x_train", "y_train", "x_test", "y_test")
# Bumped when a loader's output changes; older caches (e.g. GTSRB from torchvision's re-release) are rebuilt.
CACHE_VERSION = "2"
Splits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ImageData:
    """A dataset split into train/test: images uint8 [N,3,32,32], labels int64 [N]."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


class DatasetError(Exception):
    """A dataset's source files are missing, truncated or the wrong version (one-line message)."""


class DatasetMissing(DatasetError, FileNotFoundError):
    """The source files of a dataset are not on disk (and download was not requested)."""

    def __init__(self, name: str, data_dir: Path | str, what: str = "") -> None:
        what = what or f"dataset {name!r} not found under {Path(data_dir)}/"
        super().__init__(f"{what}; run: make data DATASETS={name}")


class DatasetInvalid(DatasetError, ValueError):
    """Source files exist but are truncated, corrupt or another release than the paper's."""


@dataclass(frozen=True)
class Source:
    """One dataset: its reader, documented split sizes, classes, and the archive(s) to fetch."""

    read: Callable[[Path, tuple[int, int]], Splits]  # (data_dir, expected sizes)
    sizes: tuple[int, int]  # (train, test) images of the documented release
    num_classes: int
    archive: str  # what a user fetches (named in every error)
    download: Optional[Callable[[Path], None]] = None


def _bad(name: str, problem: str) -> DatasetInvalid:
    return DatasetInvalid(f"{name}: {problem}; fetch {SOURCES[name].archive} again (make data DATASETS={name})")


def _labels(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)


def _empty() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8), _labels([])


# ---------------------------------------------------------------- CIFAR: python pickles
_CIFAR = {  # folder, train files, test files, label key (as in the official python tarballs)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python 3's protocol-2 pickles use it for bytes; any other codec is refused."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin1")


# What the official python batches (and our fakes) hold besides dict/list/str/bytes/int: numpy's plain array
# reconstruction (numpy 1 names in the official files, numpy 2 names in files pickled here).
_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1_encode,
}


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds data only: any global outside _SAFE_GLOBALS is refused, so nothing runs."""

    def find_class(self, module: str, name: str) -> object:
        found = _SAFE_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"it needs {module}.{name}")
        return found


def _unpickle(name: str, path: Path) -> dict:
    """A CIFAR python batch parsed as data: a pickle that needs any other callable is refused unrun."""
    if not path.is_file():
        raise DatasetMissing(name, path.parent, f"{name}: {path} is missing")
    try:
        with open(path, "rb") as f:
            batch = _DataUnpickler(f, encoding="latin1").load()  # py2 pickles: str keys under latin1
    except pickle.UnpicklingError as e:
        raise _bad(name, f"refusing {path}: it is not plain data, loading it would run code ({e})") from None
    except Exception as e:
        raise _bad(name, f"{path} is unreadable ({type(e).__name__}: truncated or not a CIFAR batch)") from None
    if not isinstance(batch, dict):
        raise _bad(name, f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
    return batch


def _cifar_reader(name: str) -> Callable[[Path, tuple[int, int]], Splits]:
    folder, train, test, key = _CIFAR[name]

    def read(data_dir: Path, sizes: tuple[int, int]) -> Splits:
        out = []
        for files in (train, test):
            batches = [_unpickle(name, data_dir / folder / f) for f in files]
            try:  # rows are CHW-flattened, so NCHW is a reshape, not a transpose
                x = np.concatenate([np.asarray(b["data"], np.uint8).reshape(-1, 3, 32, 32) for b in batches])
                y = np.concatenate([np.asarray(b[key], np.int64) for b in batches])
            except (KeyError, ValueError) as e:
                raise _bad(name, f"a batch under {data_dir / folder} has no usable {e}") from None
            out += [torch.from_numpy(x), torch.from_numpy(y)]
        return tuple(out)

    return read


# ---------------------------------------------------------------- GTSRB: per-class .ppm + csv
# The original release (BackdoorBench's 39,209 / 12,630 images), from the official site torchvision uses.
GTSRB_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
GTSRB_ARCHIVES = {  # file -> md5 (torchvision's gtsrb.py for the two test files; the training md5 as
    # published with the original archive by other loaders, e.g. GTSRB_Final_Training_Images.zip 263 MB)
    "GTSRB_Final_Training_Images.zip": "f33fd80ac59bff73c82d25ab499e03a3",
    "GTSRB_Final_Test_Images.zip": "c7e4e6327067d32654124b0fe9e82185",
    "GTSRB_Final_Test_GT.zip": "fe31e9c9270bbcd7b84b7f21a9d9d9e5",
}
GTSRB_TRAIN = Path("GTSRB/Final_Training/Images")  # 000NN/GT-000NN.csv + NNNNN_NNNNN.ppm
GTSRB_RERELEASE = Path("GTSRB/Training")  # torchvision's GTSRB-Training_fixed.zip (26,640 images)
GTSRB_TEST, GTSRB_TEST_GT = Path("GTSRB/Final_Test/Images"), Path("GT-final_test.csv")
GTSRB_MAX_PIXELS = 1024 * 1024  # real signs are at most 250x250 px; a larger header is a decompression bomb


def _csv_rows(path: Path) -> list[tuple[str, int]]:
    if not path.is_file():
        raise _bad("gtsrb", f"{path} is missing (an incomplete archive)")
    with open(path, newline="") as f:
        return [(r["Filename"], int(r["ClassId"])) for r in csv.DictReader(f, delimiter=";", skipinitialspace=True)]


def _gtsrb_index(root: Path) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """(path, label) of every train and test image, from the csv files alone (cheap: no decoding)."""
    train_dir = root / GTSRB_TRAIN
    if not train_dir.is_dir():
        if (root / GTSRB_RERELEASE).is_dir():
            raise DatasetInvalid(
                f"gtsrb: {root / GTSRB_RERELEASE} is torchvision's re-released training split (GTSRB-Training_fixed.zip, "
                f"~26,640 images); the paper uses the original 39,209: fetch GTSRB_Final_Training_Images.zip "
                f"(make data DATASETS=gtsrb)")
        raise DatasetMissing("gtsrb", root, f"gtsrb: {train_dir} not found (GTSRB_Final_Training_Images.zip)")
    train = [(d / f, y) for d in sorted(p for p in train_dir.iterdir() if p.is_dir())
             for f, y in _csv_rows(d / f"GT-{d.name}.csv")]
    gt = root / GTSRB_TEST_GT
    if not gt.is_file():
        raise DatasetMissing("gtsrb", root, f"gtsrb: {gt} not found (GTSRB_Final_Test_GT.zip)")
    if not (root / GTSRB_TEST).is_dir():
        raise DatasetMissing("gtsrb", root, f"gtsrb: {root / GTSRB_TEST} not found (GTSRB_Final_Test_Images.zip)")
    test = [(root / GTSRB_TEST / f, y) for f, y in _csv_rows(gt)]
    return train, test


def _read_ppms(items: list[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-image bilinear resize to 32x32, as BackdoorBench does for GTSRB (no ROI crop)."""
    from PIL import Image

    x = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)  # filled in place: no list of arrays
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as img:
                if img.width * img.height > GTSRB_MAX_PIXELS:  # the header's size, read before decoding
                    raise ValueError(f"{img.width}x{img.height} pixels")
                x[i] = np.asarray(img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise _bad("gtsrb", f"{path} is missing or unreadable ({type(e).__name__})") from None
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), _labels([y for _, y in items])


def _read_gtsrb(data_dir: Path, sizes: tuple[int, int]) -> Splits:
    train, test = _gtsrb_index(data_dir / "gtsrb")
    _check_sizes("gtsrb", (len(train), len(test)), sizes)  # before decoding 50k files
    return (*_read_ppms(train), *_read_ppms(test))


def _download_gtsrb(data_dir: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    for file, md5 in GTSRB_ARCHIVES.items():
        download_and_extract_archive(GTSRB_URL + file, download_root=str(data_dir / "gtsrb"), md5=md5)


# ---------------------------------------------------------------- STL10: raw binaries, 96x96 column-major
STL_FOLDER, STL_PIXELS = "stl10_binary", 3 * 96 * 96


def _area_resize(x: np.ndarray) -> torch.Tensor:
    """uint8 NCHW images -> 32x32 by area averaging (3x3 boxes for STL10's 96x96), rounded."""
    block = torch.from_numpy(np.ascontiguousarray(x)).float()
    return F.interpolate(block, size=(IMAGE_SIZE, IMAGE_SIZE), mode="area").round_().to(torch.uint8)


def _stl_count(name: str, path: Path) -> int:
    if not path.is_file():
        raise DatasetMissing(name, path.parent, f"{name}: {path} is missing")
    size = path.stat().st_size
    if size == 0 or size % STL_PIXELS:
        raise _bad(name, f"{path} has {size} bytes, not a multiple of {STL_PIXELS} (truncated)")
    return size // STL_PIXELS


def _stl_resized(path: Path, count: int, chunk: int = 1024) -> torch.Tensor:
    """Read and resize in chunks: the 2.8 GB unlabelled file is never in memory (nor mapped) at once."""
    out = torch.empty((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    with open(path, "rb") as f:
        for i in range(0, count, chunk):
            m = min(chunk, count - i)  # stored (N, C, W, H): each channel column-major, as torchvision transposes it
            out[i: i + m] = _area_resize(np.fromfile(f, np.uint8, m * STL_PIXELS).reshape(m, 3, 96, 96)
                                         .transpose(0, 1, 3, 2))
    return out


def _stl_reader(name: str, splits: tuple[str, Optional[str]]) -> Callable[[Path, tuple[int, int]], Splits]:
    def read(data_dir: Path, sizes: tuple[int, int]) -> Splits:
        root = data_dir / STL_FOLDER
        counts = [_stl_count(name, root / f"{s}_X.bin") if s else 0 for s in splits]
        _check_sizes(name, tuple(counts), sizes)  # before reading 2.8 GB
        out = []
        for s, n in zip(splits, counts):
            if s is None:  # the unlabelled set has no test split
                out += _empty()
                continue
            if s == "unlabeled":
                y = np.full(n, -1, np.int64)
            else:
                yp = root / f"{s}_y.bin"
                y = np.fromfile(yp, np.uint8).astype(np.int64) - 1 if yp.is_file() else np.zeros(0, np.int64)
                if len(y) != n:
                    raise _bad(name, f"{yp} holds {len(y)} labels for {n} images")
            out += [_stl_resized(root / f"{s}_X.bin", n), torch.from_numpy(y)]
        return tuple(out)

    return read


# ---------------------------------------------------------------- SVHN: MATLAB .mat
def _read_svhn(data_dir: Path, sizes: tuple[int, int]) -> Splits:
    """Cropped digits (X: H,W,C,N; y: 1..10 with 10 = digit 0); 'extra' unused."""
    import scipy.io

    out = []
    for split in ("train", "test"):
        path = data_dir / "svhn" / f"{split}_32x32.mat"
        if not path.is_file():
            raise DatasetMissing("svhn", path.parent, f"svhn: {path} is missing")
        try:
            m = scipy.io.loadmat(str(path))
            x, y = m["X"], np.asarray(m["y"], np.int64).reshape(-1)
        except Exception as e:
            raise _bad("svhn", f"{path} is unreadable ({type(e).__name__}: truncated or not SVHN)") from None
        y[y == 10] = 0
        out += [torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1))), torch.from_numpy(y)]
    return tuple(out)


# ---------------------------------------------------------------- digits: embedded in sklearn
def digits_split_indices(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test index split of the digits dataset (stratified, seed 0)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=397, random_state=0, stratify=y)


def _read_digits(data_dir: Path, sizes: tuple[int, int]) -> Splits:
    """sklearn's embedded 8x8 digits upsampled to 32x32 RGB; fixed stratified 1,400/397 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).repeat(1, 3, 1, 1).contiguous()
    y = _labels(d.target)
    idx_tr, idx_te = digits_split_indices(d.target)
    return x[idx_tr], y[idx_tr], x[idx_te], y[idx_te]


# ---------------------------------------------------------------- downloads (torchvision checks each md5)
def _download_tv(cls_name: str, sub: str = "", splits: tuple[Optional[str], ...] = (None,)) -> Callable[[Path], None]:
    def download(data_dir: Path) -> None:
        from torchvision import datasets

        cls = getattr(datasets, cls_name)
        for split in splits:
            kw = {} if split is None else {"split": split}
            cls(str(data_dir / sub) if sub else str(data_dir), download=True, **kw)

    return download


SOURCES: dict[str, Source] = {
    "digits": Source(_read_digits, (1400, 397), 10, "nothing (embedded in scikit-learn)"),
    "cifar10": Source(_cifar_reader("cifar10"), (50000, 10000), 10, "cifar-10-python.tar.gz",
                      _download_tv("CIFAR10")),
    "cifar100": Source(_cifar_reader("cifar100"), (50000, 10000), 100, "cifar-100-python.tar.gz",
                       _download_tv("CIFAR100")),
    "gtsrb": Source(_read_gtsrb, (39209, 12630), 43, " + ".join(GTSRB_ARCHIVES), _download_gtsrb),
    "stl10": Source(_stl_reader("stl10", ("train", "test")), (5000, 8000), 10, "stl10_binary.tar.gz",
                    _download_tv("STL10", splits=("train",))),
    "stl10_unlabeled": Source(_stl_reader("stl10_unlabeled", ("unlabeled", None)), (100000, 0), 10,
                              "stl10_binary.tar.gz", _download_tv("STL10", splits=("unlabeled",))),
    "svhn": Source(_read_svhn, (73257, 26032), 10, "train_32x32.mat + test_32x32.mat",
                   _download_tv("SVHN", "svhn", ("train", "test"))),
}
DATASETS = SOURCES  # the one registry (name -> Source), under its historical name
MAKE_ALL = ("cifar10", "cifar100", "gtsrb", "stl10", "stl10_unlabeled", "svhn")  # what `make all` reads


def _check_sizes(name: str, found: tuple[int, ...], expected: tuple[int, int]) -> None:
    """Refuse another release (or a partial one) than the documented one, naming what to fetch."""
    if tuple(found) != tuple(expected):
        raise DatasetInvalid(
            f"{name}: found {found[0]:,} train / {found[1]:,} test images, the documented release has "
            f"{expected[0]:,} / {expected[1]:,}; fetch {SOURCES[name].archive} (make data DATASETS={name})")


# ---------------------------------------------------------------- cache
def cache_path(name: str, data_dir: Path | str = DATA_DIR) -> Path:
    """Where the converted tensors of `name` are cached."""
    return Path(data_dir) / "cache" / f"{name}.safetensors"


def _read_cache(path: Path, name: str) -> ImageData:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {meta.get('version')!r}, this code writes {CACHE_VERSION!r}")
        t = {k: f.get_tensor(k) for k in _KEYS}
    return ImageData(name, t["x_train"], t["y_train"], t["x_test"], t["y_test"], int(meta["num_classes"]))


def _write_cache(path: Path, data: ImageData) -> None:
    """Atomic write: an interrupted run leaves at most a stray .tmp, never a half cache file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: getattr(data, k).contiguous() for k in _KEYS}
    meta = {"name": data.name, "num_classes": str(data.num_classes), "version": CACHE_VERSION}
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as e:  # a full disk or read-only DATA_DIR: say where, leave no partial file
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"cannot write the cache {path} ({e.strerror or e}); free space in {path.parent} "
                           "or point DATA_DIR elsewhere") from None


def check_data_dir(path: Path | str | None = None) -> None:
    """DATA_DIR must be a readable, writable directory (or not exist yet); ValueError saying so."""
    path = Path(DATA_DIR if path is None else path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"DATA_DIR={path} is a file, not a directory; point DATA_DIR at a directory")
    if path.is_dir() and not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ValueError(f"DATA_DIR={path} is not readable and writable by this user; fix its permissions "
                         "or point DATA_DIR elsewhere")


def _source(name: str) -> Source:
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def load_dataset(name: str, data_dir: Path | str = DATA_DIR, download: bool = False,
                 sizes: Optional[tuple[int, int]] = None) -> ImageData:
    """Load `name` from the cache, else convert it from its source files (checked against the documented
    `sizes`, or the given ones) and cache the result."""
    src, data_dir = _source(name), Path(data_dir)
    path = cache_path(name, data_dir)
    if path.exists():
        try:
            return _read_cache(path, name)
        except Exception as e:  # any unreadable or outdated cache is just rebuilt from the source
            log.warning("cache %s is unreadable (%s); rebuilding it", path, e)
    if download and src.download is not None:
        try:
            src.download(data_dir)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision raises RuntimeError on a bad md5
            reason = " ".join(str(e).split())
            raise DatasetInvalid(f"{name}: downloading {src.archive} failed ({type(e).__name__}: {reason}); "
                                 f"fetch it by hand into {data_dir}/ (README: Datasets)") from None
    sizes = tuple(sizes) if sizes is not None else src.sizes
    x_tr, y_tr, x_te, y_te = src.read(data_dir, sizes)
    _check_sizes(name, (len(x_tr), len(x_te)), sizes)
    data = ImageData(name, x_tr.contiguous(), y_tr, x_te.contiguous(), y_te, src.num_classes)
    _write_cache(path, data)
    log.info("cached %s at %s", name, path)
    return data


# ---------------------------------------------------------------- fake datasets in the real formats
def _fake_images(name: str, y: np.ndarray, num_classes: int, side: int, seed: int, part: int = 0) -> np.ndarray:
    """uint8 NCHW: half a per-class 4x4 colour pattern (the learnable signal), half noise (seeded by `part`)."""
    base = np.random.default_rng([seed, *name.encode()])  # the same class patterns in every split and chunk
    templates = base.integers(0, 256, (num_classes, 3, 4, 4), dtype=np.uint8) >> 1
    templates = templates.repeat(side // 4, axis=2).repeat(side // 4, axis=3)
    rng = np.random.default_rng([seed, part, len(y), *name.encode()])
    x = np.empty((len(y), 3, side, side), np.uint8)
    for i in range(0, len(y), 8192):  # chunks bound the noise buffer at ~0.7 GB for 96x96
        j = slice(i, i + 8192)
        x[j] = templates[y[j]] + (rng.integers(0, 256, x[j].shape, dtype=np.uint8) >> 1)
    return x


def _fake_labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """Balanced labels (every class present), shuffled."""
    return np.random.default_rng([seed, n, num_classes]).permutation(np.arange(n) % num_classes)


def _counts(name: str, n: Optional[int], n_test: Optional[int]) -> tuple[int, int]:
    tr, te = SOURCES[name].sizes
    n = tr if n is None else n
    return n, (te if n == tr else -(-te * n // tr)) if n_test is None else n_test


def _fake_cifar(name: str, out: Path, n: int, n_test: int, seed: int, **_) -> None:
    folder, train, test, key = _CIFAR[name]
    root, k = out / folder, SOURCES[name].num_classes
    root.mkdir(parents=True, exist_ok=True)
    for files, count in ((train, n), (test, n_test)):
        y = _fake_labels(count, k, seed + len(files))
        x = _fake_images(name, y, k, 32, seed, part=len(files)).reshape(count, -1)  # CHW-flattened rows, as on disk
        for f, idx in zip(files, np.array_split(np.arange(count), len(files))):
            batch = {"batch_label": f, "data": x[idx], key: y[idx].tolist(), "filenames": [f"{i}.png" for i in idx]}
            if key == "fine_labels":
                batch["coarse_labels"] = (y[idx] // 5).tolist()
            (root / f).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": [f"c{i}" for i in range(k)]} if k == 10 else \
        {"fine_label_names": [f"f{i}" for i in range(k)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (root / ("batches.meta" if k == 10 else "meta")).write_bytes(pickle.dumps(meta, protocol=2))


def _ppm(path: Path, hwc: np.ndarray) -> None:
    path.write_bytes(b"P6\n%d %d\n255\n" % (hwc.shape[1], hwc.shape[0]) + hwc.tobytes())


_GT_COLS = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def _fake_signs(items: list[tuple[Path, str, int]], x: np.ndarray, rng) -> list[list]:
    """Write each 32x32 image upscaled (nearest) to a GTSRB-like size; return its csv rows."""
    sizes = rng.integers(25, 65, (len(items), 2))  # real GTSRB: 15..250 px, most 30..60
    rows = []
    for (folder, fname, label), img, (w, h) in zip(items, x, sizes):
        ri, ci = np.arange(h) * 32 // h, np.arange(w) * 32 // w
        _ppm(folder / fname, np.ascontiguousarray(img.transpose(1, 2, 0)[ri][:, ci]))
        rows.append([fname, w, h, 5, 5, w - 6, h - 6, label])
    return rows


def _write_csv(path: Path, rows: list[list], cols: list[str] = _GT_COLS) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(cols)
        w.writerows(rows)


def _fake_gtsrb(name: str, out: Path, n: int, n_test: int, seed: int, layout: str = "original") -> None:
    """GTSRB_Final_Training_Images (or torchvision's re-release layout) + Final_Test + GT csv."""
    root, rng = out / "gtsrb", np.random.default_rng([seed, 43])
    y = np.sort(_uneven_labels(n, 43, rng))  # real GTSRB: 210..2,250 images per class
    x = _fake_images(name, y, 43, 32, seed)
    train_dir = root / (GTSRB_TRAIN if layout == "original" else GTSRB_RERELEASE)
    for c in range(43):
        folder = train_dir / f"{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(y == c)  # tracks of 30 frames, named TTTTT_FFFFF.ppm as in the archive
        items = [(folder, f"{k // 30:05d}_{k % 30:05d}.ppm", c) for k in range(len(idx))]
        _write_csv(folder / f"GT-{c:05d}.csv", _fake_signs(items, x[idx], rng))
    test_dir = root / GTSRB_TEST
    test_dir.mkdir(parents=True, exist_ok=True)
    yt = _fake_labels(n_test, 43, seed + 1)
    rows = _fake_signs([(test_dir, f"{i:05d}.ppm", int(c)) for i, c in enumerate(yt)],
                       _fake_images(name, yt, 43, 32, seed, part=1), rng)
    _write_csv(test_dir / "GT-final_test.test.csv", [r[:-1] for r in rows], _GT_COLS[:-1])  # no labels, as shipped
    _write_csv(root / GTSRB_TEST_GT, rows)


def _uneven_labels(n: int, k: int, rng) -> np.ndarray:
    """n labels, every class present, class shares uneven (about 1:10, as GTSRB's)."""
    share = rng.uniform(0.1, 1.0, k)
    counts = np.maximum(1, np.floor(share / share.sum() * n)).astype(int) if n >= k else np.ones(k, int)
    counts[np.argmax(counts)] += n - counts.sum()
    return rng.permutation(np.repeat(np.arange(k), counts))[:n]


def _fake_stl(name: str, out: Path, n: int, n_test: int, seed: int, **_) -> None:
    root = out / STL_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    splits = (("unlabeled", n),) if name == "stl10_unlabeled" else (("train", n), ("test", n_test))
    for split, count in splits:
        y = _fake_labels(count, 10, seed + len(split))
        with open(root / f"{split}_X.bin", "wb") as f:
            for i in range(0, count, 10000):  # column-major per channel, as the binaries store it
                f.write(np.ascontiguousarray(_fake_images("stl10", y[i: i + 10000], 10, 96, seed, part=i + len(split))
                                             .transpose(0, 1, 3, 2)).tobytes())
        if split != "unlabeled":
            (root / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # 1-based on disk
    (root / "class_names.txt").write_text("".join(f"c{i}\n" for i in range(10)))


def _fake_svhn(name: str, out: Path, n: int, n_test: int, seed: int, **_) -> None:
    import scipy.io

    (out / "svhn").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n), ("test", n_test)):
        y = _fake_labels(count, 10, seed + len(split))
        x = _fake_images(name, y, 10, 32, seed, part=len(split)).transpose(2, 3, 1, 0)  # H, W, C, N
        y_disk = np.where(y == 0, 10, y).astype(np.uint8)[:, None]  # digit 0 is stored as 10
        scipy.io.savemat(str(out / "svhn" / f"{split}_32x32.mat"), {"X": x, "y": y_disk})


_FAKES = {"cifar10": _fake_cifar, "cifar100": _fake_cifar, "gtsrb": _fake_gtsrb, "stl10": _fake_stl,
          "stl10_unlabeled": _fake_stl, "svhn": _fake_svhn}


def write_fake(name: str, out: Path | str, n: Optional[int] = None, n_test: Optional[int] = None, seed: int = 0,
               layout: str = "original") -> tuple[int, int]:
    """Write a synthetic `name` in its real on-disk format under `out` (real size unless `n` train images)."""
    if name not in _FAKES:
        raise ValueError(f"no fake writer for {name!r}; choose one of: {', '.join(_FAKES)}")
    if layout not in ("original", "rerelease"):
        raise ValueError(f"layout must be original or rerelease, got {layout!r}")
    n, n_test = _counts(name, n, n_test)
    _FAKES[name](name, Path(out), n, n_test, seed, layout=layout)
    return n, n_test


def main(argv: list[str] | None = None) -> None:
    """CLI: convert (with --download: fetch) datasets into the cache, or write fakes with --fake DIR."""
    p = argparse.ArgumentParser(prog="python -m backdoor.data", description=main.__doc__)
    p.add_argument("names", nargs="*", metavar="NAME",  # no choices=: argparse rejects an empty list with them
                   help=f"one of {', '.join(sorted(SOURCES))}; default: what make all reads ({' '.join(MAKE_ALL)})")
    p.add_argument("--download", action="store_true", help="download missing source files")
    p.add_argument("--data-dir", type=Path, default=DATA_DIR)
    p.add_argument("--fake", type=Path, metavar="DIR", help="write synthetic datasets in the real formats to DIR")
    p.add_argument("--n", type=int, help="training images per dataset written by --fake (default: the real size); "
                                         "when converting: expect the sizes that --fake --n N writes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = args.names or list(MAKE_ALL)
    try:
        [_source(name) for name in names]
        check_data_dir(args.fake or args.data_dir)
        _convert(args, names)
    except (DatasetError, ValueError, OSError) as e:
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
        print(f"error: {message}", file=sys.stderr)
        raise UserExit(message) from None


def _convert(args: argparse.Namespace, names: list[str]) -> None:
    """Write fakes (--fake) or convert each named dataset into the cache."""
    for name in names:
        if args.fake:
            n, n_test = write_fake(name, args.fake, args.n, seed=args.seed) if name in _FAKES else (0, 0)
            print(f"{name}: fake train {n} test {n_test} -> {args.fake}")
            continue
        sizes = _counts(name, args.n, None) if args.n is not None and name in _FAKES else None
        d = load_dataset(name, args.data_dir, download=args.download, sizes=sizes)
        print(f"{name}: train {tuple(d.x_train.shape)} test {tuple(d.x_test.shape)} "
              f"classes {d.num_classes} -> {cache_path(name, args.data_dir)}")


if __name__ == "__main__":
    main()
