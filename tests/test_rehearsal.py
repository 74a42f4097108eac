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
from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]
MAKE_ENV = fresh_make_env(OMP_NUM_THREADS="1")


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
    env = MAKE_ENV
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


SLICE_FIGS = ("figure1 figure4 summary table1 figure5 figure6 figure3 figure7 figure8 figure9 figure2 figure10 "
              "figure11")
# One dataset per scenario, one attack, one point per sweep axis beside the full-set one: every figure type.
SLICE_SET = ("sweeps.fractions=0.1,1.0 sweeps.ft_lrs=0.001 sweeps.lr_max1s=0.1 sweeps.downstream=cifar10 "
             "reinject_ratios=0.1 encoder.pretrain_sets=cifar10 encoder.downstream_sets=stl10")


@pytest.mark.slow
def test_ci_slice_of_the_rehearsal_writes_every_figure_type(tmp_path):
    """Catches a step of `make all PROFILE=rehearsal` that breaks on the real on-disk formats (fakes, 500 images)
    or a figure type that no longer builds; ~61 processes, over the 3-minute CI budget, hence slow."""
    data, art = tmp_path / "data", tmp_path / "art"
    env = MAKE_ENV
    common = ["make", "--no-print-directory", f"A={art}"]
    subprocess.run(common + ["fake-data", f"FAKE_DIR={data}", "FAKE_N=500"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    run = subprocess.run(common + ["-j", "2", f"FIGS={SLICE_FIGS}", "figure-files", "PROFILE=rehearsal",
                                   "DATASETS=cifar10", "ATTACKS=badnets", "T1_ATTACKS=badnets", f"SET={SLICE_SET}",
                                   f"DATA_DIR={data}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (figdir,) = (art / "figures").iterdir()  # rehearsal+<hash of SLICE_SET>
    pngs = sorted(p.stem for p in figdir.glob("*.png"))
    assert pngs == sorted(f for f in SLICE_FIGS.split() if f != "summary")
    assert all((figdir / f"{p}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    summary = (art / "results" / figdir.name / "summary.txt").read_text()
    assert "cifar10" in summary and "badnets" in summary


class _Counting(nn.Module):
    """A linear classifier that counts the images it is shown."""

    def __init__(self):
        super().__init__()
        self.fc, self.seen = _tiny(), 0

    def forward(self, x):
        self.seen += len(x)
        return self.fc(x)


def test_nc_trigger_search_and_ssl_loop_obey_the_cap():
    """Catches a stage loop of its own (NC's search, SimCLR/BadEncoder's run_epochs) that ignores max_steps."""
    from backdoor.ssl import run_epochs
    from defenses.nc import NCConfig, reverse_engineer

    x = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    train = TrainConfig(crop_pad=0, max_steps=2)
    model = _Counting()
    reverse_engineer(model, x, 0, NCConfig(epochs=3, batch_size=8, early_stop_patience=99), train)
    assert model.seen == 3 * 2 * 8  # 3 epochs x 2 capped batches of 8 (uncapped: 3 x 40)
    net = _Counting()
    run_epochs(net, x, replace(train, epochs=2, batch_size=8),
               lambda xb, gen: (net(xb).square().mean(), {}), list(net.parameters()))
    assert net.seen == 2 * 2 * 8


def test_eval_indices_are_class_balanced_seeded_and_sorted():
    """Catches an evaluation subset that is unbalanced, drawn anew per call, or not capped by small classes."""
    from experiments.common import eval_indices

    labels = torch.arange(100).repeat_interleave(100)[torch.randperm(10_000, generator=torch.Generator().manual_seed(1))]
    idx = eval_indices(labels, 512, seed=0)
    counts = torch.bincount(labels[idx], minlength=100)
    assert len(idx) == len(idx.unique()) == 512 and sorted(counts.tolist()) == [5] * 88 + [6] * 12
    assert torch.equal(idx, eval_indices(labels, 512, seed=0)) and torch.equal(idx, idx.sort().values)
    assert not torch.equal(idx, eval_indices(labels, 512, seed=1))
    uneven = torch.tensor([0] * 3 + [1] * 50 + [2] * 50 + [3] * 50)  # a small class gives its share to the others
    assert torch.bincount(uneven[eval_indices(uneven, 40, seed=0)]).tolist() == [3, 12, 12, 13]
    assert torch.equal(eval_indices(uneven, 10_000, seed=0), torch.arange(153))
    with pytest.raises(ValueError, match="eval_images must be >= 1"):
        eval_indices(uneven, 0, seed=0)


def test_load_data_cuts_only_the_test_split_and_only_when_the_profile_says(monkeypatch, digits):
    """Catches a cap applied to the training split, to the paper profile, or without the profile's seed."""
    from experiments import common

    monkeypatch.setattr(common, "load_dataset", lambda name: digits)
    paper = PROFILES["paper"]
    assert paper.eval_images is None and PROFILES["rehearsal"].eval_images == 512
    full = common.load_data("digits", paper)
    assert full.x_test is digits.x_test and common.load_data("digits").x_test is digits.x_test
    cut = common.load_data("digits", replace(paper, eval_images=50))
    assert torch.bincount(cut.y_test).tolist() == [5] * 10 and cut.x_train is digits.x_train
    idx = common.eval_indices(digits.y_test, 50, paper.seed)
    assert torch.equal(cut.x_test, digits.x_test[idx]) and torch.equal(cut.y_test, digits.y_test[idx])


def test_every_step_that_evaluates_loads_its_data_with_the_profile():
    """Catches a step whose evaluations would ignore eval_images: a `load_data(name)` call without the profile
    that is not a training-split read (`.x_train`), MIA's whole-test-split members/non-members or Table 1's image."""
    import ast

    allowed = {("sequela", "mia"), ("table1", "collect")}
    bare = []
    for mod in ("standalone", "sequela", "transfer", "ablations", "encoder", "table1"):
        tree = ast.parse((ROOT / "experiments" / f"{mod}.py").read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for fn in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for call in [n for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "load_data"]:
                parent = parents[call]
                train_only = isinstance(parent, ast.Attribute) and parent.attr == "x_train"
                if len(call.args) < 2 and not train_only and (mod, fn.name) not in allowed:
                    bare.append(f"{mod}.{fn.name}:{call.lineno}")
    assert bare == []
