"""Text summary of the standalone runs: CA/ASR of the backdoored model and after FT and SFT, and their cost.

Cost is the device time of the one clock (`backdoor.train.Clock`, evaluation excluded), charged at the
profile's `charge_epochs` (Fig. 6's budget; docs/defenses.md "Cost") and over the full run. Given several seeds'
results directories (SET="seeds=0,1"), each CA/ASR is the mean +- sample std (ddof=1) over them and each cost the mean.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Mapping, Optional, Sequence

from backdoor.checkpoint import atomic_write_bytes
from experiments import paths
from experiments.common import read_json, run_main
from experiments.profiles import add_profile_args, profile_from


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_result(path: Path) -> dict:
    """A defence's results JSON, its shape checked: one ValueError naming the file and the first bad field."""
    r = read_json(path)
    checks = [("(top level)", lambda: isinstance(r, dict)), ("before", lambda: isinstance(r["before"], dict)),
              ("final", lambda: isinstance(r["final"], dict)), ("device_hours", lambda: _number(r["device_hours"])),
              ("history", lambda: isinstance(r["history"], list) and all(isinstance(h, dict) for h in r["history"]))]
    checks += [(f"{k}.{m}", lambda k=k, m=m: _number(r[k][m])) for k in ("before", "final") for m in ("ca", "asr")]
    for name, ok in checks:
        try:
            good = ok()
        except (KeyError, TypeError):
            good = False
        if not good:
            raise ValueError(f"{path}: field {name} is missing or of the wrong type; delete it and rerun make")
    return r


def charged_hours(result: dict, epochs: Optional[int]) -> float:
    """Device hours of a defence run after `epochs` epochs (None: the whole run), from its history's clock."""
    if epochs is None:
        return result["device_hours"]
    rows = [r for r in result["history"] if r["epoch"] == epochs and "device_seconds" in r]
    if not rows:
        raise ValueError(f"{result.get('defense')} result of {result.get('dataset')}/{result.get('attack')} has no "
                         f"epoch {epochs} with device_seconds; delete it and rerun make")
    return rows[-1]["device_seconds"] / 3600


def spread(values: Sequence[float]) -> tuple[float, Optional[float], int]:
    """(mean, sample std with ddof=1, n) of one number over seeds; std is None for a single value."""
    if not values:
        raise ValueError("no values to average")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def spread_text(values: Sequence[float], sep: str = "±") -> str:
    """`0.912` for one seed, `0.912±0.004` (mean, sample std) for several."""
    mean, std, _ = spread(values)
    return f"{mean:.3f}" if std is None else f"{mean:.3f}{sep}{std:.3f}"


def table(results: str | Path | Sequence[str | Path], datasets: list[str], attacks: list[str], charge: Mapping[str, int]) -> str:
    """Fixed-width table, one row per (dataset, attack); costs in device seconds, charged and full. Several results
    directories (one per seed): CA/ASR as mean±std (sample std, ddof=1) over them, costs as their mean."""
    dirs = [Path(results)] if isinstance(results, (str, Path)) else [Path(r) for r in results]
    x = 0 if len(dirs) == 1 else 12  # a pair of mean±std cells is 12 characters wider than one of values
    at = {d: f"@{charge[d]}" if d in charge else "" for d in ("ft", "sft")}
    head = (f"{'dataset':<9} {'attack':<11} {'backdoored CA/ASR':>{18 + x}} {'FT CA/ASR':>{14 + x}} "
            f"{'SFT CA/ASR':>{14 + x}} {'FT s' + at['ft']:>8} {'SFT s' + at['sft']:>8} {'FT s all':>8} "
            f"{'SFT s all':>9}")
    rows = [head, "-" * len(head)]
    if len(dirs) > 1:
        rows.insert(0, f"mean±std over n={len(dirs)} seeds (sample std, ddof=1; costs: mean): "
                       + ", ".join(d.name for d in dirs))
    for d in datasets:
        for a in attacks:
            runs = [tuple(read_result(paths.path("result", r, dataset=d, attack=a, defense=f)) for f in ("ft", "sft"))
                    for r in dirs]

            def pair(get) -> str:
                return "/".join(spread_text([get(ft, sft)[m] for ft, sft in runs]) for m in ("ca", "asr"))

            def cost(get) -> float:
                return spread([get(ft, sft) * 3600 for ft, sft in runs])[0]

            rows.append(f"{d:<9} {a:<11} {pair(lambda ft, sft: ft['before']):>{15 + x}} "
                        f"{pair(lambda ft, sft: ft['final']):>{14 + x}} "
                        f"{pair(lambda ft, sft: sft['final']):>{14 + x}} "
                        f"{cost(lambda ft, sft: charged_hours(ft, charge.get('ft'))):>8.0f} "
                        f"{cost(lambda ft, sft: charged_hours(sft, charge.get('sft'))):>8.0f} "
                        f"{cost(lambda ft, sft: ft['device_hours']):>8.0f} "
                        f"{cost(lambda ft, sft: sft['device_hours']):>9.0f}")
    return "\n".join(rows) + "\n"


def main_step(args: argparse.Namespace) -> None:
    prof = profile_from(args, several_seeds=True)
    text = table(args.results, args.datasets.split(), args.attacks.split(), prof.charge_epochs)  # one dir or a list
    atomic_write_bytes(Path(args.out), text.encode())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_profile_args(ap)
    ap.add_argument("--results", required=True, nargs="+", help="results directory; one per seed for several")
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--attacks", required=True)
    ap.add_argument("--out", required=True)
    run_main(main_step, ap.parse_args())
