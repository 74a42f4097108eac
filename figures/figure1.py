"""Figure 1: the learning-rate schedule of super-fine-tuning (from experiments.lr_schedule)."""
from __future__ import annotations

import argparse
import json

import matplotlib.pyplot as plt

from figures.style import save, use_style


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace", help="the LR trace experiments.lr_schedule writes (--out)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    r = json.load(open(args.trace))
    use_style()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(range(len(r["lr"])), r["lr"], color="tab:blue", lw=1.2)
    phase1 = r["sft"]["phase1_epochs"] * r["steps_per_epoch"]
    ax.axvline(phase1, color="gray", ls=":", lw=1)
    ax.text(phase1, max(r["lr"]) * 0.95, f" epoch {r['sft']['phase1_epochs']}: LR_MAX1 -> LR_MAX2",
            fontsize=9, va="top")
    ax.set_xlabel(f"iteration ({r['steps_per_epoch']} per epoch on {r['dataset']}, "
                  f"half-cycle {r['half_cycle_steps']})")
    ax.set_ylabel("learning rate")
    ax.set_title(f"Super-fine-tuning LR schedule ({r['profile']} profile)")
    save(fig, args.out)


if __name__ == "__main__":
    main()
