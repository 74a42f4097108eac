"""README is the user's guide: its commands, links and Python block must match the code."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def help_targets() -> set[str]:
    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"^  ([a-z][\w-]*) ", out.stdout, re.M))


def test_every_make_target_readme_names_is_one_make_help_lists():
    named = set(re.findall(r"`?make (?:-j \d+ )?(?:[A-Z_]+=\S+ )*([a-z][\w-]*)", README))
    named |= set(re.findall(r"`(figure\d+|table1)`", README))
    unknown = named - help_targets()
    assert not unknown, f"README names targets that `make help` does not list: {sorted(unknown)}"
    assert {"demo", "test", "data", "plan", "all", "report", "defend", "gpu-check", "figure5"} <= named


def test_every_local_link_in_readme_exists():
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README)
    missing = [link for link in links if not (ROOT / link).exists()]
    assert links and not missing, missing


def test_readme_is_a_guide_not_a_notebook():
    """Under 200 lines, no load averages, no issue numbers (docs/measurements.md holds the history)."""
    assert len(README.splitlines()) < 200
    assert not re.search(r"load average|\bload \d|issue \d", README, re.I)


def python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) == 1, "README has one Python block, the library in five lines"
    return blocks[0]


def test_the_library_block_runs_and_reads_the_schedule_in_epochs(capsys):
    """The block as written, with its epochs cut to 1: it must run and print CA/ASR/RA; SFT's half-cycle
    is the paper's 500 steps read in epochs for a 5-epoch phase 1 (2.56 epochs, shortened to whole cycles: 2.5)."""
    code = re.sub(r"\bepochs=\d+", "epochs=1", python_block())
    assert code != python_block()
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    assert scope["sft"].half_cycle_epochs == pytest.approx(2.5)
    printed = capsys.readouterr().out
    assert re.search(r"\{'ca': [\d.]+, 'asr': [\d.]+, 'ra': [\d.]+\}", printed), printed
