"""Conventional fine-tuning (FT) and super-fine-tuning (SFT), paper Section 3.2.

FT: whole-model fine-tuning at a constant LR, `ctx.train.lr` (the caller's choice; the paper's is its
training LR, 0.001).
SFT: triangular cyclic LR stepped per batch between LR_BASE and LR_MAX1 for the first
`phase1_epochs` epochs, then between LR_BASE and LR_MAX2. The paper's "500 iterations"
is read as the half-cycle (`step_size_up`); small profiles give the half-cycle in epochs
instead (`half_cycle_epochs`) so that the cycle spans the same share of an epoch as
500 steps do on CIFAR10 at batch 256 (about 2.5 epochs).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import copy
import math

import torch
from torch.optim.lr_scheduler import CyclicLR

from backdoor.train import Clock, device_of, fit, steps_per_epoch

from .base import DefenseContext, DefenseResult


# The paper's half-cycle, 500 steps, was set on CIFAR10 (50,000 images) at batch 256: 2.56 epochs.
PAPER_HALF_CYCLE_EPOCHS = 500 * 256 / 50_000


# Phase 1's floor in optimizer steps off the paper's datasets (CIFAR10's phase 1 is 1,960 steps). On 504 digits
# images MobileNetV2 under Blended kept ASR 0.089 and 0.522 (2 seeds) after 35 phase-1 steps at LR_MAX1 0.05, and
# lost it (0.039) after 105; docs/defend.md.
PHASE1_MIN_STEPS = 100


@dataclass(frozen=True)
class SFTConfig:
    """Super-fine-tuning schedule; defaults are the paper's (Section 4.4)."""

    lr_base: float = 3e-4
    lr_max1: float = 0.1
    lr_max2: float = 1e-3
    phase1_epochs: int = 10
    half_cycle_steps: int = 500  # step_size_up of CyclicLR
    half_cycle_epochs: Optional[float] = None  # if set, overrides half_cycle_steps on small data

    def __post_init__(self) -> None:
        if not 0 < self.lr_base <= self.lr_max2 < self.lr_max1:
            raise ValueError("SFT needs 0 < lr_base <= lr_max2 < lr_max1, got "
                             f"{self.lr_base}, {self.lr_max2}, {self.lr_max1}")

    def step_size(self, spe: int) -> int:
        """Half-cycle length in optimizer steps for `spe` steps per epoch."""
        if self.half_cycle_epochs is None:
            return self.half_cycle_steps
        return max(1, round(self.half_cycle_epochs * spe))

    def in_epochs(self) -> "SFTConfig":
        """The step schedule read in epochs for data the paper never saw: `half_cycle_steps` scaled as 500
        steps are to CIFAR10's 2.56 epochs, then shortened so that phase 1 holds whole cycles."""
        if self.half_cycle_epochs is not None:
            return self
        half = self.half_cycle_steps / 500 * PAPER_HALF_CYCLE_EPOCHS
        cycles = max(1, round(self.phase1_epochs / (2 * half)))
        return replace(self, half_cycle_epochs=self.phase1_epochs / (2 * cycles))

    def stretched(self, spe: int, epochs: int, min_steps: int = PHASE1_MIN_STEPS) -> tuple["SFTConfig", int]:
        """Phase 1 lengthened to at least `min_steps` steps at `spe` per epoch, phase 2 kept: (config, epochs)."""
        p1 = max(self.phase1_epochs, math.ceil(min_steps / spe))
        return replace(self, phase1_epochs=p1), max(epochs, p1 + max(0, epochs - self.phase1_epochs))

    def peak_problem(self, spe: int, epochs: int) -> Optional[str]:
        """One line when the LR can never reach LR_MAX1 in `epochs` epochs of `spe` steps, else None."""
        reach = min(self.phase1_epochs, epochs) * spe
        step = self.step_size(spe)
        if step <= reach:
            return None
        peak = self.lr_base + (self.lr_max1 - self.lr_base) * reach / step
        return (f"SFT's LR peaks at {peak:.3g}, never LR_MAX1 {self.lr_max1:g}: its half-cycle is {step} steps "
                f"but phase 1 has {reach} ({spe} per epoch); SFT would be plain fine-tuning. Give the half-cycle "
                f"in epochs (--set sft.half_cycle_epochs=2.5) or more epochs")


class SuperFineTuningLR(CyclicLR):
    """CyclicLR (triangular, no momentum cycling) whose peak drops from LR_MAX1 to LR_MAX2 after phase 1."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: SFTConfig, spe: int):
        self.phase1_steps = cfg.phase1_epochs * spe
        self.lr_max2 = cfg.lr_max2
        step = cfg.step_size(spe)
        super().__init__(optimizer, base_lr=cfg.lr_base, max_lr=cfg.lr_max1, step_size_up=step,
                         mode="triangular", cycle_momentum=False)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.phase1_steps:
            self.max_lrs = [self.lr_max2] * len(self.max_lrs)
        return super().get_lr()


def sft_lr_trace(cfg: SFTConfig, spe: int, total_steps: int) -> list[float]:
    """LR at each of the first `total_steps` steps, read off the real scheduler (Figure 1)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr_base)
    sched = SuperFineTuningLR(opt, cfg, spe)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# The LR_MAX1 guard tries the configured peak, then half, then about a third each time (never down to LR_MAX2).
GUARD_FACTORS = (1.0, 0.5, 0.3, 0.1, 0.03)
# A peak passes while the probe's training loss at it stays below this share of chance-level loss ln(C). On digits
# (ResNet-18 and MobileNetV2, 2 seeds each) 0.1 gave 1.61-2.22 (ResNet-18 then lost 8-54 CA points) and 0.05 gave
# 0.87-0.96; 0.25 ln(C) (0.576) rejected 0.03 for MobileNetV2 (0.611) and left its Blended backdoor (ASR 0.82).
GUARD_LOSS_SHARE = 0.5


@dataclass(frozen=True)
class GuardResult:
    """The guard's choice: the LR_MAX1 taken, whether any candidate passed, each probe's peak-epoch loss."""

    lr_max1: float
    passed: bool
    limit: float
    losses: dict[float, float]


def choose_lr_max1(ctx: DefenseContext, sft: SFTConfig, share: float = GUARD_LOSS_SHARE) -> GuardResult:
    """The largest candidate LR_MAX1 at which SFT's first half-cycle, run on a copy of the model on the clean
    data, keeps the training loss of its peak epoch below `share` * ln(C) (C = ctx.num_classes)."""
    cfg = replace(ctx.train, lr=sft.lr_base)
    spe = steps_per_epoch(len(ctx.x_clean), cfg.batch_size, cfg.drop_last, cfg.max_steps)
    cfg = replace(cfg, epochs=max(1, math.ceil(sft.step_size(spe) / spe)))
    limit = share * math.log(ctx.num_classes)
    candidates = [round(sft.lr_max1 * f, 6) for f in GUARD_FACTORS if sft.lr_max1 * f > sft.lr_max2]
    losses: dict[float, float] = {}
    for lr in candidates:
        losses[lr] = _probe_loss(ctx, cfg, replace(sft, lr_max1=lr))
        if losses[lr] < limit:
            return GuardResult(lr, True, limit, losses)
    return GuardResult(candidates[-1], False, limit, losses)


def _probe_loss(ctx: DefenseContext, cfg, sft: SFTConfig) -> float:
    """Mean training loss of the last epoch of `sft` run for `cfg.epochs` on a copy of the model (inf if it diverged)."""
    try:
        history = fit(copy.deepcopy(ctx.model), ctx.x_clean, ctx.y_clean, cfg, desc=f"sft-guard {sft.lr_max1:g}",
                      scheduler=lambda opt, spe: SuperFineTuningLR(opt, sft, spe))
    except ValueError as e:  # fit refuses a non-finite loss: this peak diverged
        if "no longer finite" not in str(e):
            raise
        return math.inf
    return history[-1]["loss"]


def finetune(ctx: DefenseContext) -> DefenseResult:
    """FT: fine-tune the whole model on the clean set at the constant LR `ctx.train.lr`."""
    cfg = replace(ctx.train, schedule="constant")
    clock = Clock(device_of(ctx.model))
    history = fit(ctx.model, ctx.x_clean, ctx.y_clean, cfg, evaluate=ctx.evaluate, clock=clock, desc="ft")
    return DefenseResult(ctx.model, history, {"device_hours": clock.hours()})


def super_finetune(ctx: DefenseContext) -> DefenseResult:
    """SFT: fine-tune the whole model on the clean set with the super-fine-tuning LR schedule."""
    clock = Clock(device_of(ctx.model))
    sft = ctx.params.get("sft", SFTConfig())
    cfg = replace(ctx.train, lr=sft.lr_base)
    spe = steps_per_epoch(len(ctx.x_clean), cfg.batch_size, cfg.drop_last, cfg.max_steps)

    def scheduler(opt: torch.optim.Optimizer, spe_: int) -> SuperFineTuningLR:
        return SuperFineTuningLR(opt, sft, spe_)

    history = fit(ctx.model, ctx.x_clean, ctx.y_clean, cfg, scheduler=scheduler, evaluate=ctx.evaluate,
                  clock=clock, desc="sft")
    return DefenseResult(ctx.model, history, {"half_cycle_steps": sft.step_size(spe), "steps_per_epoch": spe,
                                              "device_hours": clock.hours()})


__all__ = ["GuardResult", "PAPER_HALF_CYCLE_EPOCHS", "PHASE1_MIN_STEPS", "SFTConfig", "SuperFineTuningLR",
           "choose_lr_max1", "finetune", "super_finetune", "sft_lr_trace"]
