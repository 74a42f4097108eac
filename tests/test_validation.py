"""Bad input fails in one line, with exit status 2, before any long work; a concurrent rerun waits and skips.

Steps are run in-process (standalone.main, runpy) with the expensive parts replaced by tripwires,
so each test proves the check comes *before* the work, at the cost of an import.
"""
from __future__ import annotations

import errno
import os
import runpy
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backdoor.attacks import make_attack
from backdoor.attacks.training import train_backdoored
from backdoor.checkpoint import atomic_write_bytes
from backdoor.models import make_model
from backdoor.poison import check_ratio, poison_indices
from backdoor.train import TrainConfig, fit
from experiments import common, paths, standalone
from experiments.profiles import PROFILES
from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--profile", "smoke", "--dataset", "digits", "--attack"]


def _tripwire(*_a, **_k):
    raise AssertionError("the long work started before the input was checked")


@pytest.fixture
def step(monkeypatch, digits, tmp_path_factory):
    """standalone.main(argv) -> its one stderr line; training and defences are tripwires."""
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path_factory.mktemp("art"))
    monkeypatch.setattr(standalone, "load_data", lambda name, prof=None: digits)
    monkeypatch.setattr(standalone, "train_backdoored", _tripwire)

    def run(argv: list[str], capsys) -> str:
        with pytest.raises(SystemExit) as e:
            standalone.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == common.USER_ERROR, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err.strip()

    return run


def _bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A 60-byte PNG that declares a width x height image (a decompression bomb if decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ---- output directory: checked before training, write errors in one line -------------------------------

def test_unwritable_artifacts_dir_fails_before_training(step, capsys, monkeypatch, tmp_path_factory):
    blocker = tmp_path_factory.mktemp("ro") / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(paths, "ARTIFACTS", blocker / "artifacts")  # a path below a file: mkdir fails
    err = step(TRAIN + ["badnets"], capsys)
    assert err.startswith(f"error: cannot write to {blocker}/artifacts/checkpoints/smoke/digits/badnets")


def test_full_disk_fails_before_training(step, capsys, monkeypatch):
    monkeypatch.setattr(common.shutil, "disk_usage", lambda p: SimpleNamespace(free=1024))
    err = step(TRAIN + ["badnets"], capsys)
    assert "has 0 MiB free, this step writes about" in err


def test_failed_write_keeps_its_error_when_the_cleanup_fails_too(monkeypatch, tmp_path):
    def no_space(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "write_bytes", no_space)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert e.value.errno == errno.ENOSPC  # not the cleanup's EROFS chained on top


def test_oserror_in_a_step_is_one_line_with_exit_2(capsys):
    def step(_):
        raise OSError(errno.EROFS, "Read-only file system", "/ro/backdoor.safetensors")

    with pytest.raises(SystemExit) as e:
        common.run_main(step, None)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: Read-only file system: /ro/backdoor.safetensors\n"


# ---- names, numbers, files and devices ------------------------------------------------------------------

def test_unknown_profile_stops_make_at_the_first_line(tmp_path):
    env = fresh_make_env()
    r = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), f"A={tmp_path}", "figure4",
                        "PROFILE=nonsense"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and r.stdout == "", r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "PROFILE=nonsense: unknown profile 'nonsense'; choose one of:" in lines[0], lines
    assert all(name in lines[0] for name in PROFILES)


def test_target_class_outside_the_dataset_fails_before_training(digits):
    model = make_model("preactresnet18", digits.num_classes, width=4)
    with pytest.raises(ValueError, match=r"target class 10 does not exist in digits \(10 classes: 0\.\.9\)"):
        train_backdoored(make_attack("badnets", target=10), model, digits,
                         TrainConfig(epochs=1, batch_size=64, crop_pad=0), 0.1, 0)


@pytest.mark.parametrize("module,flag,value", [
    ("experiments.lr_schedule", "--epochs", "-1"),  # main: exit 0 and an empty trace that crashes Figure 1
    ("experiments.lr_schedule", "--epochs", "0"),  # main: silently 10
    ("experiments.bench", "--batch", "0"),  # main: silently 128
    ("experiments.bench", "--epochs", "0"),  # main: IndexError
])
def test_cli_numbers_below_one_are_refused_before_any_work(module, flag, value, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, flag, value, "--out", str(tmp_path / "lr.json")]
                        if module.endswith("lr_schedule") else [module, flag, value])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(module, run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: must be >= 1, got {value}" in err, err
    assert not (tmp_path / "lr.json").exists()


def test_training_for_zero_epochs_is_refused():
    # Catches: fit handing back the untrained model as if trained (a defence's 0-epoch stage opts in).
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    x, y = torch.zeros(4, 3, 4, 4, dtype=torch.uint8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"fit: epochs must be >= 1, got 0 \(0 would return the model untrained\)"):
        fit(model, x, y, TrainConfig(epochs=0, crop_pad=0))
    with pytest.raises(ValueError, match="TrainConfig.epochs must be >= 0, got -1"):
        TrainConfig(epochs=-1)


@pytest.mark.parametrize("ratio", ["abc", None, float("nan"), 1.5, True])
def test_poison_ratio_that_is_no_number_in_0_1_is_one_clear_error(ratio):
    with pytest.raises(ValueError, match=r"poison ratio must be a number in \[0, 1\], got "):
        check_ratio(ratio)
    with pytest.raises(ValueError, match="poison ratio must be a number"):
        poison_indices(10, ratio)


def test_key_image_that_is_not_an_image_is_one_line(step, capsys, tmp_path):
    (tmp_path / "key.png").write_text("not an image")
    err = step(TRAIN + ["blended", "--key-image", str(tmp_path / "key.png")], capsys)
    assert err == f"error: key image {tmp_path}/key.png is not a readable image (UnidentifiedImageError); " \
                  "pass a PNG or JPEG with --key-image"


@pytest.mark.parametrize("width,height,says", [(10000, 5000, "is 10000x5000 pixels"),  # PIL only warns here
                                               (20000, 20000, "declares a decompression bomb")])
def test_decompression_bomb_key_image_is_refused_before_decoding(step, capsys, tmp_path, width, height, says):
    bomb = _bomb_png(tmp_path / "bomb.png", width, height)
    err = step(TRAIN + ["blended", "--key-image", str(bomb)], capsys)
    assert err == f"error: key image {bomb} {says}, over the 40 MP limit; pass a smaller RGB image with --key-image"
    with pytest.raises(ValueError, match="over the 40 MP limit"):  # the library, too
        make_attack("blended", key_image=str(bomb))


def test_key_image_with_another_attack_is_one_line(step, capsys, tmp_path):
    err = step(TRAIN + ["badnets", "--key-image", str(tmp_path / "k.png")], capsys)
    assert err == "error: --key-image is a Blended setting; attack 'badnets' takes no key image"
    err = step(["defend", *TRAIN[1:], "blended", "--defense", "ft", "--key-image", "k.png"], capsys)
    assert err == ("error: --key-image and --lf-pattern are for `train` only; `defend` uses the trigger stored in "
                   "the checkpoint")


def test_data_dir_that_is_a_file_or_unreadable_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "data").write_text("")
    with pytest.raises(ValueError, match=f"DATA_DIR={tmp_path}/data is a file, not a directory"):
        common.check_data_dir(tmp_path / "data")
    monkeypatch.setattr(common.os, "access", lambda path, mode: False)  # root can read anything: simulate
    with pytest.raises(ValueError, match=f"DATA_DIR={tmp_path} is not readable and writable by this user"):
        common.check_data_dir(tmp_path)


def test_data_dir_is_checked_by_every_step_that_loads_data(tmp_path, monkeypatch):
    monkeypatch.setattr(common._data, "DATA_DIR", tmp_path / "f")
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        common.load_data("digits")


@pytest.mark.parametrize("name,message", [
    ("gpu0", "--device 'gpu0' is not a device; use cpu, cuda or cuda:N"),
    ("cuda", "--device cuda: no CUDA GPU is visible here; use --device cpu (or leave it out)"),
    ("cuda:1", "--device cuda:1: no CUDA GPU is visible here"),
])
def test_bad_device_is_one_line(name, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU box
    with pytest.raises(ValueError) as e:
        common.resolve_device(name)
    assert str(e.value).startswith(message)


def test_bad_device_on_the_cli_exits_2_before_work(step, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert step(TRAIN + ["badnets", "--device", "cuda"], capsys).startswith("error: --device cuda: no CUDA GPU")


# ---- two concurrent runs of one step --------------------------------------------------------------------

STEP = '''import sys, time
from pathlib import Path
out, runs = Path(sys.argv[1]), Path(sys.argv[2])
with runs.open("a") as f:
    f.write("run\\n")
time.sleep(2.0)
out.write_text("done")
'''


def test_concurrent_runs_of_one_step_wait_then_skip(tmp_path):
    (tmp_path / "fake_step.py").write_text(STEP)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    target, runs = tmp_path / "out" / "result.json", tmp_path / "runs.txt"
    cmd = [sys.executable, "-m", "experiments.launch", "--target", str(target), "--locks", str(tmp_path / "locks"),
           "--", "fake_step", str(target), str(runs)]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not runs.exists():  # the first holds the lock once its step has started
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=120) == 0 and second.returncode == 0, second.stderr
    assert runs.read_text() == "run\n" and target.read_text() == "done"  # the step ran once
    assert list(target.parent.iterdir()) == [target]  # the lock lives under --locks, not beside the output
    assert "was built by another run while this one waited; skipping" in second.stderr
    third = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and runs.read_text() == "run\nrun\n"  # no one waiting: a rerun runs


def test_lf_patterns_folder_without_a_good_file_for_the_dataset_is_one_line(step, capsys, tmp_path):
    """LF_PATTERNS= (--lf-patterns): the dataset's file by BackdoorBench's name; missing or malformed -> one line."""
    err = step(TRAIN + ["lf", "--lf-patterns", str(tmp_path)], capsys)
    assert err == (f"error: --lf-patterns {tmp_path}: no digits_preactresnet18_0_255.npy there; put BackdoorBench's "
                   "resource/lowFrequency/digits_preactresnet18_0_255.npy (one file per dataset) in that folder")
    np.save(tmp_path / "digits_preactresnet18_0_255.npy", np.zeros((16, 16, 3), dtype=np.uint8))
    err = step(TRAIN + ["lf", "--lf-patterns", str(tmp_path)], capsys)
    assert err.startswith(f"error: LF pattern {tmp_path}/digits_preactresnet18_0_255.npy has shape (16, 16, 3); need")
    (tmp_path / "digits_preactresnet18_0_255.npy").write_text("not numpy")
    err = step(TRAIN + ["lf", "--lf-patterns", str(tmp_path)], capsys)
    assert err == (f"error: LF pattern file {tmp_path}/digits_preactresnet18_0_255.npy is not a numpy array "
                   "(ValueError); pass BackdoorBench's .npy (uint8, 32x32x3)")
    err = step(TRAIN + ["wanet", "--lf-patterns", str(tmp_path)], capsys)
    assert err == "error: --lf-pattern(s) is an LF setting; attack 'wanet' takes no pattern file"
