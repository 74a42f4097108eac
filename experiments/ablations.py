"""Ablations in the standalone scenario (paper Section 5.5): fine-tuning set size and learning rate.

    python -m experiments.ablations --profile demo --dataset digits --attack badnets --points sft_frac0.1_max0.1
    python -m experiments.ablations --profile demo --dataset digits --attack blended --points ft_lr0.1 ft_lr0.01

Each point (see `experiments.sweeps`) fine-tunes the standalone backdoored checkpoint once and
writes `<results>/<dataset>/<attack>/ablation/<point>.json`; a point whose file exists is skipped.
Fig. 7: SFT on a seeded `fraction` of the clean training set; Fig. 8: FT at a constant LR;
Fig. 9: SFT on 10% with LR_MAX1 0.1 or 0.3.
"""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from defenses import DefenseContext, SFTConfig, get_defense
from experiments import paths
from experiments.common import evaluator_for, load_backdoored, load_data, resolve_device, run_main, setup, \
    write_result
from experiments.profiles import Profile, add_profile_args, profile_from
from experiments.sweeps import AblationPoint, SweepConfig, parse_point, point_epochs


def subset_indices(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Sorted indices of exactly round(fraction * n) of n images, drawn with `seed`.

    The draw is a prefix of one seeded permutation, so a smaller fraction is a subset of a larger one.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    k = round(fraction * n)
    if k < 1:
        raise ValueError(f"fraction {fraction} of {n} images keeps none; use a larger fraction")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def point_sft(point: AblationPoint, prof: Profile, sw: SweepConfig, n_full: int) -> SFTConfig:
    """The profile's SFT schedule with the point's LR_MAX1; on a subset, the full set's half-cycle in steps."""
    return sw.sft_for(replace(prof.sft, lr_max1=point.lr_max1), n_full, prof.finetune_batch)


def run_point(prof: Profile, sw: SweepConfig, dataset: str, attack_name: str, point: AblationPoint,
              device: torch.device) -> dict:
    """Fine-tune the standalone backdoored model once as `point` says; return the results record."""
    ckpt = paths.path("backdoor", paths.checkpoints(prof.name), dataset=dataset, attack=attack_name)
    model, attack, _ = load_backdoored(ckpt, device)
    data = load_data(dataset, prof)
    idx = subset_indices(len(data.x_train), point.fraction, sw.subset_seed)
    cfg = replace(prof.finetune_config(dataset), epochs=point_epochs(point, prof, sw))
    if point.defense == "ft":
        cfg = replace(cfg, lr=point.lr)
    sft = point_sft(point, prof, sw, len(data.x_train)) if point.defense == "sft" else None
    setup(f"ablation {dataset}/{attack_name} {point.name} ({prof.name})",
          {"finetune": cfg, "sft": sft, "images": len(idx), "checkpoint": ckpt, "device": device})
    ctx = DefenseContext(model=model, x_clean=data.x_train[idx], y_clean=data.y_train[idx], train=cfg,
                         evaluate=evaluator_for(data, attack, device, bf16=cfg.bf16), num_classes=data.num_classes,
                         params={"sft": sft} if sft else {})
    result = get_defense(point.defense)(ctx)
    final = result.history[-1]
    print(f"{point.name}: CA {final['ca']:.3f}  ASR {final['asr']:.3f}  ({len(idx)} images)")
    return {"point": point, "name": point.name, **prof.stamp(device), "dataset": dataset, "attack": attack_name,
            "finetune": cfg, "sft": sft, "subset_size": len(idx), "subset_seed": sw.subset_seed,
            "train_size": len(data.x_train), "final": final,
            "train_seconds": sum(r["seconds"] for r in result.history), **result.info, "history": result.history}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(ap)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--attack", required=True)
    ap.add_argument("--points", nargs="+", required=True, help="e.g. sft_frac0.1_max0.1 ft_lr0.001")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    args = ap.parse_args(argv)

    def step(a: argparse.Namespace) -> None:
        prof, device = profile_from(a), resolve_device(a.device)
        sw = prof.sweeps
        for point in [parse_point(p) for p in a.points]:
            out = paths.path("ablation", paths.results(prof.name), dataset=a.dataset, attack=a.attack, point=point.name)
            if not out.exists():
                write_result(out, run_point(prof, sw, a.dataset, a.attack, point, device))

    run_main(step, args)


if __name__ == "__main__":
    main()
