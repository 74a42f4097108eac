"""Defending a model trained elsewhere (experiments/defend.py, backdoor/external.py).

The session's BadNets digits model (tests/conftest.py `badnets_digits`: width 8, Adam, 8 epochs, shared with
tests/test_defenses.py) is exported as our checkpoint, a plain state dict and a BackdoorBench
attack_result.pt; SFT runs in full on one of them and briefly on each.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from backdoor.checkpoint import save_model
from backdoor.data import load_dataset
from backdoor.external import load_image_folder, read_model_file
from backdoor.models import make_model
from backdoor.poison import poisoned_test_set
from experiments.defend import main

WIDTH, TARGET = 8, 0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("defend_data")
    load_dataset("digits", data_dir=d)
    return d


@pytest.fixture(scope="session")
def files(badnets_digits, tmp_path_factory):
    """The session's BadNets digits model (tests/conftest.py) exported in the three accepted layouts."""
    bd = badnets_digits
    d = tmp_path_factory.mktemp("models")
    state = bd.model.state_dict()
    ours = save_model(d / "backdoor.safetensors", bd.model,
                      {"arch": {"name": "preactresnet18", "num_classes": 10, "width": WIDTH, "dataset": "digits"}})
    torch.save(state, d / "model.pt")
    torch.save(backdoorbench_layout(state, bd.idx.numpy(), len(bd.xp), d), d / "attack_result.pt")
    return SimpleNamespace(ours=ours, pt=d / "model.pt", bb=d / "attack_result.pt", state=state, final=bd.final,
                           digits=bd.data, attack=bd.attack, dir=d)


def backdoorbench_layout(state: dict, poison_idx: np.ndarray, n: int, d: Path) -> dict:
    """What BackdoorBench's save_attack_result writes (utils/save_load_attack.py, bd_dataset_v2.py
    retrieve_state, poisoned images saved to disk): its PreActResNet18 has no normalisation buffers."""
    indicator = np.zeros(n)
    indicator[poison_idx] = 1

    def bd_state(folder: str) -> dict:
        data_dict = {np.int64(i): {"path": f"{d}/{folder}/{i}.png", "other_info": [TARGET, 3]} for i in poison_idx}
        return {"bd_data_container": {"save_folder_path": f"{d}/{folder}", "data_dict": data_dict,
                                      "save_file_format": ".png"},
                "getitem_all": True, "getitem_all_switch": False, "original_index_array": np.arange(n),
                "poison_indicator": indicator, "save_folder_path": f"{d}/{folder}"}

    return {"model_name": "preactresnet18", "num_classes": 10,
            "model": {k: v for k, v in state.items() if k not in ("mean", "std")}, "data_path": "./data/digits",
            "img_size": [32, 32, 3], "clean_data": "digits", "bd_train": bd_state("bd_train_dataset"),
            "bd_test": bd_state("bd_test_dataset")}


def defend(data_dir: Path, out: Path, *argv: str, guard: bool = False) -> dict:
    """Run the CLI; return its report. Without `guard`, LR_MAX1 is the demo's 0.1 (the guard's probes skipped)."""
    # CPU, as the fixture: on CUDA, bf16 inference could move the exact before-values compared below.
    lr = [] if guard else ["--set", "sft.lr_max1=0.1"]
    main(["--data-dir", str(data_dir), "--out", str(out), "--profile", "demo", "--device", "cpu", *lr, *argv])
    name = argv[argv.index("--defense") + 1] if "--defense" in argv else "sft"
    return json.loads((out / f"{name}.report.json").read_text())


def fails(data_dir: Path, out: Path, *argv: str) -> str:
    """Run the CLI expecting a one-line user error; nothing may be written."""
    with pytest.raises(SystemExit) as e:
        main(["--data-dir", str(data_dir), "--out", str(out), *argv])
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    assert not out.exists()
    return msg


# ---- loading -------------------------------------------------------------------------------------


def test_three_layouts_load_the_same_weights(files):
    # Catches a loader that drops, renames or re-normalises tensors for one layout (e.g. BackdoorBench's
    # missing mean/std buffers filled with the wrong statistics).
    from backdoor.external import build_model

    norm = ((0.0,) * 3, (1.0,) * 3)
    loaded = {f: read_model_file(getattr(files, f)) for f in ("ours", "pt", "bb")}
    assert {f: m.format for f, m in loaded.items()} == {"ours": "checkpoint", "pt": "state_dict", "bb": "backdoorbench"}
    assert loaded["bb"].hints == {"arch": "preactresnet18", "num_classes": 10, "image_size": 32}
    models = {f: build_model(m, "preactresnet18", 10, norm).state_dict() for f, m in loaded.items()}
    for f, state in models.items():
        assert state.keys() == files.state.keys(), f
        assert all(torch.equal(state[k], files.state[k]) for k in state), f


def test_sft_from_a_plain_state_dict_removes_the_backdoor(files, data_dir, tmp_path, capsys):
    # The claim end to end: SFT (demo profile's schedule) on the user's clean digits. 6 of the
    # demo's 10 epochs: phase 1 (peak LR 0.1) ends after epoch 5, by when CA is back (measured, OMP 1, seed 0 /
    # every torch seed +1: CA 0.987 -> 0.982 / 0.980 -> 0.990, ASR 0.983 -> 0.000 / 0.975 -> 0.000). Half of the
    # digits (700 images, same 6 epochs) was measured at CA 0.924, 0.053 below: too close, so all 1,400.
    r = defend(data_dir, tmp_path / "out", "--model", str(files.pt), "--data", "digits", "--defense", "sft",
               "--trigger", "badnets", "--target", str(TARGET), "--epochs", "6")
    before, after = r["before"], r["after"]
    lines = capsys.readouterr().out.splitlines()
    print(f"\nsft from {files.pt.name}: before {before}, after {after}")
    assert before["ca"] == pytest.approx(files.final["ca"]) and before["asr"] >= 0.9, before
    assert after["asr"] <= 0.2 and after["ca"] >= before["ca"] - 0.05, after
    assert r["device_seconds"] > 0 and r["format"] == "state_dict"
    start = next(i for i, line in enumerate(lines) if line.startswith("before:  CA "))
    assert "ASR" in lines[start] and lines[start + 1].startswith("after:   CA ")
    # The defended model is our checkpoint and reloads to the reported CA/ASR.
    again = defend(data_dir, tmp_path / "again", "--model", str(tmp_path / "out" / "sft.safetensors"),
                   "--data", "digits", "--trigger", "badnets", "--epochs", "1")
    assert again["before"]["ca"] == pytest.approx(after["ca"]) and again["before"]["asr"] == pytest.approx(after["asr"])


@pytest.mark.parametrize("layout", ["ours", "pt", "bb"])
def test_short_sft_runs_from_each_layout(files, data_dir, tmp_path, layout):
    # Same weights from each layout, so the suspect model's CA/ASR match the trained model's exactly.
    r = defend(data_dir, tmp_path, "--model", str(getattr(files, layout)), "--data", "digits",
               "--trigger", "badnets", "--epochs", "1", "--fraction", "0.3")
    assert r["before"]["ca"] == pytest.approx(files.final["ca"])
    assert r["before"]["asr"] == pytest.approx(files.final["asr"])
    assert len(r["history"]) == 2 and r["clean_images"] == 420
    tensors = read_model_file(tmp_path / "sft.safetensors").state
    assert not torch.equal(tensors["linear.weight"], files.state["linear.weight"])  # it trained


def test_torchvision_resnet18_state_dict_is_defended(data_dir, tmp_path, capsys):
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    r = defend(data_dir, tmp_path / "out", "--model", str(tmp_path / "resnet18.pth"), "--arch", "resnet18",
               "--data", "digits", "--norm", "imagenet", "--epochs", "2", "--fraction", "0.2", "--batch-size", "32")
    print(f"\nresnet18: before {r['before']}, after {r['after']}")
    assert [h["epoch"] for h in r["history"]] == [0, 1, 2] and all(h["seconds"] > 0 for h in r["history"][1:])
    assert set(r["after"]) == {"ca"} and 0.0 <= r["after"]["ca"] <= 1.0
    assert r["norm"] == [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
    out = read_model_file(tmp_path / "out" / "sft.safetensors")
    assert out.hints["arch"] == "resnet18"
    changed = [k for k in state if state[k].is_floating_point() and not torch.equal(out.state[k], state[k])]
    assert "fc.weight" in changed and "conv1.weight" in changed  # the whole model was fine-tuned
    assert "CA " in capsys.readouterr().out


# ---- unsafe files ----------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates a directory: the proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def malicious_files(d: Path, marker: Path) -> list[Path]:
    files = []
    for ext in (".pt", ".pth", ".bin", ".safetensors"):
        p = d / f"evil{ext}"
        torch.save({"conv1.weight": torch.zeros(1), "x": Payload(marker)}, p)
        files.append(p)
    legacy = d / "legacy.pt"  # a bare pickle, not torch's zip layout
    legacy.write_bytes(pickle.dumps({"w": Payload(marker)}))
    bb = d / "attack_result.pt"  # BackdoorBench's layout with a payload inside its data entries
    torch.save({"model_name": "preactresnet18", "num_classes": 10, "model": {"w": torch.zeros(1)},
                "bd_train": {"data_dict": {0: Payload(marker)}}}, bb)
    module = d / "module.pt"  # a whole pickled module: needs its class, i.e. code
    torch.save(nn.Linear(2, 2), module)
    return files + [legacy, bb, module]


def test_malicious_pickles_are_refused_and_never_run(data_dir, tmp_path):
    marker = tmp_path / "pwned"
    for path in malicious_files(tmp_path, marker):
        msg = fails(data_dir, tmp_path / "out", "--model", str(path), "--data", "digits")
        # BackdoorBench's layout (found in the pickle's bytes, not unpickled) gets BackdoorBench's export recipe.
        recipe = "BackdoorBench's own environment" if path.name == "attack_result.pt" else "torch.save(model.state_dict()"
        assert str(path) in msg and recipe in msg, msg
        if path.suffix != ".safetensors":
            assert "would run code" in msg, msg
        assert not marker.exists(), f"payload ran while loading {path.name}"


# ---- one-line errors, nothing written --------------------------------------------------------------


def test_user_errors_are_one_line_and_write_nothing(files, data_dir, tmp_path):
    out = tmp_path / "out"
    torch.manual_seed(0)
    five = make_model("preactresnet18", 5, WIDTH).state_dict()
    torch.save(five, tmp_path / "five.pt")
    msg = fails(data_dir, out, "--model", str(tmp_path / "five.pt"), "--data", "digits")
    assert "key 'linear.weight': file (5, 64) vs model (10, 64)" in msg and msg.endswith("the file fits --num-classes 5")
    msg = fails(data_dir, out, "--model", str(files.pt), "--data", "digits", "--num-classes", "5")
    assert "the model has 5 classes but digits has 10" in msg, msg
    msg = fails(data_dir, out, "--model", str(files.pt), "--data", "digits", "--arch", "resnet18")
    assert "does not fit resnet18 with 10 classes: key 'conv1.weight': file (8, 3, 3, 3) vs model (64, 3, 7, 7)" in msg
    assert msg.endswith("; the file fits --arch preactresnet18"), msg  # a value that fits, not generic advice
    msg = fails(data_dir, out, "--model", str(files.pt), "--data", "digits", "--arch", "resnet19")
    assert "unknown architecture 'resnet19'" in msg and "preactresnet18" in msg and "vgg16_bn" in msg
    msg = fails(data_dir, out, "--model", str(tmp_path / "nope.pt"), "--data", "digits")
    assert "nope.pt not found" in msg
    (tmp_path / "cut.pt").write_bytes(files.pt.read_bytes()[:5000])  # an interrupted download
    msg = fails(data_dir, out, "--model", str(tmp_path / "cut.pt"), "--data", "digits")
    assert "cannot be read as a torch.save file" in msg and "truncated" in msg
    msg = fails(data_dir, out, "--model", str(files.pt), "--data", "digits", "--trigger", "wanet")
    assert "learnt by the attack run" in msg
    msg = fails(data_dir, out, "--model", str(files.pt), "--data", "digits", "--trigger", "blended",
                "--key-image", str(tmp_path / "missing.png"))
    assert "key image" in msg


def write_folder(root: Path, x: torch.Tensor, y: torch.Tensor, flat: bool = False) -> Path:
    """PNG files in class sub-folders named by label (or all at the top when `flat`)."""
    for i, (img, label) in enumerate(zip(x, y)):
        sub = root if flat else root / str(int(label))
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(sub / f"{i}.png")
    return root


def test_image_folder_errors(files, data_dir, tmp_path):
    cache = data_dir / "cache"
    before = sorted(cache.iterdir())
    (tmp_path / "empty" / "0").mkdir(parents=True)
    msg = fails(data_dir, tmp_path / "out", "--model", str(files.pt), "--data", str(tmp_path / "empty"),
                "--test-data", "digits")
    assert "holds no images" in msg
    d = files.digits
    keep = d.y_test != 7
    write_folder(tmp_path / "no7", d.x_test[keep][:60], d.y_test[keep][:60])
    msg = fails(data_dir, tmp_path / "out", "--model", str(files.pt), "--data", str(tmp_path / "no7"),
                "--test-data", "digits")
    assert "does not cover the model's 10 classes" in msg and "missing labels [7]" in msg, msg
    msg = fails(data_dir, tmp_path / "out", "--model", str(files.pt), "--data", str(tmp_path / "no7"),
                "--holdout", "1")
    assert "--holdout must be in (0, 1), got 1.0" in msg
    assert sorted(cache.iterdir()) == before  # no half-converted cache either


def test_image_folder_converts_exactly_once_and_trigger_folder_matches_trigger(files, data_dir, tmp_path,
                                                                               monkeypatch):
    d = files.digits
    train = write_folder(tmp_path / "train", d.x_test[:200], d.y_test[:200])
    classes = {str(c): c for c in range(10)}
    x, y = load_image_folder(train, 32, classes, tmp_path / "cache")
    order = sorted(range(200), key=lambda i: (str(int(d.y_test[i])), f"{i}.png"))  # rglob order: class, name
    assert torch.equal(x, d.x_test[:200][order]) and torch.equal(y, d.y_test[:200][order])
    import backdoor.external as ext

    monkeypatch.setattr(ext, "_read_image", lambda *a: pytest.fail("converted twice"))
    assert torch.equal(load_image_folder(train, 32, classes, tmp_path / "cache")[0], x)
    monkeypatch.undo()
    # Already-triggered test images give exactly the ASR of the named trigger on the same images.
    x_bd, _ = poisoned_test_set(d.x_test, d.y_test, files.attack)
    trig = write_folder(tmp_path / "triggered", x_bd, torch.zeros(len(x_bd)), flat=True)
    r = defend(data_dir, tmp_path / "out", "--model", str(files.pt), "--data", str(train), "--test-data", "digits",
               "--trigger-folder", str(trig), "--target", str(TARGET), "--epochs", "1")
    assert r["clean_images"] == 200 and set(r["before"]) == {"ca", "asr"}
    assert r["before"]["asr"] == pytest.approx(files.final["asr"])
    assert r["before"]["ca"] == pytest.approx(files.final["ca"])


def test_make_defend_passes_the_flags():
    # make/defend.mk alone, with the Makefile's variables stubbed (the full Makefile runs Python at parse time)
    # and the layout read as the Makefile reads it (experiments/paths.py, stdlib only).
    layout = subprocess.run([sys.executable, "-m", "experiments.paths", "make"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split()
    make = ["make", "-n", "--no-print-directory", "-f", str(ROOT / "make" / "defend.mk"), "RUN=RUN --target $@",
            "STAMP=", "PROFILE=paper", "A=artifacts", "SETFLAGS=--set sft.lr_max1=0.03", *(f"--eval={w}" for w in layout)]
    out = subprocess.run(make + ["defend", "MODEL=m.pt", "DATA=digits", "TRIGGER=badnets", "FRACTION=0.2"],
                         capture_output=True, text=True, cwd=ROOT).stdout
    # One CPU thread unless told, the lock is the model file's, SET reaches the step; the output folder is
    # experiments/defend.py's (out_stem), so two attack_result.pt files do not share one.
    assert " ".join(out.replace("\\\n", " ").split()) == ("OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} RUN --target " + str(ROOT / "m.pt") +
                           " experiments.defend --model m.pt --data digits --defense sft --profile paper "
                           "--set sft.lr_max1=0.03 --fraction 0.2 --trigger badnets"), out
    err = subprocess.run(make + ["defend", "DATA=digits"], capture_output=True, text=True)
    assert err.returncode != 0 and "make defend needs MODEL=" in err.stderr
