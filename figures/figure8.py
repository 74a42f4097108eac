"""Figure 8: conventional FT at several constant LRs; ASR and CA over epochs (rows: dataset x metric).

The paper's FT LR is ambiguous (README, "FT learning rate"): Sections 3.2/4.4 say FT uses the
training LR (0.001), Section 5.5 calls "the same small learning rate as in the pre-training phase"
the 0.0001 curve. The legend marks the two LRs that stand for the two readings."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import seaborn as sns

from experiments.profiles import resolve
from experiments.sweeps import figure_points, read_point
from figures.style import figure_args, label, save, style_panel, use_style


def lr_label(lr: float, train_lr: float) -> str:
    """Legend entry: the LR, and which reading of the paper's FT LR it stands for, if any."""
    if math.isclose(lr, train_lr):
        return f"LR {lr:g} (= training LR: Sec. 3.2/4.4)"
    if math.isclose(lr, train_lr / 10):
        return f"LR {lr:g} (Sec. 5.5's \"same small LR\")"
    return f"LR {lr:g}"


def main() -> None:
    args = figure_args(__doc__, 'profile', 'set', 'datasets', 'attacks')
    prof = resolve(args.profile, args.set.split())
    sw = prof.sweeps
    datasets, attacks, points = args.datasets.split(), args.attacks.split(), figure_points(8, prof, sw)
    colors = sns.color_palette("viridis", len(points))
    use_style()
    fig, axes = plt.subplots(2 * len(datasets), len(attacks), figsize=(3.6 * len(attacks), 2.8 * 2 * len(datasets)),
                             squeeze=False, sharey=True)
    for k, d in enumerate(datasets):
        for j, a in enumerate(attacks):
            for p, color in zip(points, colors):
                h = read_point(args.results, d, a, p, prof, sw)
                for i, metric in enumerate(("asr", "ca")):
                    axes[2 * k + i][j].plot([r["epoch"] for r in h], [r[metric] for r in h], color=color, lw=1.4,
                                            label=lr_label(p.lr, prof.train_config(d).lr))
            for i, metric in enumerate(("ASR", "CA")):
                ax = axes[2 * k + i][j]
                style_panel(ax, f"{label(d)} / {label(a)}: {metric}", "fine-tuning epoch", metric if j == 0 else None)
    axes[0][-1].legend(fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
