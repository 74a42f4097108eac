"""Fine-Pruning (FP; Liu et al. 2018): prune dormant last-layer channels, then fine-tune.

Channels of the layer4 output are ranked by mean activation on clean data (ascending) and
pruned one step at a time while clean accuracy stays within `acc_ratio` (relative) of the
start (BackdoorBench v1: one channel a step, accuracy on the clean test set via
`ctx.evaluate`). Pruning is a mask on layer4's output during fine-tuning; at the end it is
made permanent by zeroing the matching input columns of the linear layer, which is
exactly equivalent because avgpool and linear are the only consumers of that output.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from backdoor.metrics import accuracy

from .base import DefenseContext, DefenseResult
from .common import Budget, clean_subset, device_of, finish, layer_output, start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FPConfig:
    """FP settings; defaults are BackdoorBench v1's."""

    clean_ratio: float = 0.05  # share of the defender's clean set used for ranking and fine-tuning
    acc_ratio: float = 0.1  # stop at the first relative clean-accuracy drop of this size
    prune_step: int = 1  # channels pruned per step
    finetune: Budget = field(default_factory=Budget)
    seed: int = 0


def channel_means(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """Mean activation of each layer4 output channel over images x."""
    feats = layer_output(model, x, "layer4", bf16=bf16)
    channels = model.linear.in_features
    return feats.view(len(x), channels, -1).mean(dim=(0, 2))


def prune_order(means: torch.Tensor) -> torch.Tensor:
    """Channels in pruning order: the least active (dormant on clean data) first."""
    return means.argsort()


def prune_until(model: torch.nn.Module, order: torch.Tensor, mask: torch.Tensor, acc, cfg: FPConfig) -> int:
    """Zero `mask` along `order` step by step; keep the last count whose accuracy passes; return it."""
    acc0, kept = acc(model), 0
    for k in range(cfg.prune_step, len(order), cfg.prune_step):
        mask[order[:k]] = 0.0
        if abs(acc(model) - acc0) / max(acc0, 1e-12) >= cfg.acc_ratio:
            break
        kept = k
    mask.fill_(1.0)
    mask[order[:kept]] = 0.0
    return kept


def fine_pruning(ctx: DefenseContext) -> DefenseResult:
    """FP: prune low-activation layer4 channels under the accuracy rule, fine-tune, bake the pruning in."""
    cfg: FPConfig = ctx.params.get("fp", FPConfig())
    model = ctx.model
    clock, stages, evaluate = start(ctx)
    xc, yc = clean_subset(ctx, cfg.clean_ratio, cfg.seed)
    order = prune_order(channel_means(model, xc, ctx.train.bf16))
    mask = torch.ones(len(order), device=device_of(model))
    hook = model.layer4.register_forward_hook(lambda m, i, out: out * mask.view(1, -1, 1, 1).to(out.dtype))
    # The rule reads clean test accuracy, as BackdoorBench does; this time counts as defence time.
    acc = (lambda m: ctx.evaluate(m)["ca"]) if ctx.evaluate else (lambda m: accuracy(m, xc, yc, bf16=ctx.train.bf16))
    try:
        pruned = prune_until(model, order, mask, acc, cfg)
        log.info("fp: pruned %d of %d channels", pruned, len(order))
        if evaluate:
            stages.add(evaluate(model), "prune")
        stages.run("finetune", model, xc, yc, cfg.finetune.config(ctx.train), evaluate=evaluate)
    finally:
        hook.remove()
    with torch.no_grad():
        model.linear.weight[:, order[:pruned]] = 0.0
    return finish(model, stages, clock, {"pruned_channels": pruned, "total_channels": len(order),
                                         "pruned_index": order[:pruned].tolist()})
