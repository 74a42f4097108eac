"""Table 1 data: one clean test image per dataset and the same image under each attack.

    python -m experiments.table1 --profile demo --datasets digits \
        --attacks "badnets blended lf inputaware wanet" --out artifacts/results/demo/table1.safetensors

Attacks come from the standalone backdoor checkpoints (their trigger state is saved under
`attack.`), so LF's generated pattern and InputAware's trained generators are the ones the
backdoored models learned. Writes one safetensors file: `<dataset>/clean` and
`<dataset>/<attack>` uint8 [3,32,32], with the image index and label in its metadata.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save

from backdoor.checkpoint import atomic_write_bytes
from backdoor.poison import bake
from experiments import paths
from experiments.common import load_backdoored, load_data, resolve_device, run_main, setup
from experiments.profiles import add_profile_args, profile_from


def pick_image(y: torch.Tensor, target: int, index: int) -> int:
    """The `index`-th test image whose label is not the target (ASR images only)."""
    candidates = torch.nonzero(y != target).flatten()
    if not 0 <= index < len(candidates):
        raise ValueError(f"--index {index} out of range; the test set has {len(candidates)} non-target images")
    return int(candidates[index])


def collect(args: argparse.Namespace) -> None:
    prof, device = profile_from(args), resolve_device(args.device)
    datasets, attacks = args.datasets.split(), args.attacks.split()
    setup(f"table1 ({prof.name})", {"datasets": datasets, "attacks": attacks, "index": args.index, "out": args.out})
    tensors, meta = {}, {"datasets": datasets, "attacks": attacks, "images": {}}
    for d in datasets:
        data = load_data(d)
        i = pick_image(data.y_test, prof.target, args.index)
        x = data.x_test[i : i + 1]
        tensors[f"{d}/clean"] = x[0]
        meta["images"][d] = {"index": i, "label": int(data.y_test[i])}
        for a in attacks:
            _, attack, _ = load_backdoored(paths.path("backdoor", paths.checkpoints(prof.name), dataset=d, attack=a),
                                           device)
            tensors[f"{d}/{a}"] = bake(attack.eval(), x)[0]
    atomic_write_bytes(Path(args.out), save(tensors, metadata={"meta": json.dumps(meta)}))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(ap)
    ap.add_argument("--datasets", required=True, help="space-separated dataset names")
    ap.add_argument("--attacks", required=True, help="space-separated attack names")
    ap.add_argument("--index", type=int, default=0, help="which non-target test image (default: the first)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", help="cuda, cpu (default: cuda if available)")
    run_main(collect, ap.parse_args(argv))


if __name__ == "__main__":
    main()
