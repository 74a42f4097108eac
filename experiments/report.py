"""`make report`: the paper's numbers beside ours, the paper's claims checked, every figure on one page.

    python -m experiments.report --profile demo     (default: paper, as every step and Make)

Reads the result files that exist under artifacts/results/<profile>/ and writes
artifacts/report/<profile>/REPRODUCTION.md and index.html (paths: experiments/paths.py). A missing file makes its row
"not run" with the make target that writes it; the report never fails for want of results.
The paper's side lives in experiments/paper_numbers.json. With several seeds (--set seeds=0,1)
it reads each seed's directory: ours = mean +- sample std (ddof=1) and n, each claim checked per seed.
What each verdict means, and the margins (MARGINS, LINES) with their sources: docs/report.md.
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
from backdoor.data import SOURCES
from defenses import DEFENSES
from experiments import paths
from experiments.common import run_main
from experiments.profiles import Profile, add_profile_args, resolve as resolve_profile, seed_runs
from experiments.summary import charged_hours, spread
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
# Absolute tolerance per metric. Absolute GPU-hours are shown for information only (the paper's DGX-A100 and
# its engine are not ours); ratios of two defences' hours on one clock carry across and compare within 2x.
TOLERANCE = {"CA": 0.05, "ASR": 0.05, "MIA accuracy": 0.05, "epochs": 1}
HOURS_FACTOR = 2.0
METRICS = (*TOLERANCE, "GPU-hours", "GPU-hours ratio")
NUMBER_VERDICTS = ("within 0.05", "within 1 epoch", "within 2x", "off", "for information", "not run yet",
                   "not in profile", "not comparable")
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
        return "for information"
    if metric == "GPU-hours ratio":
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


def field_value(record: dict, spec: dict, scope: Scope) -> Any:
    """A result's field; `charged_hours` is `spec["charge"]`'s device-hours at the profile's Fig. 6 budget."""
    if spec["field"] == "charged_hours":
        return charged_hours(record, scope.profile.charge_epochs.get(spec["charge"]))
    return resolve(record, spec["field"])


def our_value(entry: dict, results: Results, scope: Scope) -> tuple[str, Optional[float], str]:
    """(status, value, detail); status is ok, missing or bad (the file exists but lacks the field)."""
    res = entry["result"]
    over = res.get("over", {})
    files = [res["file"].format(**{k: v for k, v in zip(over, combo)})
             for combo in zip(*over.values())] if over else [res["file"]]
    files += [res["divide_by"]["file"]] if "divide_by" in res else []
    records = [results.get(f) for f in files]
    if any(r is None for r in records):
        return "missing", None, next(f for f, r in zip(files, records) if r is None)
    try:
        if "divide_by" in res:
            return "ok", field_value(records[0], res, scope) / field_value(records[1], res["divide_by"], scope), ""
        if res.get("removed_only"):  # a model that never removed the backdoor "re-learns" it at epoch 0
            records = [r for r in records if removed(r)]
            if not records:
                return "bad", None, "no defended model removed the backdoor (epoch-0 ASR <= the removed line)"
        values = [field_value(r, res, scope) for r in records]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as e:
        return "bad", None, f"{res['field']}: {e}"
    return "ok", reduce_values(values, res["reduce"]) if over else values[0], ""


def number_row(entry: dict, results: Results | list[Results], scope: Scope) -> dict:
    """One number's row; several Results (one per seed): ours is their mean (ours_sd: sample std, n: seeds)."""
    seeds = results if isinstance(results, list) else [results]
    row = {"id": entry["id"], "section": entry["section"], "figure": entry["figure"], "metric": entry["metric"],
           "setting": setting_text(entry["setting"]), "paper": entry["paper"], "ours": None, "ours_sd": None,
           "n": len(seeds), "diff": None,
           "key": key_text(entry["result"]), "detail": "",
           "quote": entry["quote"] + (f" [note: {entry['note']}]" if entry.get("note") else "")}
    reason = not_in_profile(entry["setting"], scope)
    if reason:
        return {**row, "verdict": "not in profile", "detail": reason}
    outs = [our_value(entry, r, scope) for r in seeds]
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
    info = entry["metric"] == "GPU-hours"  # absolute hours: no difference to read
    return {**row, "ours": mean, "ours_sd": sd, "diff": None if info else mean - entry["paper"],
            "verdict": verdict(entry["metric"], entry["paper"], mean)}


def key_text(res: dict) -> str:
    """Where ours is read: file : field, over the divisor's for a ratio."""
    one = lambda r: f"{r['file']} : {r['field']}" + (f"({r['charge']})" if "charge" in r else "")  # noqa: E731
    return one(res) + (f" / {one(res['divide_by'])}" if "divide_by" in res else "")


def setting_text(s: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items() if k != "scenario") + f" ({s['scenario']})"


# ---- claims: what counts as an effect ----------------------------------------------------------
Outcome = tuple[str, str]
NOT_IN_PROFILE = "not in profile"  # a check's status when the profile has no case of it; shown as "not run"


@dataclass(frozen=True)
class Margin:
    """A number a claim check compares against, and where it comes from (docs/report.md)."""

    value: float
    source: str


# The smallest difference between two of our values that counts as an effect; within it, a tie.
MARGINS: dict[str, Margin] = {
    "ASR": Margin(0.05, "seed-to-seed: smoke BadNets backdoored ASR 0.944 vs 0.997 (seeds 0, 1; README 'Seeds'); "
                        "also the ASR rows' tolerance"),
    "CA": Margin(0.02, "the largest CA gap between two runs of one setting measured: 0.018 (demo InputAware SFT, "
                       "0.967 vs 0.985, two fresh clones; README); seeds 0, 1 moved CA by at most 0.002"),
    "MIA accuracy": Margin(0.02, "about 3 sampling SDs of the difference of two accuracies on CIFAR10's 10,000 MIA "
                                 "evaluation images (sqrt(2 * 0.25 / 10000) = 0.007)"),
    "epochs": Margin(1, "re-injection counts whole epochs: the same epoch is a tie"),
    "GPU-hours": Margin(1.2, "a factor: make bench's interleaved rounds differed by 4% on a quiet box (README Speed); "
                             "make demo runs two steps at once on 2 loaded cores, so 20%"),
}
# Fixed lines a single value is held against (inclusive: a value on the line counts for the paper's side).
LINES: dict[str, Margin] = {
    "removed": Margin(0.2, "ASR at or below which a backdoor is removed: the paper calls 0.127 (Fig. 2) and 0.096 "
                           "(Fig. 3) removed, and FT's 0.221 'can only decrease'"),
    "high": Margin(0.5, "ASR at or above which a backdoor 'remains high': the paper's examples are 0.896-0.988, its "
                        "removed ones 0.004-0.127; 0.5 is halfway"),
    "collapsed": Margin(0.1, "a model with CA at most 0.1 above chance (1/classes) has collapsed: NAD at lr 0.01 on "
                             "digits fell to CA 0.10 (experiments/profiles.py); AC's 0.672 -> 0.582 is far above it"),
    "keeps CA": Margin(0.05, "SFT 'keeps' CA when it ends within 0.05 of the backdoored model's (the CA rows' "
                             "tolerance)"),
    "limited CA range": Margin(0.05, "Fig. 7's 'limited impact' on CA: at most 0.05 between set sizes"),
}
EFFECT, TIE, AGAINST, LEFT_OUT = "effect", "tie", "against", "left out"


def _almost_all(eff: int, tie: int, against: int) -> bool:
    n = eff + tie + against
    return n - eff <= max(1, int(0.1 * n)) and 2 * eff > n  # "almost all" is at least "most"


# How many judged cases must show the effect. A tie is never the effect; "none against" tolerates ties.
QUANTIFIERS: dict[str, Callable[[int, int, int], bool]] = {
    "every": lambda eff, tie, against: tie == 0 and against == 0,
    "most": lambda eff, tie, against: 2 * eff > eff + tie + against,
    "almost all": _almost_all,
    "none against": lambda eff, tie, against: against == 0 and eff >= 1,
    "most, none against": lambda eff, tie, against: against == 0 and 2 * eff > eff + tie + against,
}
QUANTIFIER_TEXT = {"every": "every case", "most": "more than half of the cases",
                   "almost all": "all but max(1, 10%) of the cases, and more than half",
                   "none against": "no case against and at least one with the effect (ties allowed)",
                   "most, none against": "more than half of the cases and none against (ties allowed)"}


@dataclass(frozen=True)
class Case:
    """One judged (dataset, attack)-like case: its name, outcome (effect, tie, against, left out) and numbers."""

    name: str
    outcome: str
    text: str


def compare(a: float, op: str, b: float, metric: str) -> str:
    """a op b with the metric's margin: `<`/`>` need the margin (within it: tie); `<=`/`>=` allow it."""
    m = MARGINS[metric].value
    if metric == "GPU-hours":  # a factor
        a, b = a + 1e-12, b + 1e-12  # a zero charge (an empty run) stays comparable
        d = math.log(b / a) if op in ("<", "<=") else math.log(a / b)
        m = math.log(m)
    else:
        d = b - a if op in ("<", "<=") else a - b
    if op in ("<=", ">="):
        return EFFECT if d >= -m - 1e-9 else AGAINST
    return EFFECT if d > m + 1e-9 else TIE if d >= -m - 1e-9 else AGAINST


def condition(vals: dict, c: dict) -> str:
    """One condition of a claim on a case's values: against a line, a value minus a line, or a value with a margin."""
    a = vals[c["left"]]
    if "line" in c:
        line = LINES[c["line"]].value
        b = vals[c["right"]] - line if "right" in c else line
        ok = a <= b + 1e-9 if c["op"] == "<=" else a >= b - 1e-9
        return EFFECT if ok else AGAINST
    return compare(a, c["op"], vals[c["right"]], c["metric"])


def judge_case(name: str, vals: dict, p: dict) -> Case:
    """Left out when a `skip` condition holds; else the worst outcome of the `require` conditions."""
    text = ", ".join(f"{k} {v:.3f}" for k, v in vals.items())
    for s in p.get("skip", ()):
        if condition(vals, s) == EFFECT:
            return Case(name, LEFT_OUT, f"{s['why']} ({text})")
    outs = [condition(vals, c) for c in p["require"]]
    worst = AGAINST if AGAINST in outs else TIE if TIE in outs else EFFECT
    return Case(name, worst, text)


def conclude(cases: list[Case], quantifier: str, unit: str, missing: int = 0) -> Outcome:
    """The verdict over the judged cases, with every judged case named and every left-out one explained."""
    judged = [c for c in cases if c.outcome != LEFT_OUT]
    out = [f"{c.name}: {c.text}" for c in cases if c.outcome == LEFT_OUT]
    tail = (f"; left out {len(out)}: " + "; ".join(out) if out else "") + (f"; {missing} not run" if missing else "")
    if not judged:
        return "not run", "nothing left to compare" + tail
    k = Counter(c.outcome for c in judged)
    ok = QUANTIFIERS[quantifier](k[EFFECT], k[TIE], k[AGAINST])
    detail = (f"{k[EFFECT]} of {len(judged)} {unit} show it, {k[TIE]} tie, {k[AGAINST]} against "
              f"(needs {QUANTIFIER_TEXT[quantifier]}); judged: "
              + "; ".join(f"{c.name} {c.outcome} ({c.text})" for c in judged) + tail)
    if not ok and not k[AGAINST]:  # failed on ties alone: say so first, so a tie never reads as a contradiction
        detail = "tie (no effect where the paper claims one): " + detail
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


def judge_runs(p: dict, scope: Scope, todo: list[dict], values: Callable[[dict], Optional[dict]]) -> Outcome:
    """Each run's values (None: its results are missing) judged by `p`'s conditions, then `p`'s quantifier."""
    if not todo:
        return NOT_IN_PROFILE, f"profile {scope.name} runs none of {', '.join(p.get('attacks') or ['these'])}"
    cases = []
    for run in todo:
        vals = values(run)
        if vals is not None:
            cases.append(judge_case(run["name"], vals, p))
    if not cases:
        return "not run", f"no results for {len(todo)} case(s): {', '.join(r['name'] for r in todo)}"
    return conclude(cases, p["quantifier"], "cases", len(todo) - len(cases))


def check_compare(p: dict, scope: Scope, results: Results) -> Outcome:
    """`p`'s conditions on values read from each run's files."""
    def values(run: dict) -> Optional[dict]:
        vals = {k: side(s, run, results) for k, s in p["values"].items()}
        return None if any(v is None for v in vals.values()) else vals

    return judge_runs(p, scope, runs(scope, p["scope"], p.get("dataset"), p.get("attacks")), values)


def point_value(results: Results, run: dict, point, scope: Scope, fld: str, epoch: Optional[int]) -> Optional[float]:
    try:
        h = read_point(results.root, run["dataset"], run["attack"], point, scope.profile, scope.sweeps)
        return (epoch_record(h, epoch) if epoch is not None else h[-1])[fld]
    except (FileNotFoundError, ValueError, KeyError):
        return None


def check_ablation(p: dict, scope: Scope, results: Results) -> Outcome:
    """Fig. 7-9: `p`'s conditions on sweep points (first, middle, last) or the range over all of them."""
    if scope.sweeps is None:
        return "not run", f"profile {scope.name} has no sweep sizes"
    points = figure_points(p["fig"], scope.profile, scope.sweeps)
    at = {"first": 0, "middle": len(points) // 2, "last": len(points) - 1}
    if any(s.get("point") == "middle" for s in p["values"].values()) and len(points) < 3:
        return NOT_IN_PROFILE, f"profile {scope.name} sweeps {len(points)} points for Fig. {p['fig']}, no middle one"

    def values(run: dict) -> Optional[dict]:
        vals = {}
        for k, s in p["values"].items():
            pts = points if s["point"] == "all" else [points[at[s["point"]]]]
            got = [point_value(results, run, pt, scope, s["field"], s.get("epoch")) for pt in pts]
            if any(v is None for v in got):
                return None
            vals[k] = max(got) - min(got) if s["point"] == "all" else got[0]
        return vals

    return judge_runs(p, scope, runs(scope, "standalone", p.get("dataset"), p.get("attacks")), values)


def all_defences(p: dict, ran: set[str]) -> Optional[str]:
    """Why a comparison among all the paper's defences cannot be made with the defences that ran, or None."""
    missing = [d for d in p["defences"] if d not in ran]
    if not missing:
        return None
    return (f"the paper compares {len(p['defences'])} defences ({', '.join(p['defences'])}); only "
            f"{', '.join(sorted(ran)) or 'none'} ran (missing {', '.join(missing)})")


def collapsed(ca: float, dataset: str) -> bool:
    """CA within the `collapsed` line of chance (1 / the dataset's classes)."""
    return ca <= 1 / SOURCES[dataset].num_classes + LINES["collapsed"].value + 1e-9


def lowest_case(run: dict, vals: dict[str, dict], who: str) -> Case:
    """`who` has the lowest ASR and, among the defences within the ASR margin of it, the highest CA."""
    alive = {d: v for d, v in vals.items() if not collapsed(v["ca"], run["dataset"])}
    gone = sorted(set(vals) - set(alive))
    note = f"; {len(gone)} collapsed, left out: {', '.join(gone)}" if gone else ""
    me = vals[who]
    text = ", ".join(f"{d} {v['ca']:.3f}/{v['asr']:.3f}" for d, v in sorted(vals.items())) + " (CA/ASR)" + note
    if who not in alive:
        return Case(run["name"], AGAINST, f"{who} collapsed: " + text)
    outs = []
    for d, v in alive.items():
        if d != who:
            asr = compare(me["asr"], "<", v["asr"], "ASR")  # effect: who's ASR is lower by the margin
            outs.append(asr if asr != TIE else compare(me["ca"], ">", v["ca"], "CA"))
    worst = AGAINST if AGAINST in outs else TIE if TIE in outs else EFFECT
    return Case(run["name"], worst, text)


def check_lowest(p: dict, scope: Scope, results: Results) -> Outcome:
    """Fig. 5: per attack, `who` beats every other defence that ran and did not collapse (ASR, then CA)."""
    todo, cases, ran = runs(scope, p["scope"], p.get("dataset")), [], set()
    for run in todo:
        vals = {d: {k: side({"file": paths.in_run("result", defense=d), "field": f"final.{k}"}, run, results)
                    for k in ("ca", "asr")} for d in DEFENCE_NAMES}
        vals = {d: v for d, v in vals.items() if None not in v.values()}
        ran |= set(vals)
        if p["who"] in vals and len(vals) > 1:
            cases.append((run, vals))
    why = all_defences(p, ran)
    if why or not cases:
        return "not run", why or f"no run with {p['who']} and another defence"
    return conclude([lowest_case(r, v, p["who"]) for r, v in cases], p["quantifier"], "attacks",
                    len(todo) - len(cases))


def cost_hours(scope: Scope, results: Results) -> tuple[dict[str, list[float]], list[str], list[str]]:
    """Charged device-hours (Fig. 6's budget, `charged_hours`) per defence over the runs where every defence that
    ran anywhere has a result, those runs' names, and the runs left out."""
    charge, per_run = scope.profile.charge_epochs, {}
    for run in runs(scope, "standalone"):
        hours = {}
        for d in DEFENCE_NAMES:
            rec = results.get(f"{run['dir']}/{paths.in_run('result', defense=d)}")
            try:
                hours[d] = charged_hours(rec, charge.get(d)) if rec is not None else None
            except (KeyError, ValueError):
                hours[d] = None
        per_run[run["name"]] = {d: h for d, h in hours.items() if h is not None}
    ran = set().union(*per_run.values()) if per_run else set()
    full = [n for n, h in per_run.items() if h and set(h) == ran]
    return {d: [per_run[n][d] for n in full] for d in ran}, full, [n for n in per_run if n not in full]


def check_cost(p: dict, scope: Scope, results: Results) -> Outcome:
    """Fig. 6: `who`'s median charged device-hours is the lowest (highest) by the GPU-hours factor."""
    hours, full, partial = cost_hours(scope, results)
    why = all_defences(p, set(hours))
    if why or not full:
        return "not run", why or "no run where every defence has a result"
    med = {d: statistics.median(v) for d, v in hours.items()}
    op = "<" if p["rank"] == "lowest" else ">"
    outs = {d: compare(med[p["who"]], op, med[d], "GPU-hours") for d in med if d != p["who"]}
    worst = AGAINST if AGAINST in outs.values() else TIE if TIE in outs.values() else EFFECT
    charged = ", ".join(f"{d} at {e} epochs" for d, e in scope.profile.charge_epochs.items())
    text = ("median charged device-hours: " + ", ".join(f"{d} {med[d]:.3g}" for d in sorted(med, key=med.get))
            + f" ({charged or 'every run in full'}); not {p['rank']} against: "
            + (", ".join(d for d, o in outs.items() if o != EFFECT) or "none"))
    skipped = f"; {len(partial)} runs without every defence left out: {', '.join(partial)}" if partial else ""
    return conclude([Case(f"medians over {', '.join(full)}", worst, text + skipped)], "every", "comparison")


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
                out.append((f"{d}/{a}@{r}", r, recs))
    return out


def removed(rec: dict) -> bool:
    """The defended model's ASR before re-injection (epoch 0) is at or below the `removed` line."""
    return epoch_record(rec["history"], 0)["asr"] <= LINES["removed"].value + 1e-9


def faster_case(name: str, e: Optional[int], c: Optional[int]) -> Case:
    """Re-injection into a defended model reaches ASR 0.8 at least the epoch margin sooner than into the clean one."""
    text = f"{e if e is not None else 'never'} vs clean {c if c is not None else 'never'} epochs"
    if e is None and c is None:
        return Case(name, LEFT_OUT, "neither reaches ASR 0.8")
    if e is None or c is None:
        return Case(name, EFFECT if e is not None else AGAINST, text)
    return Case(name, compare(e, "<", c, "epochs"), text)


def check_reinject_faster(p: dict, scope: Scope, results: Results) -> Outcome:
    """Fig. 11: defended models that removed the backdoor re-learn it faster than the clean model."""
    cases = []
    for cell, _, recs in reinject_records(p, scope, results):
        if "clean" not in recs:
            continue
        c = recs["clean"]["epochs_to_asr_0.8"]
        for m, rec in recs.items():
            if m == "clean":
                continue
            if not removed(rec):
                asr0 = epoch_record(rec["history"], 0)["asr"]
                cases.append(Case(f"{m} {cell}", LEFT_OUT, f"never removed the backdoor (ASR {asr0:.3f} at epoch 0)"))
            else:
                cases.append(faster_case(f"{m} {cell}", rec["epochs_to_asr_0.8"], c))
    if not cases:
        return "not run", "no re-injection into the clean and a defended model"
    return conclude(cases, p["quantifier"], "(defence, attack, ratio) cases")


def check_reinject_not_most(p: dict, scope: Scope, results: Results) -> Outcome:
    """Fig. 11: `who`'s ASR after `epoch` re-injection epochs is not above every other defended model's."""
    cases = []
    for cell, _, recs in reinject_records(p, scope, results):
        defended = {m: r for m, r in recs.items() if m != "clean"}
        if p["who"] not in defended or len(defended) < 2:
            continue
        if not removed(defended[p["who"]]):
            cases.append(Case(cell, LEFT_OUT, f"{p['who']} never removed the backdoor"))
            continue
        gone = sorted(m for m, r in defended.items() if not removed(r))
        asr = {m: epoch_record(r["history"], min(p["epoch"], r["history"][-1]["epoch"]))["asr"]
               for m, r in defended.items() if m not in gone}
        others = {m: v for m, v in asr.items() if m != p["who"]}
        text = ", ".join(f"{m} {v:.3f}" for m, v in sorted(asr.items())) + (
            f"; never removed, left out: {', '.join(gone)}" if gone else "")
        if not others:
            cases.append(Case(cell, LEFT_OUT, f"no other defended model removed the backdoor ({text})"))
            continue
        top = max(others.values())
        mine = asr[p["who"]]
        out = EFFECT if compare(mine, "<", top, "ASR") == EFFECT else (
            AGAINST if compare(mine, ">", top, "ASR") == EFFECT else TIE)
        cases.append(Case(cell, out, text))
    if not cases:
        return "not run", f"no re-injection into {p['who']} and another defended model"
    return conclude(cases, p["quantifier"], "(attack, ratio) cases")


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
            "quote": claim["quote"], "verdict": status, "detail": detail}


# ---- spec, provenance ------------------------------------------------------------------------
def claim_problems(c: dict) -> list[str]:
    """What in one claim entry this module does not know (check, quantifier, line, metric, missing quote)."""
    p, bad = c["params"], []
    if c["check"] not in CHECKS:
        bad.append(f"check {c['check']!r}")
    if p.get("quantifier", "every") not in QUANTIFIERS:
        bad.append(f"quantifier {p['quantifier']!r} (valid: {', '.join(QUANTIFIERS)})")
    for cond in [*p.get("skip", ()), *p.get("require", ())]:
        if "line" in cond and cond["line"] not in LINES:
            bad.append(f"line {cond['line']!r} (valid: {', '.join(LINES)})")
        if "metric" in cond and cond["metric"] not in MARGINS:
            bad.append(f"metric {cond['metric']!r} (valid: {', '.join(MARGINS)})")
    bad += [f"defence {d!r} (valid: {', '.join(DEFENCE_NAMES)})"
            for d in p.get("defences", ()) if d not in DEFENCE_NAMES]
    if not c.get("quote"):
        bad.append("no quote of the paper's sentence")
    return [f"{c['id']}: {b}" for b in bad]


def load_spec(path: Path = SPEC) -> dict:
    """The paper-numbers file, checked against the layouts, metrics, checks, quantifiers and lines this module knows."""
    spec = json.loads(Path(path).read_text())
    bad = [f"{n['id']}: layout {n['result']['layout']!r}" for n in spec["numbers"]
           if n["result"]["layout"] not in LAYOUTS]
    bad += [f"{n['id']}: metric {n['metric']!r}" for n in spec["numbers"] if n["metric"] not in METRICS]
    bad += [b for c in spec["claims"] for b in claim_problems(c)]
    if bad:
        raise ValueError(f"{path}: {'; '.join(bad)}; valid checks: {', '.join(CHECKS)}; layouts: "
                         f"{', '.join(LAYOUTS)}; metrics: {', '.join(METRICS)}")
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
CLAIM_COLS = ("section", "figure", "claim", "quote", "verdict", "detail")


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
NUMBERS_NOTE = ("Tolerance: 0.05 for CA/ASR/MIA accuracy, 1 epoch, a factor 2 for GPU-hours ratios (two defences on "
                "one clock); absolute GPU-hours are for information only (another device and engine).")


def claims_note() -> str:
    """What each claim verdict means and the margins and lines it uses (docs/report.md)."""
    m = "; ".join(f"{k} {v.value:g}" + (" (a factor)" if k == "GPU-hours" else "") for k, v in MARGINS.items())
    lines = "; ".join(f"{k} {v.value:g}" for k, v in LINES.items())
    return ("holds: the paper's sentence, read as the claim says, is true on the judged cases; does not hold: it is "
            "false, or every case is a tie; not run: nothing left to compare (reason given). A difference within the "
            f"margin is a tie, never an effect. Margins: {m}. Lines: {lines}. Sources: docs/report.md.")


DIGITS_NOTE = ("This profile trains on `digits`, not on the paper's datasets, so the numeric comparison is "
               "meaningless here (its rows read 'not in profile'); the claims table is what counts.")


def markdown(rep: dict) -> str:
    prov = "\n".join(f"- {k}: {v}" for k, v in rep["provenance"].items())
    note = (f"\n> {DIGITS_NOTE}\n" if rep["digits"] else "") + (f"\n> {SEEDS_NOTE}\n" if rep["seeds"] > 1 else "")
    return (f"# Did it reproduce? Profile `{rep['profile']}`\n\n## Provenance\n\n{prov}\n\n"
            f"## Claims ({counts(rep['claims'], CLAIM_VERDICTS)})\n\n{claims_note()}\n\n"
            f"{md_table(rep['claims'], CLAIM_COLS)}\n\n"
            f"## Numbers ({counts(rep['numbers'], NUMBER_VERDICTS)})\n{note}\n"
            f"{NUMBERS_NOTE} key = result file (under artifacts/results/<profile>/) : field.\n\n"
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
            f"<p>{e(claims_note())}</p>{html_table(rep['claims'], CLAIM_COLS)}"
            f'<h2 id="numbers">Numbers ({e(counts(rep["numbers"], NUMBER_VERDICTS))})</h2>{note}'
            f"<p>{e(NUMBERS_NOTE)} Hover a paper value for the paper's words.</p>"
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
