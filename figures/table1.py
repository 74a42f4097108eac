"""Table 1: a clean image and the same image under each attack, with the amplified residual."""
from __future__ import annotations

import argparse
import json

import matplotlib.pyplot as plt
import numpy as np
from safetensors import safe_open

from figures.style import label, save, use_style


def to_hwc(t) -> np.ndarray:
    return t.permute(1, 2, 0).numpy().astype(np.float32) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("images", help="the images file experiments.table1 writes (--out)")
    ap.add_argument("--amplify", type=float, default=5.0, help="residual |x' - x| is multiplied by this")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with safe_open(args.images, "pt") as f:
        meta = json.loads(f.metadata()["meta"])
        img = {k: f.get_tensor(k) for k in f.keys()}
    datasets, attacks = meta["datasets"], meta["attacks"]
    use_style()
    cols = 1 + len(attacks)
    fig, axes = plt.subplots(2 * len(datasets), cols, figsize=(1.6 * cols, 3.4 * len(datasets)), squeeze=False)
    for i, d in enumerate(datasets):
        clean = to_hwc(img[f"{d}/clean"])
        top, bottom = axes[2 * i], axes[2 * i + 1]
        top[0].imshow(clean, interpolation="nearest")
        top[0].set_title("clean", fontsize=9)
        top[0].set_ylabel(label(d))
        bottom[0].set_ylabel(f"|residual| x{args.amplify:g}", fontsize=8)
        for j, a in enumerate(attacks, start=1):
            bad = to_hwc(img[f"{d}/{a}"])
            top[j].imshow(bad, interpolation="nearest")
            top[j].set_title(label(a), fontsize=9)
            bottom[j].imshow(np.clip(np.abs(bad - clean) * args.amplify, 0, 1), interpolation="nearest")
        for ax in (*top, *bottom):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        bottom[0].imshow(np.zeros_like(clean))
    save(fig, args.out)


if __name__ == "__main__":
    main()
