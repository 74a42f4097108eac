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
