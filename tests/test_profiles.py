"""The one Profile tree, typed --set overrides, the one clock, and Fig. 6's charged budget."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from backdoor.models import make_model
from backdoor.train import TrainConfig
from defenses import DefenseContext, get_defense
from experiments import paths
from experiments.profiles import PROFILES, get_profile, profile_from, resolve

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_profile("smoke")


# ---- the tree --------------------------------------------------------------------------------

def test_a_profile_without_an_entry_fails_when_defined():
    # Bug caught: the old preset tables fell back silently to paper settings for a name they lacked.
    no_lf = {a: p for a, p in SMOKE.attack_params.items() if a != "lf"}
    with pytest.raises(ValueError, match=r"attack_params .*missing \['lf'\]"):
        replace(SMOKE, attack_params=no_lf)
    with pytest.raises(ValueError, match=r"defenses .*missing \['nc'\]"):
        replace(SMOKE, defenses={d: c for d, c in SMOKE.defenses.items() if d != "nc"})
    with pytest.raises(ValueError, match="has no parameter"):
        replace(SMOKE, attack_params={**SMOKE.attack_params, "wanet": {"strength": 2.0}})


def test_library_knows_no_profile_name():
    names = "|".join(PROFILES)
    hits = [f"{p}:{i}" for d in ("backdoor", "defenses", "sequela") for p in sorted((ROOT / d).rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(rf"[\"']({names})[\"']", line)]
    assert hits == []


def test_precision_is_a_profile_field_recorded_in_results():
    # paper trains in fp32 as BackdoorBench did; the small profiles keep bf16 autocast (CUDA only).
    paper = get_profile("paper")
    assert not paper.train_config("cifar10").bf16 and not paper.finetune_config("cifar10").bf16
    assert not paper.encoder_config("simclr").bf16
    assert SMOKE.train_config("digits").bf16 and SMOKE.bf16 and not paper.bf16
    # Results record the precision used, not the one asked for: bf16 autocast exists only on CUDA.
    assert SMOKE.stamp(torch.device("cuda"))["precision"] == "bf16"
    assert SMOKE.stamp(torch.device("cpu"))["precision"] == "fp32"
    assert paper.stamp(torch.device("cuda"))["precision"] == "fp32"
    assert SMOKE.stamp(None)["precision"] is None  # a result that ran no model (Fig. 1's LR trace)
    with pytest.raises(ValueError, match="precision 'fp16'; choose one of: fp32, bf16"):
        replace(SMOKE, precision="fp16")


# ---- overrides -------------------------------------------------------------------------------

def test_set_is_typed_and_nested():
    p = resolve("quick", ["finetune_epochs=5", "sft.lr_max1=0.3", "reinject_ratios=0.1,0.01",
                          "defenses.nad.lr=0.002", "attack_params.wanet.s=1.5", "sweeps.sft_epochs=none"])
    assert (p.finetune_epochs, p.sft.lr_max1, p.reinject_ratios) == (5, 0.3, (0.1, 0.01))
    assert p.defenses["nad"].lr == 0.002 and p.attack_params["wanet"] == {"s": 1.5} and p.sweeps.sft_epochs is None
    assert get_profile("quick").finetune_epochs == 20  # the registered profile is untouched
    assert p.finetune_config("cifar10").epochs == 5


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ValueError, match="unknown key 'finetune_epoch'; valid keys here: .*finetune_epochs"):
        resolve("smoke", ["finetune_epoch=5"])
    with pytest.raises(ValueError, match="unknown key 'lr_max3'; valid keys here: lr_base, lr_max1, lr_max2"):
        resolve("smoke", ["sft.lr_max3=0.3"])
    with pytest.raises(ValueError, match="'sft' is a group"):
        resolve("smoke", ["sft=0.3"])


@pytest.mark.parametrize("item,expect", [("finetune_epochs=2.5", "not a valid int"),
                                         ("sft.lr_max1=fast", "not a valid float"),
                                         ("attack_train.flip=maybe", "not a valid bool"),
                                         ("finetune_epochs", "write key=value")])
def test_wrong_type_fails_in_one_line(item, expect):
    with pytest.raises(ValueError, match=expect):
        resolve("smoke", [item])


def test_values_are_still_validated_by_the_configs():
    with pytest.raises(ValueError, match="lr_base <= lr_max2 < lr_max1"):
        resolve("smoke", ["sft.lr_max1=0.0001"])


def test_override_lands_in_its_own_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    args = argparse.Namespace(profile="smoke", set=["finetune_epochs=5", "sft.lr_max1=0.3"])
    prof = profile_from(args)
    assert re.fullmatch(r"smoke\+[0-9a-f]{8}", prof.name) and prof.stamp(None)["overrides"] == {
        "finetune_epochs": 5, "sft.lr_max1": 0.3}
    saved = json.loads((tmp_path / "results" / prof.name / "overrides.json").read_text())
    assert saved == {"base": "smoke", "set": {"finetune_epochs": 5, "sft.lr_max1": 0.3}}
    assert (tmp_path / "checkpoints" / prof.name / "overrides.json").is_file()
    # Same values, other order or spelling: same directory; another value: another one.
    assert resolve("smoke", ["sft.lr_max1=0.30", "finetune_epochs=05"]).name == prof.name
    assert resolve("smoke", ["finetune_epochs=6", "sft.lr_max1=0.3"]).name != prof.name
    assert paths.results(prof.name) != paths.results("smoke")
    assert profile_from(argparse.Namespace(profile="smoke", set=[])) is SMOKE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "results"]


def test_make_set_reaches_every_step_and_its_own_directory(tmp_path):
    stamp = tmp_path / "stamp"
    stamp.touch()  # the venv counts as installed
    r = subprocess.run(["make", "-n", "figure4", "PROFILE=smoke", f"A={tmp_path}", "SET=finetune_epochs=5",
                        f"STAMP={stamp}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    name = resolve("smoke", ["finetune_epochs=5"]).name
    steps = [line for line in r.stdout.splitlines() if "experiments.standalone" in line]
    assert r.returncode == 0, r.stderr
    assert len(steps) == 6 and all("--profile smoke --set finetune_epochs=5" in s for s in steps)
    assert f"{tmp_path}/figures/{name}/figure4.png" in r.stdout and "/smoke/" not in r.stdout
    bad = subprocess.run(["make", "-n", "figure4", "PROFILE=smoke", f"A={tmp_path}", "SET=finetune_epoch=5",
                          f"STAMP={stamp}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "valid keys here" in bad.stderr


# ---- the one clock -----------------------------------------------------------------------------

NAP = 0.15


def _sleepy_ctx(digits, epochs: int) -> DefenseContext:
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, 4)
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.01, crop_pad=0, channels_last=False)

    def evaluate(m: torch.nn.Module) -> dict:
        time.sleep(NAP)
        return {"ca": 0.0, "asr": 0.0}

    return DefenseContext(model, digits.x_train[:64], digits.y_train[:64], cfg, evaluate,
                          params={"sft": SMOKE.sft})


@pytest.mark.parametrize("defense", ["ft", "sft"])
def test_finetuning_time_excludes_its_evaluations(digits, defense):
    # Bug caught: FT/SFT were timed around the whole run, 101 evaluations included.
    ctx = _sleepy_ctx(digits, epochs=3)
    t0 = time.perf_counter()
    result = get_defense(defense)(ctx)
    wall = time.perf_counter() - t0
    charged = result.info["device_hours"] * 3600
    assert wall - charged >= 4 * NAP  # epoch 0 + 3 epochs evaluated, each sleeping NAP, none charged
    cumulative = [r["device_seconds"] for r in result.history]
    assert [r["epoch"] for r in result.history] == [0, 1, 2, 3]
    assert cumulative == sorted(cumulative) and cumulative[-1] <= charged
    # Each epoch's charge is its training time, not the nap after it.
    steps = [b - a for a, b in zip(cumulative, cumulative[1:])]
    assert all(s < r["seconds"] + NAP / 2 for s, r in zip(steps, result.history[1:]))


def test_baseline_stages_share_one_cumulative_clock(digits):
    from defenses.common import Stages, start

    ctx = _sleepy_ctx(digits, epochs=1)
    clock, stages, evaluate = start(ctx)
    stages.run("a", ctx.model, ctx.x_clean, ctx.y_clean, ctx.train, evaluate=evaluate)
    stages.run("b", ctx.model, ctx.x_clean, ctx.y_clean, ctx.train, evaluate=ctx.evaluate)  # raw: monitored in fit
    cumulative = [r["device_seconds"] for r in stages.history]
    assert [r["stage"] for r in stages.history] == ["before", "a", "b"]
    assert cumulative == sorted(cumulative) and clock.excluded >= 5 * NAP  # 1 + 2 + 2 evaluations


# ---- Fig. 6 and the summary charge the profile's budget ------------------------------------------

def _fake_run(root: Path, defense: str, per_epoch: float, epochs: int) -> None:
    d = root / "digits" / "badnets"
    d.mkdir(parents=True, exist_ok=True)
    history = [{"epoch": e, "ca": 0.9, "asr": 0.1, "device_seconds": per_epoch * e} for e in range(epochs + 1)]
    (d / f"{defense}.json").write_text(json.dumps({
        "defense": defense, "before": {"ca": 0.9, "asr": 1.0}, "final": history[-1], "history": history,
        "device_hours": per_epoch * epochs / 3600 + 1e-3, "device": "cpu"}))


def test_figure6_and_summary_charge_the_named_budget(tmp_path):
    from experiments.summary import table
    from figures.figure6 import costs

    _fake_run(tmp_path, "ft", 36.0, 10)
    _fake_run(tmp_path, "sft", 36.0, 10)
    charge = SMOKE.charge_epochs
    assert charge == {"sft": 2}
    hours, _ = costs(tmp_path, ["digits"], ["badnets"], ["ft", "sft"], charge)
    assert hours == {"ft": [0.1 + 1e-3], "sft": [pytest.approx(0.02)]}  # 2 epochs x 36 s; FT in full
    assert costs(tmp_path, ["digits"], ["badnets"], ["sft"])[0] == {"sft": [0.1 + 1e-3]}  # --cost full
    row = table(tmp_path, ["digits"], ["badnets"], charge).splitlines()[2].split()
    assert row[-4:] == ["364", "72", "364", "364"]  # FT charged, SFT @2, FT all, SFT all (seconds)
    with pytest.raises(ValueError, match="no epoch 20"):
        costs(tmp_path, ["digits"], ["badnets"], ["sft"], {"sft": 20})


def test_paper_attack_schedule_is_constant_and_v1s_cosine_is_one_set_away():
    """Sec. 4.4 names lr 0.001 and no schedule (ours: constant); v1's attack default is cosine with T_max 100
    stepped per epoch, which over 200 epochs reaches 0 at epoch 100 and 0.001 again at 200."""
    from experiments.profiles import resolve
    from backdoor.train import make_scheduler

    ours = get_profile("paper").train_config("cifar10")
    assert (ours.schedule, ours.lr, ours.epochs, ours.batch_size) == ("constant", 0.001, 200, 256)
    v1 = resolve("paper", ["attack_train.schedule=cosine", "attack_train.cosine_t_max=100"]).train_config("cifar10")
    assert (v1.schedule, v1.cosine_t_max, v1.lr, v1.epochs) == ("cosine", 100, 0.001, 200)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=v1.lr)
    sched, lrs = make_scheduler(v1)(opt, 1), []  # one step per epoch
    for _ in range(201):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.001 and abs(lrs[100]) < 1e-12 and abs(lrs[200] - 0.001) < 1e-12 and abs(lrs[50] - 0.0005) < 1e-12
