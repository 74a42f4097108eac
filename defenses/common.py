"""Pieces the baseline defences share: budgets, clean subsets, fresh models, features, staged timing, scoring."""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn as nn

from backdoor.metrics import batched
from backdoor.train import Clock, TrainConfig, augment, device_of, fit

from .base import DefenseContext, DefenseResult


@dataclass(frozen=True)
class Budget:
    """One SGD training stage; defaults are BackdoorBench's defence recipe (lr 0.01, cosine T_max 100, batch 256)."""

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 256
    cosine_t_max: int = 100  # epochs; BackdoorBench hard-codes 100 whatever the epoch count
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # BackdoorBench's defences all use SGD (momentum 0.9)

    def config(self, base: TrainConfig, **overrides) -> TrainConfig:
        """`base` (augmentation, precision, seed) with this stage's optimisation settings."""
        settings = dict(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, schedule="cosine",
                        cosine_t_max=self.cosine_t_max, weight_decay=self.weight_decay, momentum=0.9,
                        optimizer=self.optimizer)
        return replace(base, **{**settings, **overrides})


def step_lr(drop_epoch: int, factor: float):
    """Scheduler factory: LR times 1 before `drop_epoch`, times `factor` from then on."""

    def factory(opt: torch.optim.Optimizer, spe: int) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 if step // spe < drop_epoch else factor)

    return factory


def clean_subset(ctx: DefenseContext, ratio: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `ratio` share of the defender's clean set (BackdoorBench: 5% of the clean train set)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"clean ratio must be in (0, 1], got {ratio}")
    n = len(ctx.x_clean)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: max(1, int(n * ratio))]
    return ctx.x_clean[idx], ctx.y_clean[idx]


def require_train_set(ctx: DefenseContext, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (poisoned) training set, which data-level defences need; a clear error when absent."""
    if ctx.x_train is None or ctx.y_train is None:
        raise ValueError(f"{name} needs the training set the model was trained on (DefenseContext.x_train/y_train)")
    return ctx.x_train, ctx.y_train


def fresh_model(model: nn.Module, seed: int) -> nn.Module:
    """A re-initialised copy of `model` (same architecture, normalisation and device), for retraining."""
    new = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in new.modules():
        if m is not new and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return new


@torch.no_grad()
def augmented(x: torch.Tensor, crop_pad: int, flip: bool, seed: int) -> torch.Tensor:
    """uint8 images x after one seeded draw of the training augmentation (crop/flip only move pixels)."""
    out = augment(x.float(), crop_pad, flip, torch.Generator(device=x.device).manual_seed(seed))
    return out.round().to(torch.uint8)


def layer_output(model: nn.Module, x: torch.Tensor, layer: str, batch_size: int = 512, *,
                 bf16: bool) -> torch.Tensor:
    """Flattened float output of the named module for uint8 images x, on CPU (eval mode, run's precision)."""
    module, outs = dict(model.named_modules())[layer], []
    handle = module.register_forward_hook(lambda m, i, o: outs.append(o.flatten(1).float()))
    try:
        return batched(model, x, lambda xb, _: (model(xb), outs.pop())[1], batch_size, bf16=bf16)
    finally:
        handle.remove()


def detection_scores(flagged: torch.Tensor, poison_idx: Optional[torch.Tensor]) -> dict:
    """Precision/recall of flagged training indices against the true poison indices (scoring only)."""
    out = {"num_flagged": int(len(flagged))}
    if poison_idx is None:
        return out
    hits = len(set(flagged.tolist()) & set(poison_idx.tolist()))
    out["detection_precision"] = hits / len(flagged) if len(flagged) else 0.0
    out["detection_recall"] = hits / len(poison_idx) if len(poison_idx) else float("nan")
    return out


class Stages:
    """Concatenates per-stage `fit` histories into one, numbered on, tagged with the stage name.

    Every stage is timed by the defence's one `clock`, so `device_seconds` is cumulative over stages.
    """

    def __init__(self, first: dict, clock: Clock):
        self.history, self.clock = [{**first, "stage": "before"}], clock

    def run(self, stage: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
            **kw) -> list[dict]:
        """`fit` one stage and append its epochs (its epoch 0 is the previous stage's end)."""
        hist = fit(model, x, y, cfg, desc=stage, clock=self.clock, allow_zero_epochs=True, **kw)
        base = self.history[-1]["epoch"]
        # A 0-epoch stage still changes the result when its model is a fresh one: keep its row.
        self.history += [{**r, "epoch": base + r["epoch"], "stage": stage} for r in hist[1:] or hist]
        return hist

    def add(self, record: dict, stage: str) -> None:
        """Append one non-training record (e.g. the model after pruning)."""
        self.history.append({"loss": float("nan"), "seconds": 0.0, "lr": 0.0, **record,
                             "epoch": self.history[-1]["epoch"], "stage": stage,
                             "device_seconds": self.clock.seconds()})


def start(ctx: DefenseContext) -> tuple[Clock, Stages, Optional[Callable[[nn.Module], dict]]]:
    """Start the clock, record the suspect model as epoch 0, and return the monitoring evaluator."""
    clock = Clock(device_of(ctx.model))
    evaluate = clock.monitor(ctx.evaluate)
    first = {"epoch": 0, "lr": 0.0, "loss": float("nan"), "seconds": 0.0,
             **(evaluate(ctx.model) if evaluate else {})}
    return clock, Stages({**first, "device_seconds": clock.seconds()}, clock), evaluate


def finish(model: nn.Module, stages: Stages, clock: Clock, info: dict) -> DefenseResult:
    """DefenseResult with CA/ASR after the defence and its device hours in `info`."""
    last = stages.history[-1]
    info = {**info, "device_hours": clock.hours()}
    info.update({k: last[k] for k in ("ca", "asr", "ra") if k in last})
    return DefenseResult(model, stages.history, info)
