"""`make -n -B` of the main goals against step lists recorded from the Makefile before its rewrite as a list of
files (issue 28): the rewrite may move Make programming, never change a step. Fixtures: tests/fixtures/make_n/.

$(PY) is a stub that answers the profile questions from `cli_text` (what the CLI prints) without a torch import per
call, and hands every other call to the real interpreter, so the printed steps are the real ones.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from experiments.profiles import cli_text
from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "make_n"
PY = ".venv/bin/python"
FIELDS = ("datasets", "attacks", "reinject_ratios", "sweep_lists", "encoder.pretrain_sets", "encoder.downstream_sets")
# name -> goals and variables ($A: the artifact root). Each fixture was recorded from the tree of a5a26e1 with
#   make -n -B -j1 --no-print-directory A=$A LAUNCHER=local GPUS= DEMO_JOBS=2 <these> | sed "s#$A#\$A#g"
# `PYTHONPATH=. .venv/bin/python tests/test_make_golden.py` re-records them (after a deliberate step change).
CASES = {
    "all_paper": ["all", "PROFILE=paper"],
    "all_demo": ["all", "PROFILE=demo"],
    "demo": ["demo"],
    "figure4_smoke_seeds": ["figure4", "PROFILE=smoke", "SEEDS=0,1"],
    "summary_smoke_set": ["summary", "PROFILE=smoke", "SET=finetune_epochs=5 sft.lr_max1=0.3"],
    "report_smoke_seeds": ["report", "PROFILE=smoke", "SEEDS=0,1"],
    "figure4_smoke_slurm": ["figure4", "PROFILE=smoke", "LAUNCHER=slurm", "SLURM_PARTITION=gpu", "SLURM_MEM=64G",
                            "DEVICE=cuda"],
    "figure5_smoke_gpus": ["figure5", "PROFILE=smoke", "GPUS=0,1"],
    "demo_set": ["demo", "SET=finetune_epochs=3"],
    "figure2_file_smoke": ["PROFILE=smoke", "$A/figures/smoke/figure2.png"],  # a file goal, not a named one
}
# The overrides those cases (and their seeds' sub-makes) ask the profile about.
SETS = ((), ("seeds=0,1",), ("seed=0",), ("seed=1",), ("finetune_epochs=5", "sft.lr_max1=0.3"), ("finetune_epochs=3",),
        ("finetune_epochs=6",))


@pytest.fixture(scope="module")
def stub(tmp_path_factory) -> Path:
    """An executable $(PY): the profile questions of these cases answered by `cli_text` in process (what the real
    CLI prints), anything else by the real interpreter."""
    d = tmp_path_factory.mktemp("py")
    answers = {}
    for prof, key, sets in itertools.product(("paper", "demo", "smoke"), FIELDS + ("name", "seed_dirs"), SETS):
        argv = ["-m", "experiments.profiles", prof, key, *(w for s in sets for w in ("--set", s))]
        with contextlib.suppress(ValueError, KeyError, AttributeError):  # the real CLI says why
            answers[" ".join(argv)] = cli_text(prof, key, sets)
    cases = "\n".join(f"  {shlex.quote(a)}) printf '%s\\n' {shlex.quote(v)}; exit 0 ;;" for a, v in answers.items())
    script = d / "python"
    script.write_text(f'#!/bin/sh\ncase "$*" in\n{cases}\nesac\nexec {ROOT / PY} "$@"\n')
    script.chmod(0o755)
    return script


def normalise(text: str, root: Path, stub: Path) -> list[str]:
    """Lines with the artifact root as $A, the stub as .venv/bin/python, and blanks collapsed (the shell's argv)."""
    text = text.replace(str(root), "$A").replace(str(stub), PY)
    return [" ".join(line.split()) for line in text.splitlines()]


def make_n(py: Path, root: Path, args: list[str]) -> str:
    """stdout of `make -n -B` of a case, artifacts under root, $(PY) py."""
    env = fresh_make_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run(["make", "-n", "-B", "-j1", "--no-print-directory", f"A={root}", f"PY={py}", "LAUNCHER=local",
                          "GPUS=", "DEMO_JOBS=2", *(a.replace("$A", str(root)) for a in args)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.parametrize("case", CASES)
def test_make_n_prints_the_recorded_step_list(case, stub, tmp_path):
    live = normalise(make_n(stub, tmp_path / "a", CASES[case]), tmp_path / "a", stub)
    recorded = normalise((FIXTURES / f"{case}.txt").read_text(), Path("/nonexistent"), stub)
    assert len(live) == len(recorded)
    assert [(i, l) for i, l in enumerate(live) if l != recorded[i]] == []


def test_a_changed_step_is_caught(stub, tmp_path):
    """The comparison can fail: a different SET writes other directories, so its steps differ from the fixture."""
    live = normalise(make_n(stub, tmp_path / "a", ["summary", "PROFILE=smoke", "SET=finetune_epochs=6"]),
                     tmp_path / "a", stub)
    assert live != normalise((FIXTURES / "summary_smoke_set.txt").read_text(), Path("/nonexistent"), stub)


if __name__ == "__main__":  # re-record every fixture from this tree: only when a step changes on purpose
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in CASES.items():
            text = make_n(ROOT / PY, Path(tmp) / "a", args).replace(str(ROOT / PY), PY)
            (FIXTURES / f"{name}.txt").write_text(text.replace(str(Path(tmp) / "a"), "$A"))
