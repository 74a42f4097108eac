"""Backdoor sequela: MIA splits and signal; re-injection into the session's SFT-defended model at ratio 0 / 0.1,
and a ratio that poisons nothing."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from backdoor.attacks import make_attack
from backdoor.data import ImageData
from backdoor.metrics import accuracy, predict
from backdoor.models import make_model
from backdoor.train import TrainConfig, fit
from experiments.common import evaluator_for, load_backdoored
from experiments.profiles import get_profile
from experiments.sequela import parse_ratio
from sequela.mia import attack_features, membership_inference, mia_split
from sequela.reinject import epochs_to, reinject

SMOKE = get_profile("smoke")


# ---- membership inference ------------------------------------------------------------------


def test_split_sizes_disjoint_seeded() -> None:
    poisoned = torch.arange(0, 1400, 10)
    sp = mia_split(1400, 397, seed=3, exclude=poisoned)
    h = 397 // 2
    assert [len(t) for t in (sp.train_members, sp.train_nonmembers, sp.eval_members, sp.eval_nonmembers)] == [h] * 4
    assert not set(sp.train_members.tolist()) & set(sp.eval_members.tolist())
    assert not set(sp.train_nonmembers.tolist()) & set(sp.eval_nonmembers.tolist())
    assert not set(poisoned.tolist()) & set(sp.train_members.tolist() + sp.eval_members.tolist())
    assert max(sp.train_nonmembers.max(), sp.eval_nonmembers.max()) < 397
    again, other = mia_split(1400, 397, seed=3, exclude=poisoned), mia_split(1400, 397, seed=4, exclude=poisoned)
    assert torch.equal(again.eval_members, sp.eval_members)
    assert not torch.equal(other.eval_members, sp.eval_members)
    with pytest.raises(ValueError, match="larger dataset"):
        mia_split(100, 397)


def _memoriser(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A wide MLP trained until it fits its few training images (and their labels) exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 512), nn.ReLU(), nn.Linear(512, 10))
    cfg = TrainConfig(epochs=150, batch_size=50, lr=0.05, weight_decay=0.0, crop_pad=0, channels_last=False)
    fit(net, x, y, cfg)
    assert accuracy(net, x, y, bf16=False) == 1.0
    return net


class RandomOutput(nn.Module):
    """Posteriors that ignore the input: no membership signal at all."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(x), 10, generator=self.gen) * 3


def test_mia_finds_memorised_members_not_random_outputs(digits: ImageData) -> None:
    x, y = digits.x_train, digits.y_train
    # Members: 100 images with random labels, so the model can only memorise them (digits generalise too
    # well for a true-label MLP to leak much: measured MIA accuracy 0.64); non-members: 100 it never saw.
    y_mem = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(1))
    net = _memoriser(x[:100], y_mem[:100])
    sp = mia_split(100, 100, seed=0)
    res = membership_inference(net, x[:100], y_mem[:100], x[100:200], y_mem[100:200], sp, epochs=100)
    assert res["n_eval"] == 100 and res["n_train"] == 100
    assert res["accuracy"] > 0.8 and res["auc"] > 0.8, res
    sp = mia_split(400, 400, seed=0)
    res = membership_inference(RandomOutput(), x[:400], y[:400], x[400:800], y[400:800], sp, epochs=100)
    assert abs(res["accuracy"] - 0.5) < 0.1 and abs(res["auc"] - 0.5) < 0.1, res


def test_features_sorted_posteriors_and_correct_flag(digits: ImageData) -> None:
    f = attack_features(RandomOutput(), digits.x_test[:20], digits.y_test[:20])
    assert f.shape == (20, 11)
    assert torch.all(f[:, :10].diff(dim=1) <= 0) and torch.allclose(f[:, :10].sum(1), torch.ones(20))
    assert set(f[:, 10].tolist()) <= {0.0, 1.0}


# ---- re-injection -------------------------------------------------------------------------


@pytest.fixture()
def sft_model(smoke_chain) -> tuple[nn.Module, object]:
    """A fresh copy of the session's SFT-defended smoke model (tests/conftest.py) and its attack."""
    smoke_chain.defend("sft")
    model, attack, _ = load_backdoored(smoke_chain.checkpoints_dir / "sft.safetensors", torch.device("cpu"))
    return model, attack


@pytest.fixture(scope="module")
def stand_in(digits: ImageData) -> dict:
    """A briefly clean-trained smoke-width model, converged (T_max = epochs), as a re-injection start."""
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, SMOKE.width, "digits")
    fit(model, digits.x_train, digits.y_train, replace(SMOKE.train_config("digits"), epochs=6, cosine_t_max=6))
    return model.state_dict()


@pytest.mark.slow
def test_reinject_at_ratio_0_1_restores_backdoor(digits: ImageData, stand_in: dict) -> None:
    # Slow (50 s of CI before). Into the session's SFT model the same call did NOT restore the backdoor
    # (ASR <= 0.095 over 8 epochs, seed 1, OMP_NUM_THREADS=1), so the claim stays on the clean stand-in.
    model = make_model("preactresnet18", 10, SMOKE.width, "digits")
    model.load_state_dict(stand_in)
    attack = make_attack("badnets", target=SMOKE.target)
    rec = reinject(model, attack, digits, SMOKE.train_config("digits"), SMOKE.reinject_epochs, 0.1, seed=1)
    h = rec["history"]
    print("ratio 0.1 ASR per epoch:", [round(r["asr"], 3) for r in h], "CA:", [round(r["ca"], 3) for r in h])
    assert rec["n_poison"] == 140 and len(h) == SMOKE.reinject_epochs + 1
    assert h[0]["asr"] < 0.3 and h[0]["ca"] > 0.8, h[0]
    assert epochs_to(h) is not None, [r["asr"] for r in h]
    assert max(r["ca"] for r in h[-3:]) > 0.8


def test_reinject_without_poison_leaves_asr_at_baseline(digits: ImageData, sft_model) -> None:
    """Same training with 0 poisoned images (3 epochs, to save CI time): the triggered images go to the
    target no more often than clean non-target images do under the same model, give or take noise."""
    model, attack = sft_model
    keep = digits.y_test != attack.target
    ev = evaluator_for(digits, attack, torch.device("cpu"), bf16=False)
    evaluate = lambda m: {**ev(m), "base": (predict(m, digits.x_test[keep], bf16=False) == attack.target).float().mean().item()}  # noqa: E731
    rec = reinject(model, attack, digits, SMOKE.train_config("digits"), 3, 0.0, seed=1,
                   evaluate=evaluate, control=True)
    h = rec["history"]
    print("ratio 0 ASR per epoch:", [round(r["asr"], 3) for r in h], "clean->target:", [round(r["base"], 3) for r in h])
    assert rec["n_poison"] == 0 and len(h) == 4
    assert all(r["asr"] <= r["base"] + 0.1 for r in h), h


def test_ratio_that_poisons_nothing_is_reported_not_run(digits: ImageData) -> None:
    model = make_model("preactresnet18", 10, 8, "digits")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = reinject(model, make_attack("badnets"), digits, SMOKE.train_config("digits"), 3, 0.0001, seed=1)
    assert rec["n_poison"] == 0 and rec["history"] == [] and "poisons 0 of 1400" in rec["skipped"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1", "abc"])
def test_bad_ratio_is_one_line_error(bad: str) -> None:
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        parse_ratio(bad)
