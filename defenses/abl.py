"""Anti-Backdoor Learning (ABL; Li et al. 2021) as BackdoorBench v1 runs it.

1. Train a fresh model on the poisoned set without augmentation, with the flooding loss
   |CE - b| + b (`tuning`). 2. Isolate the `isolation_ratio` share of training samples with
   the lowest loss. 3. Train on the rest with plain CE and augmentation, LR x0.1 from
   `finetune_drop_epoch`. 4. Unlearn: gradient ascent (loss -CE) on the isolated samples.
The defended model is that fresh model; the suspect model is only used for the "before" row.
BackdoorBench's SGD here is Nesterov with weight decay 1e-4; the engine's SGD is not Nesterov.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import DefenseContext, DefenseResult
from .common import Budget, detection_scores, device_of, finish, fresh_model, require_train_set, start, step_lr


@dataclass(frozen=True)
class ABLConfig:
    """ABL settings; defaults are BackdoorBench v1's (its yaml's unused LRs left out)."""

    tuning: Budget = field(default_factory=lambda: Budget(epochs=20, weight_decay=1e-4))
    flooding: float = 0.5
    isolation_ratio: float = 0.01
    finetune: Budget = field(default_factory=lambda: Budget(epochs=60, weight_decay=1e-4))
    finetune_drop_epoch: int = 40  # LR 0.01 -> 0.001 from this epoch
    unlearn: Budget = field(default_factory=lambda: Budget(epochs=20, lr=1e-4, batch_size=64, weight_decay=1e-4))
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.isolation_ratio < 1.0:
            raise ValueError(f"ABL isolation_ratio must be in (0, 1), got {self.isolation_ratio}")


@torch.no_grad()
def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Cross-entropy of every (uint8) training sample, eval mode, no augmentation."""
    device, was_training, out = device_of(model), model.training, []
    model.eval()
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device).float().div_(255.0)
        out.append(F.cross_entropy(model(xb).float(), y[i : i + batch_size].to(device), reduction="none").cpu())
    model.train(was_training)
    return torch.cat(out)


def isolate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted indices of the round(ratio * N) lowest-loss samples."""
    k = max(1, round(ratio * len(x)))
    return per_sample_loss(model, x, y).topk(k, largest=False).indices.sort().values


def abl(ctx: DefenseContext) -> DefenseResult:
    """ABL: flooding pre-training, loss-based isolation, training on the rest, unlearning the isolated."""
    cfg: ABLConfig = ctx.params.get("abl", ABLConfig())
    x, y = require_train_set(ctx, "abl")
    clock, stages, evaluate = start(ctx)
    model = fresh_model(ctx.model, cfg.seed)
    b = cfg.flooding
    stages.run("tuning", model, x, y, cfg.tuning.config(ctx.train, schedule="constant", crop_pad=0, flip=False),
               evaluate=evaluate, loss_fn=lambda net, xb, yb: (F.cross_entropy(net(xb), yb) - b).abs() + b)
    isolated = isolate(model, x, y, cfg.isolation_ratio)
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[isolated] = False
    stages.run("finetune", model, x[rest], y[rest], cfg.finetune.config(ctx.train, schedule="constant"),
               evaluate=evaluate, scheduler=step_lr(cfg.finetune_drop_epoch, 0.1))
    stages.run("unlearn", model, x[isolated], y[isolated],
               cfg.unlearn.config(ctx.train, schedule="constant", drop_last=False),
               evaluate=evaluate, loss_fn=lambda net, xb, yb: -F.cross_entropy(net(xb), yb))
    return finish(model, stages, clock, detection_scores(isolated, ctx.poison_idx))
