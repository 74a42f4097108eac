"""PROFILE=rehearsal: the same steps as `make all PROFILE=paper`, and the per-epoch step cap it relies on."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from backdoor.train import TrainConfig, fit, steps_per_epoch
from experiments.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]


def normalised_steps(text: str, profile: str) -> list[str]:
    """`make -n` lines with the profile's name (a whole word: --profile X, artifacts/.../X/) replaced."""
    return [re.sub(rf"\b{re.escape(profile)}\b", "<PROFILE>", line) for line in text.splitlines()]


def step_diff(a: list[str], b: list[str]) -> list[str]:
    """Lines in one list and not the other (multiset difference, both ways), '-' for a and '+' for b."""
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    return sorted([f"- {s}" for s in (ca - cb).elements()] + [f"+ {s}" for s in (cb - ca).elements()])


@pytest.fixture(scope="module")
def dry_runs() -> dict[str, list[str]]:
    """`make -n -B all` per profile, both at once (each make reads profile fields through Python: ~30 s)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {p: subprocess.Popen(["make", "-n", "-B", "all", f"PROFILE={p}"], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for p in ("paper", "rehearsal")}
    out = {p: proc.communicate()[0] for p, proc in procs.items()}
    for p, proc in procs.items():
        assert proc.returncode == 0, f"make -n all PROFILE={p} failed:\n{out[p][-2000:]}"
    return {p: normalised_steps(text, p) for p, text in out.items()}


def test_rehearsal_runs_the_steps_of_make_all_paper(dry_runs):
    """Catches a step (a figure, dataset, sweep point, ratio) that one profile's `make all` has and the other lacks."""
    assert step_diff(dry_runs["paper"], dry_runs["rehearsal"]) == []
    paper = PROFILES["paper"]
    trains = [s for s in dry_runs["rehearsal"] if "experiments.standalone train" in s]
    # the list is the real one, not an empty or truncated output: one backdoored model per dataset x attack
    assert len(trains) == len(paper.datasets) * len(paper.attacks)


def test_step_diff_names_the_step_only_one_side_has():
    """The comparison itself: an added (or duplicated) step shows up, a renamed profile does not."""
    paper = normalised_steps("run --profile paper --out a/paper/x.json\nplot a/paper/x.json", "paper")
    reh = normalised_steps("run --profile rehearsal --out a/rehearsal/x.json\nplot a/rehearsal/x.json", "rehearsal")
    assert step_diff(paper, reh) == []
    assert step_diff(paper, reh + [reh[1]]) == ["+ plot a/<PROFILE>/x.json"]
    assert step_diff(paper + ["extra"], reh) == ["- extra"]


def test_rehearsal_keeps_papers_points_and_caps_every_stage():
    """Catches a rehearsal that drops a dataset/attack/defence/sweep point/ratio, or a stage left uncapped."""
    paper, reh = PROFILES["paper"], PROFILES["rehearsal"]
    for f in ("datasets", "attacks", "reinject_ratios", "precision", "poison_ratio", "target", "seed"):
        assert getattr(reh, f) == getattr(paper, f), f
    assert set(reh.defenses) == set(paper.defenses) and set(reh.attack_params) == set(paper.attack_params)
    budgets = ("transfer_epochs", "ft_epochs", "sft_epochs")
    assert replace(reh.sweeps, **{b: None for b in budgets}) == replace(paper.sweeps, **{b: None for b in budgets})
    assert reh.sweeps.sft_epochs is None and reh.sweeps.ft_epochs <= reh.finetune_epochs
    enc = ("pretrain_sets", "downstream_sets")
    assert [getattr(reh.encoder, f) for f in enc] == [getattr(paper.encoder, f) for f in enc]
    stages = [reh.train_config(d) for d in reh.datasets] + [reh.finetune_config(d) for d in reh.datasets]
    stages += [reh.encoder_config(s) for s in ("simclr", "badencoder", "downstream")]
    assert {c.max_steps for c in stages} == {2}
    assert {paper.encoder_config(s).max_steps for s in ("simclr", "badencoder", "downstream")} == {None}
    assert paper.train_config("cifar10").max_steps is None


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def _fit_steps(cfg: TrainConfig) -> tuple[list[int], nn.Module]:
    x = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(40) % 3
    seen: list[int] = []

    def hook(xb, yb, step):
        seen.append(step)
        return xb, yb

    model = _tiny()
    fit(model, x, y, cfg, batch_hook=hook)
    return seen, model


def test_max_steps_caps_the_batches_of_every_epoch():
    """Catches a cap that is ignored, applied once instead of per epoch, or off by one."""
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1, crop_pad=0, channels_last=False)
    assert _fit_steps(cfg)[0] == list(range(15))  # 40 / 8 = 5 batches x 3 epochs
    assert _fit_steps(replace(cfg, max_steps=2))[0] == [0, 1, 2, 3, 4, 5]
    assert steps_per_epoch(40, 8, drop_last=False, max_steps=2) == 2 and steps_per_epoch(40, 8, max_steps=9) == 5


def test_a_cap_at_or_above_an_epoch_changes_nothing():
    """Catches a cap that perturbs training when it does not bind (every other profile must stay bit-identical)."""
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.1, crop_pad=0, channels_last=False)
    a, b = _fit_steps(cfg)[1], _fit_steps(replace(cfg, max_steps=5))[1]
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="max_steps=0"):
        TrainConfig(max_steps=0)
