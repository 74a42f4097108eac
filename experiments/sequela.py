"""Backdoor sequela (paper Section 6): membership inference (Fig. 10) and re-injection (Fig. 11, 14-17).

    python -m experiments.sequela mia      --profile demo --dataset digits --attack badnets --model sft
    python -m experiments.sequela reinject --profile demo --dataset digits --attack badnets --model sft --ratio 0.01

`--model` is `backdoor` (MIA only), `clean` (re-injection only: the model trained without
poison, `experiments.clean`) or a defence whose checkpoint `standalone defend` wrote. Each call writes one file.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn

from backdoor.attacks import Attack
from defenses import DEFENSES
from experiments import paths
from experiments.clean import load_clean
from experiments.common import (eval_subset, evaluator_for, load_backdoored, load_data, resolve_device, run_main,
                                setup, write_result)
from experiments.profiles import Profile, add_profile_args, profile_from
from experiments.standalone import load_poisoned_set
from sequela.mia import membership_inference, mia_split
from sequela.reinject import epochs_to, reinject

# Offsets from the profile seed, so the MIA split and the re-injection poison differ from training's.
MIA_SEED, REINJECT_SEED = 100, 1


def check_model(name: str, allowed: tuple[str, ...]) -> None:
    """Fail in one line on a model name this step cannot load."""
    if name not in allowed and name not in DEFENSES:
        raise ValueError(f"unknown --model {name!r}; choose one of: {', '.join((*allowed, *sorted(DEFENSES)))}")


def parse_ratio(text: str) -> float:
    """A re-injection poison ratio in (0, 1]."""
    try:
        r = float(text)
    except ValueError:
        r = -1.0
    if not 0.0 < r <= 1.0:
        raise ValueError(f"--ratio must be a number in (0, 1], got {text!r}")
    return r


def checkpoint_of(ck: Path, dataset: str, attack: str, model: str) -> Path:
    """The checkpoint of `model`: the backdoored one or a defence's (both written by experiments.standalone)."""
    if model == "backdoor":
        return paths.path("backdoor", ck, dataset=dataset, attack=attack)
    return paths.path("defended", ck, dataset=dataset, attack=attack, defense=model)


def mia(args: argparse.Namespace) -> None:
    """Membership inference against the backdoored model or one defended model."""
    check_model(args.model, ("backdoor",))
    prof, device = profile_from(args), resolve_device(args.device)
    ck = paths.checkpoints(prof.name)
    model_file = checkpoint_of(ck, args.dataset, args.attack, args.model)
    setup(f"mia {args.dataset}/{args.attack}/{args.model} ({prof.name})",
          {"mia_epochs": prof.mia_epochs, "checkpoint": model_file, "device": device})
    model, attack, _ = load_backdoored(model_file, device)
    # The whole test split: MIA's non-members are half of it per side (not an evaluation of CA/ASR);
    # only the model-quality CA/ASR below uses the profile's evaluation subset.
    data = load_data(args.dataset)
    _, _, poison_idx = load_poisoned_set(paths.path("poison", ck, dataset=args.dataset, attack=args.attack), data)
    # Members are drawn from the unpoisoned training images: each is in every model's training set as is.
    sp = mia_split(len(data.x_train), len(data.x_test), prof.seed + MIA_SEED, exclude=poison_idx)
    t0 = time.perf_counter()
    res = membership_inference(model, data.x_train, data.y_train, data.x_test, data.y_test, sp, prof.mia_epochs,
                               prof.seed + MIA_SEED)
    quality = evaluator_for(eval_subset(data, prof.eval_images, prof.seed), attack, device, bf16=prof.bf16)(model)
    write_result(paths.path("mia", paths.results(prof.name), dataset=args.dataset, attack=args.attack,
                            model=args.model),
                 {**prof.stamp(device), "dataset": args.dataset, "attack": args.attack, "model": args.model,
                  "mia_epochs": prof.mia_epochs, "features": "sorted softmax posteriors + top-1 correct flag",
                  **res, **quality, "seconds": time.perf_counter() - t0})
    print(f"mia {args.model}: accuracy {res['accuracy']:.3f}  AUC {res['auc']:.3f}  "
          f"(model CA {quality['ca']:.3f}, ASR {quality['asr']:.3f})")


def load_start(prof: Profile, dataset: str, attack_name: str, model_name: str,
               device: torch.device) -> tuple[nn.Module, Attack]:
    """(model to re-inject into, the original attack) for `clean` or a defended checkpoint."""
    ck = paths.checkpoints(prof.name)
    if model_name != "clean":
        model, attack, _ = load_backdoored(checkpoint_of(ck, dataset, attack_name, model_name), device)
        return model, attack
    _, attack, _ = load_backdoored(paths.path("backdoor", ck, dataset=dataset, attack=attack_name), device)
    return load_clean(prof, dataset, device), attack


def reinject_step(args: argparse.Namespace) -> None:
    """Re-inject the attack into the clean or a defended model at one poison ratio."""
    check_model(args.model, ("clean",))
    ratio = parse_ratio(args.ratio)
    prof, device = profile_from(args), resolve_device(args.device)
    cfg = prof.train_config(args.dataset)
    setup(f"reinject {args.attack} into {args.dataset}/{args.model} at {ratio} ({prof.name})",
          {"train": cfg, "epochs": prof.reinject_epochs, "device": device})
    model, attack = load_start(prof, args.dataset, args.attack, args.model, device)
    data = load_data(args.dataset, prof)
    rec = reinject(model, attack, data, cfg, prof.reinject_epochs, ratio, prof.seed + REINJECT_SEED)
    first = epochs_to(rec["history"]) if rec["history"] else None
    write_result(paths.path("reinject", paths.results(prof.name), dataset=args.dataset, attack=args.attack,
                            model=args.model, ratio=args.ratio),
                 {**prof.stamp(device), "dataset": args.dataset, "attack": args.attack, "model": args.model,
                  "train": cfg, "epochs_to_asr_0.8": first, **rec})
    if rec["history"]:
        h = rec["history"]
        drawn = f"; {rec['n_poison_drawn']} poisoned images drawn" if "n_poison_drawn" in rec else ""
        print(f"reinject {args.model} @ {ratio}: ASR {h[0]['asr']:.3f} -> {h[-1]['asr']:.3f}, "
              f"CA {h[-1]['ca']:.3f}; epochs to ASR>=0.8: {first}{drawn}")
    else:
        print(f"reinject {args.model} @ {ratio}: skipped ({rec['skipped']})")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["mia", "reinject"])
    add_profile_args(ap)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--attack", help="mia, reinject: the attack (its backdoored checkpoint holds the trigger)")
    ap.add_argument("--model", help="mia: backdoor or a defence; reinject: clean or a defence")
    ap.add_argument("--ratio", help="reinject: poison ratio in (0, 1], as written in the file name")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    args = ap.parse_args(argv)
    if not (args.attack and args.model):
        ap.error(f"{args.step} needs --attack and --model")
    if args.step == "reinject" and not args.ratio:
        ap.error("reinject needs --ratio")
    run_main({"mia": mia, "reinject": reinject_step}[args.step], args)


if __name__ == "__main__":
    main()
