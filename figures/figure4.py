"""Figure 4: CA and ASR over fine-tuning epochs, FT vs SFT (rows: datasets, columns: attacks)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from figures.style import figure_args, label, save, style_panel, use_style

LINES = [("ft", "ca", "tab:blue", "--"), ("ft", "asr", "tab:red", "--"),
         ("sft", "ca", "tab:blue", "-"), ("sft", "asr", "tab:red", "-")]


def main() -> None:
    args = figure_args(__doc__, 'datasets', 'attacks')
    datasets, attacks = args.datasets.split(), args.attacks.split()
    use_style()
    fig, axes = plt.subplots(len(datasets), len(attacks), figsize=(3.6 * len(attacks), 3.0 * len(datasets)),
                             squeeze=False, sharey=True)
    for i, d in enumerate(datasets):
        for j, a in enumerate(attacks):
            ax = axes[i][j]
            for defense, metric, color, ls in LINES:
                h = json.loads((Path(args.results) / d / a / f"{defense}.json").read_text())["history"]
                ax.plot([r["epoch"] for r in h], [r[metric] for r in h], color=color, ls=ls, lw=1.4,
                        label=f"{label(defense)} {metric.upper()}")
            style_panel(ax, f"{label(d)} / {label(a)}", "fine-tuning epoch", "accuracy" if j == 0 else None)
    axes[0][-1].legend(loc="center right", fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
