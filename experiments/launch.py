"""Run one pipeline step here (optionally pinned to a free GPU) or as a Slurm job through submitit.

    python -m experiments.launch [--launcher local|slurm] [options] -- experiments.standalone train --profile demo ...

Make prefixes every step with $(RUN) (see the Makefile): LAUNCHER, GPUS and SLURM_* choose where it runs.
local: the step runs in this process; with --gpus, it first takes a free GPU from a pool of file locks
(one lock per GPU under --locks), so `make -j 8 GPUS=0,...,7` keeps one step on each GPU.
slurm: the step is submitted with submitit and waited for; a failed or cancelled job fails the command
and removes --target, so Make sees the step as not done and a rerun submits it again.
Both: with --target, the step holds a lock on its output (under --locks, never beside the output, so a
failed step leaves nothing in its folder), so a second `make` running the same step at the same time
waits, then skips it once the first run has written the file.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import logging
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from backdoor.errors import UserExit

log = logging.getLogger("launch")

LAUNCHERS = ("local", "slurm")
# Job states after which Slurm runs nothing more for the job.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}
# Make variables that share names with srun's input environment; removed before submitting.
MAKE_ONLY_VARS = ("SLURM_PARTITION", "SLURM_GPUS", "SLURM_CPUS", "SLURM_MEM", "SLURM_TIME")


class LaunchError(RuntimeError):
    """A step that could not be launched, or whose job did not complete."""


@dataclass(frozen=True)
class SlurmSpec:
    """Resources of one step's Slurm job (sbatch's --partition, --gpus-per-node, -c, --mem, --time)."""

    partition: str = ""
    gpus: int = 0
    cpus: int = 1
    mem: str = ""
    time: str = "24:00:00"


def run_module(module: str, args: Sequence[str]) -> None:
    """`python -m module args...` in this process; the step's sys.exit() propagates as SystemExit."""
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


@contextlib.contextmanager
def gpu_slot(gpus: Sequence[str], locks: Path, poll_s: float = 1.0) -> Iterator[str]:
    """Hold the lock of a free GPU among `gpus` (waiting while all are taken) and yield its id."""
    locks.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            f = open(locks / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield gpu
            finally:
                f.close()  # releases the lock
            return
        time.sleep(poll_s)


def _mtime(path: Path) -> int | None:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime_ns
    return None


def output_lock_path(target: Path, locks: Path) -> Path:
    """The lock file of `target`: one per resolved output path, in `locks` (not beside the output)."""
    key = hashlib.sha1(str(target.resolve()).encode()).hexdigest()[:16]
    return locks / f"out-{key}-{target.name}.lock"


@contextlib.contextmanager
def output_lock(target: Path | None, locks: Path) -> Iterator[bool]:
    """Hold the lock of `target` while the step runs; yield True if another run wrote `target` while this
    one waited for the lock (the step is then done and should be skipped)."""
    if target is None:
        yield False
        return
    before = _mtime(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    locks.mkdir(parents=True, exist_ok=True)
    # The lock file is never deleted: unlinking it while another run waits on it would let a third take
    # a fresh lock on a new inode at the same time.
    with open(output_lock_path(target, locks), "w") as f:  # closing the file releases the lock
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            log.info("waiting: another run is building %s", target)
            fcntl.flock(f, fcntl.LOCK_EX)
            waited = True
        yield waited and _mtime(target) not in (None, before)


def check_locks(target: Path | None, locks: Path) -> None:
    """Create the lock folder (and the output's folder and lock file) now: OSError here, not a traceback later."""
    locks.mkdir(parents=True, exist_ok=True)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        open(output_lock_path(target, locks), "a").close()
    else:
        with tempfile.TemporaryFile(dir=locks):  # a write probe that leaves nothing behind
            pass


def launch_local(module: str, args: Sequence[str], gpus: Sequence[str] = (), locks: Path = Path()) -> None:
    """Run the step here; with `gpus`, on one GPU of the pool (CUDA_VISIBLE_DEVICES set to it)."""
    if not gpus:
        run_module(module, args)
        return
    with gpu_slot(gpus, locks) as gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        log.info("GPU %s: %s %s", gpu, module, " ".join(args))
        run_module(module, args)


def job_main(module: str, args: Sequence[str]) -> None:
    """What a Slurm job runs: the step, dying at once on SIGTERM (scancel) so it cannot finish a file later."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        run_module(module, args)
    except SystemExit as e:
        if e.code not in (None, 0):
            raise RuntimeError(f"{module} exited with {e.code}") from None


def slurm_state(job_id: str) -> str | None:
    """The job's state from scontrol (needs no accounting); "UNKNOWN" once Slurm has forgotten the job,
    None if Slurm did not answer (a busy controller: ask again)."""
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
    if r.returncode != 0:
        return "UNKNOWN" if "invalid job id" in r.stderr.lower() else None
    fields = dict(w.split("=", 1) for w in r.stdout.split() if "=" in w)
    state = fields.get("JobState")
    # A cancelled job is CANCELLED at once but may still have processes until its COMPLETING flag clears.
    squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return "COMPLETING" if "COMPLETING" in squeue.stdout else state


def wait_for(job_id: str, max_poll_s: float = 5.0) -> str:
    """Poll until the job reaches a final state; return it ("UNKNOWN" if Slurm forgot the job)."""
    poll = 1.0
    while True:
        state = slurm_state(job_id)
        if state is not None and state in FINAL_STATES | {"UNKNOWN"}:
            return state
        time.sleep(poll)
        poll = min(max_poll_s, poll * 1.25)


def _outcome_from_pickle(job) -> str:
    """COMPLETED if submitit's result file says the step succeeded (for jobs Slurm no longer lists)."""
    from submitit.core.utils import pickle_load
    path = job.paths.result_pickle
    return "COMPLETED" if path.exists() and pickle_load(path)[0] == "success" else "UNKNOWN"


def _tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, or '' if there is none."""
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def launch_slurm(module: str, args: Sequence[str], spec: SlurmSpec, log_dir: Path,
                 target: Path | None = None) -> str:
    """Submit the step with submitit, wait for it and return its job id; LaunchError if it did not complete."""
    try:
        import submitit
    except ImportError:
        raise LaunchError("LAUNCHER=slurm needs submitit: .venv/bin/pip install -r requirements.txt") from None
    for name in MAKE_ONLY_VARS:
        os.environ.pop(name, None)
    executor = submitit.AutoExecutor(folder=log_dir, cluster="slurm")
    params = {"cpus_per_task": spec.cpus, "slurm_time": spec.time, "tasks_per_node": 1, "nodes": 1,
              "name": str(target or module)}
    if spec.partition:
        params["slurm_partition"] = spec.partition
    if spec.gpus:
        params["gpus_per_node"] = spec.gpus
    if spec.mem:
        params["slurm_mem"] = spec.mem
    executor.update_parameters(**params)
    try:
        job = executor.submit(job_main, module, list(args))
    except Exception as e:  # sbatch's own message says what was wrong (partition, resources)
        raise LaunchError(f"sbatch refused the job: {str(e).strip().splitlines()[-1]}") from None
    log.info("slurm job %s: %s %s; log %s", job.job_id, module, " ".join(args), job.paths.stdout)
    try:
        state = wait_for(job.job_id)
    except BaseException:  # make interrupted (Ctrl-C, SIGTERM): the job must not write the file later
        job.cancel(check=False)
        raise
    if state == "UNKNOWN":
        state = _outcome_from_pickle(job)
    if state != "COMPLETED":
        if target is not None:
            target.unlink(missing_ok=True)
        raise LaunchError(f"slurm job {job.job_id} ended {state}; log {job.paths.stderr}\n"
                          f"{_tail(job.paths.stderr)}".rstrip())
    return job.job_id


def _raise_on_sigterm(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        sys.exit("launch: usage: python -m experiments.launch [options] -- <module> [args...]")
    cut = argv.index("--")
    opts, step = argv[:cut], argv[cut + 1:]
    ap = argparse.ArgumentParser(prog="python -m experiments.launch", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--launcher", default="local", help=f"one of: {', '.join(LAUNCHERS)}")
    ap.add_argument("--gpus", default="", help="local: comma-separated GPU ids shared by concurrent steps")
    ap.add_argument("--locks", type=Path, default=Path("artifacts/.locks"),
                    help="where the lock files live (one per GPU, one per --target)")
    ap.add_argument("--log-dir", type=Path, default=Path("artifacts/logs"), help="slurm: the job's log folder")
    ap.add_argument("--target", type=Path, help="the step's output file: locked while the step runs (a concurrent "
                    "run of the same step waits, then skips); slurm: removed if the job fails")
    ap.add_argument("--partition", default="", help="slurm: partition (default: the cluster's default)")
    ap.add_argument("--slurm-gpus", type=int, default=0, help="slurm: GPUs per job")
    ap.add_argument("--cpus", type=int, default=1, help="slurm: CPUs per job")
    ap.add_argument("--mem", default="", help="slurm: memory per job, e.g. 32G (default: the cluster's)")
    ap.add_argument("--time", default="24:00:00", help="slurm: time limit, e.g. 24:00:00 or minutes")
    a = ap.parse_args(opts)
    if a.launcher not in LAUNCHERS:
        sys.exit(f"launch: unknown launcher {a.launcher!r}; choose one of: {', '.join(LAUNCHERS)}")
    if not step:
        sys.exit("launch: no step given after --")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("launch: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the step configures the root logger itself
    try:
        check_locks(a.target, a.locks)
    except OSError as e:
        message = (f"launch: cannot create lock files in {a.locks} ({e.strerror or e}); make A (ARTIFACTS) a "
                   "writable directory")
        print(message, file=sys.stderr)
        raise UserExit(message) from None
    with output_lock(a.target, a.locks) as done:
        if done:
            log.info("%s was built by another run while this one waited; skipping", a.target)
            return
        run_step(a, step[0], step[1:])


def run_step(a: argparse.Namespace, module: str, args: Sequence[str]) -> None:
    """Run the step with the launcher and resources parsed into `a`."""
    if a.launcher == "local":
        launch_local(module, args, [g for g in a.gpus.split(",") if g], a.locks)
        return
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    spec = SlurmSpec(a.partition, a.slurm_gpus, a.cpus, a.mem, a.time)
    try:
        launch_slurm(module, args, spec, a.log_dir, a.target)
    except LaunchError as e:
        sys.exit(f"launch: {e}")


if __name__ == "__main__":
    main()
