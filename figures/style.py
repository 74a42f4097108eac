"""Shared look of every figure, and saving as PNG + PDF."""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

LABELS = {"ft": "FT", "sft": "SFT", "badnets": "BadNets", "blended": "Blended", "lf": "LF",
          "inputaware": "InputAware", "wanet": "WaNet", "cifar10": "CIFAR10", "cifar100": "CIFAR100",
          "gtsrb": "GTSRB", "digits": "digits"}


def label(name: str) -> str:
    """Display name of a dataset, attack or defence."""
    return LABELS.get(name, name.upper())


def use_style() -> None:
    """Paper-like style: white grid, readable fonts."""
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.2)


def style_panel(ax: plt.Axes, title: str, xlabel: str, ylabel: str | None = None) -> None:
    """A [0,1] accuracy panel: fixed y range, title, x label, y label on the first column only."""
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)


def save(fig: plt.Figure, out: str | Path) -> None:
    """Write `out` (PNG) and the same figure as PDF next to it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    fig.savefig(out.with_suffix(".pdf"))
    plt.close(fig)


def figure_args(doc: str | None, *names: str, per_seed: bool = False) -> argparse.Namespace:
    """Parse `--results DIR --out PNG` plus each required `--NAME` (space-separated lists as one string);
    `per_seed`: --results takes one directory per seed (a list)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--results", required=True, nargs="+" if per_seed else None,
                    help="results directory, e.g. artifacts/results/<profile>" + ("; one per seed" if per_seed else ""))
    for name in names:
        if name == "set":  # the profile overrides, space-separated key=value; none by default
            ap.add_argument("--set", default="", help="profile overrides, e.g. 'finetune_epochs=5'")
        else:
            ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--out", required=True, help="PNG path; a PDF is written beside it")
    return ap.parse_args()


def plot_final_rows(axes, datasets: list[str], attacks: list[str], xs, finals) -> None:
    """Final ASR (row 0) and CA (row 1) of a sweep's points: one column per dataset, one line per attack;
    `finals(dataset, attack)` gives the final records of the points in the order of `xs`."""
    for j, d in enumerate(datasets):
        for a in attacks:
            final = finals(d, a)
            for i, metric in enumerate(("asr", "ca")):
                axes[i][j].plot(xs, [r[metric] for r in final], marker="o", lw=1.4, label=label(a))
