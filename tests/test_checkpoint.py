"""Checkpoints round-trip; tampered, truncated, pickled, mismatched or schema-invalid ones are refused.

Files are written in a neutrally named directory (`ck`), never under tmp_path: pytest names tmp_path
after the test, refusals quote the path, and match="truncated" would then match the path, not the refusal.
"""
from __future__ import annotations

import io
import json
import pickle

import pytest
import torch
from PIL import Image

from backdoor.attacks import make_attack
from backdoor.checkpoint import (CheckpointError, load_checkpoint, load_state_into, save_checkpoint, save_model,
                                 sidecar_path, split)
from backdoor.models import make_model
from experiments.common import load_backdoored, read_json

CPU = torch.device("cpu")
SHA = "does not match the SHA-256 in its sidecar: truncated or tampered"


@pytest.fixture
def where(tmp_path_factory):
    return tmp_path_factory.mktemp("ck")


def _model():
    torch.manual_seed(0)
    return make_model("preactresnet18", 10, width=4, dataset="cifar10")


def _meta(attack="badnets", target=0, **arch):
    return {"arch": {"name": "preactresnet18", "num_classes": 10, "width": 4, "dataset": "cifar10", **arch},
            "attack": {"name": attack, "params": {"target": target}}, "device_hours": 0.5,
            "final": {"epoch": 1, "ca": 0.9, "seconds": 3.0}}


def _saved(where):
    model = _model()
    path = save_model(where / "m.safetensors", model, {"arch": {"width": 4}}, make_attack("blended"))
    return model, path


def _backdoored(where, meta=None, attack=None):
    """A checkpoint as `standalone train` writes it (BadNets, target 0 unless `meta` says otherwise)."""
    return save_model(where / "backdoor.safetensors", _model(), meta or _meta(), attack or make_attack("badnets"))


def _edit_sidecar(path, edit):
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta))


def test_round_trip_restores_identical_outputs_and_attack(where):
    model, path = _saved(where)
    tensors, meta = load_checkpoint(path)
    clone = make_model("preactresnet18", 10, width=4, dataset="cifar10")
    load_state_into(clone, split(tensors, "model"))
    x = torch.rand(2, 3, 32, 32)
    model.eval(), clone.eval()
    assert torch.equal(model(x), clone(x))
    assert torch.equal(split(tensors, "attack")["key"], make_attack("blended").key)
    assert meta["arch"] == {"width": 4} and len(meta["sha256"]) == 64 and "torch" in meta["env"]
    assert sorted(p.name for p in where.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left


def test_wall_clock_fields_leave_the_hash_unchanged(where):
    # Two runs of one seeded step differ only in timings and provenance: their SHA-256 must agree
    # (tests/test_slurm.py compares it); signing device_hours would break that.
    a = save_model(where / "a.safetensors", _model(), _meta())
    b = save_model(where / "b.safetensors", _model(), {**_meta(), "device_hours": 9.0,
                                                       "final": {"epoch": 1, "ca": 0.9, "seconds": 99.0}})
    assert load_checkpoint(a)[1]["sha256"] == load_checkpoint(b)[1]["sha256"]


def test_tampered_weights_are_refused(where):
    _, path = _saved(where)
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=SHA):
        load_checkpoint(path)


def test_truncated_file_is_refused(where):
    _, path = _saved(where)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=SHA):
        load_checkpoint(path)


@pytest.mark.parametrize("field,edit", [
    ("attack.params.target", lambda m: m["attack"]["params"].update(target=3)),  # the silent ASR 0.003
    ("arch.width", lambda m: m["arch"].update(width=8)),
    ("arch", lambda m: m.pop("arch")),
    ("poison_ratio", lambda m: m.update(poison_ratio=0.5)),
])
def test_edited_sidecar_field_is_refused_naming_it(where, field, edit):
    path = _backdoored(where, {**_meta(), "poison_ratio": 0.1})
    _edit_sidecar(path, edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert f"field {field} differs from the value recorded in the weights file" in str(e.value)
    assert str(sidecar_path(path)) in str(e.value) and "\n" not in str(e.value)


def test_wall_clock_fields_are_not_covered(where):
    # What the Trust section says is not verified: provenance and timings (they change no computation).
    path = _backdoored(where)
    _edit_sidecar(path, lambda m: (m.update(device_hours=123.0), m["env"].update(torch="0.0")))
    assert load_checkpoint(path)[1]["device_hours"] == 123.0


@pytest.mark.parametrize("meta,message", [
    ({k: v for k, v in _meta().items() if k != "arch"}, "required field arch is missing"),
    (_meta(attack="trojan"), "field attack.name must be one of: badnets, blended, inputaware, lf, wanet, "
                             "got 'trojan'"),
    (_meta(num_classes="ten"), "field arch.num_classes must be a positive integer, got 'ten'"),
    (_meta(num_classes=True), "field arch.num_classes must be a positive integer, got True"),
    (_meta(target=10), "field attack.params.target must be a class index in [0, 10), got 10"),
    ({**_meta(), "attack": ["badnets"]}, "field attack must be a JSON object, got ['badnets']"),
])
def test_schema_invalid_sidecar_fails_in_one_line_naming_file_and_field(where, meta, message):
    # Written so by a foreign or buggy writer (hash and signed copy agree): the schema must catch it.
    path = _backdoored(where, meta)
    with pytest.raises(CheckpointError) as e:
        load_backdoored(path, CPU)
    assert str(e.value) == f"{sidecar_path(path)}: {message}"


def test_sidecar_that_is_a_json_list_names_the_file(where):
    path = _backdoored(where)
    sidecar_path(path).write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="the sidecar must be a JSON object, got a JSON list") as e:
        load_checkpoint(path)
    assert str(e.value).startswith(str(sidecar_path(path)))


def test_invalid_json_names_the_file(where):
    path = _backdoored(where)
    sidecar_path(path).write_text("")
    with pytest.raises(CheckpointError, match="is not valid JSON") as e:
        load_checkpoint(path)
    assert str(e.value).startswith(str(sidecar_path(path)))
    (where / "ft.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON") as e:  # experiments.summary's and figures' reader
        read_json(where / "ft.json")
    assert str(e.value).startswith(str(where / "ft.json"))


def test_tensors_outside_model_and_attack_are_refused(where):
    tensors = {f"model.{k}": v for k, v in _model().state_dict().items()}
    tensors["extra.payload"] = torch.zeros(3)
    path = save_checkpoint(where / "backdoor.safetensors", tensors, _meta())
    with pytest.raises(CheckpointError, match=r"holds tensors outside model\., attack\.: \['extra\.payload'\]"):
        load_backdoored(path, CPU)


def test_int64_weight_is_refused_not_cast(where):
    state = _model().state_dict()
    state["linear.weight"] = state["linear.weight"].round().long()
    with pytest.raises(CheckpointError, match="wrong dtype kind for linear.weight: file torch.int64 vs model "
                                              "torch.float32"):
        load_state_into(_model(), state)


def test_blended_checkpoint_defends_after_its_key_image_moved(where):
    key = torch.randint(0, 256, (40, 50, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    Image.fromarray(key.numpy()).save(where / "key.png")
    attack = make_attack("blended", key_image=str(where / "key.png"))
    path = _backdoored(where, {**_meta("blended"), "attack": {"name": "blended", "params": attack.params()}}, attack)
    (where / "key.png").unlink()
    _, loaded, _ = load_backdoored(path, CPU)
    assert torch.equal(loaded.key, attack.key) and loaded.params() == attack.params()


class _Boom:
    def __reduce__(self):
        return (open, ("PWNED", "w"))


def test_pickle_is_never_unpickled(where, monkeypatch):
    monkeypatch.chdir(where)
    buf = io.BytesIO()
    pickle.dump(_Boom(), buf)
    for name in ("evil.pt", "evil.safetensors"):
        (where / name).write_bytes(buf.getvalue())
        sidecar_path(where / name).write_text('{"sha256": "0"}')
        with pytest.raises(CheckpointError, match="only .safetensors files are loaded|" + SHA):
            load_checkpoint(where / name)
    assert not (where / "PWNED").exists()


def test_missing_sidecar_is_refused(where):
    _, path = _saved(where)
    sidecar_path(path).unlink()
    with pytest.raises(CheckpointError, match="or its sidecar m.json is missing"):
        load_checkpoint(path)


@pytest.mark.parametrize("classes,width", [(43, 4), (10, 8)])
def test_wrong_architecture_or_class_count_fails_clearly(where, classes, width):
    _, path = _saved(where)
    tensors, _ = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not fit this architecture"):
        load_state_into(make_model("preactresnet18", classes, width=width), split(tensors, "model"))


def test_environment_records_the_commit_whether_the_tree_was_dirty_and_the_host(tmp_path, monkeypatch):
    # Catches a provenance block that drops the dirty flag (results from uncommitted code look committed).
    import platform
    import subprocess
    from backdoor.checkpoint import environment
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (repo / "f").write_text("a")
    git("add", "f")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.chdir(repo)
    clean = environment()
    (repo / "f").write_text("b")
    dirty = environment()
    assert clean["git"] and clean["git_dirty"] is False and dirty["git_dirty"] is True
    assert clean["host"] == platform.node()
    monkeypatch.chdir(tmp_path)
    assert environment()["git"] is None and environment()["git_dirty"] is None
