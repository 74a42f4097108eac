"""`make report`: the paper's numbers beside ours, the paper's claims checked, every figure on one page.

    python -m experiments.report --profile demo     (default: paper, as every step and Make)

Reads the result files that exist under artifacts/results/<profile>/ and writes
artifacts/report/<profile>/REPRODUCTION.md and index.html (paths: experiments/paths.py). A missing file makes its row
"not run" with the make target that writes it; the report never fails for want of results.
The paper's side lives in experiments/paper_numbers.json. With several seeds (--set seeds=0,1)
it reads each seed's directory: ours = mean +- sample std (ddof=1) and n, each claim checked per seed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import json
import math
import os
import re
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

from backdoor.checkpoint import atomic_write_bytes
from defenses import DEFENSES
from experiments import paths
from experiments.common import run_main
from experiments.profiles import Profile, add_profile_args, resolve as resolve_profile, seed_runs
from experiments.summary import spread
from experiments.sweeps import SweepConfig, figure_points, read_point

SPEC = Path(__file__).with_name("paper_numbers.json")
_F = {f: "{" + f + "}" for f in ("dataset", "attack", "defense", "model", "ratio", "pretrain", "mode", "point")}
# Where each writer puts its file, relative to a profile's results directory: format strings over
# paper_numbers.json's setting names, from experiments/paths.py (the layout's owner).
LAYOUTS = {
    "standalone": paths.relative("result", **_F),
    "mia": paths.relative("mia", **_F),
    "reinject": paths.relative("reinject", **_F),
    "transfer": paths.relative("transfer", "transfer_dir", downstream=_F["dataset"], **_F),
    "encoder": paths.relative("downstream", "encoder_dir", downstream=_F["dataset"], **_F),
    "ablation": paths.relative("ablation", **_F),
}
# Absolute tolerance per metric; GPU-hours compare as a ratio (the paper's DGX-A100 is not our device).
TOLERANCE = {"CA": 0.05, "ASR": 0.05, "MIA accuracy": 0.05, "epochs": 1}
HOURS_FACTOR = 2.0
NUMBER_VERDICTS = ("within 0.05", "within 1 epoch", "within 2x", "off", "not run yet", "not in profile",
                   "not comparable")
CLAIM_VERDICTS = ("holds", "does not hold", "not run")
DEFENCE_NAMES = tuple(sorted(DEFENSES))


# ---- reading results ------------------------------------------------------------------------
class Results:
    """The result JSONs of one profile, read once each; a missing file is None, never an error."""

    def __init__(self, root: Path):
        self.root, self._cache = Path(root), {}

    def get(self, rel: str) -> Optional[dict]:
        if rel not in self._cache:
            path = self.root / rel
            self._cache[rel] = json.loads(path.read_text()) if path.is_file() else None
        return self._cache[rel]

    def read(self) -> list[dict]:
        """Every file read so far that exists."""
        return [r for r in self._cache.values() if r is not None]


_STEP = re.compile(r"^(?P<key>[^\[\]]+)(?:\[(?P<at>@)?(?P<idx>-?\d+)\])?$")
_HOURS = re.compile(r"^hours_through_epoch\((\d+)\)$")


def epoch_record(history: list[dict], epoch: int) -> dict:
    """The record of `epoch` (KeyError when the run has no such epoch)."""
    for r in history:
        if r.get("epoch") == epoch:
            return r
    last = history[-1]["epoch"] if history else None
    raise KeyError(f"no epoch {epoch} (the run's last epoch is {last})")


def resolve(record: dict, path: str) -> Any:
    """A field of a results record: `a.b`, `history[@N].asr` (epoch N), `history[-1].ca`, `hours_through_epoch(N)`."""
    m = _HOURS.match(path)
    if m:
        n = int(m[1])
        epoch_record(record["history"], n)
        return sum(r["seconds"] for r in record["history"] if 1 <= r["epoch"] <= n) / 3600
    if path in record:  # a key with a dot in it: `epochs_to_asr_0.8`
        return record[path]
    value: Any = record
    for step in path.split("."):
        s = _STEP.match(step)
        if not s:
            raise ValueError(f"bad field step {step!r} in {path!r}")
        value = value[s["key"]]
        if s["idx"] is not None:
            value = epoch_record(value, int(s["idx"])) if s["at"] else value[int(s["idx"])]
    return value


# ---- the profile's scope ---------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """What a profile runs: the lists the claims iterate over and the paper settings it can compare."""

    profile: Profile
    sweeps: Optional[SweepConfig]
    enc_pairs: tuple[tuple[str, str], ...]
    ratios: tuple[str, ...] = ()
    sets: tuple[str, ...] = ()  # the --set overrides that made `profile` (its name is then <base>+<hash>)

    @property
    def name(self) -> str:
        return self.profile.name

    def fig_dataset(self, dataset: Optional[str]) -> str:
        """The paper's dataset of a figure, or the profile's first dataset (as make/*.mk picks it)."""
        return dataset if dataset in self.profile.datasets else self.profile.datasets[0]

    def target(self, target: str) -> str:
        """The command that writes `target` (an overridden profile is its base name plus SET=)."""
        sets = f' SET="{" ".join(self.sets)}"' if self.sets else ""
        return f"make {target} PROFILE={self.name.split('+')[0]}{sets}"


def make_scope(profile: str, sets: tuple[str, ...] = ()) -> Scope:
    prof = resolve_profile(profile, sets)
    e = prof.encoder
    pairs = tuple((p, d) for p in e.pretrain_sets for d in e.downstream_sets)
    return Scope(prof, prof.sweeps, pairs, tuple(str(r) for r in prof.reinject_ratios), tuple(sets))


def not_in_profile(setting: dict, scope: Scope) -> Optional[str]:
    """Why a paper setting cannot exist under this profile, or None."""
    p, sw, s = scope.profile, scope.sweeps, setting
    if s["scenario"] == "encoder":
        ok = (s["pretrain"], s["dataset"]) in scope.enc_pairs
        return None if ok else f"{s['pretrain']} -> {s['dataset']} encoder not in profile {p.name}"
    if s["scenario"] == "transfer":
        ok = sw is not None and s["pretrain"] == sw.pretrain and s["dataset"] in sw.downstream
        if not ok:
            return f"transfer {s['pretrain']} -> {s['dataset']} not in profile {p.name}"
    elif s["dataset"] not in p.datasets:
        return f"{s['dataset']} not in profile {p.name} ({', '.join(p.datasets)})"
    if s.get("attack") not in p.attacks:
        return f"{s.get('attack')} not in profile {p.name}"
    if "ratio" in s and s["ratio"] not in scope.ratios:
        return f"re-injection ratio {s['ratio']} not in profile {p.name}"
    if "point" in s and sw is not None:
        names = {pt.name for f in (7, 8, 9) for pt in figure_points(f, p, sw)}
        if s["point"] not in names:
            return f"ablation point {s['point']} not in profile {p.name}"
    return None


# ---- numbers ---------------------------------------------------------------------------------
def verdict(metric: str, paper: float, ours: Optional[float]) -> str:
    if ours is None:
        return "off"  # e.g. the re-injected ASR never reached 0.8
    if metric == "GPU-hours":
        ok = ours > 0 and 1 / HOURS_FACTOR <= ours / paper <= HOURS_FACTOR
        return "within 2x" if ok else "off"
    tol = TOLERANCE[metric]
    label = "within 1 epoch" if metric == "epochs" else f"within {tol}"
    return label if abs(ours - paper) <= tol + 1e-9 else "off"


def reduce_values(values: list[Optional[float]], how: str) -> Optional[float]:
    """min: the fewest over models (None = never reached); max: None as soon as one never reached."""
    reached = [v for v in values if v is not None]
    if how == "min":
        return min(reached) if reached else None
    return None if len(reached) < len(values) else max(reached)


def our_value(entry: dict, results: Results) -> tuple[str, Optional[float], str]:
    """(status, value, detail); status is ok, missing or bad (the file exists but lacks the field)."""
    res = entry["result"]
    over = res.get("over", {})
    files = [res["file"].format(**{k: v for k, v in zip(over, combo)})
             for combo in zip(*over.values())] if over else [res["file"]]
    records = [results.get(f) for f in files]
    if any(r is None for r in records):
        return "missing", None, next(f for f, r in zip(files, records) if r is None)
    try:
        values = [resolve(r, res["field"]) for r in records]
    except (KeyError, IndexError, TypeError) as e:
        return "bad", None, f"{res['field']}: {e}"
    return "ok", reduce_values(values, res["reduce"]) if over else values[0], ""


def number_row(entry: dict, results: Results | list[Results], scope: Scope) -> dict:
    """One number's row; several Results (one per seed): ours is their mean (ours_sd: sample std, n: seeds)."""
    seeds = results if isinstance(results, list) else [results]
    row = {"id": entry["id"], "section": entry["section"], "figure": entry["figure"], "metric": entry["metric"],
           "setting": setting_text(entry["setting"]), "paper": entry["paper"], "ours": None, "ours_sd": None,
           "n": len(seeds), "diff": None,
           "key": f"{entry['result']['file']} : {entry['result']['field']}", "detail": "",
           "quote": entry["quote"] + (f" [note: {entry['note']}]" if entry.get("note") else "")}
    reason = not_in_profile(entry["setting"], scope)
    if reason:
        return {**row, "verdict": "not in profile", "detail": reason}
    outs = [our_value(entry, r) for r in seeds]
    where = (lambda r: f"{r.root.name}/") if len(seeds) > 1 else (lambda r: "")  # noqa: E731
    for want, shown in (("missing", "not run yet"), ("bad", "not comparable")):
        hit = next(((r, o) for r, o in zip(seeds, outs) if o[0] == want), None)
        if hit:
            r, (_, _, detail) = hit
            text = f"{scope.target(entry['target'])} ({where(r)}{detail})" if want == "missing" else where(r) + detail
            return {**row, "verdict": shown, "detail": text}
    values = [v for _, v, _ in outs]
    if any(v is None for v in values):  # a seed that never reached (e.g. ASR 0.8): no mean
        return {**row, "verdict": verdict(entry["metric"], entry["paper"], None),
                "detail": f"{sum(v is None for v in values)} of {len(values)} seeds never reached it"}
    mean, sd, _ = spread(values)
    return {**row, "ours": mean, "ours_sd": sd, "diff": mean - entry["paper"],
            "verdict": verdict(entry["metric"], entry["paper"], mean)}


def setting_text(s: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items() if k != "scenario") + f" ({s['scenario']})"


# ---- claims ----------------------------------------------------------------------------------
Outcome = tuple[str, str]
NOT_IN_PROFILE = "not in profile"  # a check's status when the profile has no case of it; shown as "not run"
OPS: dict[str, Callable[[float, float], bool]] = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
                                                  ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def tally(passed: list[bool], total: int, share: float, what: str, fails: list[str]) -> tuple[str, str]:
    """holds if the passing share of the evaluated cases reaches `share` (1.0 = every case)."""
    n, k = len(passed), sum(passed)
    ok = k == n if share >= 1 else k / n >= share
    detail = f"{k}/{n} {what}" + ("" if n == total else f" ({total - n} of {total} not run)")
    if fails:
        detail += "; fails: " + ", ".join(fails[:4]) + (" ..." if len(fails) > 4 else "")
    return ("holds" if ok else "does not hold"), detail


def runs(scope: Scope, kind: str, dataset: Optional[str] = None, attacks: Optional[list[str]] = None) -> list[dict]:
    """The run directories a claim iterates over, with the names its fields may use."""
    p = scope.profile
    att = [a for a in p.attacks if attacks is None or a in attacks]
    if kind == "encoder":
        return [{"dir": _parent("downstream", "encoder_dir", pretrain=pre, downstream=down), "name": f"{pre}->{down}"}
                for pre, down in scope.enc_pairs]
    if kind == "transfer":
        down = scope.sweeps.downstream if scope.sweeps else ()
        return [{"dir": _parent("transfer", "transfer_dir", downstream=d, attack=a), "name": f"{d}/{a}", "attack": a}
                for d in down for a in att]
    ds = [scope.fig_dataset(dataset)] if dataset else list(p.datasets)
    return [{"dir": paths.run(d, a), "name": f"{d}/{a}", "attack": a, "dataset": d} for d in ds for a in att]


def _parent(name: str, within: str, **values: str) -> str:
    """The directory of template `name`'s files for `values` (its last field left out), relative to results."""
    last = paths.fields(name)[-1]
    return str(Path(paths.relative(name, within, **values, **{last: "_"})).parent)


def side(spec: dict, run: dict, results: Results) -> Optional[float]:
    r = results.get(f"{run['dir']}/{spec['file']}")
    if r is None:
        return None
    try:
        return resolve(r, spec["field"].format(**run))
    except (KeyError, IndexError, TypeError):
        return None


def check_compare(p: dict, scope: Scope, results: Results) -> Outcome:
    """left op (right + offset) or left op value, per run."""
    todo = runs(scope, p["scope"], p.get("dataset"), p.get("attacks"))
    if not todo:
        return NOT_IN_PROFILE, f"profile {scope.name} runs none of {', '.join(p.get('attacks') or ['these'])}"

    def judge(run: dict) -> Optional[tuple[bool, str]]:
        a = side(p["left"], run, results)
        b = side(p["right"], run, results) if "right" in p else p["value"]
        if a is None or b is None:
            return None
        b += p.get("offset", 0.0)
        return OPS[p["op"]](a, b), f"{a:.3f} vs {b:.3f}"

    return judge_runs(todo, judge, p, "no results")


def check_lowest(p: dict, scope: Scope, results: Results) -> Outcome:
    """`who` has the lowest `field` among the defences that ran, per run."""
    todo, passed, fails = runs(scope, p["scope"], p.get("dataset")), [], []
    for run in todo:
        vals = {d: side({"file": paths.in_run("result", defense=d), "field": p["field"]}, run, results)
                for d in DEFENCE_NAMES}
        vals = {d: v for d, v in vals.items() if v is not None}
        if p["who"] not in vals or len(vals) < 2:
            continue
        best = min(vals, key=vals.get)
        passed.append(vals[p["who"]] <= vals[best])
        if not passed[-1]:
            fails.append(f"{run['name']}: {best} {vals[best]:.3f} < {p['who']} {vals[p['who']]:.3f}")
    if not passed:
        return "not run", f"no runs with {p['who']} and another defence"
    what = f"attacks (of {len(DEFENCE_NAMES)} defences, those run)"
    return tally(passed, len(todo), p.get("share", 1.0), what, fails)


def check_cost(p: dict, scope: Scope, results: Results) -> Outcome:
    """Median device-hours per defence over every standalone run; `who` is the lowest or highest."""
    hours: dict[str, list[float]] = {}
    for run in runs(scope, "standalone"):
        for d in DEFENCE_NAMES:
            v = side({"file": paths.in_run("result", defense=d), "field": "device_hours"}, run, results)
            if v is not None:
                hours.setdefault(d, []).append(v)
    med = {d: statistics.median(v) for d, v in hours.items()}
    if p["who"] not in med or len(med) < 2:
        return "not run", f"device-hours for {', '.join(sorted(med)) or 'no defence'}"
    pick = (min if p["rank"] == "lowest" else max)(med, key=med.get)
    detail = "median h: " + ", ".join(f"{d} {med[d]:.2g}" for d in sorted(med, key=med.get))
    ok = med[p["who"]] == med[pick]
    return ("holds" if ok else "does not hold"), detail + f" ({len(med)} defences)"


def point_value(results: Results, run: dict, point, scope: Scope, fld: str, epoch: Optional[int]) -> Optional[float]:
    try:
        h = read_point(results.root, run["dataset"], run["attack"], point, scope.profile, scope.sweeps)
        return (epoch_record(h, epoch) if epoch is not None else h[-1])[fld]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def check_ablation(p: dict, scope: Scope, results: Results) -> Outcome:
    """Fig. 7-9: the first vs the last point of the sweep (op), or the spread over all points (range)."""
    if scope.sweeps is None:
        return "not run", f"profile {scope.name} has no sweep sizes"
    points = figure_points(p["fig"], scope.profile, scope.sweeps)
    todo = runs(scope, "standalone", attacks=p.get("attacks"))
    if not todo:
        return NOT_IN_PROFILE, f"profile {scope.name} runs none of {', '.join(p.get('attacks') or ['these'])}"

    def judge(run: dict) -> Optional[tuple[bool, str]]:
        vals = [point_value(results, run, pt, scope, p["field"], p.get("epoch")) for pt in points]
        if any(v is None for v in vals):
            return None
        if p["mode"] == "range":
            return max(vals) - min(vals) <= p["max_range"], f"range {max(vals) - min(vals):.3f}"
        return OPS[p["op"]](vals[0], vals[-1]), f"{points[0].name} {vals[0]:.3f}, {points[-1].name} {vals[-1]:.3f}"

    return judge_runs(todo, judge, p, "no complete sweep")


def judge_runs(todo: list[dict], judge: Callable[[dict], Optional[tuple[bool, str]]], p: dict,
               missing: str) -> Outcome:
    """Tally `judge(run)` ((ok, text), or None when the run's results are missing) over the runs."""
    passed, fails = [], []
    for run in todo:
        verdict = judge(run)
        if verdict is None:
            continue
        passed.append(verdict[0])
        if not verdict[0]:
            fails.append(f"{run['name']} {verdict[1]}")
    if not passed:
        return "not run", f"{missing} for {len(todo)} case(s)"
    return tally(passed, len(todo), p.get("share", 1.0), "cases", fails)


def reinject_records(p: dict, scope: Scope, results: Results) -> list[tuple[str, str, dict]]:
    """(attack, ratio, {model: record}) for every re-injection cell that has any non-skipped file."""
    d = scope.fig_dataset(p.get("dataset"))
    out = []
    for a in scope.profile.attacks:
        for r in scope.ratios:
            recs = {m: results.get(paths.relative("reinject", dataset=d, attack=a, model=m, ratio=r))
                    for m in ("clean", *DEFENCE_NAMES)}
            recs = {m: x for m, x in recs.items() if x is not None and x.get("history")}
            if recs:
                out.append((a, r, recs))
    return out


def check_reinject_faster(p: dict, scope: Scope, results: Results) -> Outcome:
    passed, fails = [], []
    never = math.inf
    for a, r, recs in reinject_records(p, scope, results):
        if "clean" not in recs:
            continue
        c = recs["clean"]["epochs_to_asr_0.8"]
        for m, rec in recs.items():
            e = rec["epochs_to_asr_0.8"]
            if m == "clean" or (e is None and c is None):
                continue
            passed.append((never if e is None else e) < (never if c is None else c))
            if not passed[-1]:
                fails.append(f"{m} {a}@{r}: {e} vs clean {c}")
    if not passed:
        return "not run", "no re-injection into the clean and a defended model"
    return tally(passed, len(passed), p.get("share", 1.0), "(defence, attack, ratio) cases", fails)


def check_reinject_not_most(p: dict, scope: Scope, results: Results) -> Outcome:
    passed, fails = [], []
    for a, r, recs in reinject_records(p, scope, results):
        asr = {}
        for m, rec in recs.items():
            if m != "clean":
                h = rec["history"]
                asr[m] = epoch_record(h, min(p["epoch"], h[-1]["epoch"]))["asr"]
        if p["who"] not in asr or len(asr) < 2:
            continue
        top = max(v for m, v in asr.items() if m != p["who"])
        passed.append(asr[p["who"]] <= top)
        if not passed[-1]:
            fails.append(f"{a}@{r}: {p['who']} {asr[p['who']]:.3f} > every other (max {top:.3f})")
    if not passed:
        return "not run", f"no re-injection into {p['who']} and another defended model"
    return tally(passed, len(passed), 1.0, "(attack, ratio) cases", fails)


CHECKS: dict[str, Callable[[dict, Scope, Results], Outcome]] = {
    "compare": check_compare, "lowest": check_lowest, "cost": check_cost, "ablation": check_ablation,
    "reinject_faster": check_reinject_faster, "reinject_not_most": check_reinject_not_most}


def per_seed(outs: list[Outcome], names: list[str]) -> Outcome:
    """One claim over seeds: holds when it holds in every seed that ran it, does not hold when one fails."""
    ran = [s for s, _ in outs if s in ("holds", "does not hold")]
    if not ran:
        return outs[0]
    status = "holds" if all(s == "holds" for s in ran) else "does not hold"
    return status, (f"holds in {ran.count('holds')} of {len(outs)} seeds: "
                    + " | ".join(f"{n}: {s}, {d}" for n, (s, d) in zip(names, outs)))


def claim_row(claim: dict, scope: Scope, results: Results | list[Results]) -> dict:
    seeds = results if isinstance(results, list) else [results]
    outs = [CHECKS[claim["check"]](claim["params"], scope, r) for r in seeds]
    status, detail = outs[0] if len(outs) == 1 else per_seed(outs, [r.root.name for r in seeds])
    if status == "not run":
        detail = f"{scope.target(claim['target'])} ({detail})"
    elif status == NOT_IN_PROFILE:
        status, detail = "not run", f"not in this profile: {detail}"
    return {"id": claim["id"], "section": claim["section"], "figure": claim["figure"], "claim": claim["claim"],
            "verdict": status, "detail": detail}


# ---- spec, provenance ------------------------------------------------------------------------
def load_spec(path: Path = SPEC) -> dict:
    """The paper-numbers file, checked against the layouts and checks this module knows."""
    spec = json.loads(Path(path).read_text())
    metrics = (*TOLERANCE, "GPU-hours")
    bad = [f"{n['id']}: layout {n['result']['layout']!r}" for n in spec["numbers"]
           if n["result"]["layout"] not in LAYOUTS]
    bad += [f"{n['id']}: metric {n['metric']!r}" for n in spec["numbers"] if n["metric"] not in metrics]
    bad += [f"{c['id']}: check {c['check']!r}" for c in spec["claims"] if c["check"] not in CHECKS]
    if bad:
        raise ValueError(f"{path}: {'; '.join(bad)}; valid checks: {', '.join(CHECKS)}; layouts: "
                         f"{', '.join(LAYOUTS)}; metrics: {', '.join(metrics)}")
    return spec


def git_state() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if sha.returncode:
        return "unknown (not a git checkout)"
    return sha.stdout.strip() + (" (dirty: uncommitted changes)" if dirty.stdout.strip() else " (clean)")


def precision_of(rec: dict) -> Optional[str]:
    """The precision a result ran in: its stamp, except that bf16 off CUDA is fp32 (results written before
    the stamp took the device recorded the profile's request, which a CPU run never honours)."""
    device = str(rec.get("device") or "")
    return "fp32" if rec.get("precision") == "bf16" and device and "cuda" not in device else rec.get("precision")


def precision_read(recs: list[dict]) -> str:
    """The precision the results say they ran in (`Profile.stamp`), with counts when they disagree."""
    names = {"bf16": "bf16 autocast", "fp32": "fp32"}
    # A null precision is a result that ran no model (Fig. 1's LR trace); a missing one predates the field.
    counts = Counter(names.get(precision_of(r), "not recorded") for r in recs
                     if "precision" not in r or r["precision"] is not None)
    if len(counts) <= 1:
        return next(iter(counts), "not recorded (no results)")
    return "mixed: " + ", ".join(f"{name} ({n} files)" for name, n in sorted(counts.items()))


def provenance(scope: Scope, results: Results | list[Results]) -> dict[str, str]:
    seeds = results if isinstance(results, list) else [results]
    recs = [rec for r in seeds for rec in r.read()]
    devices = sorted({str(r["device"]) for r in recs if r.get("device")})
    precision = precision_read(recs)
    out = {"git": git_state(), "torch": metadata.version("torch"),
           "device": ", ".join(devices) or "not recorded (no results)", "profile": scope.name,
           "precision": precision, "result files read": str(len(recs)),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if len(seeds) > 1:
        out["seeds"] = f"n={len(seeds)}: " + ", ".join(r.root.name for r in seeds)
    return out


def digits_only(scope: Scope, spec: dict) -> bool:
    """True when the profile shares no dataset with the paper (demo, smoke: digits)."""
    paper = {n["setting"]["dataset"] for n in spec["numbers"]}
    return not paper & set(scope.profile.datasets)


# ---- rendering -------------------------------------------------------------------------------
def fmt(v: Any, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        small = 0 < abs(v) < 0.01  # GPU-hours of a digits run
        return f"{v:+.3g}" if small and signed else f"{v:.3g}" if small else f"{v:+.3f}" if signed else f"{v:.3f}"
    return str(v)


NUM_COLS = ("section", "figure", "metric", "setting", "paper", "ours", "diff", "verdict", "key", "detail")
CLAIM_COLS = ("section", "figure", "claim", "verdict", "detail")


def cells(row: dict, cols: tuple[str, ...]) -> list[str]:
    """Formatted cells; over several seeds, ours reads `mean ± sd (n=N)`."""
    def cell(c: str) -> str:
        if c == "ours" and row.get("ours_sd") is not None:
            return f"{fmt(row['ours'])} ± {fmt(row['ours_sd'])} (n={row['n']})"
        return fmt(row[c], signed=c == "diff")
    return [cell(c) for c in cols]


def md_table(rows: list[dict], cols: tuple[str, ...]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(esc(c) for c in cells(r, cols)) + " |" for r in rows]
    return "\n".join(lines)


def counts(rows: list[dict], verdicts: tuple[str, ...]) -> str:
    return ", ".join(f"{sum(r['verdict'] == v for r in rows)} {v}" for v in verdicts
                     if any(r["verdict"] == v for r in rows))


SEEDS_NOTE = ("Over several seeds, ours is the mean ± the sample standard deviation (ddof=1) over the seeds, "
              "with their number n; diff and verdict use the mean. Each claim is checked per seed. Fig. 4 draws the "
              "mean over the seeds with a shaded min-max band.")
DIGITS_NOTE = ("This profile trains on `digits`, not on the paper's datasets, so the numeric comparison is "
               "meaningless here (its rows read 'not in profile'); the claims table is what counts.")


def markdown(rep: dict) -> str:
    prov = "\n".join(f"- {k}: {v}" for k, v in rep["provenance"].items())
    note = (f"\n> {DIGITS_NOTE}\n" if rep["digits"] else "") + (f"\n> {SEEDS_NOTE}\n" if rep["seeds"] > 1 else "")
    return (f"# Did it reproduce? Profile `{rep['profile']}`\n\n## Provenance\n\n{prov}\n\n"
            f"## Claims ({counts(rep['claims'], CLAIM_VERDICTS)})\n\n{md_table(rep['claims'], CLAIM_COLS)}\n\n"
            f"## Numbers ({counts(rep['numbers'], NUMBER_VERDICTS)})\n{note}\n"
            "Tolerance: 0.05 for CA/ASR/MIA accuracy, 1 epoch, a factor 2 for GPU-hours (other hardware). "
            "key = result file (under artifacts/results/<profile>/) : field.\n\n"
            f"{md_table(rep['numbers'], NUM_COLS)}\n\n## Figures\n\n"
            + "\n".join(f"- {f['name']}: " + (f"[{f['src']}]({f['src']})" if f["src"] else f"not run ({f['target']})")
                        for f in rep["figures"]) + "\n")


CSS = """body{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:3px 6px;
vertical-align:top;text-align:left}th{background:#eee;position:sticky;top:0}tr:nth-child(even){background:#fafafa}
td.v{font-weight:bold;white-space:nowrap}.holds,.within{background:#d9f2d9}.off,.does{background:#f8d7d7}
.not{color:#777}.note{background:#fff3cd;padding:.6em;border:1px solid #e0c97a}
figure{display:inline-block;margin:0 1em 1.5em 0;max-width:100%;vertical-align:top}
img{max-width:100%;max-height:720px;border:1px solid #ddd}figcaption{font-size:13px;max-width:900px}"""


def html_table(rows: list[dict], cols: tuple[str, ...]) -> str:
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = []
    for r in rows:
        tip = {"paper": f' title="{html.escape(r["quote"])}"'} if "quote" in r else {}  # the paper's words
        tds = "".join(f'<td class="v {r["verdict"].split()[0]}">{html.escape(v)}</td>' if c == "verdict"
                      else f"<td{tip.get(c, '')}>{html.escape(v)}</td>" for c, v in zip(cols, cells(r, cols)))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_page(rep: dict) -> str:
    e = html.escape
    prov = "".join(f"<li>{e(k)}: {e(v)}</li>" for k, v in rep["provenance"].items())
    figs = "".join(f'<figure><img src="{e(f["src"])}" alt="{e(f["name"])}"><figcaption>{e(f["caption"])}'
                   f"</figcaption></figure>" if f["src"] else
                   f'<p class="not"><b>not run</b> ({e(f["target"])}): {e(f["caption"])}</p>' for f in rep["figures"])
    note = (f'<p class="note">{e(DIGITS_NOTE)}</p>' if rep["digits"] else "") + (
        f'<p class="note">{e(SEEDS_NOTE)}</p>' if rep["seeds"] > 1 else "")
    shown = sum(1 for f in rep["figures"] if f["src"])
    # On digits every number row reads "not in profile": folded, so the claims and figures are one scroll apart.
    fold = "" if rep["digits"] else " open"
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>Reproduction: {e(rep["profile"])}</title>'
            f"<style>{CSS}</style></head><body><h1>Did it reproduce? Profile <code>{e(rep['profile'])}</code></h1>"
            '<p><a href="#claims">Claims</a> | <a href="#numbers">Numbers</a> | '
            f'<a href="#figures">Figures ({shown} of {len(rep["figures"])} made)</a></p>'
            f"<h2>Provenance</h2><ul>{prov}</ul>"
            f'<h2 id="claims">Claims ({e(counts(rep["claims"], CLAIM_VERDICTS))})</h2>'
            f"{html_table(rep['claims'], CLAIM_COLS)}"
            f'<h2 id="numbers">Numbers ({e(counts(rep["numbers"], NUMBER_VERDICTS))})</h2>{note}'
            "<p>Tolerance: 0.05 for CA/ASR/MIA accuracy, 1 epoch, a factor 2 for GPU-hours (other hardware). "
            "Hover a paper value for the paper's words.</p>"
            f"<details{fold}><summary>{len(rep['numbers'])} rows</summary>{html_table(rep['numbers'], NUM_COLS)}"
            f'</details><h2 id="figures">Figures</h2>{figs}</body></html>\n')


def figures(spec: dict, fig_dir: Path, out_dir: Path, scope: Scope) -> list[dict]:
    """Every figure of the paper (present or not) and any other PNG of the profile, with its caption."""
    caps = spec["captions"]
    extra = sorted(p.stem for p in fig_dir.glob("*.png") if p.stem not in caps) if fig_dir.is_dir() else []
    out = []
    for name in [*caps, *extra]:
        png = paths.path("figure", fig_dir, name=name)
        src = os.path.relpath(png, out_dir) if png.is_file() else None
        out.append({"name": name, "caption": caps.get(name, name), "src": src, "target": scope.target(name)})
    return out


def build(profile: str, results_dir: Path | list[Path], fig_dir: Path, out_dir: Path, spec_path: Path = SPEC,
          sets: tuple[str, ...] = ()) -> dict:
    """Compare, check, and write REPRODUCTION.md and index.html; returns the report's rows.
    `results_dir`: the profile's results, or one directory per seed."""
    spec, scope = load_spec(spec_path), make_scope(profile, sets)
    profile = scope.name
    dirs = results_dir if isinstance(results_dir, list) else [results_dir]
    results = [Results(d) for d in dirs]
    rep = {"profile": profile, "digits": digits_only(scope, spec), "seeds": len(results),
           "numbers": [number_row(n, results, scope) for n in spec["numbers"]],
           "claims": [claim_row(c, scope, results) for c in spec["claims"]],
           "figures": figures(spec, fig_dir, out_dir, scope)}
    rep["provenance"] = provenance(scope, results)
    atomic_write_bytes(paths.path("report_md", out_dir), markdown(rep).encode())
    atomic_write_bytes(paths.path("report_html", out_dir), html_page(rep).encode())
    return rep


def claims_text(rows: list[dict]) -> str:
    """The claims table for the terminal."""
    w = max(len(r["id"]) for r in rows)
    return "\n".join(f"{r['verdict']:<14} {r['id']:<{w}}  {r['detail']}" for r in rows)


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(ap)
    ap.add_argument("--results", nargs="+", help="default: artifacts/results/<profile> (one per seed with seeds=)")
    ap.add_argument("--figures", help="default: artifacts/figures/<profile>")
    ap.add_argument("--out", help="default: artifacts/report/<profile>")
    args = ap.parse_args(argv)

    def step(a: argparse.Namespace) -> None:
        name = resolve_profile(a.profile, a.set).name  # demo, or demo+<hash> under --set
        res = [Path(r) for r in a.results or [paths.results(d) for _, d in seed_runs(a.profile, a.set)]]
        figs = Path(a.figures or paths.figures(name))
        out = Path(a.out or paths.report(name))
        rep = build(a.profile, res, figs, out, sets=tuple(a.set))
        print(f"claims ({counts(rep['claims'], CLAIM_VERDICTS)}):\n{claims_text(rep['claims'])}")
        print(f"numbers: {counts(rep['numbers'], NUMBER_VERDICTS)}")
        print(f"report: {paths.path('report_html', out)}  (and {paths.path('report_md', out).name})")

    run_main(step, args)


if __name__ == "__main__":
    main()
