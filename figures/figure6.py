"""Figure 6: device-hours of each defence, one box over all attacks and datasets.

Every defence is timed by one clock (`backdoor.train.Clock`: device-synchronised, evaluation
excluded). `--cost budget` (default) charges FT/SFT at the profile's `charge_epochs`, the
paper's regime (docs/defenses.md "Cost"); `--cost full` charges every run in full. The y label
names the device(s).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import seaborn as sns

from experiments import paths
from experiments.common import read_json
from experiments.profiles import resolve
from experiments.summary import charged_hours
from figures.figure5 import MARKERS, name
from figures.style import save, use_style


def costs(results: Path, datasets: list[str], attacks: list[str], defenses: list[str],
          charge: Mapping[str, int] | None = None) -> tuple[dict, set]:
    """defence -> device-hours over dataset/attack runs (charged at `charge` epochs, else in full), devices seen."""
    out, devices, charge = {d: [] for d in defenses}, set(), charge or {}
    for ds in datasets:
        for a in attacks:
            for d in defenses:
                r = read_json(paths.path("result", results, dataset=ds, attack=a, defense=d))
                out[d].append(charged_hours(r, charge.get(d)))
                devices.add(r.get("device", "unknown"))
    return out, devices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for flag in ("results", "datasets", "attacks", "defenses", "profile", "out"):
        ap.add_argument(f"--{flag}", required=True)
    ap.add_argument("--set", default="", help="the profile overrides (space-separated key=value)")
    ap.add_argument("--cost", choices=("budget", "full"), default="budget")
    args = ap.parse_args()
    defenses = args.defenses.split()
    charge = resolve(args.profile, args.set.split()).charge_epochs if args.cost == "budget" else {}
    hours, devices = costs(Path(args.results), args.datasets.split(), args.attacks.split(), defenses, charge)
    use_style()
    fig, ax = plt.subplots(figsize=(1.0 * len(defenses) + 2, 3.6))
    data = [hours[d] for d in defenses]
    palette = [MARKERS.get(d, ("o", "gray"))[1] for d in defenses]
    sns.boxplot(data=data, ax=ax, palette=palette, width=0.6, fliersize=0, boxprops={"alpha": 0.6})
    sns.stripplot(data=data, ax=ax, color="black", size=3.5, jitter=0.15)
    ax.set_xticks(range(len(defenses)), [name(d) + (f"\n@{charge[d]} ep" if d in charge else "") for d in defenses])
    ax.set_ylabel(f"device hours ({', '.join(sorted(devices))})")
    ax.set_ylim(bottom=0)
    save(fig, args.out)


if __name__ == "__main__":
    main()
