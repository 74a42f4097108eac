"""The local launcher: steps run with their own exit status, and the GPU slot pool gives concurrent
steps distinct GPUs, never more steps at once than GPUs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

STEP = '''import os, sys, time
t0 = time.time()
time.sleep(float(sys.argv[1]))
print(os.environ.get("CUDA_VISIBLE_DEVICES"), t0, time.time())
sys.exit(int(sys.argv[2]))
'''


def launch(tmp_path: Path, *opts: str, sleep: float = 0.0, code: int = 0) -> subprocess.Popen:
    (tmp_path / "fake_step.py").write_text(STEP)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{Path(__file__).resolve().parents[1]}"}
    return subprocess.Popen([sys.executable, "-m", "experiments.launch", *opts, "--", "fake_step", str(sleep),
                             str(code)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_local_step_keeps_its_exit_status_and_no_gpu_pinning_without_gpus(tmp_path):
    p = launch(tmp_path, code=3)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 3 and out.split()[0] == str(os.environ.get("CUDA_VISIBLE_DEVICES"))


def test_gpu_pool_gives_concurrent_steps_distinct_gpus(tmp_path):
    procs = [launch(tmp_path, "--gpus", "0,1", "--locks", str(tmp_path / "locks"), sleep=1.5) for _ in range(3)]
    runs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        gpu, start, end = out.split()
        runs.append((gpu, float(start), float(end)))
    assert {gpu for gpu, _, _ in runs} == {"0", "1"}
    for gpu in "01":  # steps on the same GPU never overlap
        spans = sorted((s, e) for g, s, e in runs if g == gpu)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    # Three steps, two GPUs: the third waited for a slot, so the batch took two rounds.
    assert max(e for _, _, e in runs) - min(s for _, s, _ in runs) >= 3.0


def test_unknown_launcher_is_one_line_listing_the_valid_ones(tmp_path):
    p = launch(tmp_path, "--launcher", "foo")
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and len(err.strip().splitlines()) == 1
    assert "unknown launcher 'foo'; choose one of: local, slurm" in err


def test_slurm_without_submitit_says_how_to_install(tmp_path):
    (tmp_path / "submitit.py").write_text("raise ImportError('not installed')\n")  # shadows the real one
    p = launch(tmp_path, "--launcher", "slurm")
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and len(err.strip().splitlines()) == 1
    assert "needs submitit" in err and "pip install -r requirements.txt" in err
