"""Poison selection counts, relabelling, the non-target test set, and ASR's exclusion rule."""
from __future__ import annotations

import pytest
import torch

from backdoor.attacks import make_attack
from backdoor.metrics import attack_success_rate
from backdoor.poison import bake, poison_indices, poison_train_set, poisoned_test_set


@pytest.mark.parametrize("n,ratio", [(1400, 0.1), (50000, 0.1), (39209, 0.1), (1000, 0.0001), (1000, 0.0), (7, 1.0)])
def test_exactly_round_ratio_n_distinct_indices(n, ratio):
    idx = poison_indices(n, ratio, seed=0)
    assert len(idx) == round(ratio * n) == len(set(idx.tolist()))
    assert (idx >= 0).all() and (idx < n).all() if len(idx) else True


def test_indices_depend_on_seed_only():
    assert torch.equal(poison_indices(1000, 0.1, 3), poison_indices(1000, 0.1, 3))
    assert not torch.equal(poison_indices(1000, 0.1, 3), poison_indices(1000, 0.1, 4))


def test_target_class_images_are_drawn_triggered_and_keep_their_label(digits):
    # BackdoorBench draws from all training images, target class included (README). Catches a selection that
    # skips the target class: the poisoned set must use exactly the label-blind draw, which holds label-0 images.
    atk = make_attack("badnets", target=0)
    xp, yp, idx = poison_train_set(digits.x_train, digits.y_train, atk, 0.1, seed=0)
    assert torch.equal(idx, poison_indices(len(digits.x_train), 0.1, seed=0))
    own = idx[digits.y_train[idx] == 0]
    assert len(own) > 0 and (yp[own] == 0).all() and (xp[own][:, :, 29:, 29:] == 255).all()
    # and the relabelled ones are exactly the chosen non-target images
    assert torch.equal((yp != digits.y_train).nonzero().flatten(), idx[digits.y_train[idx] != 0])


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_invalid_ratio_fails(ratio):
    with pytest.raises(ValueError, match="poison ratio"):
        poison_indices(100, ratio)


def test_poison_train_set_relabels_and_triggers_only_chosen(digits):
    atk = make_attack("badnets", target=0)
    x, y = digits.x_train, digits.y_train
    x0, y0 = x.clone(), y.clone()
    xp, yp, idx = poison_train_set(x, y, atk, 0.1, seed=0)
    assert len(idx) == 140
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    assert (yp[idx] == 0).all() and (xp[idx][:, :, 29:, 29:] == 255).all()
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(xp[rest], x[rest]) and torch.equal(yp[rest], y[rest])


def test_poisoned_test_set_holds_only_non_target(digits):
    atk = make_attack("badnets", target=3)
    xb, yb = poisoned_test_set(digits.x_test, digits.y_test, atk)
    keep = digits.y_test != 3
    assert len(xb) == int(keep.sum()) and torch.equal(yb, digits.y_test[keep])
    # Catches an ASR set of untriggered images: each is its clean image with the 3x3 patch stamped.
    assert torch.equal(xb, bake(atk, digits.x_test[keep])) and (xb[:, :, 29:, 29:] == 255).all()


def test_asr_excludes_target_class_images():
    y_true = torch.tensor([0, 0, 1, 2, 3, 4])
    preds = torch.tensor([0, 0, 0, 2, 0, 1])
    # Non-target images: labels 1,2,3,4 -> predictions 0,2,0,1 -> 2 of 4 hit the target.
    assert attack_success_rate(preds, y_true, 0) == 0.5
