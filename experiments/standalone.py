"""Standalone scenario (paper Section 5.3, Fig. 4): train a backdoored model, then defend it.

    python -m experiments.standalone train  --profile demo --dataset digits --attack badnets
    python -m experiments.standalone defend --profile demo --dataset digits --attack badnets --defense sft

Each call writes one checkpoint (+ JSON sidecar) and one results JSON under artifacts/;
Make uses those files to skip finished work.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from backdoor.attacks import make_attack, trigger_record
from backdoor.checkpoint import load_checkpoint, save_checkpoint, save_model
from backdoor.data import ImageData
from backdoor.models import make_model
from backdoor.train import precision_used
from backdoor.attacks.training import train_backdoored
from defenses import DefenseContext, get_defense
from experiments import paths
from experiments.common import (check_writable, evaluator_for, jsonable, load_backdoored, load_data, resolve_device,
                                run_main, setup, write_result)
from experiments.profiles import add_profile_args, profile_from


def train(args: argparse.Namespace) -> None:
    """Train the backdoored model with the attack's own procedure; save checkpoint, poisoned set, history."""
    prof, device = profile_from(args), resolve_device(args.device)
    if args.key_image and args.attack != "blended":
        raise ValueError(f"--key-image is a Blended setting; attack {args.attack!r} takes no key image")
    if (args.lf_pattern or args.lf_patterns) and args.attack != "lf":
        raise ValueError(f"--lf-pattern(s) is an LF setting; attack {args.attack!r} takes no pattern file")
    cfg = prof.train_config(args.dataset)
    pattern = args.lf_pattern or (args.lf_patterns and lf_pattern_in(args.lf_patterns, args.dataset, prof.arch))
    attack_params = {**prof.attack_kwargs(args.attack), **({"key_image": args.key_image} if args.key_image else {}),
                     **({"pattern_file": pattern} if pattern else {})}
    attack = make_attack(args.attack, **attack_params).to(device)  # reads and checks a key image
    if pattern:
        attack.load_pattern_file()  # a missing or malformed pattern fails here, before the data and the training
    setup(f"train {args.dataset}/{args.attack} ({prof.name})",
          {"train": cfg, "attack": attack.params(), "poison_ratio": prof.poison_ratio, "width": prof.width,
           "device": device, "precision": precision_used(device, cfg.bf16)})
    data = load_data(args.dataset, prof)
    torch.manual_seed(prof.seed)
    model = make_model(prof.arch, data.num_classes, prof.width, args.dataset).to(device)
    ck, rs = paths.checkpoints(prof.name), paths.results(prof.name)
    at = {"dataset": args.dataset, "attack": args.attack}
    check_writable([paths.path("backdoor", ck, **at).parent, paths.path("backdoor_result", rs, **at).parent],
                   _state_bytes(model) + _state_bytes(attack) + data.x_train.nbytes)
    history, info = train_backdoored(attack, model, data, cfg, prof.poison_ratio, prof.seed, arch=prof.arch,
                                     trigger_cache=paths.path("triggers"))
    seconds = sum(r["seconds"] for r in history)
    meta = {"arch": prof.arch_record(args.dataset, data.num_classes),
            "attack": {"name": args.attack, "params": attack.params()}, "trigger": trigger_record(attack),
            **prof.stamp(device), "train": cfg,
            "poison_ratio": prof.poison_ratio, "num_poisoned": info["num_poisoned"], "seed": prof.seed,
            "final": history[-1], "device_hours": seconds / 3600}
    save_poisoned_set(paths.path("poison", ck, **at), data, info)
    write_result(paths.path("backdoor_result", rs, **at), {**meta, "history": history})
    save_model(paths.path("backdoor", ck, **at), model, jsonable(meta), attack)
    print(f"backdoored: CA {history[-1]['ca']:.3f}  ASR {history[-1]['asr']:.3f}  ({seconds:.0f} s training)")


def lf_pattern_in(folder: str, dataset: str, arch: str) -> str:
    """BackdoorBench's LF pattern for `dataset` in `folder`, by its naming: <dataset>_<model>_0_255.npy."""
    path = paths.path("lf_pattern", folder, dataset=dataset, arch=arch)
    if not path.is_file():
        raise FileNotFoundError(f"--lf-patterns {folder}: no {path.name} there; put BackdoorBench's "
                                f"resource/lowFrequency/{path.name} (one file per dataset) in that folder")
    return str(path)


def defend(args: argparse.Namespace) -> None:
    """Load a backdoored model, run one defence on the clean training set, save model + results."""
    prof, device = profile_from(args), resolve_device(args.device)
    if args.key_image or args.lf_pattern or args.lf_patterns:
        raise ValueError("--key-image and --lf-pattern are for `train` only; `defend` uses the trigger stored in "
                         "the checkpoint")
    defense = get_defense(args.defense)
    at = {"dataset": args.dataset, "attack": args.attack}
    ck, rs = paths.checkpoints(prof.name), paths.results(prof.name)
    ckpt = paths.path("backdoor", ck, **at)
    model, attack, meta = load_backdoored(ckpt, device, prof)
    cfg = prof.finetune_config(args.dataset)
    setup(f"defend {args.dataset}/{args.attack} with {args.defense} ({prof.name})",
          {"finetune": cfg, "sft": prof.sft, "checkpoint": ckpt, "device": device,
           "precision": precision_used(device, cfg.bf16)})
    data = load_data(args.dataset, prof)
    x_train, y_train, poison_idx = load_poisoned_set(paths.path("poison", ck, **at), data)
    ctx = DefenseContext(model=model, x_clean=data.x_train, y_clean=data.y_train, train=cfg,
                         evaluate=evaluator_for(data, attack, device, bf16=cfg.bf16), x_train=x_train, y_train=y_train,
                         poison_idx=poison_idx, num_classes=data.num_classes, target_label=attack.target,
                         params=prof.defense_params())
    check_writable([ckpt.parent, paths.path("result", rs, defense=args.defense, **at).parent],
                   _state_bytes(model) + _state_bytes(attack))
    result = defense(ctx)
    final = result.history[-1]
    # device_hours: the defence's one clock (backdoor.train.Clock), evaluation excluded; per epoch in
    # history[i]["device_seconds"], so Fig. 6 can charge any budget.
    info = {"defense": args.defense, **prof.stamp(device), "dataset": args.dataset, "attack": args.attack,
            "finetune": cfg, "sft": prof.sft if args.defense == "sft" else None, "final": final,
            "before": result.history[0], "train_seconds": sum(r["seconds"] for r in result.history),
            "device": str(device), **result.info}
    save_model(paths.path("defended", ck, defense=args.defense, **at),
               result.model, jsonable({**info, "arch": meta["arch"], "attack": meta["attack"]}), attack)
    write_result(paths.path("result", rs, defense=args.defense, **at),
                 {**info, "history": result.history})
    print(f"{args.defense}: CA {final['ca']:.3f}  ASR {final['asr']:.3f}  "
          f"(before: CA {result.history[0]['ca']:.3f}  ASR {result.history[0]['asr']:.3f}; "
          f"{info['device_hours'] * 3600:.0f} s charged)")


def _state_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's saved state (what its checkpoint will take, to within the header)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


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
    add_profile_args(ap)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--attack", required=True)
    ap.add_argument("--defense", help="for `defend`: ft, sft, ...")
    ap.add_argument("--key-image", help="for `train` with blended: the key image (default: scikit-learn's "
                    "china.jpg); stored in the checkpoint")
    ap.add_argument("--lf-pattern", help="for `train` with lf: a universal pattern file (BackdoorBench's .npy, "
                    "uint8 32x32x3) instead of generating one; its SHA-256 is recorded")
    ap.add_argument("--lf-patterns", help="for `train` with lf: a folder of BackdoorBench's patterns, one per dataset "
                    "named <dataset>_<model>_0_255.npy (Make: LF_PATTERNS=); this run takes its dataset's")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    args = ap.parse_args(argv)
    if args.step == "defend" and not args.defense:
        ap.error("defend needs --defense")
    run_main(train if args.step == "train" else defend, args)


if __name__ == "__main__":
    main()
