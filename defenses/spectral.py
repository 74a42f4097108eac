"""Spectral Signatures (Tran et al. 2018): score samples along the top singular vector, drop the outliers, retrain.

Representations R are the flattened layer4 output (as BackdoorBench); v is the top right
singular vector of the centred R of one label. Two variants (`SpectralConfig.variant`):
- "backdoorbench" (default, what the paper ran): BackdoorBench v1's code. Only the attack's
  target label (`DefenseContext.target_label`, which its config names) is scored, from
  augmented images; the score is |R_i · v| of the *un-centred* R_i, and every sample scoring
  strictly above the `percentile` (85th) of that label is removed (about 15% of it).
- "method": Algorithm 1 of the paper: every label is scored with ((R_i - mean) · v)^2 and its
  top round(removal_factor * eps * n_label) samples are removed.
A fresh model is then trained from scratch on the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .base import DefenseContext, DefenseResult
from .common import (Budget, augmented, detection_scores, device_of, finish, fresh_model, layer_output,
                     require_train_set, start)

VARIANTS = ("backdoorbench", "method")


@dataclass(frozen=True)
class SpectralConfig:
    """Spectral settings; defaults are BackdoorBench v1's (target label only, 85th percentile, layer4)."""

    variant: str = "backdoorbench"  # "backdoorbench" (its code) or "method" (the paper's Algorithm 1)
    percentile: float = 85.0  # backdoorbench: target-label samples scoring above this percentile are removed
    eps: float = 0.1  # method: upper bound on the poisoned fraction of a label's examples
    removal_factor: float = 1.5  # method: the paper removes 1.5 * eps
    layer: str = "layer4"
    retrain: Budget = field(default_factory=Budget)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown spectral variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if not 0.0 <= self.eps * self.removal_factor <= 1.0:
            raise ValueError(f"spectral removes eps*removal_factor of each label; got {self.eps}*{self.removal_factor}")
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"spectral percentile must be in [0, 100], got {self.percentile}")


def signature_scores(r: torch.Tensor, centred: bool) -> torch.Tensor:
    """Per-row score along the top singular vector of the centred rows: squared centred, or |un-centred|."""
    r = r.double()
    rc = r - r.mean(0, keepdim=True)
    v = torch.linalg.svd(rc, full_matrices=False).Vh[0]
    return (rc @ v).pow(2) if centred else (r @ v).abs()


def label_flags(r: torch.Tensor, cfg: SpectralConfig) -> torch.Tensor:
    """Sorted rows of one label's representations r that the variant removes."""
    if len(r) < 2:
        return torch.zeros(0, dtype=torch.long)
    if cfg.variant == "backdoorbench":
        s = signature_scores(r, centred=False)
        return (s > torch.quantile(s, cfg.percentile / 100.0)).nonzero().flatten()  # np.percentile, linear
    k = round(cfg.removal_factor * cfg.eps * len(r))
    s = signature_scores(r, centred=True)
    return s.topk(k).indices.sort().values if k else torch.zeros(0, dtype=torch.long)


def scored_labels(y: torch.Tensor, cfg: SpectralConfig, target_label: Optional[int]) -> list[int]:
    """The labels a variant inspects: the known target only (backdoorbench) or every label (method)."""
    if cfg.variant == "method":
        return torch.unique(y).tolist()
    if target_label is None:
        raise ValueError("spectral variant='backdoorbench' scores only the attack's target label: "
                         "set DefenseContext.target_label, or use SpectralConfig(variant='method')")
    return [int(target_label)]


@torch.no_grad()
def spectral_detect(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: SpectralConfig,
                    target_label: Optional[int] = None, crop_pad: int = 0, flip: bool = False, *,
                    bf16: bool) -> torch.Tensor:
    """Sorted training indices the variant removes (backdoorbench: features of augmented images)."""
    flagged = []
    for c in scored_labels(y, cfg, target_label):
        idx = (y == c).nonzero().flatten()
        xc = augmented(x[idx], crop_pad, flip, cfg.seed) if cfg.variant == "backdoorbench" else x[idx]
        r = layer_output(model, xc, cfg.layer, bf16=bf16).to(device_of(model))
        flagged.append(idx[label_flags(r, cfg).cpu()])
    return torch.cat(flagged).sort().values if flagged else torch.zeros(0, dtype=torch.long)


def spectral(ctx: DefenseContext) -> DefenseResult:
    """Spectral: remove the top-scoring samples (target label or every label), retrain a fresh model from scratch."""
    cfg: SpectralConfig = ctx.params.get("spectral", SpectralConfig())
    x, y = require_train_set(ctx, "spectral")
    scored_labels(y, cfg, ctx.target_label)  # fail before any work
    clock, stages, evaluate = start(ctx)
    flagged = spectral_detect(ctx.model, x, y, cfg, ctx.target_label, ctx.train.crop_pad, ctx.train.flip,
                              bf16=ctx.train.bf16)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[flagged] = False
    model = fresh_model(ctx.model, cfg.seed)
    stages.run("retrain", model, x[keep], y[keep], cfg.retrain.config(ctx.train), evaluate=evaluate)
    return finish(model, stages, clock, {"variant": cfg.variant, **detection_scores(flagged, ctx.poison_idx)})
