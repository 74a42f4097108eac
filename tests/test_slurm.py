"""LAUNCHER=slurm for real, on the one-node cluster of scripts/slurm_cluster.sh: a small pipeline runs as
Slurm jobs and gives the results of a local run; a cancelled job fails its target and a rerun completes it.

Skipped when no cluster is up; with REQUIRE_SLURM=1 (set by .ci/run) that is a failure instead.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_make_env

ROOT = Path(__file__).resolve().parents[1]
# Fig. 1's LR trace plus the smoke encoder chain of Fig. 2 (SimCLR -> BadEncoder -> 3 downstream runs): 6 steps.
STEPS = ["results/smoke/figure1_lr.json",
         *(f"results/smoke/encoder/digits/digits/{m}.json" for m in ("classifier", "whole", "clean"))]
COMMON = ["PROFILE=smoke", "DATASETS=digits", "ATTACKS=badnets"]
SLURM = ["LAUNCHER=slurm", "SLURM_GPUS=0", "SLURM_CPUS=1", "SLURM_MEM=", "SLURM_TIME=15"]
# Provenance fields; they and wall-clock times (*seconds, *device_hours) may differ between the two runs.
VOLATILE = {"slurm_job_id", "env"}


def _cluster_problem() -> str | None:
    """Why this machine cannot run the test (None if it can)."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm client (sinfo/sbatch) on PATH; start a one-node cluster with: scripts/slurm_cluster.sh up (root)"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if r.returncode != 0 or not {"idle", "mixed", "allocated"} & set(r.stdout.split()):
        said = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no nodes"]
        return f"no Slurm node is up (sinfo: {said[0]}); start one with: scripts/slurm_cluster.sh up (root)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed: .venv/bin/pip install -r requirements.txt"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    why = _cluster_problem()
    if why and os.environ.get("REQUIRE_SLURM") == "1":
        pytest.fail(f"REQUIRE_SLURM=1 but the Slurm test cannot run: {why}")
    if why:
        pytest.skip(why)


def start_make(art: Path, *args: str) -> subprocess.Popen:
    """Start `make A=art <smoke lists> args...` in the repo, isolated from any outer make."""
    env = fresh_make_env()
    env.update(OMP_NUM_THREADS="1", DATA_DIR=str(art.parent / "data"))
    return subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), f"A={art}", *COMMON, *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, ok: bool = True) -> str:
    """Wait for a make started by start_make; its stderr. With ok, fail the test unless it succeeded."""
    out, err = proc.communicate(timeout=900)
    assert not ok or proc.returncode == 0, f"make failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}"
    return err


def _results(art: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(art)): json.loads(p.read_text()) for p in sorted(art.glob("results/**/*.json"))}


def _stable(obj: Any, art: Path) -> Any:
    """The result without wall-clock and provenance fields, paths relative to `art`, NaN comparable."""
    if isinstance(obj, dict):
        return {_stable(k, art): _stable(v, art) for k, v in obj.items()
                if k not in VOLATILE and not k.endswith(("seconds", "device_hours"))}
    if isinstance(obj, list):
        return [_stable(v, art) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return "nan"
    return obj.replace(str(art), "A") if isinstance(obj, str) else obj


def _job_state(job_id: str) -> str:
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    return next((w.split("=", 1)[1] for w in r.stdout.split() if w.startswith("JobState=")), "UNKNOWN")


def test_pipeline_on_slurm_matches_local_run(cluster, tmp_path):
    on_slurm, local = tmp_path / "slurm" / "artifacts", tmp_path / "local" / "artifacts"
    # Both at once: the Slurm run mostly waits on the queue, so this halves the test's wall time.
    runs = [start_make(on_slurm, "-j", "2", *SLURM, *(str(on_slurm / s) for s in STEPS)),
            start_make(local, "-j", "2", "LAUNCHER=local", *(str(local / s) for s in STEPS))]
    for proc in runs:
        finish(proc)

    slurm_res, local_res = _results(on_slurm), _results(local)
    assert len(slurm_res) == 6 and slurm_res.keys() == local_res.keys(), (slurm_res.keys(), local_res.keys())
    job_ids = {name: r.get("slurm_job_id") for name, r in slurm_res.items()}
    assert all(job_ids.values()) and len(set(job_ids.values())) == len(job_ids), job_ids
    assert {_job_state(j) for j in job_ids.values()} == {"COMPLETED"}, job_ids
    assert not any("slurm_job_id" in r for r in local_res.values())
    for name in slurm_res:
        assert _stable(slurm_res[name], on_slurm) == _stable(local_res[name], local), name
    # Checkpoints: the sidecar records the job, and the weights are bit-identical to the local run's.
    for side in on_slurm.glob("checkpoints/**/*.json"):
        meta, other = json.loads(side.read_text()), json.loads((local / side.relative_to(on_slurm)).read_text())
        assert meta["env"]["slurm_job_id"] in job_ids.values() and other["env"]["slurm_job_id"] is None
        assert meta["sha256"] == other["sha256"], side
    assert len(list(on_slurm.glob("logs/**/*_log.out"))) == len(job_ids)


def test_cancelled_job_fails_its_target_and_a_rerun_completes_it(cluster, tmp_path):
    art = tmp_path / "artifacts"
    target = art / "results/smoke/figure1_lr.json"
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    # Fill the node so that the step's job waits in the queue, where we cancel it.
    blocker = subprocess.run(["sbatch", "--parsable", "-c", cpus, "-J", "blocker", "-o", "/dev/null",
                              "--wrap", "sleep 300"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        proc = start_make(art, *SLURM, str(target))
        job = None
        for _ in range(120):
            q = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
            job = next((line.split()[0] for line in q.splitlines() if line.split()[1:] == [str(target)]), None)
            if job:
                break
            time.sleep(0.5)
        assert job, f"the step was never submitted:\n{finish(proc, ok=False)}"
        subprocess.run(["scancel", job], check=True)
        err = finish(proc, ok=False)
    finally:
        subprocess.run(["scancel", blocker])
    assert proc.returncode != 0, err
    assert f"slurm job {job} ended CANCELLED" in err, err
    assert not target.exists() and not list(target.parent.glob("*")), list(target.parent.glob("*"))

    finish(start_make(art, *SLURM, str(target)))
    rerun_id = json.loads(target.read_text())["slurm_job_id"]
    assert rerun_id != job and _job_state(rerun_id) == "COMPLETED"
