"""Figure 2: CA and ASR over downstream epochs, classifier-only vs whole-model fine-tuning of a
BadEncoder encoder; one panel per (pre-training set, downstream task)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt

from experiments import paths
from figures.style import label, save, style_panel, use_style

# (mode, metric, colour, line style); `clean` (ASR of a frozen clean encoder) is drawn when present
LINES = [("classifier", "ca", "tab:blue", "--"), ("classifier", "asr", "tab:red", "--"),
         ("whole", "ca", "tab:blue", "-"), ("whole", "asr", "tab:red", "-"), ("clean", "asr", "0.5", ":")]
NAMES = {"classifier": "classifier-only", "whole": "whole model", "clean": "clean encoder"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", required=True, help="artifacts/results/<profile>/encoder")
    ap.add_argument("--pretrain", required=True, help="space-separated pre-training sets")
    ap.add_argument("--downstream", required=True, help="space-separated downstream tasks")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    pre, down = args.pretrain.split(), args.downstream.split()
    use_style()
    fig, axes = plt.subplots(len(pre), len(down), figsize=(3.6 * len(down), 3.0 * len(pre)), squeeze=False,
                             sharey=True)
    for i, p in enumerate(pre):
        for j, d in enumerate(down):
            ax = axes[i][j]
            for mode, metric, color, ls in LINES:
                path = paths.path("downstream", args.results, pretrain=p, downstream=d, mode=mode)
                if mode == "clean" and not path.is_file():
                    continue
                h = json.loads(path.read_text())["history"]
                ax.plot([r["epoch"] for r in h], [r[metric] for r in h], color=color, ls=ls, lw=1.4,
                        label=f"{NAMES[mode]} {metric.upper()}")
            style_panel(ax, f"{label(p)} → {label(d)}", "downstream epoch", "accuracy" if j == 0 else None)
    axes[0][-1].legend(loc="center right", fontsize=7, frameon=True)
    save(fig, args.out)


if __name__ == "__main__":
    main()
