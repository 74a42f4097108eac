"""Spectral Signatures (Tran et al. 2018): per label, drop the top 1.5*eps outlier scores, retrain.

Per label: representations R (layer4 output, flattened, as BackdoorBench), centred; v the
top right-singular vector; score (R_i - mean)·v squared; the top round(removal_factor * eps
* n_label) scores are removed from every label (Algorithm 1 of the paper). `eps` is the
defender's upper bound on the poisoned share of a label; with eps = 0.1 this removes the
same 15% BackdoorBench's fixed percentile does, but from every label, not only a known target.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import DefenseContext, DefenseResult
from .common import Budget, detection_scores, device_of, finish, fresh_model, layer_output, require_train_set, start


@dataclass(frozen=True)
class SpectralConfig:
    """Spectral settings; `eps` replaces BackdoorBench's fixed 85th percentile."""

    eps: float = 0.1  # upper bound on the poisoned fraction of a label's examples
    removal_factor: float = 1.5  # the paper removes 1.5 * eps
    layer: str = "layer4"
    retrain: Budget = field(default_factory=Budget)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps * self.removal_factor <= 1.0:
            raise ValueError(f"spectral removes eps*removal_factor of each label; got {self.eps}*{self.removal_factor}")


@torch.no_grad()
def spectral_scores(model: torch.nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Outlier scores of one label's images: squared projection on the top singular vector."""
    r = layer_output(model, x, layer).to(device_of(model))
    r = r - r.mean(0, keepdim=True)
    v = torch.linalg.svd(r, full_matrices=False).Vh[0]
    return (r @ v).pow(2).cpu()


def spectral_detect(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: SpectralConfig) -> torch.Tensor:
    """Sorted training indices with the top scores of their label."""
    flagged = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        k = round(cfg.removal_factor * cfg.eps * len(idx))
        if k == 0 or len(idx) < 2:
            continue
        flagged.append(idx[spectral_scores(model, x[idx], cfg.layer).topk(k).indices])
    return torch.cat(flagged).sort().values if flagged else torch.zeros(0, dtype=torch.long)


def spectral(ctx: DefenseContext) -> DefenseResult:
    """Spectral: remove the top-scoring samples of every label, retrain a fresh model from scratch."""
    cfg: SpectralConfig = ctx.params.get("spectral", SpectralConfig())
    x, y = require_train_set(ctx, "spectral")
    clock, stages, evaluate = start(ctx)
    flagged = spectral_detect(ctx.model, x, y, cfg)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[flagged] = False
    model = fresh_model(ctx.model, cfg.seed)
    stages.run("retrain", model, x[keep], y[keep], cfg.retrain.config(ctx.train), evaluate=evaluate)
    return finish(model, stages, clock, detection_scores(flagged, ctx.poison_idx))
