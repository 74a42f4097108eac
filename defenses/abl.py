"""Anti-Backdoor Learning (ABL; Li et al. 2021): isolate the fastest-learnt samples, then unlearn them.

What it does, on a *fresh* model (the suspect model only gives the "before" row):
1. Tuning: train on the whole poisoned set without augmentation for `tuning.epochs`, with a
   loss that stops descending below a level, so that the (fast-learnt) backdoor samples end
   with the lowest loss: flooding |CE - b| + b (variant "backdoorbench", BackdoorBench's
   default) or the ABL paper's local gradient ascent sign(CE - gamma) * CE (variant "method").
2. Isolation: the int(isolation_ratio * N) samples with the lowest loss.
3. Fine-tuning: plain CE with augmentation on the rest, LR x0.1 from `finetune_drop_epoch`.
4. Unlearning: gradient *ascent* (loss -CE) on the isolated samples at batch 256, LR 1e-4,
   for `unlearn.epochs` epochs of which BackdoorBench spends the first evaluating (so 19 of
   20 ascend); variant "method" ascends in every epoch.
Defaults are BackdoorBench v1's config (SGD momentum 0.9, weight decay 1e-4, batch 256);
the engine's SGD is not Nesterov and each stage starts a fresh optimiser (docs/defenses.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from backdoor.metrics import batched
from backdoor.train import TrainConfig

from .base import DefenseContext, DefenseResult
from .common import (Budget, Stages, detection_scores, device_of, finish, fresh_model, require_train_set, start,
                     step_lr)

VARIANTS = ("backdoorbench", "method")


@dataclass(frozen=True)
class ABLConfig:
    """ABL settings; defaults are BackdoorBench v1's (its yaml's unused LRs left out)."""

    variant: str = "backdoorbench"  # "backdoorbench" (flooding, first unlearning epoch evaluates) or "method"
    tuning: Budget = field(default_factory=lambda: Budget(epochs=20, weight_decay=1e-4))
    flooding: float = 0.5  # backdoorbench tuning loss level b
    gamma: float = 0.5  # method (LGA) tuning loss level
    isolation_ratio: float = 0.01
    finetune: Budget = field(default_factory=lambda: Budget(epochs=60, weight_decay=1e-4))
    finetune_drop_epoch: int = 40  # LR 0.01 -> 0.001 from this epoch
    unlearn: Budget = field(default_factory=lambda: Budget(epochs=20, lr=1e-4, batch_size=256, weight_decay=1e-4))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown ABL variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if not 0.0 < self.isolation_ratio < 1.0:
            raise ValueError(f"ABL isolation_ratio must be in (0, 1), got {self.isolation_ratio}")


def tuning_loss(cfg: ABLConfig):
    """(net, x, y) -> loss of the tuning stage: flooding (backdoorbench) or LGA (method)."""
    if cfg.variant == "backdoorbench":
        return lambda net, xb, yb: (F.cross_entropy(net(xb), yb) - cfg.flooding).abs() + cfg.flooding

    def lga(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(net(xb), yb)
        return torch.sign(ce - cfg.gamma) * ce

    return lga


def ascent_loss(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Unlearning loss: minus cross-entropy, so that each SGD step raises the loss of the isolated samples."""
    return -F.cross_entropy(net(xb), yb)


def ascent_epochs(cfg: ABLConfig) -> int:
    """Epochs that really ascend: BackdoorBench's first unlearning epoch only evaluates."""
    return max(0, cfg.unlearn.epochs - 1) if cfg.variant == "backdoorbench" else cfg.unlearn.epochs


def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, *,
                    bf16: bool) -> torch.Tensor:
    """Cross-entropy of every (uint8) training sample, eval mode, no augmentation, in the run's precision."""
    device = device_of(model)
    return batched(model, x, lambda xb, sl: F.cross_entropy(model(xb).float(), y[sl].to(device), reduction="none"),
                   batch_size, bf16=bf16)


def lowest_loss(losses: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted indices of the int(ratio * N) (at least 1) smallest losses, as BackdoorBench's isolate_data."""
    k = max(1, int(ratio * len(losses)))
    return losses.topk(k, largest=False).indices.sort().values


def isolate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float, *, bf16: bool) -> torch.Tensor:
    """Sorted indices of the training samples with the lowest loss under `model`."""
    return lowest_loss(per_sample_loss(model, x, y, bf16=bf16), ratio)


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ABLConfig, train: TrainConfig,
            stages: Stages, evaluate=None) -> list[dict]:
    """Stage 4: gradient ascent on the isolated samples, every batch (the last, smaller one too)."""
    stage_cfg = cfg.unlearn.config(train, schedule="constant", drop_last=False, epochs=ascent_epochs(cfg))
    return stages.run("unlearn", model, x, y, stage_cfg, evaluate=evaluate, loss_fn=ascent_loss)


def abl(ctx: DefenseContext) -> DefenseResult:
    """ABL: loss-floored tuning, loss-based isolation, training on the rest, unlearning the isolated."""
    cfg: ABLConfig = ctx.params.get("abl", ABLConfig())
    x, y = require_train_set(ctx, "abl")
    clock, stages, evaluate = start(ctx)
    model = fresh_model(ctx.model, cfg.seed)
    stages.run("tuning", model, x, y, cfg.tuning.config(ctx.train, schedule="constant", crop_pad=0, flip=False),
               evaluate=evaluate, loss_fn=tuning_loss(cfg))
    isolated = isolate(model, x, y, cfg.isolation_ratio, bf16=ctx.train.bf16)
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[isolated] = False
    stages.run("finetune", model, x[rest], y[rest], cfg.finetune.config(ctx.train, schedule="constant"),
               evaluate=evaluate, scheduler=step_lr(cfg.finetune_drop_epoch, 0.1))
    unlearn(model, x[isolated], y[isolated], cfg, ctx.train, stages, evaluate)
    return finish(model, stages, clock, {"variant": cfg.variant, **detection_scores(isolated, ctx.poison_idx)})
