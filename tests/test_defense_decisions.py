"""Each defence's decision on hand-built inputs, without training a network.

NC's flag rule on chosen mask norms, FP's pruning order and stop rule on a scripted
accuracy, ABL's losses and the direction of its unlearning, AC's and Spectral's flags on
hand-built feature matrices (both variants), NAD's attention loss. Every test names the
inverted decision it catches.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from backdoor.train import Clock, TrainConfig
from defenses import ABLConfig, ACConfig, Budget, DefenseContext, FPConfig, NADConfig, SpectralConfig, get_defense
from defenses.abl import ascent_epochs, ascent_loss, lowest_loss, per_sample_loss, tuning_loss, unlearn
from defenses.ac import bb_flags, bb_positions, bb_reduce, bb_smaller, cluster_flags, method_flags
from defenses.common import Stages
from defenses.fp import prune_order, prune_until
from defenses.nad import at_loss, attention_map
from defenses.nc import flag_labels
from defenses.spectral import label_flags, scored_labels, signature_scores


# ---- NC ------------------------------------------------------------------------------------

def test_nc_flags_only_the_small_mask_outlier():
    # Catches: flagging large-norm outliers (no median side test), or the anomaly test inverted.
    norms = torch.tensor([10.0, 50.0, 52.0, 48.0, 51.0, 49.0, 200.0, 50.5, 49.5, 51.5])
    assert flag_labels(norms, 2.0) == [0]  # label 6 is as anomalous, but its trigger is *larger*
    assert flag_labels(torch.tensor([50.0, 52.0, 48.0, 51.0, 49.0]), 2.0) == []
    assert flag_labels(torch.tensor([10.0, 12.0, 50.0, 52.0, 48.0, 51.0, 49.0, 50.5]), 2.0) == [0, 1]


# ---- FP ------------------------------------------------------------------------------------

def test_fp_prunes_the_least_active_channels_first():
    # Catches: pruning the most active channels (descending order).
    means = torch.tensor([0.5, 0.0, 2.0, 0.1, 1.0])
    assert prune_order(means).tolist() == [1, 3, 0, 4, 2]


def test_fp_stops_before_the_first_step_that_costs_accuracy():
    # Scripted accuracy: 1.0 while at most 5 channels are pruned, 0.85 beyond (a 15% drop >= 10%).
    # Catches: an inverted stop test (stops at once), keeping the failing step, or a mask that
    # zeroes other channels than the first `kept` of the order.
    order = torch.tensor([7, 2, 9, 0, 4, 1, 3, 8, 5, 6])
    mask = torch.ones(10)
    acc = lambda model: 1.0 if int((mask == 0).sum()) <= 5 else 0.85  # noqa: E731
    kept = prune_until(None, order, mask, acc, FPConfig(acc_ratio=0.1, prune_step=1))
    assert kept == 5
    assert (mask == 0).nonzero().flatten().tolist() == sorted([7, 2, 9, 0, 4])
    # A drop just under the ratio does not stop the pruning; it runs to the last step (9 of 10).
    mask.fill_(1.0)
    acc = lambda model: 1.0 if int((mask == 0).sum()) <= 5 else 0.91  # noqa: E731
    assert prune_until(None, order, mask, acc, FPConfig(acc_ratio=0.1, prune_step=1)) == 9


# ---- ABL -----------------------------------------------------------------------------------

class FixedLogits(nn.Module):
    """A 'network' whose logits are a learnable bias only, so a loss value can be chosen exactly."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.bias = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), -1)


def test_abl_tuning_losses_floor_the_cross_entropy():
    # Logits chosen so that CE = 0.3, below the level 0.5: both tuning losses must push the CE back *up*.
    # Catches: plain CE in tuning (no floor), or a sign error in flooding / LGA.
    p = float(np.exp(-0.3))  # softmax probability of the label
    logits = torch.tensor([[np.log(p), np.log(1 - p)]], dtype=torch.float32)
    x, y = torch.zeros(1, 1), torch.tensor([0])
    for variant, value in (("backdoorbench", 0.7), ("method", -0.3)):
        net = FixedLogits(logits)
        loss = tuning_loss(ABLConfig(variant=variant))(net, x, y)
        assert loss.item() == pytest.approx(value, abs=1e-5)
        loss.backward()
        assert net.bias.grad[0, 0] > 0  # descending this loss lowers the label's logit: CE rises to b


def test_abl_isolates_exactly_the_lowest_losses():
    # Catches: isolating the highest losses (largest=True), or round() instead of BackdoorBench's int().
    losses = torch.tensor([0.9, 0.01, 0.5, 0.02, 0.7, 0.03, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05, 0.06, 0.07, 0.08,
                           0.09, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.21, 0.22])
    assert lowest_loss(losses, 0.1).tolist() == [1, 3]  # int(2.8) = 2
    assert lowest_loss(losses, 0.01).tolist() == [1]  # at least one


def test_abl_unlearning_ascends_the_loss_of_the_isolated_set():
    # Catches: gradient descent (loss +CE) in the unlearning stage, or an unlearning stage that never steps.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.randint(0, 256, (12, 3, 4, 4), dtype=torch.uint8)
    y = torch.zeros(12, dtype=torch.long)
    before = per_sample_loss(model, x, y, bf16=False).mean().item()
    cfg = ABLConfig(variant="method", unlearn=Budget(epochs=3, lr=0.05, batch_size=4))
    hist = unlearn(model, x, y, cfg, TrainConfig(crop_pad=0), Stages({"epoch": 0}, Clock(torch.device("cpu"))))
    after = per_sample_loss(model, x, y, bf16=False).mean().item()
    assert len(hist) == 4 and after > before + 0.1
    assert ascent_loss(FixedLogits(torch.zeros(1, 2)), x[:1], y[:1]).item() == pytest.approx(-np.log(2), abs=1e-6)


def test_abl_backdoorbench_spends_its_first_unlearning_epoch_evaluating():
    # Catches: the variant switch ignored (both ascend 20 epochs, or both 19).
    assert ascent_epochs(ABLConfig()) == 19
    assert ascent_epochs(ABLConfig(variant="method")) == 20
    assert ABLConfig().unlearn.batch_size == 256 and ABLConfig().unlearn.lr == 1e-4


# ---- AC ------------------------------------------------------------------------------------

def blobs(n_clean: int, n_poison: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One label: a compact clean blob and a far, wider poison blob (poison drawn from 'many classes')."""
    rng = np.random.default_rng(seed)
    clean = rng.normal(0.0, 1.0, (n_clean, dim))
    poison = rng.normal(0.0, 2.5, (n_poison, dim)) + 12.0
    return np.vstack([clean, poison]), np.r_[np.zeros(n_clean, bool), np.ones(n_poison, bool)]


def two_means(z: np.ndarray) -> np.ndarray:
    from sklearn.cluster import KMeans
    return KMeans(2, n_init=10, random_state=0).fit_predict(z)


def test_ac_silhouette_rule_flags_a_poison_majority():
    # 60 of 100 samples of the label are poison. Catches: a size rule (relative size flags nothing,
    # "smaller" flags the 40 clean ones), or the less dispersed cluster chosen as poison.
    z, poison = blobs(40, 60)
    labels = two_means(z)
    flags, sil = cluster_flags(z, labels, ACConfig(variant="method"))
    assert sil > 0.45 and np.array_equal(flags, poison)
    assert not cluster_flags(z, labels, ACConfig(variant="method", rule="relative_size"))[0].any()
    assert np.array_equal(cluster_flags(z, labels, ACConfig(variant="method", rule="smaller"))[0], ~poison)


def test_ac_silhouette_rule_leaves_a_one_blob_label_alone():
    # Catches: a gate that flags every label (a 2-means split of one Gaussian scores about 0.1-0.2 here).
    z = np.random.default_rng(1).normal(0.0, 1.0, (100, 16))
    flags, sil = cluster_flags(z, two_means(z), ACConfig(variant="method"))
    assert sil < 0.45 and not flags.any()


def test_ac_method_flags_exactly_the_poison_of_the_poisoned_label():
    # Label 0: 30 clean + 50 poison (a majority); labels 1, 2: one blob each. Catches: labels mixed up
    # (flags written to the wrong indices), or a clean label flagged.
    rng = np.random.default_rng(2)
    z0, poison0 = blobs(30, 50, seed=3)
    feats = np.vstack([z0, rng.normal(0, 1, (40, 16)) - 8.0, rng.normal(0, 1, (40, 16)) + 8.0])
    y = np.r_[np.zeros(80, int), np.ones(40, int), np.full(40, 2)]
    order = rng.permutation(len(y))  # interleave the labels so that positions matter
    flagged, facts = method_flags(feats[order], y[order], ACConfig(variant="method", nb_dims=5))
    truth = np.flatnonzero(np.r_[poison0, np.zeros(80, bool)][order])
    assert flagged.tolist() == truth.tolist()
    assert facts["silhouettes"][0] > 0.45 > max(facts["silhouettes"][1], facts["silhouettes"][2])


def test_ac_backdoorbench_reduction_keeps_the_first_columns():
    # BackdoorBench's `nb_activations > nb_dims & n > nb_dims` is never true: no PCA, first columns.
    acts = np.arange(40.0).reshape(2, 20)
    assert np.array_equal(bb_reduce(acts, 10), acts[:, :10])
    assert np.array_equal(bb_reduce(acts[:, :8], 10), acts[:, :8])


def test_ac_backdoorbench_smaller_counts_concatenated_batch_ids():
    # Batch ids [0,0,1] and [1,1,0] concatenate to three 0s and three 1s: argmin picks id 0 as poison,
    # although each batch's smaller cluster differs. Catches: per-batch "smaller" (the fixed behaviour).
    assert bb_smaller(np.array([0, 0, 1, 1, 1, 0])).tolist() == [0, 0, 1, 1, 1, 0]
    assert bb_smaller(np.array([0, 1, 1, 1])).tolist() == [0, 1, 1, 1]


def test_ac_backdoorbench_writes_flags_by_reshuffled_position():
    # Second shuffle puts labels [1, 0, 1, 0] at positions 0..3; label 0's flags [keep, drop] and label 1's
    # [drop, keep] land on positions (1, 3) and (0, 2): dataset indices 0 and 3 are removed, whatever
    # samples they hold. Catches: flags mapped back through the permutation (the fixed behaviour).
    keep = bb_positions({0: np.array([1, 0]), 1: np.array([0, 1])}, np.array([1, 0, 1, 0]))
    assert np.flatnonzero(~keep).tolist() == [0, 3]


def test_ac_backdoorbench_flags_ignore_the_poison_and_the_unused_columns():
    # A poison cluster perfectly separated in columns 10+ only: BackdoorBench never sees those columns,
    # so changing them changes no flag; and its flags are a random subset (hit rate near the base rate).
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(4), 100)
    feats = rng.normal(0, 1, (400, 30))
    poison = (y == 0) & (np.arange(400) % 2 == 0)
    moved = feats.copy()
    moved[poison, 10:] += 50.0
    cfg = ACConfig(batch_size=64)
    a, facts = bb_flags(feats, y, cfg)
    b, _ = bb_flags(moved, y, cfg)
    assert a.tolist() == b.tolist()
    assert len(a) == sum(facts["flagged_by_label"].values())
    # The flags of label c land on whatever samples sit at its reshuffled positions, so the removed
    # samples' own labels do not match the per-label counts. Catches: flags mapped back to the samples
    # they were computed on (the fixed behaviour, where both counts agree).
    assert np.bincount(y[a], minlength=4).tolist() != [facts["flagged_by_label"][c] for c in range(4)]


# ---- Spectral ------------------------------------------------------------------------------

def offset_line(n: int = 100) -> torch.Tensor:
    """Rows (10 + t_i) * e1 (+ tiny noise), t sorted normals: a large un-centred offset along the top singular vector."""
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(n, generator=gen, dtype=torch.float64).sort().values
    r = torch.zeros(n, 5, dtype=torch.float64)
    r[:, 0] = 10.0 + t
    r[:, 1:] = 0.001 * torch.randn(n, 4, generator=gen, dtype=torch.float64)
    return r


def test_spectral_backdoorbench_removes_exactly_the_top_15_percent_uncentred():
    # Un-centred |r.v| ranks by t: the 15 largest t (rows 85..99). Catches: centring (which would pick
    # both ends), another percentile, or >= instead of > (16 rows).
    flags = label_flags(offset_line(), SpectralConfig())
    assert flags.tolist() == list(range(85, 100))
    assert len(label_flags(offset_line(101), SpectralConfig())) == 15


def test_spectral_method_removes_both_tails_of_the_centred_score():
    # Centred squared projection: the 15 rows farthest from the mean, on both sides.
    # Catches: the un-centred score in the method variant, or the wrong quota round(1.5 * eps * n).
    flags = label_flags(offset_line(), SpectralConfig(variant="method", eps=0.1))
    r = offset_line()
    expected = (r[:, 0] - r[:, 0].mean()).abs().topk(15).indices.sort().values
    assert flags.tolist() == expected.tolist()
    assert 0 in flags.tolist() and 99 in flags.tolist()
    s = signature_scores(r, centred=True)
    rest = torch.ones(100, dtype=torch.bool)
    rest[flags] = False
    assert s[flags].min() > s[rest].max()


def test_spectral_variants_score_the_target_label_or_every_label():
    # Catches: backdoorbench scoring all labels (or none), or a silent default when the target is unknown.
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    assert scored_labels(y, SpectralConfig(), 2) == [2]
    assert scored_labels(y, SpectralConfig(variant="method"), None) == [0, 1, 2]
    with pytest.raises(ValueError, match="scores only the attack's target label"):
        scored_labels(y, SpectralConfig(), None)


def test_spectral_backdoorbench_without_target_fails_before_any_work():
    ctx = DefenseContext(model=None, x_clean=torch.zeros(1), y_clean=torch.zeros(1), train=TrainConfig(),
                         x_train=torch.zeros(4, 3, 2, 2, dtype=torch.uint8), y_train=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="set DefenseContext.target_label"):
        get_defense("spectral")(ctx)  # model=None: any work before the check would raise something else


# ---- NAD -----------------------------------------------------------------------------------

def test_nad_attention_map_and_loss_exact():
    # Catches: a map over channels instead of space, a missing power p or normalisation, unweighted betas.
    fm = torch.zeros(1, 2, 2, 2)
    fm[0, 0, 0, 0], fm[0, 1, 1, 1] = 3.0, -4.0  # |F|^2 summed over channels: [9, 0, 0, 16]
    norm = np.sqrt(9.0 ** 2 + 16.0 ** 2)
    assert attention_map(fm, 2.0)[0].tolist() == pytest.approx([9 / norm, 0.0, 0.0, 16 / norm], rel=1e-6)
    other = torch.zeros(1, 2, 2, 2)
    other[0, 0, 0, 1] = 1.0  # map [0, 1, 0, 0], orthogonal to fm's unit map: squared distance 2
    cfg = NADConfig(betas=(("a", 10.0),), p=2.0)
    expected = 10.0 * 2.0 / 4  # beta * mean over the 4 positions
    assert at_loss({"a": fm}, {"a": other}, cfg).item() == pytest.approx(expected, rel=1e-6)
    assert at_loss({"a": fm}, {"a": fm * 7}, cfg).item() == pytest.approx(0.0, abs=1e-12)
