"""Transfer ASR, head swap, fine-tuning fractions, and the ablation / transfer steps on tiny data."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn as nn

from backdoor.attacks import make_attack
from backdoor.checkpoint import save_model
from backdoor.data import ImageData
from backdoor.metrics import make_transfer_evaluator, transfer_attack_success_rate
from backdoor.models import make_model
from backdoor.poison import bake
from backdoor.train import steps_per_epoch
from defenses import DefenseContext, get_defense
from experiments import ablations, clean, common, paths, sweeps, transfer
from experiments.profiles import get_profile
from experiments.sweeps import AblationPoint, parse_point, point_file

SMOKE = get_profile("smoke")
WIDTH = 4  # the checkpoints written here are narrow: these tests check mechanisms, not accuracy


# ---------------------------------------------------------------- transfer ASR


def test_transfer_asr_excludes_each_class_own_images():
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 0, 2, 2, 2, 0])
    # c=0: images of classes 1, 2 -> preds 2,2,2,0 -> 1/4 (counting class 0's own images would give 5/8)
    # c=1: none predicted 1 -> 0;  c=2: images of classes 0, 1 -> preds 0,0,0,0,2,2 -> 2/6
    asr, c = transfer_attack_success_rate(preds, y, 3)
    assert c == 2 and asr == pytest.approx(2 / 6)


def test_transfer_asr_ties_absent_classes_and_empty():
    y, preds = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 0, 3, 3])
    # c=0: 1/3, c=1: 1/3, c=3: 1/3 (its own image excluded) -> tie, smallest class wins
    assert transfer_attack_success_rate(preds, y, 4) == (pytest.approx(1 / 3), 0)
    # a downstream class with no test images still counts every image as "not c"
    assert transfer_attack_success_rate(torch.tensor([4, 4, 0]), torch.tensor([0, 1, 2]), 5) == (
        pytest.approx(2 / 3), 4)
    asr, c = transfer_attack_success_rate(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 3)
    assert asr != asr and c == -1  # NaN


class _PixelClassifier(nn.Module):
    """Predicts class = the top-left pixel value (0..255) of channel 0, so tests choose predictions."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(cls, self.num_classes).float() + 0 * self.dummy


def _images(values: list[int]) -> torch.Tensor:
    x = torch.zeros(len(values), 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.tensor(values, dtype=torch.uint8)
    return x


def test_transfer_evaluator_reports_ca_and_asr_per_trigger():
    y = torch.tensor([0, 1, 2, 2])
    ev = make_transfer_evaluator(_images([0, 1, 0, 2]), y, {"a": _images([1, 1, 1, 1]), "b": _images([0, 1, 2, 2])}, 3,
                                 bf16=False)
    out = ev(_PixelClassifier(3))
    assert out["ca"] == pytest.approx(0.75)
    assert (out["asr_a"], out["asr_class_a"]) == (pytest.approx(1.0), 1)  # every non-1 image goes to 1
    assert (out["asr_b"], out["asr_class_b"]) == (pytest.approx(0.0), 0)  # all correct: no class absorbs others


# ---------------------------------------------------------------- head swap


def test_swap_head_keeps_every_other_weight_bit_identical():
    torch.manual_seed(1)
    model = make_model("preactresnet18", 10, WIDTH, "cifar100")
    for m in model.modules():  # non-trivial BN statistics, so buffers are checked too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    transfer.swap_head(model, 5, seed=3)
    after = model.state_dict()
    assert torch.equal(torch.get_rng_state(), rng)  # the seeded init does not disturb the global RNG
    assert set(after) == set(before)
    for k, v in before.items():
        if k.startswith("linear."):
            assert after[k].shape[0] == 5
        else:
            assert torch.equal(after[k], v), k
    assert after["linear.weight"].shape == (5, 8 * WIDTH) and model(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    again = transfer.swap_head(make_model("preactresnet18", 10, WIDTH), 5, seed=3)
    other = transfer.swap_head(make_model("preactresnet18", 10, WIDTH), 5, seed=4)
    assert torch.equal(again.linear.weight, model.linear.weight)
    assert not torch.equal(other.linear.weight, model.linear.weight)


# ---------------------------------------------------------------- fractions and points


@pytest.mark.parametrize("n,fraction", [(1400, 0.1), (1400, 0.3), (397, 0.3), (5, 0.5), (7, 1.0), (50000, 0.2)])
def test_subset_indices_exact_count_seeded_nested(n, fraction):
    idx = ablations.subset_indices(n, fraction, seed=0)
    assert len(idx) == round(fraction * n)
    assert len(torch.unique(idx)) == len(idx) and bool((idx[1:] > idx[:-1]).all()) and int(idx.max()) < n
    assert torch.equal(idx, ablations.subset_indices(n, fraction, seed=0))
    if fraction < 1:
        if n >= 100:  # tiny sets may draw the same subset under two seeds
            assert not torch.equal(idx, ablations.subset_indices(n, fraction, seed=1))
        small = ablations.subset_indices(n, fraction / 2, seed=0)
        assert set(small.tolist()) <= set(idx.tolist())  # 5% is inside 10%


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, 0.0001])
def test_subset_indices_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="fraction"):
        ablations.subset_indices(1400, fraction, seed=0)


def test_point_names_round_trip_and_reuse_of_standalone_runs():
    sw = SMOKE.sweeps
    for p in [AblationPoint("sft", 0.1, lr_max1=0.3), AblationPoint("ft", lr=1e-4), AblationPoint("ft", 0.5, lr=0.1)]:
        assert parse_point(p.name) == p
    assert AblationPoint("ft", lr=1e-4).name == "ft_lr0.0001"
    with pytest.raises(ValueError, match="bad ablation point"):
        parse_point("sft_lr0.1")
    assert point_file(AblationPoint("sft", 1.0, lr_max1=SMOKE.sft.lr_max1), SMOKE, sw) == "sft.json"
    assert point_file(AblationPoint("ft", lr=SMOKE.ft_lr), SMOKE, sw) == "ft.json"
    assert point_file(AblationPoint("sft", 1.0, lr_max1=0.3), SMOKE, sw) == "ablation/sft_frac1_max0.3.json"
    longer = replace(sw, ft_epochs=SMOKE.finetune_epochs + 1)  # more epochs than the standalone run has
    assert point_file(AblationPoint("ft", lr=SMOKE.ft_lr), SMOKE, longer) == "ablation/ft_lr0.001.json"


# ---------------------------------------------------------------- the steps, on tiny data


@pytest.fixture()
def tiny(digits, tmp_path, monkeypatch):
    """300/100 digits, artifacts in tmp_path, width-4 checkpoints for badnets, blended and clean."""
    small = ImageData("digits", digits.x_train[:300], digits.y_train[:300], digits.x_test[:100],
                      digits.y_test[:100], 10)
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    monkeypatch.setattr(ablations, "load_data", lambda name, prof=None: small)
    monkeypatch.setattr(transfer, "load_data", lambda name, prof=None: small)
    arch = {"name": "preactresnet18", "num_classes": 10, "width": WIDTH, "dataset": "digits"}
    for name in ("badnets", "blended"):
        torch.manual_seed(0)
        attack = make_attack(name, target=0)
        save_model(paths.path("backdoor", paths.checkpoints("smoke"), dataset="digits", attack=name),
                   make_model("preactresnet18", 10, WIDTH, "digits"),
                   {"arch": arch, "attack": {"name": name, "params": attack.params()}}, attack)
    save_model(clean.clean_path(SMOKE, "digits"), make_model("preactresnet18", 10, WIDTH, "digits"),
               {"arch": arch, "attack": None})
    return small


def test_sweep_writes_one_result_per_point_and_skips_finished(tiny, tmp_path):
    sw = SMOKE.sweeps
    points = sweeps._make_field("points", SMOKE, sw).split()
    assert points == ["sft_frac0.1_max0.1", "sft_frac0.5_max0.1", "ft_lr0.1", "sft_frac0.1_max0.3"]
    ablations.main(["--profile", "smoke", "--dataset", "digits", "--attack", "badnets", "--points", *points])
    out = tmp_path / "results" / "smoke" / "digits" / "badnets" / "ablation"
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(points)
    full_half_cycle = SMOKE.sft.step_size(steps_per_epoch(300, SMOKE.finetune_batch))
    for name in points:
        r = json.loads((out / f"{name}.json").read_text())
        point = parse_point(name)
        assert r["subset_size"] == round(point.fraction * 300) and r["name"] == name
        assert len(r["history"]) == sweeps.point_epochs(point, SMOKE, sw) + 1
        if point.defense == "ft":
            assert all(h["lr"] == point.lr for h in r["history"][1:])
        else:  # a subset keeps the full set's half-cycle in steps, and the point's peak LR
            assert r["half_cycle_steps"] == full_half_cycle and r["sft"]["lr_max1"] == point.lr_max1
    stamp = (out / f"{points[0]}.json").stat().st_mtime_ns
    ablations.main(["--profile", "smoke", "--dataset", "digits", "--attack", "badnets", "--points", points[0]])
    assert (out / f"{points[0]}.json").stat().st_mtime_ns == stamp


def test_full_fraction_point_is_a_prefix_of_the_standalone_sft_run(tiny):
    """Why a point may read `sft.json`: same schedule, same data order, so its epochs are a prefix."""
    point = AblationPoint("sft", 1.0, lr_max1=SMOKE.sft.lr_max1)
    sw = replace(SMOKE.sweeps, sft_epochs=2)
    short = ablations.run_point(SMOKE, sw, "digits", "badnets", point, torch.device("cpu"))["history"]
    model, attack, _ = common.load_backdoored(
        paths.path("backdoor", paths.checkpoints("smoke"), dataset="digits", attack="badnets"), torch.device("cpu"))
    ctx = DefenseContext(model, tiny.x_train, tiny.y_train, replace(SMOKE.finetune_config("digits"), epochs=3),
                         common.evaluator_for(tiny, attack, torch.device("cpu"), bf16=False), params={"sft": SMOKE.sft})
    longer = get_defense("sft")(ctx).history
    strip = lambda h: json.dumps([{k: v for k, v in r.items() if not k.endswith("seconds")} for r in h])  # NaN-safe  # noqa: E731
    assert strip(short) == strip(longer[:3])


def test_transfer_run_records_per_trigger_asr_for_backdoored_and_clean(tiny, tmp_path):
    root = tmp_path / "results" / "smoke" / "transfer" / "digits5to9"
    for attack, triggers, defense in (("badnets", "", "ft"), ("clean", "badnets blended", "ft"), ("badnets", "", "sft")):
        transfer.main(["run", "--profile", "smoke", "--downstream", "digits5to9", "--attack", attack,
                       "--defense", defense, "--triggers", triggers])
        r = json.loads((root / attack / f"{defense}.json").read_text())
        names = triggers.split() or [attack]
        assert r["triggers"] == names and len(r["history"]) == SMOKE.sweeps.transfer_epochs + 1
        for rec in r["history"]:
            for a in names:
                assert 0 <= rec[f"asr_{a}"] <= 1 and rec[f"asr_class_{a}"] in range(5)
    # SFT keeps the half-cycle (in steps) it has on the 300-image pre-training set, not the ~150-image task's
    assert r["half_cycle_steps"] == SMOKE.sft.step_size(steps_per_epoch(300, SMOKE.finetune_batch))
    assert r["half_cycle_steps"] != SMOKE.sft.step_size(r["steps_per_epoch"])


def test_digits5to9_is_relabelled_and_disjoint_from_the_adversary_target(tiny):
    d = transfer.load_downstream("digits5to9")
    keep = tiny.y_train >= 5
    assert d.num_classes == 5 and torch.equal(d.y_train, tiny.y_train[keep] - 5)
    assert torch.equal(d.x_train, tiny.x_train[keep]) and set(d.y_test.tolist()) <= set(range(5))


def test_bad_names_fail_in_one_line(tiny):
    with pytest.raises(SystemExit, match="transfer defense must be one of"):
        transfer.main(["run", "--profile", "smoke", "--downstream", "digits5to9", "--attack", "badnets",
                       "--defense", "nc"])
    with pytest.raises(SystemExit, match="needs --triggers"):
        transfer.main(["run", "--profile", "smoke", "--downstream", "digits5to9", "--attack", "clean"])
    with pytest.raises(SystemExit, match="unknown profile"):
        ablations.main(["--profile", "nope", "--dataset", "digits", "--attack", "badnets", "--points", "ft_lr0.1"])


# ---------------------------------------------------------------- on the session's real backdoored model


def test_transfer_run_starts_from_the_backdoored_model_with_a_fresh_seeded_head(smoke_chain, monkeypatch):
    # Catches `transfer run` without the head swap (the pre-trained head predicts digits 5-9 as 5-9, CA 0),
    # with an unseeded head, or from another checkpoint: epoch 0 is exactly the swapped backdoored model.
    smoke_chain.train()
    smoke_chain.run(transfer, "run", "--downstream", "digits5to9", "--attack", "badnets", "--defense", "ft")
    r = json.loads((smoke_chain.root / "results" / "smoke" / "transfer" / "digits5to9" / "badnets" / "ft.json")
                   .read_text())
    monkeypatch.setattr(transfer, "load_data", lambda name, prof=None: smoke_chain.data)
    down = transfer.load_downstream("digits5to9")
    model, attack, _ = common.load_backdoored(smoke_chain.checkpoints_dir / "backdoor.safetensors", torch.device("cpu"))
    transfer.swap_head(model, 5, SMOKE.seed)
    ev = make_transfer_evaluator(down.x_test, down.y_test, {"badnets": bake(attack, down.x_test)}, 5, bf16=False)
    out, keys = ev(model), ("ca", "asr_badnets", "asr_class_badnets")
    assert {k: out[k] for k in keys} == {k: r["history"][0][k] for k in keys}
    assert len(r["history"]) == get_profile("smoke").sweeps.transfer_epochs + 1 and r["final"]["ca"] > 0.9
