"""Seeds (SET="seeds=0,1"): each seed runs where SET="seed=s" writes, the combined outputs go to the seeds
profile's own directory, summary and report give mean +- sample std (ddof=1) and n, Fig. 4 draws the mean with a
min-max band, and `make -n figure4` lists every seed's steps. No training here: fake result files only."""
from __future__ import annotations

import argparse
import json
import math
import runpy
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

import figures.style  # noqa: E402
from experiments import report  # noqa: E402
from experiments.profiles import profile_from, resolve, seed_runs  # noqa: E402
from experiments.summary import spread, spread_text, table  # noqa: E402
from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# ---- seed -> directory ----------------------------------------------------------------------------

def test_each_seed_writes_where_its_seed_override_writes():
    sets = ["seeds=0,1", "finetune_epochs=5"]
    runs = seed_runs("smoke", sets)
    assert runs == [(0, resolve("smoke", ["finetune_epochs=5", "seed=0"]).name),
                    (1, resolve("smoke", ["seed=1", "finetune_epochs=5"]).name)]
    combined = resolve("smoke", sets).name
    names = {combined, runs[0][1], runs[1][1], "smoke", resolve("smoke", ["finetune_epochs=5"]).name}
    assert len(names) == 5  # seed 0 is not the default profile's run, the combination is neither seed's
    assert resolve("smoke", ["seeds=0,1"]).seeds == (0, 1)
    assert seed_runs("smoke") == [(0, "smoke")]  # no seeds: the profile's one run
    assert seed_runs("smoke", ["seed=3"]) == [(3, resolve("smoke", ["seed=3"]).name)]


@pytest.mark.parametrize("sets, match", [(["seeds=0,0"], "repeat a seed"), (["seeds="], "at least one seed"),
                                         (["seeds=0,1", "seed=2"], "no seed= beside it"),
                                         (["seeds=a"], "not a valid int")])
def test_bad_seeds_fail_in_one_line(sets, match):
    with pytest.raises(ValueError, match=match):
        resolve("smoke", sets)


def test_a_one_seed_step_refuses_seeds(tmp_path, monkeypatch):
    monkeypatch.setattr("experiments.paths.ARTIFACTS", tmp_path)
    args = argparse.Namespace(profile="smoke", set=["seeds=0,1"])
    with pytest.raises(ValueError, match="this step runs one seed"):
        profile_from(args)
    assert profile_from(args, several_seeds=True).seeds == (0, 1)


# ---- mean, sample std, n ------------------------------------------------------------------------------

def _fake_seeds(root: Path, finals: list[tuple[float, float]]) -> list[Path]:
    """One results directory per seed: digits/badnets ft.json and sft.json with 3 epochs ending at `finals`."""
    dirs = []
    for i, (ca, asr) in enumerate(finals):
        d = root / f"seed{i}"
        for k, name in enumerate(("ft", "sft")):
            hist = [{"epoch": e, "ca": ca - 0.1 * (2 - e), "asr": asr + 0.1 * (2 - e) + 0.01 * k,
                     "device_seconds": 10.0 * e} for e in range(3)]
            _write(d / "digits" / "badnets" / f"{name}.json",
                   {"before": {"ca": 0.95 + 0.01 * i, "asr": 1.0}, "final": hist[-1], "history": hist,
                    "device_hours": (20.0 + 10 * i) / 3600})
        dirs.append(d)
    return dirs


def test_spread_is_the_mean_and_sample_std():
    mean, std, n = spread([0.9, 0.8, 0.7])
    assert (round(mean, 12), round(std, 12), n) == (0.8, 0.1, 3)  # ddof=1: sqrt(0.02 / 2)
    assert spread([0.5]) == (0.5, None, 1)
    assert spread_text([0.9, 0.8]) == "0.850±0.071" and spread_text([0.9]) == "0.900"


def test_summary_gives_mean_std_and_n_over_seeds(tmp_path):
    dirs = _fake_seeds(tmp_path, [(0.9, 0.1), (0.8, 0.3)])
    text = table(dirs, ["digits"], ["badnets"], {"sft": 2})
    lines = text.splitlines()
    assert lines[0] == "mean±std over n=2 seeds (sample std, ddof=1; costs: mean): seed0, seed1"
    row = lines[3].split()
    # before CA 0.95/0.96 (std 0.00707), final CA 0.9/0.8 (std 0.0707), ASR 0.1/0.3 (0.141), SFT ASR +0.01;
    # costs (means): FT charged in full (20 s, 30 s), SFT at epoch 2 (20 s), both in full.
    assert row == ["digits", "badnets", "0.955±0.007/1.000±0.000", "0.850±0.071/0.200±0.141",
                   "0.850±0.071/0.210±0.141", "25", "20", "25", "25"]
    one = table(dirs[0], ["digits"], ["badnets"], {"sft": 2}).splitlines()
    assert one[2].split() == ["digits", "badnets", "0.950/1.000", "0.900/0.100", "0.900/0.110", "20", "20", "20", "20"]
    assert len(one) == 3  # one seed: no seeds line


def test_report_ours_is_mean_std_and_n_and_claims_are_per_seed(tmp_path):
    # Paper: AC CIFAR100 BadNets CA after 0.582 (Section 1); ABL leaves BadNets CIFAR10 ASR >= 0.5.
    dirs = [tmp_path / "s0", tmp_path / "s1"]
    for d, ca, abl_asr in ((dirs[0], 0.5, 0.9), (dirs[1], 0.7, 0.1)):
        _write(d / "cifar100/badnets/ac.json", {"before": {"ca": 0.6}, "final": {"ca": ca}})
        _write(d / "cifar10/badnets/abl.json", {"final": {"ca": 0.9, "asr": abl_asr}})
    rep = report.build("paper", dirs, tmp_path / "f", tmp_path / "o")
    row = next(r for r in rep["numbers"] if r["id"] == "s1-ac-cifar100-badnets-ca-after")
    assert (row["ours"], row["ours_sd"], row["n"]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)), 2)
    assert row["verdict"] == "within 0.05" and row["diff"] == pytest.approx(0.6 - 0.582)
    md = (tmp_path / "o" / "REPRODUCTION.md").read_text()
    assert "| 0.600 ± 0.141 (n=2) |" in md and "sample standard deviation (ddof=1)" in md
    claim = next(c for c in rep["claims"] if c["id"] == "abl-leaves-badnets")
    assert claim["verdict"] == "does not hold" and claim["detail"].startswith("holds in 1 of 2 seeds: s0: holds")
    assert rep["provenance"]["seeds"] == "n=2: s0, s1"
    one = report.build("paper", dirs[0], tmp_path / "f", tmp_path / "o1")
    row1 = next(r for r in one["numbers"] if r["id"] == "s1-ac-cifar100-badnets-ca-after")
    assert (row1["ours"], row1["ours_sd"], row1["n"]) == (0.5, None, 1)
    assert "| 0.500 |" in (tmp_path / "o1" / "REPRODUCTION.md").read_text()
    assert "seeds" not in one["provenance"]
    missing = report.build("paper", [dirs[0], tmp_path / "none"], tmp_path / "f", tmp_path / "o2")
    row2 = next(r for r in missing["numbers"] if r["id"] == "s1-ac-cifar100-badnets-ca-after")
    assert row2["verdict"] == "not run yet" and "(none/cifar100/badnets/ac.json)" in row2["detail"]


# ---- Fig. 4: mean line, min-max band ----------------------------------------------------------------

def _draw(monkeypatch, *argv: str) -> list:
    saved, real = [], figures.style.save
    monkeypatch.setattr(figures.style, "save", lambda fig, out: saved.append(fig) or real(fig, out))
    monkeypatch.setattr(sys, "argv", ["figures.figure4", *argv])
    runpy.run_module("figures.figure4", run_name="__main__")
    return saved


def test_figure4_draws_the_seed_mean_with_a_min_max_band(tmp_path, monkeypatch):
    dirs = _fake_seeds(tmp_path, [(0.9, 0.1), (0.8, 0.3), (0.6, 0.2)])
    fig, = _draw(monkeypatch, "--results", *map(str, dirs), "--datasets", "digits", "--attacks", "badnets",
                 "--out", str(tmp_path / "f4.png"))
    ax = fig.axes[0]
    ca = np.array([[0.7, 0.8, 0.9], [0.6, 0.7, 0.8], [0.4, 0.5, 0.6]])  # the seeds' FT CA over epochs 0-2
    ft_ca = next(line for line in ax.lines if line.get_label() == "FT CA")
    assert np.allclose(ft_ca.get_xdata(), [0, 1, 2]) and np.allclose(ft_ca.get_ydata(), ca.mean(0))
    assert len(ax.collections) == 4  # one band per line
    verts = ax.collections[0].get_paths()[0].vertices  # FT CA's band (drawn first)
    for x, lo, hi in zip([0, 1, 2], ca.min(0), ca.max(0)):
        ys = verts[np.isclose(verts[:, 0], x), 1]
        assert np.isclose(ys.min(), lo) and np.isclose(ys.max(), hi)
    assert ax.get_legend().get_title().get_text() == "mean of 3 seeds, band: min-max"
    one, = _draw(monkeypatch, "--results", str(dirs[0]), "--datasets", "digits", "--attacks", "badnets",
                 "--out", str(tmp_path / "f1.png"))
    assert len(one.axes[0].collections) == 0 and one.axes[0].get_legend().get_title().get_text() == ""
    assert np.allclose(one.axes[0].lines[0].get_ydata(), ca[0])


# ---- make -n: every seed's steps, then the combine step ----------------------------------------------

def _make_n(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    stamp = tmp_path / "stamp"
    stamp.touch()  # the venv counts as installed
    return subprocess.run(["make", "-n", *args, "PROFILE=smoke", "DATASETS=digits", "ATTACKS=badnets",
                           f"A={tmp_path}", f"STAMP={stamp}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=fresh_make_env())


def test_make_figure4_runs_each_seed_then_combines(tmp_path):
    r = _make_n(tmp_path, "figure4", "SET=seeds=0,1")
    assert r.returncode == 0, r.stderr
    (s0, d0), (s1, d1) = seed_runs("smoke", ["seeds=0,1"])
    combined = resolve("smoke", ["seeds=0,1"]).name
    steps = [line.split(" -- ", 1)[1].strip() for line in r.stdout.splitlines() if "experiments.launch" in line]
    base = "experiments.standalone {} --profile smoke --set seed={} --dataset digits --attack badnets"
    assert steps == [base.format("train", 0), base.format("defend", 0) + " --defense ft",
                     base.format("defend", 0) + " --defense sft", base.format("train", 1),
                     base.format("defend", 1) + " --defense ft", base.format("defend", 1) + " --defense sft"]
    targets = [line.split("--target ")[1].split()[0] for line in r.stdout.splitlines() if "--target" in line]
    assert targets == [f"{tmp_path}/{k}/{d}/digits/badnets/{f}" for d in (d0, d1) for k, f in
                       (("checkpoints", "backdoor.safetensors"), ("results", "ft.json"), ("results", "sft.json"))]
    fig = [line for line in r.stdout.splitlines() if line.startswith(".venv/bin/python -m figures.figure4")]
    assert fig == [f".venv/bin/python -m figures.figure4 --results {tmp_path}/results/{d0} {tmp_path}/results/{d1} "
                   f'--datasets "digits" --attacks "badnets" --out {tmp_path}/figures/{combined}/figure4.png']
    assert "/smoke/" not in r.stdout



def test_make_refuses_seeds_for_other_targets_before_any_work(tmp_path):
    # SEEDS=0,1 is the shorthand of SET="seeds=0,1"; the check reads SET alone (no Python, no step).
    for extra in ("SET=finetune_epochs=5 seeds=0,1", "SEEDS=0,1"):
        bad = _make_n(tmp_path, "figure5", extra)
        assert bad.returncode != 0 and bad.stdout == ""
        assert "seeds=0,1\": seeds= runs figure4, summary and report" in bad.stderr, bad.stderr
