"""Figures 11, 14-17: backdoor re-injection. One panel per poison ratio; ASR over re-injection epochs,
one line per defence plus the clean model (epoch 0 = before re-injection). A ratio that poisons no
image of the dataset is drawn as an empty panel that says so; per-batch attacks (WaNet, InputAware)
poison a random number of images at small ratios, and each panel says how many each run drew."""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt

from experiments import paths
from experiments.common import read_json
from figures.figure5 import MARKERS, name
from figures.style import label, save, use_style


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    for a in ("results", "dataset", "attack", "defenses", "ratios", "out"):
        ap.add_argument(f"--{a}", required=True)
    args = ap.parse_args()
    ratios, models = args.ratios.split(), ["clean", *args.defenses.split()]
    use_style()
    fig, axes = plt.subplots(1, len(ratios), figsize=(3.4 * len(ratios) + 1.6, 3.2), squeeze=False, sharey=True)
    for ax, r in zip(axes[0], ratios):
        drawn = []
        for m in models:
            rec = read_json(paths.path("reinject", args.results, dataset=args.dataset, attack=args.attack, model=m,
                                       ratio=r))
            if rec.get("skipped"):
                ax.text(0.5, 0.5, f"{rec['n_poison']} poisoned images\n(ratio {r} of {rec['n_train']})",
                        ha="center", va="center", transform=ax.transAxes, fontsize=9)
                ax.set_xlim(0, rec["epochs"])
                break
            h = rec["history"]
            if "n_poison_drawn" in rec:
                drawn.append(rec["n_poison_drawn"])
            color = "black" if m == "clean" else MARKERS.get(m, ("o", "gray"))[1]
            ax.plot([x["epoch"] for x in h], [x["asr"] for x in h], color=color, lw=2.0 if m in ("clean", "sft") else 1.2,
                    ls="--" if m == "clean" else "-", marker=".", label="clean model" if m == "clean" else name(m))
        ax.set_ylim(-0.03, 1.03)
        title = f"{label(args.attack)}, poison ratio {r}"
        if drawn:  # a run that drew 0 poisoned images is a control, not a failed re-injection
            span = f"{min(drawn)}" if min(drawn) == max(drawn) else f"{min(drawn)}-{max(drawn)}"
            title += f"\n{span} poisoned images drawn per run"
        ax.set_title(title)
        ax.set_xlabel("re-injection epoch")
    axes[0][0].set_ylabel(f"ASR ({label(args.dataset)})")
    handles = next((ax.get_legend_handles_labels() for ax in axes[0] if ax.get_legend_handles_labels()[0]), ([], []))
    if handles[0]:
        axes[0][-1].legend(*handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
