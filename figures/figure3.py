"""Figure 3: transfer-based scenario; CA and transfer ASR over downstream fine-tuning epochs, FT vs SFT.

Rows: downstream tasks; columns: attacks. Grey lines: the transfer ASR of the same trigger on
a model pre-trained without poison and fine-tuned the same way (the "no backdoor" level).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from experiments import paths
from figures.style import figure_args, label, save, style_panel, use_style

NAMES = {"digits5to9": "digits 5-9"}
LINES = [("ft", "ca", "tab:blue", "--"), ("ft", "asr", "tab:red", "--"),
         ("sft", "ca", "tab:blue", "-"), ("sft", "asr", "tab:red", "-")]


def _history(path: Path) -> list[dict]:
    if not path.is_file():
        raise SystemExit(f"error: {path} not found; run: make figure3")
    return [r for r in json.loads(path.read_text())["history"] if r["epoch"] >= 1]  # epoch 0: random head


def main() -> None:
    args = figure_args(__doc__, 'downstream', 'attacks')
    tasks, attacks, root = args.downstream.split(), args.attacks.split(), Path(args.results)
    use_style()
    fig, axes = plt.subplots(len(tasks), len(attacks), figsize=(3.6 * len(attacks) + 2.2, 3.0 * len(tasks)),
                             squeeze=False, sharey=True)
    for i, d in enumerate(tasks):
        for j, a in enumerate(attacks):
            ax = axes[i][j]
            for defense, metric, color, ls in LINES:
                h = _history(paths.path("transfer", root, downstream=d, attack=a, defense=defense))
                key = "ca" if metric == "ca" else f"asr_{a}"
                ax.plot([r["epoch"] for r in h], [r[key] for r in h], color=color, ls=ls, lw=1.4,
                        label=f"{label(defense)} {metric.upper()}")
            for defense, ls in (("ft", "--"), ("sft", "-")):
                h = _history(paths.path("transfer", root, downstream=d, attack="clean", defense=defense))
                ax.plot([r["epoch"] for r in h], [r[f"asr_{a}"] for r in h], color="0.55", ls=ls, lw=1.0,
                        label=f"{label(defense)} ASR, clean model")
            style_panel(ax, f"{NAMES.get(d, label(d))} / {label(a)}", "fine-tuning epoch",
                        "accuracy" if j == 0 else None)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
