"""Tests for backdoor.data: digits conversion, cache, errors, each reader on tiny hand-written files in the
dataset's own on-disk format, the fake writers (small n), and the size check that refuses other releases."""

from __future__ import annotations

import csv
import dataclasses
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from backdoor import data as bd


def _check_types(d: bd.ImageData) -> None:
    for x in (d.x_train, d.x_test):
        assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1:] == (3, 32, 32)
        assert x.is_contiguous()
    for y in (d.y_train, d.y_test):
        assert y.dtype == torch.int64 and y.ndim == 1
    assert len(d.x_train) == len(d.y_train) and len(d.x_test) == len(d.y_test)


def _fail_if_called(data_dir, sizes):
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
    monkeypatch.setitem(bd.SOURCES, "digits", dataclasses.replace(bd.SOURCES["digits"], read=_fail_if_called))
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


@pytest.mark.parametrize("name", bd.MAKE_ALL)
def test_missing_dataset_says_make_data(tmp_path, name):
    with pytest.raises(bd.DatasetMissing) as e:
        bd.load_dataset(name, tmp_path)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert f"make data DATASETS={name}" in msg and "\n" not in msg
    assert not bd.cache_path(name, tmp_path).exists()


# ---------------------------------------------------------------- CIFAR on-disk format


def _pickle(path: Path, obj) -> None:
    # str keys: the original py2 pickles decode to str keys under encoding="latin1"
    path.write_bytes(pickle.dumps(obj, protocol=2))


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


def test_cifar10_real_conversion(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    x_tr, x_te = _images(rng, 10), _images(rng, 3)
    y_tr, y_te = rng.integers(0, 10, 10).tolist(), [9, 0, 4]
    for b in range(5):  # 2 images per batch, in batch order
        sl = slice(2 * b, 2 * b + 2)
        entry = {"batch_label": f"batch {b+1}", "labels": y_tr[sl], "data": x_tr[sl].reshape(2, -1)}
        _pickle(root / f"data_batch_{b+1}", entry)
    _pickle(root / "test_batch", {"labels": y_te, "data": x_te.reshape(3, -1)})

    d = bd.load_dataset("cifar10", tmp_path, sizes=(10, 3))
    assert d.name == "cifar10"
    _check_cifar(d, x_tr, y_tr, x_te, y_te, 10)
    # the cache now serves it even with the source gone
    for f in root.iterdir():
        f.unlink()
    _check_cifar(bd.load_dataset("cifar10", tmp_path), x_tr, y_tr, x_te, y_te, 10)


def test_cifar100_real_conversion(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    x_tr, x_te = _images(rng, 6), _images(rng, 4)
    y_tr, y_te = [99, 0, 42, 7, 7, 63], [1, 98, 50, 0]
    _pickle(root / "train", {"fine_labels": y_tr, "coarse_labels": [0] * 6, "data": x_tr.reshape(6, -1)})
    _pickle(root / "test", {"fine_labels": y_te, "coarse_labels": [0] * 4, "data": x_te.reshape(4, -1)})

    d = bd.load_dataset("cifar100", tmp_path, sizes=(6, 4))
    assert d.name == "cifar100"
    _check_cifar(d, x_tr, y_tr, x_te, y_te, 100)


def test_cifar_truncated_batch_names_the_archive(tmp_path):
    bd.write_fake("cifar10", tmp_path, n=20)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    _refused(tmp_path, "cifar10", "cifar-10-python.tar.gz", "data_batch_3", sizes=(20, 4))
    bd.write_fake("cifar10", tmp_path, n=20)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()  # a missing split: DatasetMissing
    with pytest.raises(bd.DatasetMissing, match="test_batch is missing; run: make data DATASETS=cifar10"):
        bd.load_dataset("cifar10", tmp_path, sizes=(20, 4))


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
    train_dir, test_dir = base / "GTSRB" / "Final_Training" / "Images", base / "GTSRB" / "Final_Test" / "Images"
    train = [(0, (10, 20, 30)), (0, (11, 21, 31)), (1, (40, 50, 60)), (2, (70, 80, 90))]
    for i, (label, color) in enumerate(train):
        folder = train_dir / f"{label:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        _sign(color).save(folder / f"00000_{i:05d}.ppm")
    # each class folder lists its images in GT-000NN.csv (a stray .ppm not listed there is not read)
    for label in (0, 1, 2):
        rows = [f"00000_{i:05d}.ppm;40;36;5;5;34;30;{lab}" for i, (lab, _) in enumerate(train) if lab == label]
        (train_dir / f"{label:05d}" / f"GT-{label:05d}.csv").write_text(
            "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n" + "\n".join(rows) + "\n")
    _sign((9, 9, 9)).save(train_dir / "00001" / "stray.ppm")
    test = [(42, (1, 2, 3), (45, 50)), (7, (200, 100, 0), (31, 29))]
    test_dir.mkdir(parents=True)
    with open(base / "GT-final_test.csv", "w", newline="") as f:
        cols = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]
        wr = csv.writer(f, delimiter=";")
        wr.writerow(cols)
        for i, (label, color, size) in enumerate(test):
            _sign(color, size).save(test_dir / f"{i:05d}.ppm")
            wr.writerow([f"{i:05d}.ppm", *size, 5, 5, size[0] - 5, size[1] - 5, label])

    d = bd.load_dataset("gtsrb", tmp_path, sizes=(4, 2))
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


# ---------------------------------------------------------------- size check, wrong releases, truncation


def _refused(data_dir: Path, name: str, *needles: str, sizes=None) -> str:
    """Loading fails with one line naming each needle, and nothing is cached."""
    with pytest.raises(bd.DatasetError) as e:
        bd.load_dataset(name, data_dir, sizes=sizes)
    msg = str(e.value)
    assert "\n" not in msg and f"make data DATASETS={name}" in msg, msg
    for needle in needles:
        assert needle in msg, msg
    assert not bd.cache_path(name, data_dir).exists() and not list(Path(data_dir).glob("cache/*.tmp"))
    return msg


@pytest.mark.parametrize("name, archive", [("cifar10", "cifar-10-python.tar.gz"), ("cifar100", "cifar-100-python.tar.gz"),
                                           ("gtsrb", "GTSRB_Final_Training_Images.zip"), ("stl10", "stl10_binary.tar.gz"),
                                           ("stl10_unlabeled", "stl10_binary.tar.gz"), ("svhn", "train_32x32.mat")])
def test_small_fake_refused_by_size_check_unless_sizes_given(tmp_path, name, archive):
    """A release of another size (a partial copy, torchvision's re-released GTSRB) is refused, not trained on."""
    n, n_test = bd.write_fake(name, tmp_path, n=60)
    real = bd.SOURCES[name].sizes
    msg = _refused(tmp_path, name, archive, f"found 60 train / {n_test} test", f"{real[0]:,} / {real[1]:,}")
    d = bd.load_dataset(name, tmp_path, sizes=(n, n_test))
    assert (len(d.x_train), len(d.x_test)) == (60, n_test) == (len(d.y_train), len(d.y_test))
    assert msg.startswith(f"{name}: ")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "gtsrb", "stl10", "svhn"])
def test_fake_class_signal_is_learnable_and_shared_by_train_and_test(tmp_path, name):
    """Catches fakes whose test images come from other class patterns than the training images (a nearest
    class-mean classifier fit on train must classify test almost perfectly)."""
    n, n_test = bd.write_fake(name, tmp_path, n=400 if name != "cifar100" else 1000, n_test=200)
    d = bd.load_dataset(name, tmp_path, sizes=(n, n_test))
    k = d.num_classes
    assert set(d.y_train.tolist()) == set(range(k)) and d.y_test.min() >= 0 and d.y_test.max() < k
    means = torch.stack([d.x_train[d.y_train == c].float().mean(0) for c in range(k)]).flatten(1)
    pred = torch.cdist(d.x_test.float().flatten(1), means).argmin(1)
    assert (pred == d.y_test).float().mean() > 0.95
    # ... and the noise half is real noise: images of one class differ from each other
    same = d.x_train[d.y_train == d.y_train[0]]
    assert not torch.equal(same[0], same[1])


def test_fake_writer_is_seeded(tmp_path):
    bd.write_fake("svhn", tmp_path / "a", n=30, seed=3)
    bd.write_fake("svhn", tmp_path / "b", n=30, seed=3)
    bd.write_fake("svhn", tmp_path / "c", n=30, seed=4)
    a, b, c = ((tmp_path / s / "svhn" / "train_32x32.mat").read_bytes() for s in "abc")
    assert a == b and a != c


def test_fake_real_sizes_are_the_documented_ones():
    """write_fake(n=None) writes exactly what the size check expects (checked without writing 4 GB)."""
    for name in bd.MAKE_ALL:
        assert bd._counts(name, None, None) == bd.SOURCES[name].sizes
    assert bd._counts("gtsrb", 3921, None) == (3921, 1264)  # n scales the test split: 12,630 x 0.1000..., rounded up
    assert bd.SOURCES["gtsrb"].sizes == (39209, 12630) and bd.SOURCES["svhn"].sizes == (73257, 26032)


def test_gtsrb_original_layout_reads_per_class_csv(tmp_path):
    n, n_test = bd.write_fake("gtsrb", tmp_path, n=129)
    train = tmp_path / "gtsrb" / "GTSRB" / "Final_Training" / "Images"
    assert sorted(p.name for p in train.iterdir()) == [f"{c:05d}" for c in range(43)]
    first = (train / "00007" / "GT-00007.csv").read_text().splitlines()
    assert first[0] == "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId" and first[1].startswith("00000_00000.ppm;")
    assert (tmp_path / "gtsrb" / "GT-final_test.csv").is_file()
    d = bd.load_dataset("gtsrb", tmp_path, sizes=(n, n_test))
    counts = torch.bincount(d.y_train, minlength=43)
    assert counts.sum() == 129 and counts.min() >= 1
    # read in class-folder order, each folder in its csv's order
    assert torch.equal(d.y_train, torch.sort(d.y_train).values)


def test_gtsrb_rerelease_layout_refused_naming_the_original_archive(tmp_path):
    bd.write_fake("gtsrb", tmp_path, n=86, layout="rerelease")
    assert (tmp_path / "gtsrb" / "GTSRB" / "Training" / "00000" / "GT-00000.csv").is_file()
    _refused(tmp_path, "gtsrb", "re-released", "GTSRB-Training_fixed.zip", "fetch GTSRB_Final_Training_Images.zip",
             sizes=(86, 9))


def test_gtsrb_size_checked_before_decoding_any_image(tmp_path, monkeypatch):
    """A wrong-sized GTSRB fails from the csv files alone, before 50k images are decoded."""
    bd.write_fake("gtsrb", tmp_path, n=50)
    monkeypatch.setattr(bd, "_read_ppms", lambda items: pytest.fail("decoded images before the size check"))
    _refused(tmp_path, "gtsrb", "found 50 train / 17 test", "39,209 / 12,630")


@pytest.mark.parametrize("damage", ["missing_ppm", "truncated_ppm", "missing_class_csv", "missing_test_gt"])
def test_gtsrb_incomplete_archive_names_what_to_fetch(tmp_path, damage):
    bd.write_fake("gtsrb", tmp_path, n=86)
    root = tmp_path / "gtsrb"
    ppm = root / "GTSRB" / "Final_Training" / "Images" / "00003" / "00000_00000.ppm"
    if damage == "missing_ppm":
        ppm.unlink()
        needles = ("00000_00000.ppm is missing or unreadable", "GTSRB_Final_Training_Images.zip")
    elif damage == "truncated_ppm":
        ppm.write_bytes(ppm.read_bytes()[:40])
        needles = ("00000_00000.ppm is missing or unreadable",)
    elif damage == "missing_class_csv":
        (ppm.parent / "GT-00003.csv").unlink()
        needles = ("GT-00003.csv is missing",)
    else:
        (root / "GT-final_test.csv").unlink()
        needles = ("GT-final_test.csv not found", "GTSRB_Final_Test_GT.zip")
    _refused(tmp_path, "gtsrb", *needles, sizes=(86, 28))


def test_stl10_truncated_binary_refused(tmp_path):
    bd.write_fake("stl10", tmp_path, n=20, n_test=10)
    f = tmp_path / "stl10_binary" / "test_X.bin"
    f.write_bytes(f.read_bytes()[:-100])
    _refused(tmp_path, "stl10", "test_X.bin", "truncated", "stl10_binary.tar.gz", sizes=(20, 10))


def test_stl10_labels_must_match_images(tmp_path):
    bd.write_fake("stl10", tmp_path, n=20, n_test=10)
    f = tmp_path / "stl10_binary" / "train_y.bin"
    f.write_bytes(f.read_bytes()[:15])
    _refused(tmp_path, "stl10", "train_y.bin holds 15 labels for 20 images", sizes=(20, 10))


def test_svhn_truncated_mat_refused(tmp_path):
    bd.write_fake("svhn", tmp_path, n=20, n_test=10)
    f = tmp_path / "svhn" / "train_32x32.mat"
    f.write_bytes(f.read_bytes()[:3000])
    _refused(tmp_path, "svhn", "train_32x32.mat is unreadable", sizes=(20, 10))


def test_cache_of_an_older_loader_is_rebuilt(tmp_path, caplog):
    """A cache written before the version key (e.g. GTSRB from torchvision's re-release) is not served."""
    from safetensors.torch import save_file

    good = bd.load_dataset("digits", tmp_path)
    path = bd.cache_path("digits", tmp_path)
    old = {k: getattr(good, k)[:5].contiguous() for k in ("x_train", "y_train", "x_test", "y_test")}
    save_file(old, str(path), metadata={"name": "digits", "num_classes": "10"})
    with caplog.at_level(logging.WARNING, logger="backdoor.data"):
        again = bd.load_dataset("digits", tmp_path)
    assert len(again.x_train) == 1400 and any("rebuilding" in r.getMessage() for r in caplog.records)


def test_cli_fake_then_convert_defaults_to_everything_make_all_reads(tmp_path, capsys):
    bd.main(["--fake", str(tmp_path), "--n", "50"])
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines()] == list(bd.MAKE_ALL)
    assert set(bd.MAKE_ALL) == {"cifar10", "cifar100", "gtsrb", "stl10", "stl10_unlabeled", "svhn"}
    with pytest.raises(SystemExit) as e:  # real loaders read the fakes; their size is refused in one line
        bd.main(["--data-dir", str(tmp_path), "cifar100"])
    assert str(e.value).startswith("cifar100: found 50 train / 10 test images") and "\n" not in str(e.value)
    bd.main(["--data-dir", str(tmp_path), "--n", "50", "cifar100", "gtsrb"])  # small fakes: expect --fake --n's sizes
    assert bd.load_dataset("gtsrb", tmp_path).x_test.shape == (17, 3, 32, 32)  # served from the cache now


@pytest.mark.slow
def test_full_size_fake_gtsrb_yields_39209_original_and_refuses_rerelease(tmp_path):
    """At the real size (51,839 .ppm files; ~20 s to write, ~30 s to read on 2 cores): the documented counts."""
    assert bd.write_fake("gtsrb", tmp_path / "orig") == (39209, 12630)
    d = bd.load_dataset("gtsrb", tmp_path / "orig")
    assert d.x_train.shape == (39209, 3, 32, 32) and d.x_test.shape == (12630, 3, 32, 32)
    assert torch.bincount(d.y_train, minlength=43).min() >= 1
    bd.write_fake("gtsrb", tmp_path / "re", n=26640, layout="rerelease")
    _refused(tmp_path / "re", "gtsrb", "re-released", "GTSRB_Final_Training_Images.zip")


def test_failed_download_is_one_line_naming_the_archive(tmp_path, monkeypatch):
    def offline(data_dir):
        raise OSError("<urlopen error [Errno -3]\n Temporary failure in name resolution>")

    monkeypatch.setitem(bd.SOURCES, "svhn", dataclasses.replace(bd.SOURCES["svhn"], download=offline))
    with pytest.raises(bd.DatasetInvalid) as e:
        bd.load_dataset("svhn", tmp_path, download=True)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("svhn: downloading train_32x32.mat + test_32x32.mat failed (OSError")
    assert not bd.cache_path("svhn", tmp_path).exists()
