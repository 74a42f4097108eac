"""`make gpu-check DEVICE=cpu`: the GPU check at tiny sizes writes every JSON field, imports nothing the GPU image
lacks (submitit made unimportable), records a crashing section or path and goes on, and refuses bad input."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments import bench, gpu_check

ROOT = Path(__file__).resolve().parents[1]
# Run inside every Python that Make starts: submitit unimportable (the GPU image has none), and the gpu_check
# process writes the top-level modules it ended with.
SITECUSTOMIZE = """
import atexit, json, os, sys
sys.modules["submitit"] = None
def _dump():
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if getattr(main, "name", None) == "experiments.gpu_check":  # run as python -m experiments.gpu_check
        with open(os.environ["GPU_CHECK_MODULES"], "w") as f:
            json.dump({"blocked": sys.modules.get("submitit", 0) is None,
                       "modules": sorted({m.split(".")[0] for m, v in sys.modules.items() if v is not None})}, f)
atexit.register(_dump)
"""
# What the GPU image has (issue 29), with what importing them pulls in; our own packages.
IMAGE = ("torch", "torchvision", "safetensors", "sklearn", "sklearn.metrics", "scipy", "matplotlib", "seaborn",
         "tqdm", "tqdm.auto", "numpy", "PIL")
OURS = {"backdoor", "defenses", "experiments", "sequela", "sitecustomize"}
CPU = torch.device("cpu")
BUDGET_SCALE = 100
ROWS = {"reference", "fp32", "bf16", "fp32_compile", "bf16_compile"}
PATHS = {"train", "ft", "sft", "spectral", "mia_posteriors", "simclr", "badencoder"}


def all_figures() -> list[str]:
    """The Makefile's ALL_FIGURES, read as text (gpu_check asks Make)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return re.search(r"^ALL_FIGURES\s*:=(.*)$", text, re.M).group(1).split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(tmp), "GPU_CHECK_MODULES": str(tmp / "modules.json"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = tmp / "gc.json"
    t0 = time.perf_counter()
    # Budgets x100: on a loaded box no path step may be skipped for time (the deadline has its own tests below).
    p = subprocess.run(["make", "--no-print-directory", "gpu-check", "DEVICE=cpu", f"GPU_CHECK_OUT={out}",
                        f"GPU_CHECK_ARGS=--budget-scale {BUDGET_SCALE}"], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(out.read_text()), json.loads((tmp / "modules.json").read_text()), p.stdout, \
        time.perf_counter() - t0


def test_every_field_written_at_tiny_sizes(run):
    r, _, stdout, seconds = run
    assert set(r) == {"schema", "started", "sizes", "settings", "environment", "bench", "sft", "paths", "plan",
                      "seconds"}
    assert r["sizes"] == "tiny" and r["schema"] == gpu_check.SCHEMA and r["seconds"] < seconds
    for name in gpu_check.SECTIONS:
        assert r[name]["ok"] is True and r[name]["error"] is None, (name, r[name]["error"])
        assert r[name]["budget_s"] == BUDGET_SCALE * dict(gpu_check.SIZES["tiny"].budget_s)[name]
    env = r["environment"]
    assert env["device"] == "cpu" and set(env["versions"]) == set(gpu_check.PACKAGES)
    assert env["torch"].startswith(env["versions"]["torch"])
    assert stdout.splitlines()[-1].startswith("wrote ") and "[plan] ok" in stdout


def test_bench_rows_measured_or_saying_why(run):
    b = run[0]["bench"]
    assert set(b["rows"]) == ROWS and b["batch"] == 64 and b["images_per_epoch"] == 256
    for key in ("reference", "fp32"):
        row = b["rows"][key]
        assert 1 <= row["rounds"] <= gpu_check.SIZES["tiny"].rounds
        ips, spe = row["img_per_s"], row["seconds_per_epoch"]
        assert ips["min"] <= ips["median"] <= ips["max"]
        assert ips["max"] == pytest.approx(256 / spe["min"]) and ips["min"] == pytest.approx(256 / spe["max"])
    assert b["rows"]["fp32"]["name"] == bench.ours_name(False) and b["fp32_img_per_s"] == \
        b["rows"]["fp32"]["img_per_s"]["median"]
    # A CPU never autocasts, and tiny sizes do not build torch.compile: each row says so instead of a number.
    assert "engine runs fp32" in b["rows"]["bf16"]["not_measured"]
    assert "engine runs fp32" in b["rows"]["bf16_compile"]["not_measured"]
    assert "skip torch.compile" in b["rows"]["fp32_compile"]["not_measured"]
    assert set(b["speedup_vs_reference"]) == {"fp32"}


def test_sft_charges_training_not_evaluation(run):
    s = run[0]["sft"]
    assert (s["images"], s["epochs"], s["batch"], s["precision"], len(s["epoch_seconds"])) == (512, 3, 256, "fp32", 3)
    c1, c3 = s["charged_seconds"]["1"], s["charged_seconds"]["3"]
    # Charged time covers the epochs' training but not the per-epoch CA/ASR evaluations that wall time includes.
    assert s["epoch_seconds"][0] <= c1 < c3 and sum(s["epoch_seconds"]) <= c3 < s["wall_seconds"]
    # The 4 uncharged evaluations forward 2,048 images, the 3 epochs train 1,536 (a backward is ~2 forwards): about
    # 0.4x the charge; a clock that charged them would leave only set-up (milliseconds) between wall and charge.
    assert s["wall_seconds"] - c3 > 0.1 * c3


def test_every_cuda_path_ran_one_step(run):
    p = run[0]["paths"]
    assert set(p["steps"]) == PATHS and p["failed"] == []
    assert all(step["ok"] is True and step["error"] is None for step in p["steps"].values())
    assert (p["precision"], p["channels_last"]) == ("fp32", False)  # the engine's CPU rule, whatever the flag


def test_plan_priced_at_the_measured_rate(run):
    r = run[0]
    p = r["plan"]
    assert p["img_per_s"] == r["bench"]["fp32_img_per_s"] and list(p["device_hours"]) == all_figures()
    assert p["total_device_hours"] == pytest.approx(sum(p["device_hours"].values()))
    total = [line for line in p["table"] if line.startswith("total")][0]
    assert total.split()[1] == str(p["steps"]) and float(total.split()[-2]) == round(p["total_device_hours"], 2)


def test_imports_only_what_the_gpu_image_has(run):
    code = f"import json, sys; {'; '.join(f'import {m}' for m in IMAGE)}; " \
           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    base = set(json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                         check=True).stdout))
    extra = set(run[1]["modules"]) - base - OURS - set(sys.stdlib_module_names)
    assert run[1]["blocked"] and "submitit" not in run[1]["modules"] and not extra, extra


def test_a_crashing_path_is_recorded_and_the_rest_still_run(monkeypatch):
    def boom() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    monkeypatch.setattr(gpu_check, "path_steps", lambda d, s: {"a": lambda: {"x": 1}, "b": boom, "c": dict})
    out = gpu_check.paths_section(CPU, gpu_check.SIZES["tiny"], time.perf_counter() + 60)
    assert out["failed"] == ["b"] and out["steps"]["a"]["ok"] and out["steps"]["a"]["x"] == 1
    assert out["steps"]["c"]["ok"] is True
    assert out["steps"]["b"]["error"].startswith("RuntimeError: CUDA error: an illegal memory access (test_gpu_check.py:")
    # Past the deadline no step starts: each is marked skipped, none is run.
    late = gpu_check.paths_section(CPU, gpu_check.SIZES["tiny"], time.perf_counter() - 1)
    assert late["steps"] == {k: {"ok": None, "error": "skipped: budget"} for k in "abc"} and late["failed"] == []


def test_a_section_without_a_rate_fails_alone():
    out = gpu_check.attempt(lambda: gpu_check.plan_section(None))
    assert out["ok"] is False and out["error"].startswith("ValueError: no fp32 img/s was measured")


def test_bench_stops_starting_rounds_at_the_deadline():
    calls = []
    loops = {"a": lambda r: calls.append(("a", r)) or 1.0, "b": lambda r: calls.append(("b", r)) or 2.0}
    assert bench.interleaved(loops, 4, time.perf_counter() - 1, warm=False) == {"a": [1.0], "b": [2.0]}
    assert calls == [("a", 1), ("b", 1)]
    calls.clear()
    assert bench.interleaved(loops, 2, time.perf_counter() + 60) == {"a": [1.0, 1.0], "b": [2.0, 2.0]}
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("b", 2), ("a", 2)]


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}"], "is a directory"),
    (["--device", "cuda:7"], "--device cuda:7"),
    (["--sizes", "huge"], "invalid choice: 'huge'"),
    (["--budget-scale", "0"], "--budget-scale must be > 0"),
])
def test_bad_input_refused_before_any_work(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        gpu_check.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and list(tmp_path.iterdir()) == []
