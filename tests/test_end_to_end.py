"""The paper's standalone claim on `digits`, for real: a BadNets backdoor is learned, survives
conventional fine-tuning at a small LR, and is removed by super-fine-tuning at little CA cost."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from backdoor.attacks import make_attack
from backdoor.models import make_model
from backdoor.poison import poison_train_set
from backdoor.train import fit
from defenses import DefenseContext, get_defense
from experiments.common import evaluator_for
from experiments.profiles import get_profile

PROFILE = get_profile("smoke")


@pytest.fixture(scope="module")
def backdoored(digits):
    attack = make_attack("badnets", target=PROFILE.target)
    xp, yp, idx = poison_train_set(digits.x_train, digits.y_train, attack, PROFILE.poison_ratio, PROFILE.seed)
    torch.manual_seed(PROFILE.seed)
    model = make_model("preactresnet18", digits.num_classes, PROFILE.width, "digits")
    evaluate = evaluator_for(digits, attack, torch.device("cpu"))
    history = fit(model, xp, yp, PROFILE.train_config("digits"), evaluate=evaluate)
    return model, evaluate, history


def _defend(name, digits, backdoored):
    model, evaluate, _ = backdoored
    clone = make_model("preactresnet18", digits.num_classes, PROFILE.width, "digits")
    clone.load_state_dict(model.state_dict())
    ctx = DefenseContext(clone, digits.x_train, digits.y_train, PROFILE.finetune_config("digits"), evaluate,
                         params={"sft": PROFILE.sft})
    return get_defense(name)(ctx).history


def test_badnets_backdoor_is_learned(backdoored):
    final = backdoored[2][-1]
    assert final["asr"] >= 0.9, final
    assert final["ca"] >= 0.85, final


@pytest.fixture(scope="module")
def sft_history(digits, backdoored):
    return _defend("sft", digits, backdoored)


def test_sft_removes_the_backdoor_and_keeps_ca(backdoored, sft_history):
    before = backdoored[2][-1]
    after = sft_history[-1]
    assert after["asr"] < 0.2, after
    assert after["ca"] >= before["ca"] - 0.05, (before, after)


def test_ft_at_a_small_constant_lr_leaves_the_backdoor(digits, backdoored, sft_history):
    # The contrast, same epochs: FT decays the backdoor slowly (measured 0.93 -> 0.50 over 10 epochs,
    # by a few points per epoch, so the exact end value moves with the CPU's kernels), SFT erases it.
    after, sft_after = _defend("ft", digits, backdoored)[-1], sft_history[-1]
    assert after["asr"] >= 0.3, after
    assert after["asr"] >= sft_after["asr"] + 0.25, (after, sft_after)
    assert after["ca"] >= 0.85, after
