"""The SFT learning rate at given steps equals the triangular formula; FT keeps a constant LR."""
from __future__ import annotations

import pytest
import torch

from backdoor.models import make_model
from backdoor.train import TrainConfig
from defenses import DefenseContext, SFTConfig, get_defense
from defenses.finetune import SuperFineTuningLR, sft_lr_trace


def triangular(step: int, base: float, peak: float, half: int) -> float:
    """Hand-written triangular wave: base at multiples of 2*half, peak at odd multiples of half."""
    pos = step % (2 * half)
    frac = pos / half if pos <= half else (2 * half - pos) / half
    return base + (peak - base) * frac


SPE = 195  # CIFAR10 at batch 256 with drop_last: 50000 // 256; phase 1 ends at step 1950


@pytest.mark.parametrize("step", [0, 250, 500, 750, 1000, 1500, 1949])
def test_phase1_lr_matches_formula(step):
    lrs = sft_lr_trace(SFTConfig(), SPE, 2000)
    assert lrs[step] == pytest.approx(triangular(step, 3e-4, 0.1, 500), rel=1e-9, abs=1e-12)


def test_paper_points_exactly():
    lrs = sft_lr_trace(SFTConfig(), SPE, 2100)
    assert lrs[0] == pytest.approx(3e-4)
    assert lrs[250] == pytest.approx(3e-4 + 0.5 * (0.1 - 3e-4))
    assert lrs[500] == pytest.approx(0.1)
    assert lrs[1000] == pytest.approx(3e-4)


@pytest.mark.parametrize("step", [1950, 1951, 2000, 2250, 2500])
def test_phase2_peak_is_lr_max2_just_after_epoch_10(step):
    lrs = sft_lr_trace(SFTConfig(), SPE, 2600)
    assert lrs[step] == pytest.approx(triangular(step, 3e-4, 1e-3, 500), rel=1e-9, abs=1e-12)
    assert max(lrs[1950:]) <= 1e-3 + 1e-12 < max(lrs[:1950])


def test_half_cycle_in_epochs_scales_with_data():
    cfg = SFTConfig(half_cycle_epochs=2.5)
    assert cfg.step_size(21) == 52 and cfg.step_size(195) == 488
    lrs = sft_lr_trace(cfg, 21, 21 * 10)
    assert lrs[52] == pytest.approx(0.1) and max(lrs) == pytest.approx(0.1)


def test_invalid_sft_config_fails():
    with pytest.raises(ValueError, match="lr_base"):
        SFTConfig(lr_max1=1e-4)


def test_scheduler_is_cyclic_lr_without_momentum_cycling():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = SuperFineTuningLR(opt, SFTConfig(), SPE)
    assert isinstance(sched, torch.optim.lr_scheduler.CyclicLR) and sched.cycle_momentum is False
    assert opt.param_groups[0]["momentum"] == 0.9


def test_ft_keeps_the_training_lr_constant_and_sft_reaches_its_peak():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.0123, crop_pad=0)
    seen = []
    for name in ("ft", "sft"):
        model = make_model("preactresnet18", 10, width=4)
        ctx = DefenseContext(model, x, y, cfg, params={"sft": SFTConfig(half_cycle_epochs=1.0, phase1_epochs=2)})
        seen.append([r["lr"] for r in get_defense(name)(ctx).history])
    assert seen[0] == [0.0123] * 4
    # 4 steps per epoch, half-cycle 4 steps: after epoch 1 the LR sits at LR_MAX1.
    assert seen[1][1] == pytest.approx(0.1)
