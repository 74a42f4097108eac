"""`make -n` of every figure at PROFILE=smoke: the steps each would run (as a named goal, a file goal and under
`make all`), counted from the profile, and how often Make asks the profile for a list.

Make reads its lists through $(PY) -m experiments.profiles; here $(PY) is a stub that answers from
`field_text` in process and logs each question, so no call imports torch and every call is counted.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from backdoor.attacks import ATTACKS
from experiments.plan import parse_step, split_by_figure
from experiments.profiles import BASELINES, field_text, get_profile
from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_profile("smoke")
FIELDS = ("datasets", "attacks", "reinject_ratios", "sweep_lists", "encoder.pretrain_sets", "encoder.downstream_sets")
# Every field a make run at smoke asks for, each once: figure2 is among the goals, so the encoder's too.
ALL_FIELDS = Counter(f"smoke {f}" for f in FIELDS)


def all_figures() -> list[str]:
    """The Makefile's ALL_FIGURES (what `make all` builds), in its order."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return re.search(r"^ALL_FIGURES\s*:=(.*)$", text, re.M).group(1).split()


def fig_file(root: Path, fig: str) -> str:
    return str(root / ("results" if fig == "summary" else "figures") / "smoke"
               / ("summary.txt" if fig == "summary" else f"{fig}.png"))


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Path:
    """An executable $(PY): answers `-m experiments.profiles smoke|demo FIELD` and logs it; anything else fails."""
    d = tmp_path_factory.mktemp("py")
    cases = "\n".join(f'  "{p} {f}") printf "%s\\n" {shlex.quote(field_text(get_profile(p), f))} ;;'
                      for p in ("smoke", "demo") for f in FIELDS)
    script = d / "python"
    script.write_text(f'#!/bin/sh\necho "$*" >> {d}/calls.log\n[ "$1 $2" = "-m experiments.profiles" ] || exit 1\n'
                      f'case "$3 $4" in\n{cases}\n  *) exit 1 ;;\nesac\n')
    script.chmod(0o755)
    return script


def make_n(stub: Path, root: Path, *goals: str) -> tuple[list[str], Counter]:
    """stdout lines of `make -n -B` of `goals` at smoke, and the profile questions it asked."""
    log = stub.parent / "calls.log"
    log.unlink(missing_ok=True)
    env = fresh_make_env()
    out = subprocess.run(["make", "-n", "-B", "-j1", "--no-print-directory", "PROFILE=smoke", f"A={root}",
                          f"PY={stub}", "LAUNCHER=local", "GPUS=", *goals], cwd=ROOT, capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    asked = log.read_text().split("\n")[:-1] if log.exists() else []
    return out.stdout.splitlines(), Counter(a.removeprefix("-m experiments.profiles ") for a in asked)


def kinds(steps) -> Counter:
    return Counter(f"{s.module.removeprefix('experiments.')} {s.command}".strip() for s in steps)


def expected() -> dict[str, Counter]:
    """Each figure's new steps in ALL_FIGURES order, counted from the smoke profile (one dataset)."""
    p = SMOKE
    assert len(p.datasets) == 1 and not {"cifar10", "cifar100", "gtsrb"} & set(p.datasets)  # 5/12/13 share it
    runs, attacks, ratios = len(p.datasets) * len(p.attacks), len(p.attacks), len(p.reinject_ratios)
    sw = dict(w.split("=") for w in field_text(p, "sweep_lists").split())
    files = {n: {f for f in sw[f"files{n}"].split(",") if f.startswith("ablation/")} for n in (7, 8, 9)}
    pre, down = len(p.encoder.pretrain_sets), len(p.encoder.downstream_sets)
    seq_defenses = 2 + len(BASELINES)  # ft, sft and the six baselines: make/sequela.mk's SEQ_DEFENSES
    new = {"figure1": {"lr_schedule": 1},
           "figure4": {"standalone train": runs, "standalone defend": 2 * runs},
           "summary": {"summary": 1},
           "table1": {"standalone train": len(set(ATTACKS) - set(p.attacks)), "table1": 1},
           "figure5": {"standalone defend": attacks * len(BASELINES)},
           "figure12": {}, "figure13": {}, "figure6": {},
           "figure3": {"clean": 1, "transfer run": len(sw["downstream"].split(",")) * (attacks + 1) * 2},
           "figure7": {"ablations": runs * len(files[7])},
           "figure8": {"ablations": runs * len(files[8] - files[7])},
           "figure9": {"ablations": runs * len(files[9] - files[7] - files[8])},
           "figure2": {"encoder pretrain": pre, "encoder badencoder": pre * down,
                       "encoder downstream": pre * down * 3},
           "figure10": {"sequela mia": runs * (1 + seq_defenses)}}
    reinjected = {"figure11": "badnets", "figure14": "blended", "figure15": "inputaware", "figure16": "lf",
                  "figure17": "wanet"}
    for fig, attack in reinjected.items():  # a model per defence and the clean one, at every ratio
        defended = {} if attack in p.attacks else {"standalone defend": seq_defenses}
        new[fig] = {**defended, "sequela reinject": (1 + seq_defenses) * ratios}
    assert list(new) == all_figures()
    return {f: Counter(c) for f, c in new.items()}


def per_figure(lines: list[str]) -> dict[str, Counter]:
    figs = all_figures()
    return {f: kinds(s) for f, s in split_by_figure(lines, figs).items()}


def test_make_all_runs_each_figures_steps_and_reads_each_list_once(stub, tmp_path):
    lines, asked = make_n(stub, tmp_path, "all")
    assert per_figure(lines) == expected()
    assert asked == ALL_FIELDS  # the top make reads none (`all` dispatches), its sub-make each once
    for fig in all_figures():
        assert any(f"--out {fig_file(tmp_path, fig)}" in line for line in lines), fig


def test_every_figure_is_a_file_goal_with_its_prerequisites(stub, tmp_path):
    lines, asked = make_n(stub, tmp_path, *(fig_file(tmp_path, f) for f in all_figures()))
    assert per_figure(lines) == expected()
    assert asked == ALL_FIELDS


def test_named_figure_goals_build_in_sub_makes_that_read_no_list_again(stub, tmp_path):
    lines, asked = make_n(stub, tmp_path, *all_figures())
    assert per_figure(lines) == expected()
    assert asked == ALL_FIELDS


def test_demo_reads_only_the_demo_profiles_lists(stub, tmp_path):
    """`make demo` (default PROFILE=paper) asks nothing about paper: its sub-make reads demo's lists, once each."""
    lines, asked = make_n(stub, tmp_path, "demo")
    assert asked == Counter(f"demo {f}" for f in FIELDS[:4])  # no figure2 in the demo: no encoder lists
    demo = [s for s in map(parse_step, lines) if s]
    assert {s.opt("profile") for s in demo} == {"demo"} and kinds(demo)["standalone defend"] == \
        2 * len(get_profile("demo").datasets) * len(get_profile("demo").attacks)


def help_gaps(*extra: str) -> tuple[set[str], list[str]]:
    """(phony targets `make help` lacks, targets it lists twice or without a description); figure-files is internal."""
    env = fresh_make_env()
    db = subprocess.run(["make", "-pn", "help", *extra], cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=120).stdout
    phony = {w for line in db.splitlines() if line.startswith(".PHONY:") for w in line.split()[1:]} - {"figure-files"}
    out = subprocess.run(["make", "--no-print-directory", "help", *extra], cwd=ROOT, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [m.groups() for m in re.finditer(r"^  ([a-z][\w-]*) +(.*)$", out.stdout, re.M)]
    listed = Counter(t for t, _ in rows)
    bad = sorted(t for t, d in rows if listed[t] > 1 or len(d.split()) < 3 or t not in phony)
    return phony - set(listed), bad


def test_help_lists_every_public_target_once_with_its_line():
    assert help_gaps() == (set(), [])
    # A world where the claim is false: a public target without a `## ` line is reported.
    assert help_gaps("--eval=.PHONY: undocumented") == ({"undocumented"}, [])


def test_trigger_files_reach_every_train_step_of_their_attack(stub, tmp_path):
    """KEY_IMAGE= reaches each Blended train step, LF_PATTERNS= each LF one (a per-dataset file in that folder),
    and no other step; a missing file or folder stops Make before any step, in one line."""
    key, lf = tmp_path / "hello_kitty.jpeg", tmp_path / "lowFrequency"
    key.write_bytes(b"x")
    lf.mkdir()
    lines, _ = make_n(stub, tmp_path, "all", f"KEY_IMAGE={key}", f"LF_PATTERNS={lf}", "ATTACKS=badnets blended lf")
    steps = [s for s in map(parse_step, lines) if s]
    train = [s for s in steps if (s.module, s.command) == ("experiments.standalone", "train")]
    assert sorted(s.opt("attack") for s in train) == sorted(ATTACKS)  # table1 trains the other two too
    for s in steps:
        is_train = s in train
        assert s.opt("key-image") == (str(key) if is_train and s.opt("attack") == "blended" else ""), s
        assert s.opt("lf-patterns") == (str(lf) if is_train and s.opt("attack") == "lf" else ""), s
    for var, path, says in (("KEY_IMAGE", tmp_path / "no.jpeg", "no such file"),
                            ("LF_PATTERNS", tmp_path / "nodir", "no such folder")):
        out = subprocess.run(["make", "-n", "PROFILE=smoke", f"A={tmp_path}", f"PY={stub}", "all", f"{var}={path}"],
                             cwd=ROOT, capture_output=True, text=True, env=fresh_make_env(), timeout=120)
        assert out.returncode == 2 and not out.stdout and f"*** {var}={path}: {says}; give" in out.stderr
