"""Figure 4: CA and ASR over fine-tuning epochs, FT vs SFT (rows: datasets, columns: attacks).

Given one results directory per seed (SET="seeds=0,1"), each line is the mean over the seeds and its shaded band
spans their min to max; one directory draws the run itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments import paths
from figures.style import figure_args, label, save, style_panel, use_style

LINES = [("ft", "ca", "tab:blue", "--"), ("ft", "asr", "tab:red", "--"),
         ("sft", "ca", "tab:blue", "-"), ("sft", "asr", "tab:red", "-")]


def seed_curves(dirs: list[Path], dataset: str, attack: str, defense: str, metric: str) -> tuple[list, np.ndarray]:
    """(epochs, array seeds x epochs) of one metric; the seeds' runs must have the same epochs."""
    hists = [json.loads(paths.path("result", d, dataset=dataset, attack=attack, defense=defense).read_text())["history"]
             for d in dirs]
    epochs = [[r["epoch"] for r in h] for h in hists]
    if any(e != epochs[0] for e in epochs):
        raise ValueError(f"{dataset}/{attack}/{defense}: the seeds' runs have different epochs "
                         f"({', '.join(f'{d.name}: {len(e)}' for d, e in zip(dirs, epochs))}); rerun make")
    return epochs[0], np.array([[r[metric] for r in h] for h in hists])


def main() -> None:
    args = figure_args(__doc__, 'datasets', 'attacks', per_seed=True)
    datasets, attacks, dirs = args.datasets.split(), args.attacks.split(), [Path(r) for r in args.results]
    use_style()
    fig, axes = plt.subplots(len(datasets), len(attacks), figsize=(3.6 * len(attacks), 3.0 * len(datasets)),
                             squeeze=False, sharey=True)
    for i, d in enumerate(datasets):
        for j, a in enumerate(attacks):
            ax = axes[i][j]
            for defense, metric, color, ls in LINES:
                x, ys = seed_curves(dirs, d, a, defense, metric)
                ax.plot(x, ys.mean(0), color=color, ls=ls, lw=1.4, label=f"{label(defense)} {metric.upper()}")
                if len(dirs) > 1:
                    ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.15, lw=0)
            style_panel(ax, f"{label(d)} / {label(a)}", "fine-tuning epoch", "accuracy" if j == 0 else None)
    title = f"mean of {len(dirs)} seeds, band: min-max" if len(dirs) > 1 else None
    axes[0][-1].legend(loc="center right", fontsize=8, frameon=True, title=title, title_fontsize=8)
    save(fig, args.out)


if __name__ == "__main__":
    main()
