"""Activation Clustering (AC; Chen et al. 2018): cluster each label's activations, drop the poison cluster, retrain.

Two variants (`ACConfig.variant`); either way a fresh model is then trained from scratch
on the kept samples.
- "backdoorbench" (default, what the paper ran): BackdoorBench v1's code, quirks included.
  Per shuffled, augmented batch of 256 and per label in it, 2-means on the first `nb_dims`
  raw activation columns (its `nb_activations > nb_dims & n > nb_dims` test is always false,
  so no reduction runs); the cluster ids of all batches are concatenated per label, the id
  with fewer members is "poison" in every label, and the flags are written back by position
  in a second shuffle, so the removed samples are a random subset (docs/defenses.md).
- "method": the AC paper's procedure over each whole label: PCA to `nb_dims` (FastICA, the
  paper's choice, moves with its seed), 2-means, and a decision `rule` (see `cluster_flags`).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from backdoor.train import TrainConfig

from .base import DefenseContext, DefenseResult
from .common import (Budget, augmented, detection_scores, finish, fresh_model, layer_output, require_train_set,
                     start)

log = logging.getLogger(__name__)
VARIANTS = ("backdoorbench", "method")
RULES = ("silhouette", "relative_size", "smaller")


@dataclass(frozen=True)
class ACConfig:
    """AC settings; defaults are BackdoorBench v1's (nb_dims 10, 2 clusters, batch 256, retrain 100 epochs)."""

    variant: str = "backdoorbench"  # "backdoorbench" (its code) or "method" (the AC paper, whole labels)
    nb_dims: int = 10
    batch_size: int = 256  # backdoorbench: clustering runs per shuffled batch of this size
    reduce: str = "pca"  # method: "pca" (stable) or "ica" (AC paper; its result moves with the seed)
    rule: str = "silhouette"  # method: see cluster_flags
    size_threshold: float = 0.35  # relative_size: a cluster below this share of its label is poison (ART)
    silhouette_threshold: float = 0.45  # silhouette: a label whose 2-means split scores above this is poisoned
    layer: str = "avgpool"
    retrain: Budget = field(default_factory=Budget)  # fresh model trained from scratch on kept data
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown AC variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if self.reduce not in ("ica", "pca"):
            raise ValueError(f"unknown AC reduction {self.reduce!r}; choose one of: ica, pca")
        if self.rule not in RULES:
            raise ValueError(f"unknown AC rule {self.rule!r}; choose one of: {', '.join(RULES)}")


# ---- method: whole labels ------------------------------------------------------------------

def _reduce(z: np.ndarray, cfg: ACConfig) -> np.ndarray:
    # scikit-learn is imported where AC runs: it is seconds of start-up for every step that imports `defenses`.
    from sklearn.decomposition import PCA, FastICA
    from sklearn.exceptions import ConvergenceWarning

    dims = min(cfg.nb_dims, z.shape[0] - 1, z.shape[1])
    if cfg.reduce == "pca":
        return PCA(n_components=dims, random_state=cfg.seed).fit_transform(z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # ART's settings; a rough unmixing still separates
        return FastICA(n_components=dims, max_iter=1000, tol=0.005, whiten="unit-variance",
                       random_state=cfg.seed).fit_transform(z)


def _spread(z: np.ndarray) -> float:
    return float(np.linalg.norm(z - z.mean(0), axis=1).mean())


def cluster_flags(z: np.ndarray, labels: np.ndarray, cfg: ACConfig) -> tuple[np.ndarray, float]:
    """Poison mask over one label's points (2-means `labels` of reduced activations z), and its silhouette.

    smaller: the smaller cluster. relative_size: a cluster under `size_threshold` of the label.
    silhouette: if the split scores above `silhouette_threshold` the label is poisoned and the
    more dispersed cluster is the poison (all-to-one poison comes from every other class and
    shares only the trigger), whatever its size, so a poison majority is still found.
    """
    from sklearn.metrics import silhouette_score

    sizes = np.bincount(labels, minlength=2)
    sil = float(silhouette_score(z, labels)) if len(np.unique(labels)) == 2 else 0.0
    if cfg.rule == "smaller":
        return labels == int(np.argmin(sizes)), sil
    if cfg.rule == "relative_size":
        return np.isin(labels, np.flatnonzero(sizes / len(labels) < cfg.size_threshold)), sil
    if sil <= cfg.silhouette_threshold:
        return np.zeros(len(labels), dtype=bool), sil
    poison = int(np.argmax([_spread(z[labels == k]) for k in (0, 1)]))
    return labels == poison, sil


def method_flags(feats: np.ndarray, y: np.ndarray, cfg: ACConfig) -> tuple[np.ndarray, dict]:
    """Sorted flagged indices and per-label silhouettes: each whole label reduced, 2-means, `cluster_flags`."""
    from sklearn.cluster import KMeans

    flagged, sils = [], {}
    for c in np.unique(y).tolist():
        idx = np.flatnonzero(y == c)
        if len(idx) < max(4, cfg.nb_dims):
            continue
        z = _reduce(feats[idx], cfg)
        labels = KMeans(2, n_init=10, random_state=cfg.seed).fit_predict(z)
        mask, sils[c] = cluster_flags(z, labels, cfg)
        flagged.append(idx[mask])
    flat = np.concatenate(flagged) if flagged else np.zeros(0, dtype=np.int64)
    return np.sort(flat), {"silhouettes": sils}


# ---- backdoorbench: per batch, positions re-shuffled -------------------------------------------

def bb_reduce(acts: np.ndarray, nb_dims: int) -> np.ndarray:
    """What BackdoorBench's reduction step returns: the first `nb_dims` raw columns (no PCA ever runs)."""
    return acts[:, :nb_dims] if acts.shape[1] > nb_dims else acts


def bb_smaller(clusters: np.ndarray) -> np.ndarray:
    """BackdoorBench's "smaller" on one label's concatenated batch cluster ids: 1 = clean, 0 = poison."""
    return (clusters != int(np.argmin(np.bincount(clusters)))).astype(np.int64)


def bb_positions(clean_by_class: dict[int, np.ndarray], y_order: np.ndarray) -> np.ndarray:
    """Keep mask over dataset indices: position p gets the next flag of the label of the p-th shuffled sample.

    BackdoorBench writes flags to positions of a re-shuffled loader and then keeps those
    positions as dataset indices, so a flag lands on whichever sample sits at that index.
    """
    keep = np.zeros(len(y_order), dtype=bool)
    for c, flags in clean_by_class.items():
        keep[np.flatnonzero(y_order == c)] = flags.astype(bool)
    return keep


def bb_flags(feats: np.ndarray, y: np.ndarray, cfg: ACConfig) -> tuple[np.ndarray, dict]:
    """Sorted flagged indices as BackdoorBench v1's AC computes them, from (augmented) activations feats."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(y))
    clusters: dict[int, list[np.ndarray]] = {}
    for s in range(0, len(perm), cfg.batch_size):
        batch = perm[s : s + cfg.batch_size]
        for c in np.unique(y[batch]).tolist():
            z = bb_reduce(feats[batch[y[batch] == c]], cfg.nb_dims)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # duplicate points in tiny batch-labels
                ids = KMeans(2, n_init=10, random_state=cfg.seed).fit_predict(z) if len(z) > 1 else np.ones(1, int)
            clusters.setdefault(c, []).append(ids)
    clean = {c: bb_smaller(np.concatenate(v)) for c, v in clusters.items()}
    keep = bb_positions(clean, y[rng.permutation(len(y))])
    return np.flatnonzero(~keep), {"flagged_by_label": {c: int((v == 0).sum()) for c, v in clean.items()}}


def ac_detect(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ACConfig,
              train: Optional[TrainConfig] = None, *, bf16: bool) -> tuple[torch.Tensor, dict]:
    """Flagged training indices and facts of the decision, for `cfg.variant`.

    backdoorbench takes its activations from augmented images (`train`'s crop/flip, as its loader).
    """
    if cfg.variant == "backdoorbench":
        x = augmented(x, train.crop_pad, train.flip, cfg.seed) if train is not None else x
    feats = layer_output(model, x, cfg.layer, bf16=bf16).numpy().astype(np.float64)
    flat, facts = (bb_flags if cfg.variant == "backdoorbench" else method_flags)(feats, y.numpy(), cfg)
    return torch.from_numpy(flat).long(), facts


def activation_clustering(ctx: DefenseContext) -> DefenseResult:
    """AC: flag clusters per label, retrain a fresh model from scratch on the rest."""
    cfg: ACConfig = ctx.params.get("ac", ACConfig())
    x, y = require_train_set(ctx, "ac")
    clock, stages, evaluate = start(ctx)
    flagged, facts = ac_detect(ctx.model, x, y, cfg, ctx.train, bf16=ctx.train.bf16)
    keep = torch.ones(len(x), dtype=torch.bool)
    keep[flagged] = False
    log.info("ac (%s): flagged %d of %d (%s)", cfg.variant, len(flagged), len(x), facts)
    model = fresh_model(ctx.model, cfg.seed)
    stages.run("retrain", model, x[keep], y[keep], cfg.retrain.config(ctx.train), evaluate=evaluate)
    info = {"variant": cfg.variant, **facts, **detection_scores(flagged, ctx.poison_idx)}
    return finish(model, stages, clock, info)
