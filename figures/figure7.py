"""Figure 7: SFT on a fraction of the clean fine-tuning set; final ASR (top) and CA (bottom) per dataset."""
from __future__ import annotations


import matplotlib.pyplot as plt

from experiments.profiles import resolve
from experiments.sweeps import figure_points, read_point
from figures.style import figure_args, label, plot_final_rows, save, style_panel, use_style


def main() -> None:
    args = figure_args(__doc__, 'profile', 'set', 'datasets', 'attacks')
    prof = resolve(args.profile, args.set.split())
    sw = prof.sweeps
    datasets, attacks, points = args.datasets.split(), args.attacks.split(), figure_points(7, prof, sw)
    use_style()
    fig, axes = plt.subplots(2, len(datasets), figsize=(3.8 * len(datasets), 5.6), squeeze=False, sharey=True)
    plot_final_rows(axes, datasets, attacks, [p.fraction for p in points],
                    lambda d, a: [read_point(args.results, d, a, p, prof, sw)[-1] for p in points])
    for j, d in enumerate(datasets):
        for i, metric in enumerate(("ASR", "CA")):
            ax = axes[i][j]
            style_panel(ax, f"{label(d)}: {metric}", "fraction of the fine-tuning set", metric if j == 0 else None)
    axes[0][-1].legend(fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
