"""Figures 5, 12, 13: CA (x) vs ASR (y) after each defence, one panel per attack, for one dataset.

Points towards the lower right are better. The undefended model is the backdoored
checkpoint's final CA/ASR (backdoor.json); each defence is its results file's final row.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from experiments import paths
from experiments.common import read_json
from figures.style import figure_args, label, save, use_style

NAMES = {"spectral": "Spectral"}
MARKERS = {"undefended": ("X", "black"), "ft": ("s", "tab:blue"), "sft": ("*", "tab:red"),
           "abl": ("o", "tab:orange"), "ac": ("^", "tab:green"), "fp": ("v", "tab:purple"),
           "nad": ("D", "tab:brown"), "nc": ("P", "tab:pink"), "spectral": ("h", "tab:olive")}


def name(d: str) -> str:
    """Display name of a defence."""
    return "Undefended" if d == "undefended" else NAMES.get(d, label(d))


def points(results: Path, dataset: str, attack: str, defenses: list[str]) -> dict[str, tuple[float, float]]:
    """defence -> (CA, ASR) for one dataset/attack, the undefended model first."""
    at = {"dataset": dataset, "attack": attack}
    final = read_json(paths.path("backdoor_result", results, **at))["final"]
    out = {"undefended": (final["ca"], final["asr"])}
    for d in defenses:
        f = read_json(paths.path("result", results, defense=d, **at))["final"]
        out[d] = (f["ca"], f["asr"])
    return out


def main() -> None:
    args = figure_args(__doc__, 'dataset', 'attacks', 'defenses')
    attacks, defenses = args.attacks.split(), args.defenses.split()
    use_style()
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.4 * len(attacks) + 1.6, 3.4), squeeze=False, sharey=True)
    for ax, attack in zip(axes[0], attacks):
        for d, (ca, asr) in points(Path(args.results), args.dataset, attack, defenses).items():
            marker, color = MARKERS.get(d, ("o", "gray"))
            ax.scatter(ca, asr, marker=marker, color=color, s=90 if d in ("sft", "undefended") else 55,
                       edgecolor="white", linewidth=0.6, label=name(d), zorder=3)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(label(attack))
        ax.set_xlabel("CA")
        ax.annotate("better", xy=(0.97, 0.03), xytext=(0.70, 0.25), fontsize=8, color="gray",
                    arrowprops={"arrowstyle": "->", "color": "gray"})
    axes[0][0].set_ylabel("ASR")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=True)
    fig.suptitle(label(args.dataset), fontsize=11)
    save(fig, args.out)


if __name__ == "__main__":
    main()
