"""Transfer-based scenario (paper Sections 2.2 and 5.2, Fig. 3).

The adversary's backdoored model is the standalone one trained on the pre-training set
(paper: CIFAR100). The user swaps its classification layer for a fresh one sized for the
downstream task and fine-tunes the whole model with FT or SFT, recording CA and the
transfer ASR (`backdoor.metrics.transfer_attack_success_rate`) after every epoch.

    python -m experiments.transfer run --profile demo --downstream digits5to9 --attack badnets --defense sft
    python -m experiments.transfer run --profile demo --downstream digits5to9 --attack clean --defense ft \\
        --triggers "badnets blended"

`--attack clean` fine-tunes the model pre-trained without poison (`experiments.clean`) and measures
every listed attack's trigger on it: the transfer ASR that means "no backdoor".
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Callable, Optional

import torch
import torch.nn as nn

from backdoor.attacks import Attack
from backdoor.data import ImageData
from backdoor.metrics import make_transfer_evaluator
from backdoor.poison import bake
from defenses import DefenseContext, get_defense
from experiments import paths
from experiments.clean import load_clean
from experiments.common import load_backdoored, load_data, resolve_device, run_main, setup, write_result
from experiments.profiles import Profile, add_profile_args, profile_from

TRANSFER_DEFENSES = ("ft", "sft")


def _digit_classes(lo: int, hi: int) -> Callable[[Optional[Profile]], ImageData]:
    """Digits lo..hi-1 only, relabelled 0..hi-lo-1 (a downstream task built from the embedded data)."""

    def load(prof: Optional[Profile]) -> ImageData:
        d = load_data("digits", prof)
        tr, te = (d.y_train >= lo) & (d.y_train < hi), (d.y_test >= lo) & (d.y_test < hi)
        return ImageData(f"digits{lo}to{hi - 1}", d.x_train[tr], d.y_train[tr] - lo, d.x_test[te], d.y_test[te] - lo,
                         hi - lo)

    return load


# Downstream tasks that are not registry datasets; any name in backdoor.data.DATASETS also works.
DOWNSTREAM: dict[str, Callable[[Optional[Profile]], ImageData]] = {"digits5to9": _digit_classes(5, 10)}


def load_downstream(name: str, prof: Optional[Profile] = None) -> ImageData:
    """A derived task from DOWNSTREAM, else a registry dataset; `prof` as in `load_data`."""
    return DOWNSTREAM[name](prof) if name in DOWNSTREAM else load_data(name, prof)


def swap_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """Replace `model.linear` by a freshly initialised (seeded) layer with `num_classes` outputs, in place."""
    old = model.linear
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = nn.Linear(old.in_features, num_classes)
    model.linear = new.to(device=old.weight.device, dtype=old.weight.dtype)
    model.num_classes = num_classes
    return model


def load_pretrained(prof: Profile, pretrain: str, attack: str, triggers: list[str],
                    device: torch.device) -> tuple[nn.Module, dict[str, Attack]]:
    """The pre-trained model (backdoored by `attack`, or `clean`) and the attacks whose triggers to test."""
    ckpt = lambda a: paths.path("backdoor", paths.checkpoints(prof.name), dataset=pretrain, attack=a)  # noqa: E731
    if attack != "clean":
        model, att, _ = load_backdoored(ckpt(attack), device)
        return model, {attack: att}
    if not triggers:
        raise ValueError("--attack clean needs --triggers (the attacks whose triggers to measure)")
    return load_clean(prof, pretrain, device), {a: load_backdoored(ckpt(a), device)[1] for a in triggers}


def run(args: argparse.Namespace) -> None:
    """Head swap, then FT or SFT on the downstream task; one results JSON per (task, attack, defence)."""
    prof, device = profile_from(args), resolve_device(args.device)
    sw = prof.sweeps
    if args.defense not in TRANSFER_DEFENSES:
        raise ValueError(f"transfer defense must be one of {', '.join(TRANSFER_DEFENSES)}, got {args.defense!r}")
    model, attacks = load_pretrained(prof, sw.pretrain, args.attack, args.triggers.split(), device)
    down = load_downstream(args.downstream, prof)
    swap_head(model, down.num_classes, prof.seed)
    cfg = replace(prof.finetune_config(args.downstream), epochs=sw.transfer_epochs,
                  lr=sw.transfer_ft_lr if sw.transfer_ft_lr is not None else prof.ft_lr)
    # The pre-training set is the standalone set the profile's SFT half-cycle was sized for.
    sft = sw.sft_for(prof.sft, len(load_data(sw.pretrain).x_train), prof.finetune_batch)
    setup(f"transfer {sw.pretrain} -> {args.downstream}, {args.attack}, {args.defense} ({prof.name})",
          {"finetune": cfg, "sft": sft, "triggers": list(attacks), "device": device})
    # Every downstream test image gets the trigger: the metric leaves out class c's own images per c.
    triggered = {a: bake(att, down.x_test).to(device) for a, att in attacks.items()}
    evaluate = make_transfer_evaluator(down.x_test.to(device), down.y_test, triggered, down.num_classes, bf16=cfg.bf16)
    ctx = DefenseContext(model=model, x_clean=down.x_train, y_clean=down.y_train, train=cfg, evaluate=evaluate,
                         num_classes=down.num_classes, params={"sft": sft})
    result = get_defense(args.defense)(ctx)
    final = result.history[-1]
    out = paths.path("transfer", paths.path("transfer_dir", paths.results(prof.name)), downstream=args.downstream,
                     attack=args.attack, defense=args.defense)
    write_result(out, {**prof.stamp(device), "pretrain": sw.pretrain, "downstream": args.downstream,
                       "attack": args.attack, "defense": args.defense, "triggers": list(attacks), "finetune": cfg,
                       "sft": sft if args.defense == "sft" else None, "final": final,
                       "train_seconds": sum(r["seconds"] for r in result.history), **result.info,
                       "history": result.history})
    print(f"{args.defense}: CA {final['ca']:.3f}  " +
          "  ".join(f"ASR[{a}] {final[f'asr_{a}']:.3f} (class {final[f'asr_class_{a}']})" for a in attacks))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["run"])
    add_profile_args(ap)
    ap.add_argument("--downstream", help="the user's task (paper: cifar10, gtsrb)")
    ap.add_argument("--attack", help="the pre-trained model's attack, or `clean`")
    ap.add_argument("--defense", default="ft", help="ft or sft")
    ap.add_argument("--triggers", default="", help="for `--attack clean`: attacks whose triggers to measure")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    args = ap.parse_args(argv)
    if not (args.downstream and args.attack):
        ap.error("run needs --downstream and --attack")
    run_main(run, args)


if __name__ == "__main__":
    main()
