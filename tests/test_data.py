"""Tests for backdoor.data: digits conversion, cache, errors, and the real torchvision paths
on tiny files written in each dataset's own on-disk format."""

from __future__ import annotations

import csv
import hashlib
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision import datasets as tvd

from backdoor import data as bd


def _check_types(d: bd.ImageData) -> None:
    for x in (d.x_train, d.x_test):
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous()
    for y in (d.y_train, d.y_test):
        assert y.dtype == torch.int64 and y.ndim == 1
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test)


def _fail_if_called(data_dir, download):
    raise AssertionError("source loader called although the cache should be used")


# ---------------------------------------------------------------- digits + cache


def test_digits_shapes_classes_and_split(tmp_path):
    d = bd.load_dataset("digits", tmp_path)
    _check_types(d)
    assert d.name == "digits" and d.num_classes == 10
    assert d.x_train.shape == (1400, 3, 32, 32) and d.x_test.shape == (397, 3, 32, 32)
    assert set(d.y_train.tolist()) == set(range(10)) == set(d.y_test.tolist())
    # grayscale replicated to 3 channels, full [0,255] range used
    assert torch.equal(d.x_train[:, 0], d.x_train[:, 1]) and torch.equal(d.x_train[:, 0], d.x_train[:, 2])
    assert d.x_train.min() == 0 and d.x_train.max() == 255

    raw = load_digits()
    # the split the spec fixes, derived independently of the module
    idx_tr, idx_te = train_test_split(np.arange(1797), test_size=397, random_state=0, stratify=raw.target)
    assert all(np.array_equal(a, b) for a, b in zip(bd.digits_split_indices(raw.target), (idx_tr, idx_te)))
    assert len(set(idx_tr) & set(idx_te)) == 0 and len(idx_tr) + len(idx_te) == 1797
    assert torch.equal(d.y_train, torch.as_tensor(raw.target[idx_tr]))
    assert torch.equal(d.y_test, torch.as_tensor(raw.target[idx_te]))
    # images sit at their own source index: 4x4 average-pooling roughly undoes the upsampling,
    # so the nearest 8x8 original is (almost always: near-twins exist) the image's own source
    orig = torch.as_tensor(raw.images, dtype=torch.float32).flatten(1) * 255 / 16
    for x, idx in ((d.x_train, idx_tr), (d.x_test, idx_te)):
        pooled = torch.nn.functional.avg_pool2d(x[:, :1].float(), 4).flatten(1)
        nearest = torch.cdist(pooled, orig).argmin(1)
        assert (nearest == torch.as_tensor(idx)).float().mean() > 0.99


def test_digits_split_is_deterministic(tmp_path):
    a = bd.load_dataset("digits", tmp_path / "a")
    b = bd.load_dataset("digits", tmp_path / "b")
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, k), getattr(b, k))


def test_cache_created_and_reused(tmp_path, monkeypatch):
    first = bd.load_dataset("digits", tmp_path)
    path = tmp_path / "cache" / "digits.safetensors"
    assert path.is_file() and path == bd.cache_path("digits", tmp_path)
    assert not path.with_name(path.name + ".tmp").exists()
    monkeypatch.setitem(bd.DATASETS, "digits", _fail_if_called)
    second = bd.load_dataset("digits", tmp_path)
    assert second.num_classes == 10 and second.name == "digits"
    for k in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, k), getattr(second, k))
        assert getattr(second, k).dtype == getattr(first, k).dtype


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_corrupt_cache_is_rebuilt(tmp_path, caplog, corruption):
    good = bd.load_dataset("digits", tmp_path)
    path = bd.cache_path("digits", tmp_path)
    if corruption == "garbage":
        path.write_bytes(b"\x00\xffnot a safetensors file" * 10)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="backdoor.data"):
        again = bd.load_dataset("digits", tmp_path)
    assert any("rebuilding" in r.getMessage() for r in caplog.records)
    assert torch.equal(again.x_train, good.x_train) and torch.equal(again.y_test, good.y_test)
    bd._read_cache(path, "digits")  # the rebuilt file is valid again


def test_interrupted_cache_write_leaves_no_cache_file(tmp_path, monkeypatch):
    import safetensors.torch

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        bd.load_dataset("digits", tmp_path)
    assert not bd.cache_path("digits", tmp_path).exists()


# ---------------------------------------------------------------- errors


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError) as e:
        bd.load_dataset("foo", tmp_path)
    msg = str(e.value)
    assert "foo" in msg and "\n" not in msg
    for name in ("cifar10", "cifar100", "digits", "gtsrb"):
        assert name in msg
    assert set(bd.DATASETS) == {"cifar10", "cifar100", "digits", "gtsrb", "stl10", "stl10_unlabeled", "svhn"}


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "gtsrb"])
def test_missing_dataset_says_make_data(tmp_path, name):
    with pytest.raises(bd.DatasetMissing) as e:
        bd.load_dataset(name, tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert f"make data DATASETS={name}" in msg and "\n" not in msg
    assert not bd.cache_path(name, tmp_path).exists()


# ---------------------------------------------------------------- CIFAR on-disk format


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj) -> str:
    # str keys: the original py2 pickles decode to str keys under torchvision's encoding="latin1"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return _md5(path)


def _images(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _check_cifar(d: bd.ImageData, x_tr, y_tr, x_te, y_te, num_classes: int) -> None:
    _check_types(d)
    assert d.num_classes == num_classes
    assert torch.equal(d.x_train, torch.from_numpy(x_tr)) and torch.equal(d.x_test, torch.from_numpy(x_te))
    assert d.y_train.tolist() == list(y_tr) and d.y_test.tolist() == list(y_te)
    # spot-check one pixel against the CHW-flattened row as stored on disk
    c, h, w = 2, 5, 17
    assert d.x_train[3, c, h, w] == x_tr.reshape(len(x_tr), -1)[3, c * 1024 + h * 32 + w]


def test_cifar10_real_conversion(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    x_tr, x_te = _images(rng, 10), _images(rng, 3)
    y_tr, y_te = rng.integers(0, 10, 10).tolist(), [9, 0, 4]
    train_list = []
    for b in range(5):  # 2 images per batch, in batch order
        sl = slice(2 * b, 2 * b + 2)
        entry = {"batch_label": f"batch {b+1}", "labels": y_tr[sl], "data": x_tr[sl].reshape(2, -1)}
        train_list.append([f"data_batch_{b+1}", _pickle(root / f"data_batch_{b+1}", entry)])
    test_md5 = _pickle(root / "test_batch", {"labels": y_te, "data": x_te.reshape(3, -1)})
    meta_md5 = _pickle(root / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_md5})

    d = bd.load_dataset("cifar10", tmp_path)
    assert d.name == "cifar10"
    _check_cifar(d, x_tr, y_tr, x_te, y_te, 10)
    # the cache now serves it even with the source gone
    for f in root.iterdir():
        f.unlink()
    _check_cifar(bd.load_dataset("cifar10", tmp_path), x_tr, y_tr, x_te, y_te, 10)


def test_cifar100_real_conversion(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    x_tr, x_te = _images(rng, 6), _images(rng, 4)
    y_tr, y_te = [99, 0, 42, 7, 7, 63], [1, 98, 50, 0]
    tr_md5 = _pickle(root / "train", {"fine_labels": y_tr, "coarse_labels": [0] * 6, "data": x_tr.reshape(6, -1)})
    te_md5 = _pickle(root / "test", {"fine_labels": y_te, "coarse_labels": [0] * 4, "data": x_te.reshape(4, -1)})
    meta_md5 = _pickle(root / "meta", {"fine_label_names": [f"f{i}" for i in range(100)], "coarse_label_names": []})
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", tr_md5]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", te_md5]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": meta_md5})

    d = bd.load_dataset("cifar100", tmp_path)
    assert d.name == "cifar100"
    _check_cifar(d, x_tr, y_tr, x_te, y_te, 100)


def test_cifar_corrupted_file_is_missing(tmp_path, monkeypatch):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for f in ("train", "test", "meta"):
        (root / f).write_bytes(b"truncated download")
    with pytest.raises(bd.DatasetMissing):
        bd.load_dataset("cifar100", tmp_path)


# ---------------------------------------------------------------- GTSRB on-disk format

BORDER, INNER = (255, 0, 0), (0, 0, 255)


def _sign(color, size=(40, 36)) -> Image.Image:
    """A solid sign with a 4-px red border: a whole-image resize keeps the border, an ROI crop would not."""
    w, h = size
    a = np.empty((h, w, 3), np.uint8)
    a[:] = BORDER
    a[4:-4, 4:-4] = color
    return Image.fromarray(a)


def test_gtsrb_real_conversion(tmp_path):
    base = tmp_path / "gtsrb"
    train_dir, test_dir = base / "GTSRB" / "Training", base / "GTSRB" / "Final_Test" / "Images"
    train = [(0, (10, 20, 30)), (0, (11, 21, 31)), (1, (40, 50, 60)), (2, (70, 80, 90))]
    for i, (label, color) in enumerate(train):
        folder = train_dir / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        _sign(color).save(folder / f"00000_{i:05d}.ppm")
    # the real training folders also hold a per-class csv, which must be ignored
    (train_dir / "00000" / "GT-00000.csv").write_text("Filename;ClassId\n")
    test = [(42, (1, 2, 3), (45, 50)), (7, (200, 100, 0), (31, 29))]
    test_dir.mkdir(parents=True)
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        cols = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
        wr = csv.writer(f, delimiter=";")
        wr.writerow(cols)
        for i, (label, color, size) in enumerate(test):
            _sign(color, size).save(test_dir / f"{i:05d}.ppm")
            wr.writerow([f"{i:05d}.ppm", *size, 5, 5, size[0] - 5, size[1] - 5, label])

    d = bd.load_dataset("gtsrb", tmp_path)
    _check_types(d)
    assert d.name == "gtsrb" and d.num_classes == 43
    assert d.x_train.shape == (4, 3, 32, 32) and d.x_test.shape == (2, 3, 32, 32)
    assert d.y_train.tolist() == [0, 0, 1, 2] and d.y_test.tolist() == [42, 7]
    for x, colors in ((d.x_train, [c for _, c in train]), (d.x_test, [c for _, c, _ in test])):
        for img, color in zip(x, colors):
            assert img[:, 16, 16].tolist() == list(color)  # centre keeps the sign colour
            assert img[:, 0, 0].tolist() == list(BORDER)  # corner keeps the border: no crop
    # bilinear (PIL) resize of the whole image
    ref = np.asarray(Image.open(test_dir / "00000.ppm").convert("RGB").resize((32, 32), Image.BILINEAR))
    assert torch.equal(d.x_test[0], torch.from_numpy(ref.copy()).permute(2, 0, 1))
