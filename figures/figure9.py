"""Figure 9: SFT on a small fraction (10%) of the fine-tuning set, LR_MAX1 0.1 vs 0.3; final ASR and CA.

The x-axis is LR_MAX1 (the paper's caption says "data samples", but every point uses the same 10%).
"""
from __future__ import annotations


import matplotlib.pyplot as plt

from experiments.profiles import resolve
from experiments.sweeps import figure_points, read_point
from figures.style import figure_args, label, plot_final_rows, save, style_panel, use_style


def main() -> None:
    args = figure_args(__doc__, 'profile', 'set', 'datasets', 'attacks')
    prof = resolve(args.profile, args.set.split())
    sw = prof.sweeps
    datasets, attacks, points = args.datasets.split(), args.attacks.split(), figure_points(9, prof, sw)
    xs = range(len(points))  # evenly spaced: the LR values are categories here
    use_style()
    fig, axes = plt.subplots(2, len(datasets), figsize=(3.8 * len(datasets), 6.0), squeeze=False, sharey=True)
    plot_final_rows(axes, datasets, attacks, xs,
                    lambda d, a: [read_point(args.results, d, a, p, prof, sw)[-1] for p in points])
    for j, d in enumerate(datasets):
        for i, metric in enumerate(("ASR", "CA")):
            ax = axes[i][j]
            xlabel = f"LR_MAX1\n(SFT on {sw.small_fraction:.0%} of the fine-tuning set)"
            style_panel(ax, f"{label(d)}: {metric}", xlabel, metric if j == 0 else None)
            ax.set_xticks(list(xs), [f"{p.lr_max1:g}" for p in points])
            ax.set_xlim(-0.3, len(points) - 0.7)
    axes[0][-1].legend(fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
