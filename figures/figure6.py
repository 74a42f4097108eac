"""Figure 6: device-hours of each defence, one box over all attacks and datasets.

Reads `device_hours` (measured, synchronised wall time of the whole defence) and the
device name from each results file; the y label names the device(s).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from experiments.common import read_json
from figures.figure5 import MARKERS, name
from figures.style import figure_args, save, use_style


def costs(results: Path, datasets: list[str], attacks: list[str], defenses: list[str]) -> tuple[dict, set]:
    """defence -> list of device-hours over dataset/attack runs, and the set of devices seen."""
    out, devices = {d: [] for d in defenses}, set()
    for ds in datasets:
        for a in attacks:
            for d in defenses:
                r = read_json(results / ds / a / f"{d}.json")
                out[d].append(r["device_hours"])
                devices.add(r.get("device", "unknown"))
    return out, devices


def main() -> None:
    args = figure_args(__doc__, 'datasets', 'attacks', 'defenses')
    defenses = args.defenses.split()
    hours, devices = costs(Path(args.results), args.datasets.split(), args.attacks.split(), defenses)
    use_style()
    fig, ax = plt.subplots(figsize=(1.0 * len(defenses) + 2, 3.6))
    data = [hours[d] for d in defenses]
    palette = [MARKERS.get(d, ("o", "gray"))[1] for d in defenses]
    sns.boxplot(data=data, ax=ax, palette=palette, width=0.6, fliersize=0, boxprops={"alpha": 0.6})
    sns.stripplot(data=data, ax=ax, color="black", size=3.5, jitter=0.15)
    ax.set_xticks(range(len(defenses)), [name(d) for d in defenses])
    ax.set_ylabel(f"device hours ({', '.join(sorted(devices))})")
    ax.set_ylim(bottom=0)
    save(fig, args.out)


if __name__ == "__main__":
    main()
