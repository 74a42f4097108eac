"""The run's precision (profile field `precision`, `TrainConfig.bf16`) reaches every forward pass.

No GPU here: the autocast context is inspected (CUDA's availability check patched), and every
library forward pass is spied on through the one helper, `backdoor.train.autocast`.
"""
from __future__ import annotations

import copy
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import backdoor.ssl  # noqa: F401  (imported so that its use of the helper is spied on)
from backdoor import train as train_lib
from backdoor.metrics import make_evaluator
from backdoor.models import make_model
from backdoor.ssl import knn_accuracy
from backdoor.train import TrainConfig, autocast, precision_used
from defenses import (ABLConfig, ACConfig, DEFENSES, Budget, DefenseContext, FPConfig, NADConfig, NCConfig, SFTConfig,
                      SpectralConfig)
from experiments.report import precision_read

ROOT = Path(__file__).resolve().parents[1]
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
ONE = Budget(epochs=1, cosine_t_max=1, batch_size=32)
# One step of every stage: the test counts which precision each forward pass asked for, not what it learnt.
TINY = {"sft": SFTConfig(phase1_epochs=1, half_cycle_epochs=0.5), "fp": FPConfig(prune_step=8, finetune=ONE),
        "abl": ABLConfig(tuning=ONE, finetune=ONE, finetune_drop_epoch=1, unlearn=replace(ONE, epochs=2)),
        "ac": ACConfig(retrain=ONE), "spectral": SpectralConfig(retrain=ONE),
        "nad": NADConfig(teacher=ONE, epochs=1, batch_size=32), "nc": NCConfig(epochs=1, batch_size=32, unlearn=ONE)}
# Where each defence's own forward passes ask for their context beyond the one batched-inference loop
# (backdoor.metrics.batched: features, per-sample losses, attention losses): NC's trigger search.
OWN = {"ft": set(), "sft": set(), "ac": set(), "spectral": set(), "fp": set(), "abl": set(), "nad": set(),
       "nc": {"defenses.nc"}}
# Every module that runs a forward pass of a model under test imports the helper by name.
USERS = {"backdoor.train", "backdoor.metrics", "backdoor.ssl", "defenses.nc"}


def test_autocast_is_bf16_only_for_a_bf16_run_on_cuda(monkeypatch):
    # Without these two patches torch disables any CUDA autocast on a CPU-only box, which would hide the flag.
    monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    fp32, bf16, cpu = autocast(CUDA, False), autocast(CUDA, True), autocast(CPU, True)
    assert (fp32.device, fp32._enabled) == ("cuda", False)  # disabled autocast: plain fp32 kernels
    assert (bf16.device, bf16._enabled, bf16.fast_dtype) == ("cuda", True, torch.bfloat16)
    assert (cpu.device, cpu._enabled) == ("cpu", False)
    assert [precision_used(d, f) for d in (CUDA, CPU) for f in (False, True)] == ["fp32", "bf16", "fp32", "fp32"]


def test_no_autocast_outside_the_helper():
    hits = [(str(p.relative_to(ROOT)), line.strip()) for d in ("backdoor", "defenses", "sequela", "experiments",
                                                              "figures") for p in sorted((ROOT / d).rglob("*.py"))
            for line in p.read_text().splitlines() if re.search(r"torch\.autocast\(|bfloat16", line)]
    assert hits == [("backdoor/train.py",
                     "return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, bf16))")]


@pytest.fixture
def seen(monkeypatch) -> list[tuple[str, bool]]:
    """(module, bf16) of every `autocast` call from now on."""
    calls: list[tuple[str, bool]] = []
    users = sorted(n for n, m in list(sys.modules.items()) if getattr(m, "autocast", None) is autocast
                   and n.split(".")[0] in ("backdoor", "defenses", "sequela", "experiments", "figures"))
    assert set(users) == USERS

    def spy_for(name: str):
        def spy(device: torch.device, bf16: bool):
            calls.append((name, bf16))
            return train_lib.torch.autocast(device.type, enabled=False)
        return spy

    for name in users:
        monkeypatch.setattr(sys.modules[name], "autocast", spy_for(name))
    return calls


@pytest.fixture(scope="module")
def tiny(digits):
    """A width-4 digits model, 128 training and 64 test images (nothing here needs a trained model)."""
    torch.manual_seed(0)
    return make_model("preactresnet18", 10, 4, "digits"), digits.x_train[:128], digits.y_train[:128], \
        digits.x_test[:64], digits.y_test[:64]


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("name", sorted(DEFENSES))
def test_every_defence_runs_every_forward_in_the_run_precision(seen, tiny, name, bf16):
    model, x, y, xt, yt = tiny
    train = TrainConfig(epochs=1, batch_size=32, lr=0.01, crop_pad=0, max_steps=1, bf16=bf16)
    ctx = DefenseContext(model=copy.deepcopy(model), x_clean=x, y_clean=y, train=train, x_train=x, y_train=y,
                         num_classes=10, target_label=0, evaluate=make_evaluator(xt, yt, xt, yt, 0, bf16=bf16),
                         params=TINY)
    DEFENSES[name](ctx)
    assert {f for _, f in seen} == {bf16}
    # fit's steps and the evaluator; NC trains only once a label is flagged, which an untrained net may not give.
    assert {"backdoor.metrics", *OWN[name], *(() if name == "nc" else ("backdoor.train",))} == {m for m, _ in seen}


def test_knn_monitor_follows_the_flag(seen, tiny):
    model, x, y, xt, yt = tiny
    knn_accuracy(model, x, y, xt, yt, bf16=True)
    assert seen == [("backdoor.metrics", True)] * 2  # one batch of the bank, one of the test images


def test_report_reads_the_recorded_precision():
    assert precision_read([]) == "not recorded (no results)"
    assert precision_read([{"precision": "fp32"}, {"precision": None}]) == "fp32"  # None: no model ran
    assert precision_read([{"precision": "bf16"}] * 2) == "bf16 autocast"
    assert precision_read([{"precision": "bf16"}, {"precision": "fp32"}, {}]) == \
        "mixed: bf16 autocast (1 files), fp32 (1 files), not recorded (1 files)"
    # Written before results recorded the precision used: the profile said bf16, the CPU ran fp32.
    assert precision_read([{"precision": "bf16", "device": "cpu"}, {"precision": "bf16", "device": "cuda:0"}]) == \
        "mixed: bf16 autocast (1 files), fp32 (1 files)"
