"""Checkpoints round-trip; tampered, truncated, pickled or mismatched ones are refused."""
from __future__ import annotations

import io
import pickle

import pytest
import torch

from backdoor.attacks import make_attack
from backdoor.checkpoint import CheckpointError, load_checkpoint, load_state_into, save_model, sidecar_path, split
from backdoor.models import make_model


def _saved(tmp_path):
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, width=4, dataset="cifar10")
    path = save_model(tmp_path / "m.safetensors", model, {"arch": {"width": 4}}, make_attack("blended"))
    return model, path


def test_round_trip_restores_identical_outputs_and_attack(tmp_path):
    model, path = _saved(tmp_path)
    tensors, meta = load_checkpoint(path)
    clone = make_model("preactresnet18", 10, width=4, dataset="cifar10")
    load_state_into(clone, split(tensors, "model"))
    x = torch.rand(2, 3, 32, 32)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))
    assert torch.equal(split(tensors, "attack")["key"], make_attack("blended").key)
    assert meta["arch"] == {"width": 4} and len(meta["sha256"]) == 64 and "torch" in meta["env"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left


def test_tampered_weights_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="tampered"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


class _Boom:
    def __reduce__(self):
        return (open, ("PWNED", "w"))


def test_pickle_is_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    pickle.dump(_Boom(), buf)
    for name in ("evil.pt", "evil.safetensors"):
        (tmp_path / name).write_bytes(buf.getvalue())
        sidecar_path(tmp_path / name).write_text('{"sha256": "0"}')
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()


def test_missing_sidecar_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("classes,width", [(43, 4), (10, 8)])
def test_wrong_architecture_or_class_count_fails_clearly(tmp_path, classes, width):
    _, path = _saved(tmp_path)
    tensors, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        load_state_into(make_model("preactresnet18", classes, width=width), split(tensors, "model"))
