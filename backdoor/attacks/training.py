"""One entry point that trains a backdoored model for any attack.

Static attacks (BadNets, Blended, LF) bake their trigger into round(ratio * N) training
images and train with `fit`; LF first builds (or loads) its trigger with `prepare`.
Attacks with `trains_own_loop` (WaNet, InputAware) poison per batch in their own
`train_backdoor`, which still runs on `fit`'s data path.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn as nn

from backdoor.data import ImageData
from backdoor.metrics import make_evaluator
from backdoor.poison import check_ratio, check_target, poison_train_set, poisoned_test_set

from .base import Attack

Evaluator = Callable[[nn.Module], dict]


def live_evaluator(data: ImageData, attack: Attack, device: torch.device, bf16: bool) -> Evaluator:
    """CA/ASR/RA evaluator that builds the triggered test set when first called, after the trigger
    exists, and rebuilds it on every call for attacks whose trigger is still being learned."""
    x_test = data.x_test.to(device)
    cache: dict[str, Evaluator] = {}

    def evaluate(model: nn.Module) -> dict:
        if "ev" not in cache or getattr(attack, "learns_trigger", False):
            x_bd, y_bd = poisoned_test_set(data.x_test, data.y_test, attack)
            cache["ev"] = make_evaluator(x_test, data.y_test, x_bd.to(device), y_bd, attack.target, bf16=bf16)
        return cache["ev"](model)

    return evaluate


@torch.no_grad()
def _bake_with(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
               batch_size: int = 1024) -> torch.Tensor:
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device).float() / 255.0
        out[i : i + batch_size] = (fn(xb) * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
    return out


def materialise(x: torch.Tensor, y: torch.Tensor, attack: Attack, bd_ratio: float, cross_ratio: float,
                seed: int, cross: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict:
    """The poisoned training set an on-the-fly attack stands for (BackdoorBench saves one too).

    round(bd_ratio * N) images (the same indices `poison_indices` draws) are triggered and
    relabelled; the next round(cross_ratio * N) of the same permutation go through `cross`
    and keep their labels. Returns poison_idx, cross_idx, x_train, y_train, num_poisoned.
    """
    n = len(x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    kb = round(bd_ratio * n)
    kc = min(round(cross_ratio * n), n - kb) if cross is not None else 0
    bd, cr = perm[:kb].sort().values, perm[kb : kb + kc].sort().values
    device = next(iter(list(attack.buffers()) + list(attack.parameters())), torch.empty(0)).device
    xp, yp = x.clone(), y.clone()
    if kb:
        xp[bd] = _bake_with(attack.apply, x[bd], device)
        yp[bd] = attack.target
    if kc:
        xp[cr] = _bake_with(cross, x[cr], device)
    return {"poison_idx": bd, "cross_idx": cr, "x_train": xp, "y_train": yp, "num_poisoned": kb}


def train_backdoored(attack: Attack, model: nn.Module, data: ImageData, cfg, ratio: float, seed: int,
                     evaluate: Union[bool, Evaluator] = True) -> tuple[list[dict], dict]:
    """Train `model` (on its device) with `attack` at poison `ratio`; returns (history, info).

    `evaluate=True` records CA/ASR/RA each epoch with `live_evaluator` (do not pass an
    evaluator built before training: LF and InputAware have no trigger yet). `info` holds
    poison_idx (LongTensor), num_poisoned, and x_train/y_train: the poisoned training set.
    """
    check_ratio(ratio)
    check_target(attack.target, data.num_classes, data.name)
    device = next(model.parameters()).device
    attack.to(device)
    if evaluate is True:
        evaluate = live_evaluator(data, attack, device, cfg.bf16)
    ev = evaluate or None
    if attack.trains_own_loop:
        return attack.train_backdoor(model, data.x_train, data.y_train, cfg, ratio, seed, ev)
    if hasattr(attack, "prepare"):
        attack.prepare(data, cfg, getattr(model, "width", 64), seed)
    from backdoor.train import fit

    xp, yp, idx = poison_train_set(data.x_train, data.y_train, attack, ratio, seed)
    history = fit(model, xp, yp, cfg, evaluate=ev, desc=f"train {attack.name}")
    return history, {"poison_idx": idx, "num_poisoned": len(idx), "x_train": xp, "y_train": yp}
