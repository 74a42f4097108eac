"""Figure 10: membership-inference attack accuracy, grouped bars (x = attack, bars = undefended and each
defence), one panel per dataset. The dashed line is chance (0.5)."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments import paths
from experiments.common import read_json
from figures.figure5 import MARKERS, name
from figures.style import figure_args, label, save, use_style


def main() -> None:
    args = figure_args(__doc__, "datasets", "attacks", "defenses")
    datasets, attacks = args.datasets.split(), args.attacks.split()
    models = ["backdoor", *args.defenses.split()]
    use_style()
    fig, axes = plt.subplots(1, len(datasets), figsize=(len(datasets) * (0.35 * len(models) * len(attacks) + 1.0) + 1.6,
                                                        3.4), squeeze=False, sharey=True)
    width = 0.8 / len(models)
    for ax, d in zip(axes[0], datasets):
        for i, m in enumerate(models):
            acc = [read_json(paths.path("mia", args.results, dataset=d, attack=a, model=m))["accuracy"]
                   for a in attacks]
            key = "undefended" if m == "backdoor" else m
            ax.bar(np.arange(len(attacks)) + (i - (len(models) - 1) / 2) * width, acc, width,
                   color=MARKERS.get(key, ("o", "gray"))[1], label=name(key), edgecolor="white", linewidth=0.4)
        ax.axhline(0.5, color="gray", ls="--", lw=1)
        ax.set_xticks(np.arange(len(attacks)), [label(a) for a in attacks])
        ax.set_ylim(0.4, 1.0)
        ax.set_title(label(d))
        ax.set_xlabel("attack")
    axes[0][0].set_ylabel("MIA accuracy")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
