"""`make gpu-check`: the project measured on one GPU in one command (at most 8 minutes on an H100), into one JSON.

Sections, each with its own time budget (it stops early rather than overrun) and its own ok/error, so that a
crash in one is recorded and the others still run:
- bench: training img/s of PreAct-ResNet18 (width 64, batch 256, 32x32): `experiments.bench`'s loops, the
  BackdoorBench-style reference against our engine in fp32 and bf16, with and without torch.compile,
  interleaved over rounds; medians and min-max;
- sft: the paper's SFT (paper profile, CIFAR10 settings) for 3 epochs on a full-size fake CIFAR10 (50,000
  images): wall seconds and the charged device seconds after 1 and 3 epochs (the one Clock, read through
  `experiments.summary.charged_hours`);
- paths: one short step (max_steps) through every CUDA-only path the pipeline uses, in bf16 autocast:
  train + CA/ASR, FT, SFT, Spectral (a baseline on features), MIA posteriors, SimCLR and BadEncoder;
- plan: `make plan PROFILE=paper`'s device-hours of `make all` at the measured fp32 img/s.

It runs under a plain python3 with torch, torchvision, safetensors, scikit-learn, scipy, matplotlib, seaborn,
tqdm (no venv, no submitit) and records the versions it ran with. The device picks the default sizes
(`full` on CUDA, `tiny` elsewhere); the code paths are the same, only sizes and budgets differ.

    python3 -m experiments.gpu_check [--device cuda] [--sizes full|tiny] [--out artifacts/gpu_check.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from backdoor.attacks.badencoder import BadEncoder, train_badencoder
from backdoor.checkpoint import atomic_write_json
from backdoor.metrics import make_evaluator
from backdoor.models import SimCLRModel, make_model
from backdoor.ssl import pretrain_simclr
from backdoor.train import TrainConfig, fit, precision_used, sync, use_channels_last
from defenses import DefenseContext, get_defense
from experiments import bench, paths, plan
from experiments.common import USER_ERROR, resolve_device
from experiments.profiles import get_profile, resolve
from experiments.summary import charged_hours
from sequela.mia import attack_features, membership_inference, mia_split

SCHEMA = 1
# What the GPU image has (issue 29); their versions are recorded, never required.
PACKAGES = ("torch", "torchvision", "timm", "safetensors", "scikit-learn", "scipy", "matplotlib", "seaborn", "tqdm",
            "numpy", "pillow")
SFT_EPOCHS = 3  # the paper's "within three epochs (about 0.089 GPU hours)" (Section 1)
# The bench rows, by JSON key: (bf16, torch.compile); "reference" is bench.REFERENCE.
OURS = {"fp32": (False, False), "bf16": (True, False), "fp32_compile": (False, True), "bf16_compile": (True, True)}
SECTIONS = ("bench", "sft", "paths", "plan")


@dataclass(frozen=True)
class Sizes:
    """How big each section runs; `full` is the GPU check, `tiny` the same code on a CPU in about a minute."""

    width: int  # PreAct-ResNet18 base width of the bench and SFT (paper: 64)
    batch: int  # bench batch (paper: 256)
    bench_images: int  # images per bench epoch
    rounds: int  # interleaved bench rounds at most (each after one untimed warm-up epoch per loop)
    workers: int  # the reference loop's DataLoader workers (BackdoorBench's default: 4)
    compile: bool  # time the torch.compile rows (building them takes ~45 CPU-s even for a tiny net)
    sft_images: int  # SFT's clean set (paper: CIFAR10's 50,000 training images)
    test_images: int  # test images of each monitored (uncharged) CA/ASR evaluation
    path_images: int  # fake images of each CUDA-path step
    path_width: int
    budget_s: tuple[tuple[str, float], ...]  # seconds per section (SECTIONS)


# full: 240 + 90 + 60 + 60 s of sections, plus start-up, stays under 8 minutes on one H100.
SIZES = {
    "full": Sizes(64, 256, 20480, 5, 4, True, 50_000, 10_000, 1024, 64,
                  (("bench", 240.0), ("sft", 90.0), ("paths", 60.0), ("plan", 60.0))),
    "tiny": Sizes(8, 64, 256, 3, 0, False, 512, 256, 256, 4,
                  (("bench", 20.0), ("sft", 30.0), ("paths", 60.0), ("plan", 60.0))),
}


def fake(n: int, seed: int, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """n random uint8 CIFAR-sized images [n,3,32,32] and labels (timing and code paths only)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, classes, (n,),
                                                                                                  generator=g)


def error_text(e: BaseException) -> str:
    """`Type: first line of the message (file:line of the innermost frame)`."""
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}{where}"


def attempt(fn: Callable[[], dict]) -> dict:
    """fn's fields with ok, or ok False and the error: a crash is recorded and the check goes on (why it
    catches everything: one CUDA-only failure must not hide the other sections)."""
    t0 = time.perf_counter()
    try:
        out = {"ok": True, **fn(), "error": None}
    except Exception as e:  # noqa: BLE001
        out = {"ok": False, "error": error_text(e)}
    return {**out, "seconds": time.perf_counter() - t0}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of one quantity over rounds."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------- bench
def bench_section(device: torch.device, s: Sizes, deadline: float) -> dict:
    """img/s of the reference and each of our rows (OURS), interleaved (experiments.bench)."""
    x, y = fake(s.bench_images, 0)
    precisions = bench.bench_precisions(device)
    compiled = (False, True) if s.compile else (False,)
    loops = bench.loops(x, y, s.batch, s.workers, device, s.width, precisions, compiled)
    errors = {}
    for name, loop in list(loops.items()):  # warm-up here: a loop that fails (compile, say) drops out alone
        try:
            loop(0)
        except Exception as e:  # noqa: BLE001
            errors[name] = error_text(e)
            del loops[name]
    times = bench.interleaved(loops, s.rounds, deadline, warm=False)
    imgs = (s.bench_images // s.batch) * s.batch
    names = {"reference": bench.REFERENCE, **{k: bench.ours_name(*v) for k, v in OURS.items()}}
    rows = {k: bench_row(name, times, errors, imgs, device, s, OURS.get(k)) for k, name in names.items()}
    ref = times.get(bench.REFERENCE)
    speedup = {k: spread([r / o for r, o in zip(ref, times[names[k]])]) for k in OURS if ref and names[k] in times}
    fp32 = rows["fp32"].get("img_per_s")
    return {"model": f"PreAct-ResNet18 width {s.width}", "batch": s.batch, "images_per_epoch": imgs,
            "rows": rows, "speedup_vs_reference": speedup, "fp32_img_per_s": fp32["median"] if fp32 else None}


def bench_row(name: str, times: dict, errors: dict, imgs: int, device: torch.device, s: Sizes,
              flags: Optional[tuple[bool, bool]]) -> dict:
    """One row: img/s and s/epoch spreads, or why it was not measured."""
    if name in times:
        t = times[name]
        return {"name": name, "rounds": len(t), "img_per_s": spread([imgs / v for v in t]),
                "seconds_per_epoch": spread(t)}
    if name in errors:
        return {"name": name, "error": errors[name]}
    bf16, compiled = flags or (False, False)
    why = (f"on {device.type} the engine runs fp32 whatever the bf16 flag (backdoor.train.uses_bf16)"
           if bf16 and precision_used(device, True) == "fp32" else
           "these sizes skip torch.compile (building it takes ~45 CPU-s even for a tiny net); --sizes full times it"
           if compiled and not s.compile else "not run")
    return {"name": name, "not_measured": why}


# ---------------------------------------------------------------- SFT at paper settings
def sft_section(device: torch.device, s: Sizes, deadline: float) -> dict:
    """The paper's SFT (paper profile, CIFAR10) for SFT_EPOCHS epochs: wall and charged seconds."""
    prof = get_profile("paper")
    cfg = replace(prof.finetune_config("cifar10"), epochs=SFT_EPOCHS)
    x, y = fake(s.sft_images, 1)
    xt, yt = fake(s.test_images, 2)
    torch.manual_seed(0)
    model = make_model(prof.arch, 10, s.width, "cifar10").to(device)
    # The triggered copy is the test set itself: only the evaluation's (uncharged) time matters here.
    ctx = DefenseContext(model, x, y, cfg, evaluate=make_evaluator(xt, yt, xt, yt, prof.target, bf16=cfg.bf16),
                         params=prof.defense_params())
    sync(device)
    t0 = time.perf_counter()
    res = get_defense("sft")(ctx)
    sync(device)
    wall = time.perf_counter() - t0
    result = {"device_hours": res.info["device_hours"], "history": res.history}
    return {"images": s.sft_images, "width": s.width, "batch": cfg.batch_size, "epochs": SFT_EPOCHS,
            "precision": precision_used(device, cfg.bf16), "test_images": s.test_images, "wall_seconds": wall,
            "charged_seconds": {str(e): charged_hours(result, e) * 3600 for e in (1, SFT_EPOCHS)},
            "epoch_seconds": [r["seconds"] for r in res.history[1:]], "over_budget": time.perf_counter() > deadline}


# ---------------------------------------------------------------- CUDA-only paths, one short step each
def path_steps(device: torch.device, s: Sizes) -> dict[str, Callable[[], dict]]:
    """Each pipeline path that behaves differently on CUDA (channels_last, autocast, device-synced clock),
    at `rehearsal`'s budgets (max_steps) in bf16."""
    prof = resolve("rehearsal", ["precision=bf16"])
    cfg = prof.train_config("cifar10")
    x, y = fake(s.path_images, 3)
    n = len(x)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return make_model(prof.arch, 10, s.path_width, "cifar10").to(device)

    evaluate = make_evaluator(x, y, x, y, prof.target, bf16=cfg.bf16)

    def train() -> dict:
        h = fit(model(), x, y, cfg, evaluate=evaluate)
        return {"ca": h[-1]["ca"], "loss": h[-1]["loss"]}

    def defence(name: str) -> Callable[[], dict]:
        def run() -> dict:
            ctx = DefenseContext(model(), x, y, prof.finetune_config("cifar10"), evaluate=evaluate, x_train=x,
                                 y_train=y, poison_idx=torch.arange(n // 10), target_label=prof.target,
                                 params=prof.defense_params())
            return {"ca": get_defense(name)(ctx).history[-1].get("ca")}
        return run

    def mia() -> dict:
        m = model()
        feats = attack_features(m, x, y)
        out = membership_inference(m, x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:],
                                   mia_split(n // 2, n // 2), epochs=1)
        return {"features": list(feats.shape), "auc": out["auc"]}

    def simclr() -> dict:
        h = pretrain_simclr(SimCLRModel(s.path_width).to(device), x, prof.encoder_config("simclr"))
        return {"loss": h[-1]["loss"]}

    def badencoder() -> dict:
        attack = BadEncoder(target=prof.target).set_reference(x[:1]).to(device)  # as experiments.encoder
        h = train_badencoder(SimCLRModel(s.path_width).to(device).f, x, attack, prof.encoder_config("badencoder"))
        return {"loss": h[-1]["loss"]}

    return {"train": train, "ft": defence("ft"), "sft": defence("sft"), "spectral": defence("spectral"),
            "mia_posteriors": mia, "simclr": simclr, "badencoder": badencoder}


def paths_section(device: torch.device, s: Sizes, deadline: float) -> dict:
    """Each path step's ok/error; steps not started before the deadline are marked skipped."""
    steps = {}
    for name, step in path_steps(device, s).items():
        steps[name] = attempt(step) if time.perf_counter() < deadline else {"ok": None, "error": "skipped: budget"}
    return {"precision": precision_used(device, True), "channels_last": use_channels_last(device),
            "steps": steps, "failed": [k for k, v in steps.items() if v["ok"] is False]}


# ---------------------------------------------------------------- make plan PROFILE=paper, priced
def makefile_figures(python: str) -> list[str]:
    """The Makefile's ALL_FIGURES (what `make all` builds), as Make reads it."""
    var = plan.ALL_FIGURES_VAR
    out = subprocess.run(["make", "-s", "--no-print-directory", f"PY={python}", f"PYTHON={python}", "NEED_LISTS=",
                          f"--eval=_gpu_check_figures_: ; @echo $({var})", "_gpu_check_figures_"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def plan_section(img_per_s: Optional[float]) -> dict:
    """Device-hours of `make all` under PROFILE=paper at `img_per_s` (experiments.plan's cost model)."""
    if not img_per_s:
        raise ValueError("no fp32 img/s was measured (the bench section failed)")
    figures = makefile_figures(sys.executable)
    cost = plan.Costs("paper")
    per_figure = plan.split_by_figure(plan.make_lines("paper", figures, sys.executable), figures)
    priced = plan.priced(per_figure, cost)
    hours = {fig: work / img_per_s / 3600 for fig, (_, work) in priced.items()}
    return {"profile": "paper", "img_per_s": img_per_s, "steps": sum(n for n, _ in priced.values()),
            "device_hours": hours, "total_device_hours": sum(hours.values()),
            "table": plan.report("paper", per_figure, cost, img_per_s, False)}


# ---------------------------------------------------------------- the run
def environment(device: torch.device) -> dict[str, Any]:
    """Device, interpreter and package versions this check ran with."""
    gpu = device.type == "cuda"
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"device": str(device), "name": torch.cuda.get_device_name(device) if gpu else platform.processor() or
            "cpu", "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "executable": sys.executable, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "load_average": load, "versions": versions, "git": git_commit()}


def git_commit() -> Optional[str]:
    """HEAD of the checkout, if git and a repository are there (a copied tree may have neither)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def check(device: torch.device, sizes: str, budget_scale: float = 1.0) -> dict[str, Any]:
    """Every section in turn, each within its budget (times `budget_scale`); the JSON's content."""
    s = SIZES[sizes]
    budget = {name: seconds * budget_scale for name, seconds in s.budget_s}
    t0 = time.perf_counter()
    out: dict[str, Any] = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "sizes": sizes, "settings": asdict(s), "environment": environment(device)}
    deadline = lambda name: time.perf_counter() + budget[name]  # noqa: E731
    out["bench"] = attempt(lambda: bench_section(device, s, deadline("bench")))
    out["sft"] = attempt(lambda: sft_section(device, s, deadline("sft")))
    out["paths"] = attempt(lambda: paths_section(device, s, deadline("paths")))
    out["plan"] = attempt(lambda: plan_section(out["bench"].get("fp32_img_per_s")))
    for name in SECTIONS:
        out[name]["budget_s"] = budget[name]
    out["seconds"] = time.perf_counter() - t0
    return out


def table(r: dict[str, Any]) -> list[str]:
    """The short table printed at the end (docs/speed.md "Measure on your GPU")."""
    env = r["environment"]
    lines = [f"gpu-check on {env['name']} ({env['device']}), torch {env['torch']}, CUDA {env['cuda']}, "
             f"sizes {r['sizes']}, {r['seconds']:.0f} s"]
    for name in SECTIONS:
        sec = r[name]
        lines.append(f"[{name}] {'ok' if sec['ok'] else 'FAILED: ' + sec['error']} ({sec['seconds']:.0f} s of "
                     f"{sec['budget_s']:.0f})")
    for key, row in r["bench"].get("rows", {}).items():
        val = (f"{row['img_per_s']['median']:9.0f} ({row['img_per_s']['min']:.0f}-{row['img_per_s']['max']:.0f})"
               f" img/s, {row['rounds']} rounds" if "img_per_s" in row else row.get("error") or row["not_measured"])
        lines.append(f"  {key:<13} {val}")
    sft = r["sft"]
    if sft["ok"]:
        c = sft["charged_seconds"]
        lines.append(f"  SFT {sft['epochs']} epochs x {sft['images']} images, {sft['precision']}: wall "
                     f"{sft['wall_seconds']:.1f} s, charged {c['1']:.1f} s after 1 epoch, {c[str(SFT_EPOCHS)]:.1f} s "
                     f"after {SFT_EPOCHS} ({c[str(SFT_EPOCHS)] / 3600:.4f} device-h)")
    for name, step in r["paths"].get("steps", {}).items():
        lines.append(f"  path {name:<15} {'ok' if step['ok'] else step['error']}")
    if r["plan"]["ok"]:
        lines.append(f"  make all, PROFILE=paper: {r['plan']['steps']} steps, {r['plan']['total_device_hours']:.1f} "
                     f"device-h at {r['plan']['img_per_s']:.0f} img/s (fp32)")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    ap.add_argument("--sizes", choices=sorted(SIZES), help="default: full on CUDA, tiny elsewhere")
    ap.add_argument("--out", type=Path, help=f"the JSON (default: {paths.path('gpu_check')})")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="multiply every section's time budget (the tests: no step skipped on a loaded box)")
    a = ap.parse_args(argv)
    if not a.budget_scale > 0:
        ap.error(f"--budget-scale must be > 0, got {a.budget_scale}")
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        ap.error(str(e))
    out = a.out or paths.path("gpu_check")
    if out.exists() and out.is_dir():
        ap.error(f"--out {out} is a directory; give a file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"gpu_check: cannot create {out.parent} ({e.strerror}); give --out a writable path", file=sys.stderr)
        raise SystemExit(USER_ERROR) from None
    result = check(device, a.sizes or ("full" if device.type == "cuda" else "tiny"), a.budget_scale)
    atomic_write_json(out, result)
    print("\n".join(table(result)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
