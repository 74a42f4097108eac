"""Defend a model trained elsewhere: load it from a file, run a registered defence on your clean data.

    python -m experiments.defend --model model.pt --data digits --defense sft --profile demo \\
        --trigger badnets --target 0
    python -m experiments.defend --model attack_result.pt --data cifar10 --fraction 0.1 --defense sft
    python -m experiments.defend --model model.pt --arch resnet18 --data my_train/ --test-data my_test/

Writes OUT/<defense>.safetensors (+ its JSON sidecar) and OUT/<defense>.report.json: CA before and
after, device time, and ASR before and after when a trigger is named. Model files are never
unpickled beyond torch.load(weights_only=True) (backdoor/external.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from backdoor.attacks import ATTACKS, Attack, make_attack
from backdoor.checkpoint import file_sha256, save_model
from backdoor.data import DATA_DIR, DATASETS, IMAGE_SIZE, ImageData, load_dataset
from backdoor.external import (BACKDOORBENCH_STATS, ModelFile, arch_of, build_model, detect_norm, folder_classes,
                               load_image_folder, read_model_file, triggered_classes)
from backdoor.metrics import accuracy, make_evaluator
from backdoor.models import DATASET_STATS, DEFAULT_ARCH, TIMM_PREFIX, model_names
from backdoor.train import TrainConfig, precision_used, steps_per_epoch
from defenses import PHASE1_MIN_STEPS, DefenseContext, SFTConfig, choose_lr_max1, get_defense
from defenses.common import clean_subset
from experiments import paths
from experiments.common import (check_writable, evaluator_for, jsonable, resolve_device, run_main, setup,
                                write_result)
from experiments.profiles import add_profile_args, attack_param_types, get_profile, resolve

# Attacks whose trigger is fully given by their parameters; the others (WaNet's random warp, LF's
# DeepFool perturbation, InputAware's generator) only exist in the state of the run that trained them.
PARAM_TRIGGERS = ("badnets", "blended")
DEFAULT_IMAGE_SIZE = 32  # CIFAR-style
# The report warns when the defence costs more CA than this, or leaves ASR above ASR_BAR (issue 25's bar).
CA_DROP_WARN, ASR_BAR = 0.03, 0.05


def parse_params(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE strings to a dict; values read as JSON when they parse (numbers, true), else strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--trigger-param {item!r}: write KEY=VALUE, e.g. size=3")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def resolve_arch(args: argparse.Namespace, mf: ModelFile) -> tuple[str, str]:
    """(architecture, where it came from): --arch, else the file's, else PreAct-ResNet18."""
    arch, source = (args.arch, "--arch") if args.arch else (mf.hints.get("arch"), "file")
    if not arch:
        arch, source = DEFAULT_ARCH, "default"
    names = model_names()
    if arch not in names and not arch.startswith(TIMM_PREFIX):
        raise ValueError(f"unknown architecture {arch!r} ({source}); choose one of: {', '.join(names)}")
    return arch, source


def resolve_norm(args: argparse.Namespace, mf: ModelFile) -> tuple[tuple, str]:
    """((mean, std), source): --mean/--std, --norm, the file's hints, the named dataset's stats, or none."""
    if (args.mean is None) != (args.std is None):
        raise ValueError("give --mean and --std together (three numbers each)")
    if args.mean is not None:
        return (tuple(args.mean), tuple(args.std)), "--mean/--std"
    if args.norm:
        if args.norm == "none":
            return ((0.0,) * 3, (1.0,) * 3), "--norm none"
        if args.norm not in BACKDOORBENCH_STATS:
            raise ValueError(f"unknown --norm {args.norm!r}; "
                             f"choose one of: none, {', '.join(sorted(BACKDOORBENCH_STATS))}")
        return BACKDOORBENCH_STATS[args.norm], f"--norm {args.norm}"
    if "norm" in mf.hints:
        return mf.hints["norm"], "file"
    if args.data in DATASET_STATS:
        return DATASET_STATS[args.data], f"{args.data} statistics"
    return ((0.0,) * 3, (1.0,) * 3), "none"


def make_trigger(args: argparse.Namespace, image_size: int) -> Optional[Attack]:
    """The named trigger (with --target, --key-image, --trigger-param), or None."""
    if args.trigger is None:
        return None
    if args.trigger not in PARAM_TRIGGERS:
        why = "its trigger is learnt by the attack run" if args.trigger in ATTACKS else "it is not an attack"
        raise ValueError(f"--trigger {args.trigger!r}: {why}; name one of {', '.join(PARAM_TRIGGERS)} "
                         "or pass a folder of triggered images with --trigger-folder")
    params = {"target": args.target, **parse_params(args.trigger_param)}
    valid = attack_param_types(args.trigger)
    unknown = sorted(set(params) - set(valid) - {"target"})
    if unknown:
        raise ValueError(f"--trigger-param {unknown[0]}: {args.trigger} has no such parameter; "
                         f"valid: {', '.join(valid)}")
    for key, value in params.items():  # numbers must be numbers (JSON bools are not)
        tp = valid.get(key)
        if tp in (int, float) and not (isinstance(value, (int, float) if tp is float else int)
                                       and not isinstance(value, bool)):
            raise ValueError(f"--trigger-param {key}={value}: {key} must be a{'n' * (tp is int)} {tp.__name__}")
    if args.key_image:
        params["key_image"] = args.key_image
    if args.trigger == "blended":
        params.setdefault("size", image_size)
    try:
        return make_attack(args.trigger, **params)
    except (TypeError, ValueError) as e:  # a value of the wrong type or range (e.g. size=abc)
        raise ValueError(f"--trigger-param {' '.join(args.trigger_param)}: {str(e).splitlines()[0]}") from None


def is_dataset(name: str) -> bool:
    return name in DATASETS


def check_data_arg(value: str, flag: str) -> None:
    """Fail before any work when `value` is neither a dataset name nor an existing folder."""
    if not is_dataset(value) and not Path(value).is_dir():
        raise FileNotFoundError(f"{flag} {value!r} is neither a dataset ({', '.join(sorted(DATASETS))}) "
                                "nor an existing ImageFolder-layout folder")


def load_clean_data(args: argparse.Namespace, num_classes: Optional[int], image_size: int
                    ) -> tuple[ImageData, Optional[dict[str, int]]]:
    """Train (clean) and test images as ImageData, and the folder's class names (None for a named dataset)."""
    cache = Path(args.data_dir) / "cache"
    if is_dataset(args.data):
        data, classes = load_dataset(args.data, args.data_dir), None
    else:
        folder = Path(args.data)
        n = num_classes or _count_classes(folder)
        classes = folder_classes(folder, n)
        x, y = load_image_folder(folder, image_size, classes, cache)
        data = ImageData(folder.name, x, y, x[:0], y[:0], n)
    nc = num_classes or data.num_classes
    if data.num_classes != nc:
        raise ValueError(f"the model has {nc} classes but {args.data} has {data.num_classes}; "
                         "pass the matching --num-classes or data")
    if args.test_data and not is_dataset(args.test_data):
        test = Path(args.test_data)
        test_classes = folder_classes(test, nc)
        if classes is not None and test_classes != classes:
            raise ValueError(f"test folder {test} has classes {sorted(test_classes)[:5]}..., "
                             f"the training folder {sorted(classes)[:5]}...; use the same class folders")
        x_te, y_te = load_image_folder(test, image_size, test_classes, cache)
        data = replace(data, x_test=x_te, y_test=y_te)
    elif args.test_data:
        other = load_dataset(args.test_data, args.data_dir)
        data = replace(data, x_test=other.x_test, y_test=other.y_test)
    elif classes is not None:
        data = hold_out(data, args.holdout, args.seed or 0)
    return data, classes


def hold_out(data: ImageData, share: float, seed: int) -> ImageData:
    """Move a random `share` of the training images to the test split (CA is then measured on unseen images)."""
    perm = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(seed))
    k = max(1, round(share * len(perm)))
    test, train = perm[:k], perm[k:]
    return replace(data, x_train=data.x_train[train], y_train=data.y_train[train],
                   x_test=data.x_train[test], y_test=data.y_train[test])


def _count_classes(folder: Path) -> int:
    dirs = [d.name for d in folder.iterdir() if d.is_dir()] if folder.is_dir() else []
    return (max(map(int, dirs)) + 1 if all(d.isdigit() for d in dirs) else len(dirs)) if dirs else 0


def make_evaluate(args: argparse.Namespace, data: ImageData, attack: Optional[Attack],
                  classes: Optional[dict[str, int]], image_size: int, device: torch.device, bf16: bool
                  ) -> Callable[[nn.Module], dict]:
    """CA on the test set, plus ASR (and RA when true labels are known) for the named trigger."""
    if attack is not None:
        return evaluator_for(data, attack, device, bf16=bf16)
    x_test = data.x_test.to(device)
    if args.trigger_folder is None:
        return lambda model: {"ca": accuracy(model, x_test, data.y_test, bf16=bf16)}
    folder = Path(args.trigger_folder)
    x_bd, y_bd = load_image_folder(folder, image_size, triggered_classes(folder, classes),
                                   Path(args.data_dir) / "cache")
    evaluate = make_evaluator(x_test, data.y_test, x_bd.to(device), y_bd, args.target, bf16=bf16)
    if (y_bd >= 0).all():
        return evaluate
    return lambda model: {k: v for k, v in evaluate(model).items() if k != "ra"}  # no true labels: no RA


def check_args(args: argparse.Namespace) -> Path:
    """Fail in one line on inconsistent flags, before any file is read; returns the output folder."""
    check_data_arg(args.data, "--data")
    if args.test_data:
        check_data_arg(args.test_data, "--test-data")
    elif not 0.0 < args.holdout < 1.0:
        raise ValueError(f"--holdout must be in (0, 1), got {args.holdout}")
    if not 0.0 < args.fraction <= 1.0:
        raise ValueError(f"--fraction must be in (0, 1], got {args.fraction}")
    if args.trigger_folder and args.trigger:
        raise ValueError("name a trigger with --trigger or give --trigger-folder, not both")
    check_numbers(args)
    out = Path(args.out) if args.out else paths.path("defend", stem=out_stem(args.model))
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    return out


def check_numbers(args: argparse.Namespace) -> None:
    """Sizes and counts must be >= 1 and rates finite and > 0 (0 is not "unset"); --target >= 0."""
    for flag in ("num_classes", "width", "epochs", "batch_size", "image_size", "input_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if args.target < 0:
        raise ValueError(f"--target (BD_TARGET) must be a class index >= 0, got {args.target}")


def out_stem(model: str) -> str:
    """<parent folder>-<file stem>-<hash of the resolved path>: every BackdoorBench result is attack_result.pt."""
    path = Path(model).resolve()
    return f"{path.parent.name}-{path.stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def resolve_model_file(args: argparse.Namespace) -> tuple[ModelFile, str, tuple, dict[str, str]]:
    """The model file (normalisation buffers dropped when flags override them), arch, norm, their sources."""
    mf = read_model_file(args.model, args.arch)
    arch, arch_source = resolve_arch(args, mf)
    norm, norm_source = resolve_norm(args, mf)
    if norm_source.startswith("--"):  # the user's flags beat the file's own normalisation buffers
        mf = replace(mf, state={k: v for k, v in mf.state.items() if k not in ("mean", "std")})
    elif "mean" in mf.state and "std" in mf.state:
        norm = tuple(mf.state["mean"].flatten().tolist()), tuple(mf.state["std"].flatten().tolist())
        norm_source = "file"
    return mf, arch, norm, {"arch": arch_source, "norm": norm_source}


def defend(args: argparse.Namespace) -> None:
    """Load the model file, defend it on the clean data, write the defended model and the report."""
    defense, prof, device = get_defense(args.defense), resolve(args.profile, args.set), resolve_device(args.device)
    out = check_args(args)
    mf, arch, norm, sources = resolve_model_file(args)
    image_size = IMAGE_SIZE if is_dataset(args.data) else (
        args.image_size or mf.hints.get("image_size") or DEFAULT_IMAGE_SIZE)
    attack = make_trigger(args, image_size)
    data, classes = load_clean_data(args, args.num_classes or mf.hints.get("num_classes"), image_size)
    if args.target >= data.num_classes:
        raise ValueError(f"--target (BD_TARGET) {args.target} is not a class of this {data.num_classes}-class "
                         f"model; give 0..{data.num_classes - 1}")
    # Outputs probed before the fine-tune: a read-only or full OUT fails now, not after it (weights + sidecar).
    existing = next(d for d in (out, *out.parents) if d.exists())  # probed there: a refusal creates no folder
    check_writable([existing], 2 * sum(t.numel() * t.element_size() for t in mf.state.values()) + 2**20, "OUT/--out")
    model = build_model(mf, arch, data.num_classes, norm, args.input_size or mf.hints.get("input_size"),
                        args.width).to(device)
    cfg = prof.finetune_config(data.name if is_dataset(args.data) else "folder")
    cfg = replace(cfg, **{k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                            ("lr", args.lr), ("seed", args.seed)) if v is not None})
    if sources["norm"] == "none":  # no flag, no hint, no buffers: find the one the model was trained with
        name, norm, scores = detect_norm(model, data.x_train, data.y_train, bf16=cfg.bf16)
        sources["norm"] = f"detected: {name} ({', '.join(f'{k} {v:.2f}' for k, v in scores.items())} CA)"
        print(f"norm: none given; the model is most accurate under {name!r} normalisation; "
              f"pass --norm to choose ({', '.join(f'{k} {v:.2f}' for k, v in scores.items())})")
    setup(f"defend {mf.path} ({mf.format}) with {args.defense} on {args.data}",
          {"arch": f"{arch} ({sources['arch']})", "norm": f"{norm} ({sources['norm']})",
           "num_classes": data.num_classes, "fraction": args.fraction, "finetune": cfg, "sft": prof.sft,
           "device": device, "out": out,
           "trigger": attack.params() | {"name": attack.name} if attack else args.trigger_folder})
    ctx = DefenseContext(model=model, x_clean=data.x_train, y_clean=data.y_train, train=cfg,
                         evaluate=make_evaluate(args, data, attack, classes, image_size, device, cfg.bf16),
                         num_classes=data.num_classes, target_label=args.target, params=prof.defense_params())
    x, y = clean_subset(ctx, args.fraction, cfg.seed) if args.fraction < 1.0 else (data.x_train, data.y_train)
    # Data-level defences (AC, Spectral, ABL) treat the user's data as the set the model was trained on.
    ctx = replace(ctx, x_clean=x, y_clean=y, x_train=x, y_train=y)
    sft_info = {}
    if args.defense == "sft":
        sft, train, sft_info = sft_schedule(args, prof.sft, ctx)
        ctx = replace(ctx, train=train, params={**ctx.params, "sft": sft})
    result = defense(ctx)
    report = summarise(args, mf, arch, norm, ctx.train, result, len(x), device, out)
    report["sft"] = sft_info or None
    report["warnings"] = verdict(report)
    dataset = data.name if classes is None else None
    save_model(paths.path("defend_model", out, defense=args.defense), result.model,
               jsonable({**{k: v for k, v in report.items() if k != "history"},
                         "arch": arch_of(result.model, arch, data.num_classes, dataset)}))
    write_result(paths.path("defend_report", out, defense=args.defense), report)
    print_report(report)


def sft_schedule(args: argparse.Namespace, sft: SFTConfig,
                 ctx: DefenseContext) -> tuple[SFTConfig, TrainConfig, dict]:
    """The profile's SFT schedule made to fit the user's data: off the paper's datasets phase 1 of at least
    PHASE1_MIN_STEPS steps and the half-cycle in epochs, a warning when LR_MAX1 is out of reach, and LR_MAX1
    from the guard unless --set sft.lr_max1. Returns the schedule, the fine-tuning config and the report's record."""
    given = {s.partition("=")[0].strip() for s in args.set}
    spe = steps_per_epoch(len(ctx.x_clean), ctx.train.batch_size, ctx.train.drop_last, ctx.train.max_steps)
    sft, cfg = off_paper_schedule(args, given, sft, ctx.train, spe)
    problem = sft.peak_problem(spe, cfg.epochs)
    if problem:
        print(f"warning: {problem}")
    info: dict[str, Any] = {"half_cycle_steps": sft.step_size(spe), "steps_per_epoch": spe,
                            "phase1_epochs": sft.phase1_epochs, "epochs": cfg.epochs}
    stretched = cfg.epochs != ctx.train.epochs
    print(f"sft: half-cycle {info['half_cycle_steps']} steps at {spe} per epoch, phase 1 {sft.phase1_epochs} of "
          f"{cfg.epochs} epochs" + (f" (raised from {ctx.train.epochs}: phase 1 runs at least {PHASE1_MIN_STEPS} "
                                    "steps off the paper's datasets; --set finetune_epochs=N keeps yours)"
                                    if stretched else ""))
    if "sft.lr_max1" in given:
        print(f"sft: LR_MAX1 {sft.lr_max1:g} (--set)")
        return sft, cfg, {**info, "lr_max1": sft.lr_max1, "lr_max1_source": "--set"}
    guard = choose_lr_max1(replace(ctx, train=cfg), sft)
    tried = ", ".join(f"{lr:g}: {loss:.3f}" for lr, loss in guard.losses.items())
    print(f"sft: LR_MAX1 {guard.lr_max1:g} (guard: peak-epoch training loss {tried}; limit {guard.limit:.3f})"
          + ("" if guard.passed else "; no candidate kept the loss below the limit, SFT may cost accuracy"))
    info |= {"lr_max1": guard.lr_max1, "lr_max1_source": "guard" if guard.passed else "guard (none passed)",
             "guard_losses": {str(k): v for k, v in guard.losses.items()}, "guard_limit": guard.limit}
    return replace(sft, lr_max1=guard.lr_max1), cfg, info


def off_paper_schedule(args: argparse.Namespace, given: set[str], sft: SFTConfig, cfg: TrainConfig,
                       spe: int) -> tuple[SFTConfig, TrainConfig]:
    """Off the paper's datasets (unless the step half-cycle is --set): phase 1 of at least PHASE1_MIN_STEPS
    steps (unless the epochs are given) and the half-cycle in epochs."""
    if is_dataset(args.data) and args.data in get_profile("paper").datasets or "sft.half_cycle_steps" in given:
        return sft, cfg
    if not ({"sft.phase1_epochs", "finetune_epochs"} & given or args.epochs):
        sft, epochs = sft.stretched(spe, cfg.epochs)
        # The stretch adds steps, not evaluations: about as many as the profile's epochs.
        cfg = replace(cfg, epochs=epochs, eval_every=max(cfg.eval_every, epochs // cfg.epochs))
    return sft.in_epochs(), cfg


def verdict(r: dict[str, Any]) -> list[str]:
    """One line per bar the defence missed: CA lost beyond CA_DROP_WARN, ASR left above ASR_BAR."""
    out = []
    # SFT's lever for either miss is its peak: a larger one (the paper's Fig. 9) or a smaller one.
    lr = r["sft"]["lr_max1"] if r["defense"] == "sft" and r.get("sft") else None
    drop = r["before"]["ca"] - r["after"]["ca"]
    if drop > CA_DROP_WARN:
        out.append(f"{r['defense']} cost {drop:.3f} CA (more than {CA_DROP_WARN}) on {r['test_data']}"
                   + (f"; a smaller LR_MAX1 than {lr:g} (SET=\"sft.lr_max1={lr / 2:.2g}\") may keep more, "
                      "and remove less" if lr else ""))
    asr = r["after"].get("asr")
    if asr is not None and asr > ASR_BAR:
        out.append(f"{r['defense']} left ASR {asr:.3f} (above {ASR_BAR}): the backdoor is not removed"
                   + (f"; more clean data, or a larger LR_MAX1 than {lr:g} at some CA "
                      f"(SET=\"sft.lr_max1={3 * lr:.2g}\"; the paper's Fig. 9), may remove it" if lr else ""))
    return out


def summarise(args: argparse.Namespace, mf: ModelFile, arch: str, norm: tuple, cfg, result, n_clean: int,
              device: torch.device, out: Path) -> dict[str, Any]:
    """The report: inputs, CA/ASR before and after, device time, history."""
    before, after = result.history[0], result.history[-1]
    hours = result.info.get("device_hours", sum(r["seconds"] for r in result.history) / 3600)
    keep = ("ca", "asr", "ra")
    trigger = args.trigger or args.trigger_folder
    return {"model": str(mf.path), "model_sha256": file_sha256(mf.path), "format": mf.format, "arch": arch,
            "norm": norm, "data": args.data,
            "test_data": args.test_data or (args.data if is_dataset(args.data) else
                                            f"{args.holdout:g} of {args.data}, held out"),
            "clean_images": n_clean, "fraction": args.fraction,
            "defense": args.defense, "profile": args.profile, "overrides": args.set, "finetune": cfg,
            "precision": precision_used(device, cfg.bf16),
            "trigger": trigger, "target": args.target if trigger else None,
            "before": {k: before[k] for k in keep if k in before},
            "after": {k: after[k] for k in keep if k in after}, "device_seconds": hours * 3600,
            "device": str(device), "out": str(paths.path("defend_model", out, defense=args.defense)),
            "info": {k: v for k, v in result.info.items() if k not in keep and k != "device_hours"},
            "history": result.history}


def print_report(r: dict[str, Any]) -> None:
    """Three lines: before, after, time and files."""
    def line(d: dict) -> str:
        return "  ".join(f"{k.upper()} {v:.3f}" for k, v in d.items() if k in ("ca", "asr"))

    print(f"before:  {line(r['before'])}")
    print(f"after:   {line(r['after'])}   ({r['defense']}, {r['clean_images']} clean images)")
    print(f"device time {r['device_seconds']:.1f} s on {r['device']}; wrote {r['out']} and "
          f"{paths.path('defend_report', Path(r['out']).parent, defense=r['defense'])}")
    for w in r.get("warnings", []):
        print(f"warning: {w}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.defend", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model file: .safetensors, .pt/.pth/.bin state dict, "
                                                  "BackdoorBench attack_result.pt")
    ap.add_argument("--data", required=True, help="clean data: a dataset name or an ImageFolder-layout folder")
    ap.add_argument("--test-data", help="test set: a dataset name (its test split) or a folder "
                                        "(default: --data's test split)")
    ap.add_argument("--defense", default="sft", help="ft, sft, ... (defenses.DEFENSES)")
    add_profile_args(ap)  # budgets: the profile's FT/SFT epochs, batch, SFT schedule, baseline configs
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--lr", type=float, help="FT learning rate (SFT takes its LRs from the profile)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--fraction", type=float, default=1.0, help="share of the clean data used (paper Fig. 7)")
    ap.add_argument("--holdout", type=float, default=0.2,
                    help="share of a folder's images kept out to measure CA when no --test-data is given")
    ap.add_argument("--arch", help=f"{DEFAULT_ARCH} or a torchvision model name (default: the file's, "
                                   f"else {DEFAULT_ARCH})")
    ap.add_argument("--num-classes", type=int, help="default: the file's, else the data's")
    ap.add_argument("--width", type=int, help="PreAct-ResNet18 width (default: read off the file)")
    ap.add_argument("--norm", help="input normalisation by dataset name (cifar10, imagenet, ...) or none")
    ap.add_argument("--mean", type=float, nargs=3)
    ap.add_argument("--std", type=float, nargs=3)
    ap.add_argument("--image-size", type=int, help="side of folder images after conversion (default: file's, else 32)")
    ap.add_argument("--input-size", type=int, help="torchvision models: resize inputs to this side first")
    ap.add_argument("--trigger", help="measure ASR with this attack's trigger: badnets or blended")
    ap.add_argument("--trigger-param", action="append", default=[], metavar="KEY=VALUE",
                    help="trigger parameter, e.g. size=3 or alpha=0.2 (repeatable)")
    ap.add_argument("--key-image", help="Blended key image")
    ap.add_argument("--trigger-folder", help="folder of already-triggered images (flat, or class sub-folders)")
    ap.add_argument("--target", type=int, default=0, help="the backdoor's target label (default 0)")
    ap.add_argument("--out", help="output folder (default: artifacts/defend/<parent>-<model file stem>-<path hash>)")
    ap.add_argument("--data-dir", default=str(DATA_DIR), help="dataset cache folder (default: $DATA_DIR or data)")
    ap.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if available)")
    return ap


def main(argv: list[str] | None = None) -> None:
    run_main(defend, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
