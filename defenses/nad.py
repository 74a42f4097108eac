"""Neural Attention Distillation (NAD; Li et al. 2021): a clean-fine-tuned teacher guides the student.

Teacher: the suspect model fine-tuned on clean data (`teacher` budget). Student: the
suspect model trained on the same clean data with CE + sum of beta * AT loss, where the
attention map of a layer output F is sum_c |F_c|^p, L2-normalised over H*W, and the AT
loss is the MSE between student and teacher maps. BackdoorBench's third term (avgpool,
beta 1000) is dropped: its 1x1 map is constant after normalisation and adds nothing.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from backdoor.metrics import batched
from backdoor.train import fit

from .base import DefenseContext, DefenseResult
from .common import Budget, clean_subset, finish, start, step_lr


@dataclass(frozen=True)
class NADConfig:
    """NAD settings; defaults are BackdoorBench v1's."""

    clean_ratio: float = 0.05
    teacher: Budget = field(default_factory=lambda: Budget(epochs=10))
    epochs: int = 100  # student epochs
    lr: float = 0.01  # student LR before `lr_drop_epoch`
    lr_after: float = 1e-4  # student LR from `lr_drop_epoch` on
    lr_drop_epoch: int = 20
    batch_size: int = 256
    betas: tuple[tuple[str, float], ...] = (("layer3", 500.0), ("layer4", 1000.0))
    p: float = 2.0
    seed: int = 0


def attention_map(fm: torch.Tensor, p: float) -> torch.Tensor:
    """[B,C,H,W] -> [B,H*W]: channel-summed |F|^p, unit L2 norm per image."""
    return F.normalize(fm.float().abs().pow(p).sum(1).flatten(1), dim=1)


@contextmanager
def capture(model: nn.Module, layers: list[str]):
    """Yield a dict filled with the outputs of the named layers on each forward."""
    store, modules = {}, dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, o)) for n in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def at_loss(s: dict, t: dict, cfg: NADConfig) -> torch.Tensor:
    """Weighted attention-transfer loss between captured student and teacher outputs."""
    return sum(beta * F.mse_loss(attention_map(s[n], cfg.p), attention_map(t[n], cfg.p)) for n, beta in cfg.betas)


def attention_loss(student: nn.Module, teacher: nn.Module, x: torch.Tensor, cfg: NADConfig, bf16: bool) -> float:
    """Mean weighted AT loss over uint8 images x, both models in eval mode (for reporting)."""
    names = [n for n, _ in cfg.betas]
    with capture(student, names) as s, capture(teacher, names) as t:

        def step(xb: torch.Tensor, _: slice) -> torch.Tensor:
            student(xb), teacher(xb)
            return torch.tensor([at_loss(s, t, cfg).item() * len(xb)], dtype=torch.float64)

        per_batch = batched(student, x, step, 512, bf16=bf16, also=(teacher,))
    return sum(per_batch.tolist(), 0.0) / len(x)


def nad(ctx: DefenseContext) -> DefenseResult:
    """NAD: fine-tune a teacher on clean data, then distil the suspect model's attention towards it."""
    cfg: NADConfig = ctx.params.get("nad", NADConfig())
    student = ctx.model
    clock, stages, evaluate = start(ctx)
    xc, yc = clean_subset(ctx, cfg.clean_ratio, cfg.seed)
    teacher = copy.deepcopy(student)
    fit(teacher, xc, yc, cfg.teacher.config(ctx.train), desc="nad teacher")
    teacher.eval().requires_grad_(False)
    # Reporting only, so not charged to the defence.
    report = clock.monitor(lambda m: {"at_loss": attention_loss(m, teacher, xc, cfg, ctx.train.bf16)})
    before = report(student)["at_loss"]
    names = [n for n, _ in cfg.betas]
    with capture(student, names) as s, capture(teacher, names) as t:

        def loss_fn(net: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            ce = F.cross_entropy(net(xb), yb)
            with torch.no_grad():
                teacher(xb)
            return ce + at_loss(s, t, cfg)

        student_cfg = Budget(cfg.epochs, cfg.lr, cfg.batch_size).config(ctx.train, schedule="constant")
        stages.run("distil", student, xc, yc, student_cfg, evaluate=evaluate, loss_fn=loss_fn,
                   scheduler=step_lr(cfg.lr_drop_epoch, cfg.lr_after / cfg.lr))
    after = report(student)["at_loss"]
    return finish(student, stages, clock, {"at_loss_before": before, "at_loss_after": after})
