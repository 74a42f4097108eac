"""Activation Clustering (AC; Chen et al. 2018): cluster each label's activations, drop the odd cluster, retrain.

Per label, over the whole training set: penultimate (avgpool) activations, reduced to
`nb_dims` with ICA (the AC paper; PCA optional), 2-means, and the relative-size rule: a
cluster holding less than `size_threshold` of its label is poison. A fresh model is then
trained from scratch on the kept samples. Unlike BackdoorBench's code, the reduction is
really applied and the flags index the samples they were computed on (docs/defenses.md).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning

from .base import DefenseContext, DefenseResult
from .common import Budget, detection_scores, finish, fresh_model, layer_output, require_train_set, start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ACConfig:
    """AC settings; defaults are BackdoorBench's (nb_dims 10, 2 clusters) with the AC paper's rule."""

    nb_dims: int = 10
    reduce: str = "ica"  # "ica" (AC paper) or "pca" (what BackdoorBench declares)
    size_threshold: float = 0.35  # relative-size rule (AC paper / ART); "smaller" flags every label's smaller cluster
    rule: str = "relative_size"  # "relative_size" or "smaller" (BackdoorBench)
    layer: str = "avgpool"
    retrain: Budget = field(default_factory=Budget)  # fresh model trained from scratch on kept data
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reduce not in ("ica", "pca"):
            raise ValueError(f"unknown AC reduction {self.reduce!r}; choose one of: ica, pca")
        if self.rule not in ("relative_size", "smaller"):
            raise ValueError(f"unknown AC rule {self.rule!r}; choose one of: relative_size, smaller")


def _reduce(z: np.ndarray, cfg: ACConfig) -> np.ndarray:
    dims = min(cfg.nb_dims, z.shape[0] - 1, z.shape[1])
    if cfg.reduce == "pca":
        return PCA(n_components=dims, random_state=cfg.seed).fit_transform(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # ART's settings; a rough unmixing still separates
        return FastICA(n_components=dims, max_iter=1000, tol=0.005, whiten="unit-variance",
                       random_state=cfg.seed).fit_transform(z)


def ac_detect(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ACConfig) -> tuple[torch.Tensor, dict]:
    """Indices flagged as poison, and per-label smaller-cluster shares."""
    feats = layer_output(model, x, cfg.layer).numpy().astype(np.float64)
    flagged, shares = [], {}
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten().numpy()
        if len(idx) < max(4, cfg.nb_dims):
            continue
        labels = KMeans(2, n_init=10, random_state=cfg.seed).fit_predict(_reduce(feats[idx], cfg))
        sizes = np.bincount(labels, minlength=2)
        small = int(np.argmin(sizes))
        shares[c] = float(sizes[small] / len(idx))
        if cfg.rule == "smaller" or shares[c] < cfg.size_threshold:
            flagged.append(idx[labels == small])
    flat = np.concatenate(flagged) if flagged else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.sort(flat)).long(), shares


def activation_clustering(ctx: DefenseContext) -> DefenseResult:
    """AC: flag clusters per label, retrain a fresh model from scratch on the rest."""
    cfg: ACConfig = ctx.params.get("ac", ACConfig())
    x, y = require_train_set(ctx, "ac")
    clock, stages, evaluate = start(ctx)
    flagged, shares = ac_detect(ctx.model, x, y, cfg)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[flagged] = False
    log.info("ac: flagged %d of %d (smaller-cluster shares %s)", len(flagged), len(x), shares)
    model = fresh_model(ctx.model, cfg.seed)
    stages.run("retrain", model, x[keep], y[keep], cfg.retrain.config(ctx.train), evaluate=evaluate)
    info = {"cluster_shares": shares, **detection_scores(flagged, ctx.poison_idx)}
    return finish(model, stages, clock, info)
