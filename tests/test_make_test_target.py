"""`make test` and `make test-slow` run pytest (one process) with one torch thread per core unless the caller set it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("goal", ["test", "test-slow"])
@pytest.mark.parametrize("given,seen", [(None, str(len(os.sched_getaffinity(0)))), ("3", "3")])
def test_make_test_sets_threads_per_core_unless_told(tmp_path: Path, goal: str, given, seen: str):
    # $(PY) is a stub that records the OMP_NUM_THREADS pytest would see; -o: never rebuild the venv here.
    stub = tmp_path / "python"
    stub.write_text(f'#!/bin/sh\necho "${{OMP_NUM_THREADS-unset}}" > {tmp_path}/threads\n')
    stub.chmod(0o755)
    env = {k: v for k, v in fresh_make_env().items() if k != "OMP_NUM_THREADS"}
    if given:
        env["OMP_NUM_THREADS"] = given
    out = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", f"PY={stub}", goal], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "threads").read_text().strip() == seen
