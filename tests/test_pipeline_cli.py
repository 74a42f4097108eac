"""The happy path of the real steps, checked exactly on the session's smoke chain (tests/conftest.py):
`standalone train` -> `defend --defense sft` and `--defense spectral` -> `sequela mia` and
`sequela reinject --ratio 0.01` into the SFT model. Every Fig. 4/5/6/10/11 number flows through these."""
from __future__ import annotations

import pytest
import torch

from backdoor.poison import poison_indices
from conftest import CLI_REINJECT_EPOCHS
from defenses.finetune import sft_lr_trace
from experiments import sequela, standalone
from experiments.common import evaluator_for, load_backdoored
from experiments.profiles import get_profile

SMOKE = get_profile("smoke")
SPE = 1400 // SMOKE.finetune_batch  # 21 steps per epoch (drop_last)
CPU = torch.device("cpu")


def _scores(chain, name: str) -> dict:
    """CA/ASR of a saved checkpoint, measured afresh."""
    model, attack, _ = load_backdoored(chain.checkpoints_dir / f"{name}.safetensors", CPU)
    return evaluator_for(chain.data, attack, CPU, bf16=False)(model)


def _poisoned(chain):
    return standalone.load_poisoned_set(chain.checkpoints_dir / "poison.safetensors", chain.data)


def test_train_writes_the_poisoned_set_and_the_trained_model(smoke_chain):
    smoke_chain.train()
    r, clean = smoke_chain.result("backdoor.json"), smoke_chain.data
    x, y, idx = _poisoned(smoke_chain)
    # Catches a poisoned set saved with clean labels or untriggered rows, or drawn with another seed/ratio.
    assert torch.equal(idx, poison_indices(1400, SMOKE.poison_ratio, SMOKE.seed)) and r["num_poisoned"] == 140
    assert (y[idx] == SMOKE.target).all() and (x[idx][:, :, 29:, 29:] == 255).all()
    flipped = idx[clean.y_train[idx] != SMOKE.target]
    assert torch.equal((y != clean.y_train).nonzero().flatten(), flipped) and len(flipped) > 100
    rest = torch.ones(1400, dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(x[rest], clean.x_train[rest])
    # Catches a checkpoint saved before training or from another model: it reproduces the recorded final row.
    assert [h["epoch"] for h in r["history"]] == list(range(SMOKE.attack_train.epochs + 1))
    assert _scores(smoke_chain, "backdoor") == {k: r["final"][k] for k in ("ca", "asr", "ra")}


def test_defend_sft_uses_the_profiles_schedule_and_saves_its_model(smoke_chain):
    smoke_chain.defend("sft")
    r, before = smoke_chain.result("sft.json"), smoke_chain.result("backdoor.json")["final"]
    # Catches `defend` falling back to the paper's SFTConfig (500-step half-cycle) or the wrong batch.
    assert (r["half_cycle_steps"], r["steps_per_epoch"]) == (SMOKE.sft.step_size(SPE), SPE) == (52, 21)
    trace = sft_lr_trace(SMOKE.sft, SPE, SMOKE.finetune_epochs * SPE + 1)
    assert [h["lr"] for h in r["history"]] == [trace[e * SPE] for e in range(SMOKE.finetune_epochs + 1)]
    assert r["sft"]["lr_max1"] == SMOKE.sft.lr_max1 and r["sft"]["half_cycle_epochs"] == SMOKE.sft.half_cycle_epochs
    # Epoch 0 is the backdoored model; the saved checkpoint is the defended one.
    assert (r["before"]["ca"], r["before"]["asr"]) == (before["ca"], before["asr"])
    assert _scores(smoke_chain, "sft") == {k: r["final"][k] for k in ("ca", "asr", "ra")}


def test_baseline_defence_sees_the_adversarys_poisoned_set(smoke_chain):
    smoke_chain.defend("spectral")
    r = smoke_chain.result("spectral.json")
    _, y, idx = _poisoned(smoke_chain)
    (_, x_seen, y_seen, cfg, *_), flagged = smoke_chain.calls["spectral_detect"][-1]
    # Catches a `load_poisoned_set` that returns the clean labels or images: Spectral must inspect what the
    # backdoored model was trained on.
    assert torch.equal(y_seen, y) and not torch.equal(y_seen, smoke_chain.data.y_train)
    assert (x_seen[idx][:, :, 29:, 29:] == 255).all()
    assert cfg == get_profile("smoke").defenses["spectral"]
    expected = sum(round(cfg.removal_factor * cfg.eps * int(n)) for n in torch.bincount(y, minlength=10))
    assert r["num_flagged"] == len(flagged) == expected
    hits = int(torch.isin(flagged, idx).sum())
    assert r["detection_precision"] == pytest.approx(hits / len(flagged))
    assert r["detection_recall"] == pytest.approx(hits / 140)


def test_mia_members_are_unpoisoned_training_images(smoke_chain):
    smoke_chain.defend("sft")
    smoke_chain.run(sequela, "mia", "--dataset", "digits", "--attack", "badnets", "--model", "sft")
    r, sft = smoke_chain.result("mia", "sft.json"), smoke_chain.result("sft.json")["final"]
    _, _, idx = _poisoned(smoke_chain)
    (n_train, n_test), sp = smoke_chain.calls["mia_split"][-1][0][:2], smoke_chain.calls["mia_split"][-1][1]
    members = torch.cat([sp.train_members, sp.eval_members])
    # Catches members drawn from poisoned images (exclude not passed) or test images used as members.
    assert (n_train, n_test) == (1400, 397) and not torch.isin(members, idx).any()
    assert len(members.unique()) == len(members) == 2 * 198 and r["n_train"] == r["n_eval"] == 396
    # Catches the attack run against another model than `--model`.
    assert (r["ca"], r["asr"]) == (sft["ca"], sft["asr"]) and r["mia_epochs"] == SMOKE.mia_epochs


def test_reinject_into_the_defended_model_poisons_round_ratio_n(smoke_chain):
    smoke_chain.defend("sft")
    smoke_chain.run(sequela, "reinject", "--dataset", "digits", "--attack", "badnets", "--model", "sft",
                    "--ratio", "0.01")
    r, sft = smoke_chain.result("reinject", "sft", "0.01.json"), smoke_chain.result("sft.json")["final"]
    (x, y, _attack, ratio, seed), (xp, yp, idx) = smoke_chain.calls["poison_train_set"][-1]
    # Catches a re-injection that ignores --ratio, reuses the training seed, or poisons a different count.
    assert ratio == 0.01 and seed == SMOKE.seed + sequela.REINJECT_SEED != SMOKE.seed
    assert r["n_poison"] == len(idx) == int((yp != y).sum() + (y[idx] == SMOKE.target).sum()) == 14
    assert (r["epochs"], len(r["history"]), r["n_train"]) == (CLI_REINJECT_EPOCHS, CLI_REINJECT_EPOCHS + 1, 1400)
    # Epoch 0 is the SFT model as saved (catches re-injecting into the backdoored or a fresh model).
    assert (r["history"][0]["ca"], r["history"][0]["asr"]) == (sft["ca"], sft["asr"])
