"""One entry point that trains a backdoored model for any attack: `train_backdoored`, the one caller of `fit`.

Baked attacks (BadNets, Blended, LF) trigger round(ratio * N) training images; LF first builds its
trigger (`prepare_trigger`). Per-batch attacks (WaNet, InputAware) poison inside `fit`'s batch hook,
set up by their `per_batch_training`. The hooks are declared on `Attack` (base.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from backdoor.data import ImageData
from backdoor.metrics import make_evaluator
from backdoor.models import DEFAULT_ARCH
from backdoor.poison import check_ratio, check_target, poison_train_set, poisoned_test_set
from backdoor.train import device_of, fit

from .base import Attack

Evaluator = Callable[[nn.Module], dict]


def live_evaluator(data: ImageData, attack: Attack, device: torch.device, bf16: bool) -> Evaluator:
    """CA/ASR/RA evaluator that builds the triggered test set when first called, after the trigger
    exists, and rebuilds it on every call for attacks whose trigger is still being learned."""
    x_test = data.x_test.to(device)
    cache: dict[str, Evaluator] = {}

    def evaluate(model: nn.Module) -> dict:
        if "ev" not in cache or attack.learns_trigger:
            x_bd, y_bd = poisoned_test_set(data.x_test, data.y_test, attack)
            cache["ev"] = make_evaluator(x_test, data.y_test, x_bd.to(device), y_bd, attack.target, bf16=bf16)
        return cache["ev"](model)

    return evaluate


def train_backdoored(attack: Attack, model: nn.Module, data: ImageData, cfg, ratio: float, seed: int,
                     evaluate: Union[bool, Evaluator] = True, *, arch: str = DEFAULT_ARCH, build_trigger: bool = True,
                     trigger_cache: Optional[Path] = None, desc: str = "") -> tuple[list[dict], dict]:
    """Train `model` (on its device) with `attack` at poison `ratio`; returns (history, info).

    `evaluate=True` records CA/ASR/RA each epoch with `live_evaluator` (do not pass an
    evaluator built before training: LF and InputAware have no trigger yet). `info` holds
    poison_idx (LongTensor), num_poisoned, and x_train/y_train: the poisoned training set.
    `arch` is the model's architecture name (LF trains one of its own for its trigger);
    `build_trigger=False` keeps the attack's loaded trigger (re-injection); `trigger_cache` is the directory
    where a built trigger (LF's) is cached, none by default.
    """
    check_ratio(ratio)
    check_target(attack.target, data.num_classes, data.name)
    if attack.poisoning == "encoder":
        raise ValueError(f"attack {attack.name!r} backdoors an encoder, not a classifier; "
                         "use backdoor.attacks.badencoder.train_badencoder")
    device = device_of(model)
    attack.to(device)
    if evaluate is True:
        evaluate = live_evaluator(data, attack, device, cfg.bf16)
    ev = evaluate or None
    desc = desc or f"train {attack.name}"
    if attack.poisoning == "per_batch":
        run = attack.per_batch_training(model, data.x_train, data.y_train, cfg, ratio, seed, ev)
        history = fit(model, data.x_train, data.y_train, run.cfg, evaluate=run.evaluate, batch_hook=run.batch_hook,
                      desc=desc)
        return history, run.finish()
    if build_trigger:
        attack.prepare_trigger(data, cfg, getattr(model, "width", 64), seed, arch, trigger_cache)
    xp, yp, idx = poison_train_set(data.x_train, data.y_train, attack, ratio, seed)
    history = fit(model, xp, yp, cfg, evaluate=ev, desc=desc)
    return history, {"poison_idx": idx, "num_poisoned": len(idx), "x_train": xp, "y_train": yp}
