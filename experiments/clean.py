"""The reference model trained without poison: the one clean trainer, its checkpoint path and loader.

The transfer scenario (Fig. 3, `--attack clean`) and re-injection (Fig. 11, 14-17, `--model clean`)
both start from it; one Make rule builds it (make/clean.mk).

    python -m experiments.clean --profile demo --dataset digits
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn

from backdoor.checkpoint import save_model
from backdoor.metrics import accuracy
from backdoor.models import make_model
from backdoor.train import fit
from experiments import paths
from experiments.common import jsonable, load_data, load_model, resolve_device, run_main, setup, write_result
from experiments.profiles import Profile, add_profile_args, profile_from


def clean_path(prof: Profile, dataset: str) -> Path:
    """The model trained without poison, beside the backdoored ones."""
    return paths.path("clean_model", paths.checkpoints(prof.name), dataset=dataset)


def train_clean(args: argparse.Namespace) -> None:
    """Train on `--dataset` exactly as `standalone train` does, minus the poison; checkpoint + history."""
    prof, device = profile_from(args), resolve_device(args.device)
    cfg = prof.train_config(args.dataset)
    setup(f"clean model {args.dataset} ({prof.name})", {"train": cfg, "width": prof.width, "device": device})
    data = load_data(args.dataset, prof)
    torch.manual_seed(prof.seed)
    model = make_model(prof.arch, data.num_classes, prof.width, args.dataset).to(device)
    x_test = data.x_test.to(device)
    history = fit(model, data.x_train, data.y_train, cfg, desc="train clean",
                  evaluate=lambda m: {"ca": accuracy(m, x_test, data.y_test, bf16=cfg.bf16)})
    meta = {"arch": prof.arch_record(args.dataset, data.num_classes), "attack": None, **prof.stamp(device), "train": cfg, "seed": prof.seed,
            "final": history[-1], "device_hours": sum(r["seconds"] for r in history) / 3600}
    write_result(paths.path("clean_result", paths.results(prof.name), dataset=args.dataset),
                 {**meta, "history": history})
    save_model(clean_path(prof, args.dataset), model, jsonable(meta))
    print(f"clean: CA {history[-1]['ca']:.3f}")


def load_clean(prof: Profile, dataset: str, device: torch.device) -> nn.Module:
    """The clean model of `dataset`, on `device`."""
    return load_model(clean_path(prof, dataset), device)[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(ap)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    run_main(train_clean, ap.parse_args(argv))


if __name__ == "__main__":
    main()
