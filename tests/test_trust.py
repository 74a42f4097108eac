"""A dataset or model file is data, never code; bad inputs fail in one line before work (docs/trust.md).

Each refusal is checked for its one line and exit status 2 and for what it must not have done (a payload's
side effect, a fine-tune started, a file written).
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import pytest

import backdoor.data as bd
from backdoor.errors import USER_ERROR


def _payload(command: str) -> bytes:
    """Protocol-2 opcodes that call os.system(command) and pop its result: harmless in front of a real pickle."""
    cmd = command.encode()
    return b"\x80\x02cposix\nsystem\n" + b"X" + struct.pack("<I", len(cmd)) + cmd + b"\x85R0"


def _one_line(capsys, fn, *args) -> str:
    with pytest.raises(SystemExit) as e:
        fn(*args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == USER_ERROR, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("name,batch", [("cifar10", "data_batch_1"), ("cifar100", "test")])
def test_cifar_batch_with_a_payload_is_refused_and_nothing_runs(tmp_path, capsys, name, batch):
    bd.write_fake(name, tmp_path, n=50)
    folder = bd._CIFAR[name][0]
    f = tmp_path / folder / batch
    real = f.read_bytes()
    flag = tmp_path / "payload-ran"
    f.write_bytes(_payload(f"touch {flag}") + real[2:])  # the real batch follows: a plain load ends with rc 0
    pickle.loads(f.read_bytes())  # the world where the claim is false: a plain unpickler runs it
    assert flag.exists()
    flag.unlink()
    err = _one_line(capsys, bd.main, ["--data-dir", str(tmp_path), "--n", "50", name])
    assert f"refusing {f}" in err and "posix.system" in err
    assert not flag.exists() and not bd.cache_path(name, tmp_path).exists()
    f.write_bytes(real)  # the same batch without the payload is read (numpy 2 arrays, latin1 bytes)
    assert bd.load_dataset(name, tmp_path, sizes=(50, 10)).x_train.shape == (50, 3, 32, 32)


def test_cifar_batch_with_another_codec_or_not_a_dict_is_refused(tmp_path):
    bd.write_fake("cifar10", tmp_path, n=50)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(bd.DatasetInvalid, match="codec 'zlib'"):
        bd.load_dataset("cifar10", tmp_path, sizes=(50, 10))
    f.write_bytes(pickle.dumps([1, 2], protocol=2))
    with pytest.raises(bd.DatasetInvalid, match="holds a list, not a CIFAR batch"):
        bd.load_dataset("cifar10", tmp_path, sizes=(50, 10))


# ---- the trust table (docs/trust.md): every runnable row refuses in one line ---------------------------------

import errno
import json
import os
import runpy
import shlex
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import torch

import defenses
from backdoor import checkpoint as ck
from backdoor import external
from backdoor.checkpoint import CheckpointError, save_checkpoint
from backdoor.models import make_model
from experiments import common, paths
from experiments.profiles import PROFILES, resolve

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "trust.md"


def _tripwire(*_a, **_k):
    raise AssertionError("the long work started before the input was checked")


def _bb(**fields) -> dict:
    torch.manual_seed(0)
    return {"model_name": "preactresnet18", "num_classes": 10, "model": make_model("preactresnet18", 10, 8).state_dict(),
            "clean_data": "cifar10", "img_size": (32, 32, 3), **fields}


def _inflated_zip(path: Path, declared: int = 0xFFFFFFF0) -> Path:
    """A zip with one tiny member whose central directory declares `declared` uncompressed bytes."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"x" * 100)
    blob = bytearray(path.read_bytes())
    at = blob.index(b"PK\x01\x02") + 24  # central directory: uncompressed size
    blob[at: at + 4] = declared.to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    return path


def _sparse_safetensors(path: Path, nbytes: int = 2 * 2**30) -> Path:
    header = json.dumps({"w": {"dtype": "F32", "shape": [nbytes // 4], "data_offsets": [0, nbytes]}}).encode()
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)  # sparse: no disk used
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """$T of docs/trust.md: the hostile and mistaken inputs its table names."""
    t = tmp_path_factory.mktemp("T")
    bd.write_fake("cifar10", t / "cifar", n=50)
    batch = t / "cifar" / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(_payload(f"touch {t / 'payload-ran'}") + batch.read_bytes()[2:])
    (t / "afile").write_text("not a folder")
    for name, fields in {"bb_classes_list": {"num_classes": [10]}, "bb_classes_ten": {"num_classes": "ten"},
                         "bb_img_size": {"img_size": []}, "bb_clean_data": {"clean_data": ["x"]}}.items():
        torch.save(_bb(**fields), t / f"{name}.pt")
    save_checkpoint(t / "arch_string.safetensors", {"model.w": torch.zeros(1)}, {"arch": "preactresnet18"})
    _inflated_zip(t / "inflated.pt")
    _sparse_safetensors(t / "sparse.safetensors")
    torch.save(_bb()["model"], t / "model.pt")
    for defense in ("ft", "sft"):
        out = paths.path("result", t / "results", dataset="digits", attack="badnets", defense=defense)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"before": 3, "final": [], "history": {}}))
    return t


def table_rows() -> list[dict[str, str]]:
    """The rows of docs/trust.md's table as {column: cell} (backticks stripped)."""
    lines = [ln for ln in TABLE.read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(head, (c.strip().strip("`") for c in ln.strip("|").split(" | ")))) for ln in lines[2:]]


def _run_row(command: str, monkeypatch, capsys) -> tuple[int, str]:
    argv = shlex.split(command)
    if argv[0] == "make":
        r = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        return r.returncode, r.stderr.strip()
    assert argv[:2] == ["python", "-m"], command
    monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:]])
    with pytest.raises(SystemExit) as e:
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    return e.value.code, capsys.readouterr().err.strip()


def test_the_trust_table_covers_every_class_and_names_real_tests():
    rows = table_rows()
    assert len(rows) >= 25 and all(set(r) == {"Bad input", "Command", "The one line contains", "Test"} for r in rows)
    source = Path(__file__).read_text()
    missing = [r["Test"] for r in rows if f"def {r['Test']}(" not in source
               and f"def {r['Test']}(" not in (ROOT / "tests" / "test_validation.py").read_text()]
    assert not missing, missing


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy of an imported module
def test_every_row_of_the_trust_table_refuses_in_one_line(hostile, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(defenses, "get_defense", lambda name: _tripwire)
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout (artifacts/, data/)
    ran = 0
    for row in table_rows():
        if row["Command"] == "-":
            continue
        command = row["Command"].replace("$T", str(hostile))
        if command.startswith("make"):
            monkeypatch.chdir(ROOT)
        code, err = _run_row(command, monkeypatch, capsys)
        monkeypatch.chdir(tmp_path)
        assert code == USER_ERROR, (command, code, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (command, err)
        assert row["The one line contains"] in err, (command, err)
        ran += 1
    assert ran >= 18 and not (hostile / "payload-ran").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no artifacts/ or data/ written by a refusal


def test_backdoorbench_fields_name_file_and_field(hostile):
    for name, says in {"bb_classes_list": "field num_classes must be a positive integer, got [10]",
                       "bb_classes_ten": "field num_classes must be a positive integer, got 'ten'",
                       "bb_img_size": "field img_size must be positive ints, e.g. [32, 32, 3], got []",
                       "bb_clean_data": "field clean_data must be a dataset name, got ['x']"}.items():
        with pytest.raises(CheckpointError) as e:
            external.read_model_file(hostile / f"{name}.pt")
        assert str(e.value) == f"{hostile / name}.pt: {says}"
    good = hostile / "bb_good.pt"
    torch.save(_bb(), good)  # the world where the claim is false: a well-formed dict is read with its hints
    mf = external.read_model_file(good)
    assert mf.format == "backdoorbench" and mf.hints["image_size"] == 32 and mf.hints["num_classes"] == 10


def test_oversized_model_files_are_refused_before_reading(hostile, monkeypatch, tmp_path):
    good = tmp_path / "good.pt"
    torch.save(_bb()["model"], good)
    assert external.read_model_file(good).format == "state_dict"
    monkeypatch.setattr(torch, "load", _tripwire)
    monkeypatch.setattr("safetensors.torch.load_file", _tripwire)
    with pytest.raises(CheckpointError, match=r"inflated.pt: it declares 4096 MiB, more than any supported"):
        external.read_model_file(hostile / "inflated.pt")
    with pytest.raises(CheckpointError, match=r"sparse.safetensors: it declares 2048 MiB, more than preactresnet18 "
                                              r"can need \(242 MiB\)"):
        external.read_model_file(hostile / "sparse.safetensors")
    # The same 2 GB declared for an arch that needs it is not refused by size (the reader is reached).
    with pytest.raises(AssertionError, match="before the input was checked"):
        external.read_model_file(hostile / "sparse.safetensors", "vit_h_14")
    # The pickle bound holds the largest classifier we build.
    assert external.state_bytes("vit_h_14") < external.MAX_PICKLE_BYTES < 2 * external.state_bytes("vit_h_14")


def test_data_cache_on_a_full_disk_is_one_line_and_leaves_no_file(tmp_path, monkeypatch, capsys):
    def full(tensors, name, metadata=None):
        Path(name).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full)
    err = _one_line(capsys, bd.main, ["--data-dir", str(tmp_path), "digits"])
    assert f"cannot write the cache {bd.cache_path('digits', tmp_path)} (No space left on device)" in err
    assert list((tmp_path / "cache").iterdir()) == []


def test_defend_out_full_is_refused_before_the_fine_tune(hostile, monkeypatch, capsys, tmp_path):
    from experiments import defend

    monkeypatch.setattr(defend, "get_defense", lambda name: _tripwire)
    monkeypatch.setattr(common.shutil, "disk_usage", lambda d: SimpleNamespace(free=2**20))
    err = _one_line(capsys, defend.main, ["--model", str(hostile / "model.pt"), "--data", "digits",
                                          "--data-dir", str(hostile / "data"), "--out", str(tmp_path / "o")])
    assert f"{tmp_path} has 1 MiB free, this step writes about 2 MiB" in err and not (tmp_path / "o").exists()


def test_no_sidecar_is_left_without_its_weights(tmp_path, monkeypatch):
    real = ck.atomic_write_bytes

    def full_for_weights(path, data):
        if path.suffix == ".safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(ck, "atomic_write_bytes", full_for_weights)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {"a": 1})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ck, "atomic_write_bytes", real)  # and a working disk writes both
    save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_stale_tmp_of_a_dead_writer_is_removed_on_rerun(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that has exited
    stale, live = tmp_path / f".r.json.{dead.pid}.tmp", tmp_path / f".r.json.{os.getppid()}.tmp"
    other = tmp_path / f".s.json.{dead.pid}.tmp"
    for p in (stale, live, other):
        p.write_text("{")
    ck.atomic_write_json(tmp_path / "r.json", {"ok": 1})
    assert not stale.exists() and live.exists() and other.exists()  # a live writer's and another file's stay
    assert json.loads((tmp_path / "r.json").read_text()) == {"ok": 1}


def test_checkpoint_from_another_run_is_refused():
    smoke, other = PROFILES["smoke"], resolve("smoke", ["seed=1", "attack_train.epochs=3"])
    mine = {"profile": "smoke", "overrides": {}, "seed": 0}
    common.check_provenance(mine, "s.json", smoke)
    for meta, field in ((other.stamp(None) | {"seed": 1}, "profile"), ({**mine, "seed": 1}, "seed"),
                        ({**mine, "overrides": {"seed": 1}}, "overrides"), ({"seed": 0}, "profile")):
        with pytest.raises(CheckpointError, match=f"s.json: field {field} is .*this step runs"):
            common.check_provenance(meta, "s.json", smoke)


def test_every_result_names_the_sha256_of_the_checkpoints_it_read(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.ones(3)}, {"a": 1})
    _, meta = ck.load_checkpoint(path)
    common.write_result(tmp_path / "r.json", {"x": 1})
    read = json.loads((tmp_path / "r.json").read_text())["checkpoints_read"]
    assert read[str(path)] == meta["sha256"] == ck.file_sha256(path)
