"""Standalone scenario (paper Section 5.3, Fig. 4): train a backdoored model, then defend it.

    python -m experiments.standalone train  --profile demo --dataset digits --attack badnets
    python -m experiments.standalone defend --profile demo --dataset digits --attack badnets --defense sft

Each call writes one checkpoint (+ JSON sidecar) and one results JSON under artifacts/;
Make uses those files to skip finished work.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from backdoor.attacks import make_attack, trigger_record
from backdoor.attacks.presets import attack_params as preset_attack_params
from backdoor.checkpoint import load_checkpoint, save_checkpoint, save_model
from backdoor.data import ImageData
from backdoor.models import make_model
from backdoor.attacks.training import train_backdoored
from defenses import DefenseContext, get_defense
from defenses.presets import defense_params
from experiments.common import (evaluator_for, jsonable, load_backdoored, load_data, resolve_device, run_dir,
                                run_main, setup, write_result)
from experiments.profiles import get_profile


def train(args: argparse.Namespace) -> None:
    """Train the backdoored model with the attack's own procedure; save checkpoint, poisoned set, history."""
    prof, device = get_profile(args.profile), resolve_device(args.device)
    cfg = prof.train_config(args.dataset)
    attack_params = {"target": prof.target, **preset_attack_params(prof.name, args.attack),
                     **({"key_image": args.key_image} if args.key_image else {})}
    attack = make_attack(args.attack, **attack_params).to(device)
    setup(f"train {args.dataset}/{args.attack} ({prof.name})",
          {"train": cfg, "attack": attack.params(), "poison_ratio": prof.poison_ratio, "width": prof.width,
           "device": device})
    data = load_data(args.dataset)
    torch.manual_seed(prof.seed)
    model = make_model("preactresnet18", data.num_classes, prof.width, args.dataset).to(device)
    history, info = train_backdoored(attack, model, data, cfg, prof.poison_ratio, prof.seed)
    seconds = sum(r["seconds"] for r in history)
    meta = {"arch": {"name": "preactresnet18", "num_classes": data.num_classes, "width": prof.width,
                     "dataset": args.dataset},
            "attack": {"name": args.attack, "params": attack.params()}, "trigger": trigger_record(attack),
            "profile": prof.name, "train": cfg,
            "poison_ratio": prof.poison_ratio, "num_poisoned": info["num_poisoned"], "seed": prof.seed,
            "final": history[-1], "device_hours": seconds / 3600}
    ck = run_dir("checkpoints", prof.name, args.dataset, args.attack)
    save_poisoned_set(ck / "poison.safetensors", data, info)
    write_result(run_dir("results", prof.name, args.dataset, args.attack) / "backdoor.json",
                 {**meta, "history": history})
    save_model(ck / "backdoor.safetensors", model, jsonable(meta), attack)
    print(f"backdoored: CA {history[-1]['ca']:.3f}  ASR {history[-1]['asr']:.3f}  ({seconds:.0f} s training)")


def defend(args: argparse.Namespace) -> None:
    """Load a backdoored model, run one defence on the clean training set, save model + results."""
    prof, device = get_profile(args.profile), resolve_device(args.device)
    defense = get_defense(args.defense)
    ckpt = run_dir("checkpoints", prof.name, args.dataset, args.attack) / "backdoor.safetensors"
    model, attack, meta = load_backdoored(ckpt, device)
    cfg = prof.finetune_config(args.dataset)
    setup(f"defend {args.dataset}/{args.attack} with {args.defense} ({prof.name})",
          {"finetune": cfg, "sft": prof.sft, "checkpoint": ckpt, "device": device})
    data = load_data(args.dataset)
    x_train, y_train, poison_idx = load_poisoned_set(ckpt.with_name("poison.safetensors"), data)
    ctx = DefenseContext(model=model, x_clean=data.x_train, y_clean=data.y_train, train=cfg,
                         evaluate=evaluator_for(data, attack, device), x_train=x_train, y_train=y_train,
                         poison_idx=poison_idx, num_classes=data.num_classes,
                         params={"sft": prof.sft, **defense_params(prof.name)})
    t0 = time.perf_counter()
    result = defense(ctx)
    seconds = time.perf_counter() - t0
    final = result.history[-1]
    info = {"defense": args.defense, "profile": prof.name, "dataset": args.dataset, "attack": args.attack,
            "finetune": cfg, "sft": prof.sft if args.defense == "sft" else None, "final": final,
            "before": result.history[0], "train_seconds": sum(r["seconds"] for r in result.history),
            "device_hours": seconds / 3600, "device": str(device), **result.info}
    save_model(run_dir("checkpoints", prof.name, args.dataset, args.attack) / f"{args.defense}.safetensors",
               result.model, jsonable({**info, "arch": meta["arch"], "attack": meta["attack"]}), attack)
    write_result(run_dir("results", prof.name, args.dataset, args.attack) / f"{args.defense}.json",
                 {**info, "history": result.history})
    print(f"{args.defense}: CA {final['ca']:.3f}  ASR {final['asr']:.3f}  "
          f"(before: CA {result.history[0]['ca']:.3f}  ASR {result.history[0]['asr']:.3f}; {seconds:.0f} s)")


def save_poisoned_set(path: Path, data: ImageData, info: dict) -> None:
    """Store only what poisoning changed (rows and labels), so defences see the adversary's training set."""
    changed = (info["x_train"] != data.x_train).flatten(1).any(1) | (info["y_train"] != data.y_train)
    idx = changed.nonzero().flatten()
    save_checkpoint(path, {"changed_idx": idx, "x_changed": info["x_train"][idx], "y_train": info["y_train"],
                           "poison_idx": torch.as_tensor(info["poison_idx"], dtype=torch.long)},
                    {"dataset": data.name, "num_poisoned": int(info["num_poisoned"])})


def load_poisoned_set(path: Path, data: ImageData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, poison_idx) of the adversary's training set, rebuilt from the clean one."""
    t, _ = load_checkpoint(path)
    x = data.x_train.clone()
    x[t["changed_idx"]] = t["x_changed"]
    return x, t["y_train"], t["poison_idx"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["train", "defend"])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--attack", required=True)
    ap.add_argument("--defense", help="for `defend`: ft, sft, ...")
    ap.add_argument("--key-image", help="Blended key image (default: scikit-learn's china.jpg)")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    args = ap.parse_args(argv)
    if args.step == "defend" and not args.defense:
        ap.error("defend needs --defense")
    run_main(train if args.step == "train" else defend, args)


if __name__ == "__main__":
    main()
