"""The paper's standalone claim on `digits`, for real, on the session's smoke CLI chain: a BadNets backdoor is
learned, survives conventional fine-tuning at a small LR, and is removed by super-fine-tuning at little CA cost.

Measured, CPU training NCHW (OMP_NUM_THREADS=1 seed 0 / every torch seed +1 / default threads seed 0): backdoored
ASR 0.975 / 0.983 / 0.958, CA 0.990 / 0.992 / 0.995; FT ASR 0.885 / 0.802 / 0.846; SFT ASR 0.000 / 0.000 / 0.000,
CA 0.990 / 0.970 / 0.980."""
from __future__ import annotations


def test_badnets_backdoor_is_learned(smoke_chain):
    # Catches a trigger that is not stamped into the training set, or labels not flipped to the target.
    smoke_chain.train()
    final = smoke_chain.result("backdoor.json")["final"]
    assert final["asr"] >= 0.85 and final["ca"] >= 0.85, final  # measured ASR 0.958-0.983, CA 0.990-0.995


def test_sft_removes_the_backdoor_and_keeps_ca(smoke_chain):
    # Catches an SFT whose cycle never reaches LR_MAX1 (the backdoor then survives, as under FT).
    smoke_chain.defend("sft")
    r = smoke_chain.result("sft.json")
    assert r["before"]["asr"] >= 0.9 and r["final"]["asr"] < 0.2, r["final"]
    assert r["final"]["ca"] >= r["before"]["ca"] - 0.05, (r["before"], r["final"])


def test_ft_at_a_small_constant_lr_leaves_the_backdoor(smoke_chain):
    # The contrast, same epochs: FT decays the backdoor slowly (0.98 -> 0.89 over 10 epochs with one thread,
    # 0.96 -> 0.85 with two: the end value moves with the CPU's kernels), SFT erases it. Catches FT running SFT's
    # schedule (or any LR far above ft_lr).
    smoke_chain.defend("ft")
    smoke_chain.defend("sft")
    ft, sft = smoke_chain.result("ft.json")["final"], smoke_chain.result("sft.json")["final"]
    assert ft["asr"] >= 0.3 and ft["asr"] >= sft["asr"] + 0.25, (ft, sft)
    assert ft["ca"] >= 0.85, ft
