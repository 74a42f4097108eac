"""Encoder-based scenario (paper Sections 4.4 and 5.1, Fig. 2): SimCLR -> BadEncoder -> downstream.

    python -m experiments.encoder pretrain   --profile demo --pretrain digits
    python -m experiments.encoder badencoder --profile demo --pretrain digits --downstream digits
    python -m experiments.encoder downstream --profile demo --pretrain digits --downstream digits --mode whole

Modes: `classifier` (backdoored encoder frozen, MLP head trained: BadEncoder's setting),
`whole` (backdoored encoder and head fine-tuned: the paper's), `clean` (clean encoder frozen:
BadEncoder's ASR-B baseline). Each call writes one checkpoint and/or results JSON under
artifacts/{checkpoints,results}/<profile>/encoder/<pretrain>/[<downstream>/].
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from backdoor.attacks.badencoder import BadEncoder, train_badencoder
from backdoor.checkpoint import load_checkpoint, load_state_into, save_model, split
from backdoor.data import ImageData
from backdoor.models import ENCODER_STATS, DownstreamClassifier, SimCLRModel
from backdoor.poison import poisoned_test_set
from backdoor.ssl import encode, knn_accuracy, pretrain_simclr
from backdoor.train import fit
from experiments import paths
from experiments.common import evaluator_for, jsonable, load_data, resolve_device, run_main, setup, write_result
from experiments.profiles import Profile, add_profile_args, profile_from

MODES = ("classifier", "whole", "clean")
# Target class per downstream task: BadEncoder's references (STL10 truck 9, SVHN one 1; its
# STL10-pretrained encoder attacks CIFAR10 with an airplane, class 0); digits: 0 as elsewhere.
TARGETS = {"cifar10": 0, "stl10": 9, "svhn": 1, "gtsrb": 12, "digits": 0}
PRETRAIN_DATA = {"stl10": "stl10_unlabeled"}  # SimCLR/shadow images: STL10's unlabelled split

def enc_file(name: str, prof: Profile, **values: str) -> Path:
    """The encoder scenario's file `name` (experiments/paths.py) of the profile: a model or a results JSON."""
    results = name.endswith("_result") or name == "downstream"
    base = paths.results(prof.name) if results else paths.checkpoints(prof.name)
    return paths.path(name, paths.path("encoder_dir", base), **values)


def _arch(prof: Profile, pretrain: str) -> dict:
    return {"name": "simclr_resnet18", "width": prof.encoder.width, "dataset": pretrain}


def build_encoder_model(arch: dict) -> SimCLRModel:
    """SimCLR model (encoder f + projection g) normalising as its pre-training set's encoder does."""
    mean, std = ENCODER_STATS.get(arch["dataset"], ((0.0,) * 3, (1.0,) * 3))
    return SimCLRModel(arch["width"], mean, std)


def load_encoder(path: Path, device: torch.device) -> tuple[SimCLRModel, dict, dict]:
    """(SimCLR model, meta, tensors) from a checkpoint written by `pretrain` or `badencoder`."""
    tensors, meta = load_checkpoint(path)
    model = build_encoder_model(meta["arch"])
    load_state_into(model, split(tensors, "model"), what="encoder")
    return model.to(device), meta, tensors


def _knn(model: SimCLRModel, data: ImageData, bf16: bool) -> float:
    return knn_accuracy(model.f, data.x_train, data.y_train, data.x_test, data.y_test, bf16=bf16)


def pretrain(args: argparse.Namespace) -> None:
    """SimCLR on the pre-training set's (unlabelled) training images; kNN accuracy before and after."""
    prof, device = profile_from(args), resolve_device(args.device)
    enc, cfg = prof.encoder, prof.encoder_config("simclr")
    setup(f"simclr pretrain on {args.pretrain} ({prof.name})",
          {"simclr": cfg, "width": enc.width, "temperature": enc.temperature, "device": device})
    images = load_data(PRETRAIN_DATA.get(args.pretrain, args.pretrain)).x_train
    labelled = load_data(args.pretrain, prof)  # its test split: kNN accuracy
    torch.manual_seed(prof.seed)
    model = build_encoder_model(_arch(prof, args.pretrain)).to(device)
    knn_before = _knn(model, labelled, cfg.bf16)
    history = pretrain_simclr(model, images, cfg, temperature=enc.temperature)
    seconds = sum(r["seconds"] for r in history)
    meta = {"arch": _arch(prof, args.pretrain), **prof.stamp(device), "simclr": cfg, "images": len(images),
            "temperature": enc.temperature, "knn_before": knn_before, "knn": _knn(model, labelled, cfg.bf16),
            "train_seconds": seconds, "device": str(device)}
    write_result(enc_file("simclr_result", prof, pretrain=args.pretrain), {**meta, "history": history})
    save_model(enc_file("simclr", prof, pretrain=args.pretrain), model, jsonable(meta))
    print(f"simclr: kNN {meta['knn_before']:.3f} -> {meta['knn']:.3f}  ({seconds:.0f} s training)")


def pick_reference(data: ImageData, target: int, seed: int) -> int:
    """Index into the downstream *training* set of one seeded-random image of class `target`.

    Not the test set: ASR is measured there. `downstream` holds this image out of its training set."""
    candidates = (data.y_train == target).nonzero().flatten()
    if not len(candidates):
        raise ValueError(f"the downstream training set has no image of target class {target}")
    return int(candidates[torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[0]])


def without_reference(data: ImageData, reference: dict) -> ImageData:
    """`data` minus the attacker's reference image when it came from its training split."""
    if reference.get("split") != "train" or reference.get("dataset") != data.name:
        return data
    keep = torch.ones(len(data.x_train), dtype=torch.bool)
    keep[reference["index"]] = False
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def shadow_images(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """First n of a seeded shuffle of the pre-training images (BadEncoder: all 50,000 of CIFAR10)."""
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


@torch.no_grad()
def alignment(encoder: torch.nn.Module, data: ImageData, attack: BadEncoder, bf16: bool) -> dict:
    """Mean cosine to the reference embedding of the downstream non-target test images, triggered
    and clean. L0 alone can look converged while every image is already that close (the first
    demo encoder had cosine ~0.99 everywhere); a working backdoor separates the two."""
    x_bd, _ = poisoned_test_set(data.x_test, data.y_test, attack)
    ref = encode(encoder, attack.reference, bf16=bf16)
    clean = data.x_test[data.y_test != attack.target]
    return {"cos_triggered_ref": (encode(encoder, x_bd, bf16=bf16) @ ref.T).mean().item(),
            "cos_clean_ref": (encode(encoder, clean, bf16=bf16) @ ref.T).mean().item()}


def badencoder(args: argparse.Namespace) -> None:
    """Backdoor the clean encoder for one downstream task (its target class and reference image)."""
    prof, device = profile_from(args), resolve_device(args.device)
    model, clean_meta, _ = load_encoder(enc_file("simclr", prof, pretrain=args.pretrain), device)
    down = load_data(args.downstream, prof)
    target = TARGETS.get(args.downstream, 0)
    ref_idx = pick_reference(down, target, prof.seed)
    attack = BadEncoder(target).set_reference(down.x_train[ref_idx : ref_idx + 1]).to(device)
    enc, cfg = prof.encoder, prof.encoder_config("badencoder")
    shadow = shadow_images(load_data(PRETRAIN_DATA.get(args.pretrain, args.pretrain)).x_train, enc.shadow_size, prof.seed)
    setup(f"badencoder {args.pretrain} -> {args.downstream} ({prof.name})",
          {"badencoder": cfg, "target": target, "reference_index": ref_idx, "shadow": len(shadow),
           "lambda1": enc.lambda1, "lambda2": enc.lambda2, "device": device})
    before = alignment(model.f, down, attack, cfg.bf16)
    history = train_badencoder(model.f, shadow, attack, cfg, enc.lambda1, enc.lambda2)
    after = alignment(model.f, down, attack, cfg.bf16)
    seconds = sum(r["seconds"] for r in history)
    meta = {"arch": clean_meta["arch"], **prof.stamp(device), "pretrain": args.pretrain, "downstream": args.downstream,
            "attack": {"name": attack.name, "params": attack.params()}, "target": target,
            "reference": {"dataset": args.downstream, "split": "train", "index": ref_idx, "seed": prof.seed,
                          "held_out_of_downstream_training": True},
            "badencoder": cfg, "lambda1": enc.lambda1, "lambda2": enc.lambda2, "shadow": len(shadow),
            "final": history[-1], "alignment_before": before, "alignment": after, "train_seconds": seconds,
            "device": str(device)}
    write_result(enc_file("badencoder_result", prof, pretrain=args.pretrain, downstream=args.downstream),
                 {**meta, "history": history})
    save_model(enc_file("badencoder", prof, pretrain=args.pretrain, downstream=args.downstream), model,
               jsonable(meta), attack)
    f = history[-1]
    print(f"badencoder: L0 {f['l0']:.3f}  L1 {f['l1']:.3f}  L2 {f['l2']:.3f}  ({seconds:.0f} s training); "
          f"cos to reference: triggered {before['cos_triggered_ref']:.3f} -> {after['cos_triggered_ref']:.3f}, "
          f"clean {before['cos_clean_ref']:.3f} -> {after['cos_clean_ref']:.3f}")


def downstream_attack(prof: Profile, pretrain: str, down: str, device: torch.device) -> tuple[BadEncoder, dict]:
    """The BadEncoder attack (trigger, target) stored with the backdoored encoder."""
    tensors, meta = load_checkpoint(enc_file("badencoder", prof, pretrain=pretrain, downstream=down))
    attack = BadEncoder(**meta["attack"]["params"])
    load_state_into(attack, split(tensors, "attack"), what="attack")
    return attack.to(device), meta


def downstream(args: argparse.Namespace) -> None:
    """Train the MLP head (and, in `whole` mode, the encoder) on the downstream task; CA/ASR per epoch."""
    prof, device = profile_from(args), resolve_device(args.device)
    attack, bd_meta = downstream_attack(prof, args.pretrain, args.downstream, device)
    name = "simclr" if args.mode == "clean" else "badencoder"
    ckpt = enc_file(name, prof, pretrain=args.pretrain, downstream=args.downstream)  # simclr takes no downstream
    encoder_model, _, _ = load_encoder(ckpt, device)
    cfg = prof.encoder_config("downstream")
    setup(f"downstream {args.pretrain} -> {args.downstream}, mode {args.mode} ({prof.name})",
          {"downstream": cfg, "encoder": ckpt, "target": attack.target, "device": device})
    data = without_reference(load_data(args.downstream, prof), bd_meta["reference"])  # the attacker's image stays out
    torch.manual_seed(prof.seed)
    model = DownstreamClassifier(encoder_model.f, data.num_classes, freeze_encoder=args.mode != "whole").to(device)
    params = list(model.head.parameters()) if model.frozen else None
    history = fit(model, data.x_train, data.y_train, cfg, evaluate=evaluator_for(data, attack, device, bf16=cfg.bf16),
                  params=params, desc=f"downstream {args.mode}")
    seconds = sum(r["seconds"] for r in history)
    info = {**prof.stamp(device), "pretrain": args.pretrain, "downstream": args.downstream, "mode": args.mode,
            "encoder": name, "target": attack.target, "reference": bd_meta["reference"], "train": cfg,
            "first_epoch_seconds": history[1]["seconds"] if len(history) > 1 else None,
            "first_epoch_device_hours": history[1]["seconds"] / 3600 if len(history) > 1 else None,
            "train_seconds": seconds, "final": history[-1], "device": str(device)}
    write_result(enc_file("downstream", prof, pretrain=args.pretrain, downstream=args.downstream, mode=args.mode),
                 {**info, "history": history})
    h1 = history[min(1, len(history) - 1)]
    print(f"{args.mode}: epoch 1 CA {h1['ca']:.3f} ASR {h1['asr']:.3f} ({h1['seconds']:.1f} s); "
          f"final CA {history[-1]['ca']:.3f} ASR {history[-1]['asr']:.3f} ({seconds:.0f} s training)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["pretrain", "badencoder", "downstream"])
    add_profile_args(ap)
    ap.add_argument("--pretrain", help="pre-training set: cifar10, stl10, digits")
    ap.add_argument("--downstream", help="downstream task: cifar10, stl10, svhn, digits")
    ap.add_argument("--mode", choices=MODES, help="for `downstream`")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    args = ap.parse_args(argv)
    if not args.pretrain or (args.step != "pretrain" and not args.downstream):
        ap.error(f"{args.step} needs --pretrain" + ("" if args.step == "pretrain" else " and --downstream"))
    if args.step == "downstream" and not args.mode:
        ap.error("downstream needs --mode (classifier, whole or clean)")
    run_main({"pretrain": pretrain, "badencoder": badencoder, "downstream": downstream}[args.step], args)


if __name__ == "__main__":
    main()
