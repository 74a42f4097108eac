"""Neural Cleanse (NC; Wang et al. 2019): reverse-engineer a trigger per label, flag outliers, unlearn.

For every label t: optimise mask m and pattern p (tanh-parametrised, both in [0,1]) with
Adam so that (1-m)*x + m*p is classified as t, with an L1 penalty on m whose weight is
raised and lowered by NC's schedule; keep the smallest mask that reaches the success
threshold. Labels whose mask L1 norm lies below the median with MAD anomaly index > 2 are
flagged. Unlearning: fine-tune on a fresh clean subset where a share of the images carry
a recovered trigger but keep their true labels. Nothing flagged -> the model is returned as is.
The trigger search optimises 4*H*W input parameters with Adam, not the model, so it runs its
own small loop on the same device-resident batch path (`augment`) instead of `fit`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from backdoor.train import TrainConfig, augment, autocast, steps_per_epoch

from .base import DefenseContext, DefenseResult
from .common import Budget, clean_subset, device_of, finish, start

log = logging.getLogger(__name__)
EPS = 1e-7


@dataclass(frozen=True)
class NCConfig:
    """NC settings; defaults are BackdoorBench v1's."""

    clean_ratio: float = 0.05  # clean subset for each label's search (re-drawn per label) and for unlearning
    epochs: int = 80  # trigger-search epochs per label (upper bound; early stop)
    batch_size: int = 256
    lr: float = 0.1  # Adam, betas (0.5, 0.9)
    init_cost: float = 1e-3
    success_threshold: float = 0.98
    patience: int = 5
    cost_up: float = 2.0
    cost_down: float = 2.0 ** 1.5
    early_stop_threshold: float = 0.99
    early_stop_patience: int = 25
    anomaly_threshold: float = 2.0
    unlearn_ratio: float = 0.2  # share of the unlearning set that carries a recovered trigger
    unlearn: Budget = field(default_factory=Budget)
    seed: int = 0


def _squash(theta: torch.Tensor) -> torch.Tensor:
    return torch.tanh(theta) / (2 + EPS) + 0.5


def reverse_engineer(model: nn.Module, x: torch.Tensor, target: int, cfg: NCConfig,
                     train: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Smallest-norm (mask [1,1,H,W], pattern [1,3,H,W], L1 norm) that sends clean images x to `target`."""
    device = device_of(model)
    x = x.to(device)
    theta_m = torch.ones(1, 1, *x.shape[2:], device=device, requires_grad=True)
    theta_p = torch.ones(1, 3, *x.shape[2:], device=device, requires_grad=True)
    opt = torch.optim.Adam([theta_m, theta_p], lr=cfg.lr, betas=(0.5, 0.9))
    gen = torch.Generator(device=device).manual_seed(cfg.seed + target)
    spe = steps_per_epoch(len(x), cfg.batch_size, drop_last=False, max_steps=train.max_steps)
    cost, up, down, up_flag, down_flag = cfg.init_cost, 0, 0, False, False
    best, best_norm, es_best, es_count = None, float("inf"), float("inf"), 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x), device=device, generator=gen)
        hits, norm_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        for s in range(spe):
            xb = augment(x[perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]].float().div_(255.0),
                         train.crop_pad, train.flip, gen)
            m, p = _squash(theta_m), _squash(theta_p)
            with autocast(device, train.bf16):
                logits = model((1 - m) * xb + m * p)
            norm = m.abs().sum()
            loss = F.cross_entropy(logits.float(), torch.full((len(xb),), target, device=device)) + cost * norm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            hits += (logits.argmax(1) == target).sum()
            norm_sum += norm.detach()
        acc, norm = hits.item() / min(len(x), spe * cfg.batch_size), norm_sum.item() / spe  # images seen
        if acc >= cfg.success_threshold and norm < best_norm:
            best, best_norm = (_squash(theta_m).detach(), _squash(theta_p).detach()), norm
        if best is not None:  # NC's early stop, once a valid trigger exists
            es_count = es_count + 1 if best_norm >= cfg.early_stop_threshold * es_best else 0
        es_best = min(best_norm, es_best)
        if up_flag and down_flag and es_count >= cfg.early_stop_patience:
            break
        up, down = (up + 1, 0) if acc >= cfg.success_threshold else (0, down + 1)
        if up >= cfg.patience:
            up, up_flag, cost = 0, True, cost * cfg.cost_up
        elif down >= cfg.patience:
            down, down_flag, cost = 0, True, cost / cfg.cost_down
    if best is None:  # never reached the threshold: report the last trigger
        best = (_squash(theta_m).detach(), _squash(theta_p).detach())
        best_norm = best[0].abs().sum().item()
    return best[0], best[1], best_norm


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """|norm - median| / (1.4826 * MAD) per label (0 where MAD is 0); medians average the middle pair."""
    med = norms.quantile(0.5)
    mad = 1.4826 * (norms - med).abs().quantile(0.5)
    return (norms - med).abs() / mad if mad > 0 else torch.zeros_like(norms)


def flag_labels(norms: torch.Tensor, threshold: float) -> list[int]:
    """Labels whose mask is small: L1 norm at or below the median and anomaly index above `threshold`."""
    index = anomaly_index(norms)
    return [t for t in range(len(norms)) if norms[t] <= norms.quantile(0.5) and index[t] > threshold]


def nc_detect(model: nn.Module, ctx: DefenseContext, cfg: NCConfig) -> tuple[list[int], torch.Tensor, dict]:
    """Flagged labels, anomaly indices, and the recovered trigger of every label."""
    was_training = model.training
    model.eval().requires_grad_(False)
    triggers, norms = {}, []
    try:
        for t in range(ctx.num_classes):
            x, _ = clean_subset(ctx, cfg.clean_ratio, cfg.seed + 1 + t)  # re-drawn per label, as BackdoorBench
            m, p, n = reverse_engineer(model, x, t, cfg, ctx.train)
            triggers[t] = (m, p)
            norms.append(n)
            log.info("nc: label %d mask L1 %.1f", t, n)
    finally:
        model.train(was_training).requires_grad_(True)
    norms_t = torch.tensor(norms)
    return flag_labels(norms_t, cfg.anomaly_threshold), anomaly_index(norms_t), {"norms": norms, "triggers": triggers}


def unlearning_set(x: torch.Tensor, y: torch.Tensor, triggers: list[tuple[torch.Tensor, torch.Tensor]],
                   ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Stamp the last `ratio` share of x with the recovered triggers (round robin); labels unchanged."""
    x = x.clone()
    start_i = len(x) - round(ratio * len(x))
    for j, i in enumerate(range(start_i, len(x))):
        m, p = (t.cpu() for t in triggers[j % len(triggers)])
        xi = x[i : i + 1].float() / 255.0
        x[i] = (((1 - m) * xi + m * p) * 255.0).round().clamp(0, 255).to(torch.uint8)[0]
    return x, y


def neural_cleanse(ctx: DefenseContext) -> DefenseResult:
    """NC: detect a target label by trigger reverse-engineering; unlearn its trigger on clean data."""
    cfg: NCConfig = ctx.params.get("nc", NCConfig())
    model = ctx.model
    clock, stages, evaluate = start(ctx)
    flagged, index, found = nc_detect(model, ctx, cfg)
    info = {"mask_norms": found["norms"], "anomaly_index": index.tolist(), "flagged_labels": flagged}
    if ctx.poison_idx is not None and ctx.y_train is not None and len(ctx.poison_idx):
        target = int(ctx.y_train[ctx.poison_idx].mode().values)
        info.update(target_flagged=target in flagged, target_anomaly_index=float(index[target]))
    if flagged:
        xc, yc = clean_subset(ctx, cfg.clean_ratio, cfg.seed)
        xu, yu = unlearning_set(xc, yc, [found["triggers"][t] for t in flagged], cfg.unlearn_ratio)
        stages.run("unlearn", model, xu, yu, cfg.unlearn.config(ctx.train), evaluate=evaluate)
    return finish(model, stages, clock, info)
