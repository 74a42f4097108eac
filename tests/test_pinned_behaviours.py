"""Behaviours a planted bug slipped past before (issue 27), each pinned with exact values on hand-made inputs.

RA/ASR, FT's constant LR, a sidecar without its SHA-256, re-injection's 0.8 threshold, the MIA features, and
LF's universal pattern (its target and fooling rate).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from backdoor.attacks import make_attack
from backdoor.attacks.lf import LF, targeted_deepfool
from backdoor.checkpoint import CheckpointError, load_checkpoint, save_model, sidecar_path
from backdoor.metrics import attack_success_rate, make_evaluator
from backdoor.models import make_model
from backdoor.train import TrainConfig
from defenses import DefenseContext, get_defense
from experiments import paths
from experiments import sequela as sequela_cli
from sequela.mia import attack_features
from sequela.reinject import epochs_to


class LookupModel(nn.Module):
    """Returns row k of `table` for an image whose first pixel is k/255: outputs chosen per image by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def images(n: int) -> torch.Tensor:
    """n uint8 4x4 images; image k has first pixel k (the LookupModel's row)."""
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


def predicting(preds: list[int], classes: int = 10) -> LookupModel:
    """A model whose top-1 prediction for image k is preds[k]."""
    return LookupModel(torch.eye(classes)[torch.tensor(preds)])


# ---- CA, ASR, RA ------------------------------------------------------------------------------


def test_evaluator_ra_counts_triggered_images_kept_at_their_true_label():
    # Triggered non-target images, true labels 1..5, target 0: one goes to the target, three stay
    # correct, one goes elsewhere. ASR 1/5, RA 3/5 (an inverted RA, preds != label, gives 2/5).
    y_bd = torch.tensor([1, 2, 3, 4, 5])
    model = predicting([0, 2, 3, 4, 7])
    x_test, y_test = images(4), torch.tensor([0, 2, 9, 9])  # this model: 0 2 3 4 -> CA 2/4
    ev = make_evaluator(x_test, y_test, images(5), y_bd, 0, bf16=False)
    assert ev(model) == {"ca": 0.5, "asr": pytest.approx(0.2), "ra": pytest.approx(0.6)}


def test_evaluator_asr_and_ra_move_apart_when_the_backdoor_fires():
    # Every triggered image predicted as the target: ASR 1, RA 0; none: ASR 0, RA 1.
    y_bd = torch.tensor([1, 2, 3, 4])
    ev = make_evaluator(images(4), y_bd, images(4), y_bd, 0, bf16=False)
    fired, clean = ev(predicting([0, 0, 0, 0])), ev(predicting([1, 2, 3, 4]))
    assert (fired["asr"], fired["ra"], fired["ca"]) == (1.0, 0.0, 0.0)
    assert (clean["asr"], clean["ra"], clean["ca"]) == (0.0, 1.0, 1.0)


def test_asr_counts_predictions_of_the_target_among_non_target_labels_only():
    # Target 2: the two images labelled 2 leave the denominator (4 left); predictions of 2 among them: 3.
    y_true = torch.tensor([2, 2, 0, 1, 3, 4])
    preds = torch.tensor([2, 0, 2, 2, 2, 4])
    assert attack_success_rate(preds, y_true, 2) == 0.75
    assert math.isnan(attack_success_rate(preds[:2], y_true[:2], 2))  # only target-class images: undefined


# ---- FT: a constant LR, whatever the training schedule ------------------------------------------


def test_ft_ignores_a_cosine_training_schedule():
    # The training config asks for cosine over 3 epochs (LR after epoch 1 would be 0.0123 * 0.75); FT must
    # keep 0.0123 at every epoch. (tests/test_schedule.py checks FT with a config that is constant anyway.)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (32,))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.0123, crop_pad=0, schedule="cosine", cosine_t_max=3)
    res = get_defense("ft")(DefenseContext(make_model("preactresnet18", 10, width=2), x, y, cfg))
    assert [r["lr"] for r in res.history] == [0.0123] * 4


# ---- a sidecar without its SHA-256 ---------------------------------------------------------------


@pytest.mark.parametrize("edit", [lambda m: m.pop("sha256"), lambda m: m.update(sha256=""),
                                  lambda m: m.update(sha256=None)], ids=["missing", "empty", "null"])
def test_sidecar_without_its_hash_is_refused_when_the_weights_changed(tmp_path: Path, edit):
    # The weights are changed too (one float of the last tensor, header intact), so only the hash can tell.
    torch.manual_seed(0)
    path = save_model(tmp_path / "m.safetensors", nn.Linear(3, 2), {"arch": {"width": 4}})
    blob = bytearray(path.read_bytes())
    blob[-2] ^= 0x01
    path.write_bytes(bytes(blob))
    side = sidecar_path(path)
    meta = json.loads(side.read_text())
    edit(meta)
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match the SHA-256 in its sidecar"):
        load_checkpoint(path)


# ---- re-injection: epochs to ASR >= 0.8 ----------------------------------------------------------


def _curve(*asr: float) -> list[dict]:
    return [{"epoch": e, "asr": a, "ca": 0.9} for e, a in enumerate(asr)]


def test_epochs_to_asr_uses_threshold_0_8():
    assert epochs_to(_curve(0.1, 0.55, 0.7, 0.79)) is None  # crosses 0.5, never 0.8: 'never'
    assert epochs_to(_curve(0.1, 0.55, 0.7, 0.8, 0.95)) == 3  # reaching 0.8 counts
    assert epochs_to(_curve(0.85, 0.2, 0.9)) == 0  # already before re-injection
    assert epochs_to(_curve(0.1, 0.55, 0.6), threshold=0.5) == 1


def test_reinject_step_writes_epochs_to_asr_0_8(tmp_path: Path, monkeypatch, digits):
    """The CLI's `epochs_to_asr_0.8` for a stubbed re-injection curve: 'never' (null) for one that crosses 0.5
    only, and the first epoch at 0.8 for another."""
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    monkeypatch.setattr(sequela_cli, "load_start", lambda *a: (nn.Linear(2, 2), make_attack("badnets", target=0)))
    monkeypatch.setattr(sequela_cli, "load_data", lambda name, prof=None: digits)
    written = {}
    for ratio, asr in (("0.01", (0.05, 0.6, 0.75, 0.7)), ("0.1", (0.05, 0.6, 0.81, 0.9))):
        monkeypatch.setattr(sequela_cli, "reinject", lambda *a, asr=asr, **k: {"history": _curve(*asr)})
        sequela_cli.main(["reinject", "--profile", "smoke", "--device", "cpu", "--dataset", "digits",
                          "--attack", "badnets", "--model", "ft", "--ratio", ratio])
        out = paths.path("reinject", paths.results("smoke"), dataset="digits", attack="badnets", model="ft",
                         ratio=ratio)
        written[ratio] = json.loads(Path(out).read_text())["epochs_to_asr_0.8"]
    assert written == {"0.01": None, "0.1": 2}


# ---- MIA features --------------------------------------------------------------------------------


def test_mia_features_are_sorted_posteriors_then_correct_against_the_true_label():
    # Posteriors chosen by hand (logits = their logs): image 0 predicts 2, image 1 predicts 0, image 2
    # predicts 1. Labels 2, 1, 1: correct, wrong, correct. Against class 0 the flag would read 0, 1, 0.
    probs = torch.tensor([[0.2, 0.1, 0.7], [0.5, 0.3, 0.2], [0.25, 0.6, 0.15]])
    f = attack_features(LookupModel(probs.log()), images(3), torch.tensor([2, 1, 1]))
    expected = torch.tensor([[0.7, 0.2, 0.1, 1.0], [0.5, 0.3, 0.2, 0.0], [0.6, 0.25, 0.15, 1.0]])
    assert f.dtype == torch.float32 and f.shape == (3, 4)
    assert torch.allclose(f, expected, atol=1e-6), f


def test_mia_correct_flag_follows_the_label_not_the_prediction_alone():
    # Same outputs, other labels: the flag changes and the posteriors do not.
    probs = torch.tensor([[0.2, 0.1, 0.7], [0.5, 0.3, 0.2]])
    model = LookupModel(probs.log())
    a = attack_features(model, images(2), torch.tensor([2, 0]))
    b = attack_features(model, images(2), torch.tensor([1, 2]))
    assert a[:, 3].tolist() == [1.0, 1.0] and b[:, 3].tolist() == [0.0, 0.0]
    assert torch.equal(a[:, :3], b[:, :3])


# ---- LF: the universal pattern steers toward the target --------------------------------------------


class LeftRight(nn.Module):
    """3 classes from d = mean(left half) - mean(right half) of an 8x8 image: logits (0.5, 10d, -10d), so a
    brighter left half reads as class 1, a brighter right half as class 2, and a balanced image as class 0."""

    def __init__(self):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x[..., :4].mean((1, 2, 3)) - x[..., 4:].mean((1, 2, 3))
        return torch.stack([torch.full_like(d, 0.5), self.k * d, -self.k * d], 1)


def _leaning(offsets: list[float]) -> torch.Tensor:
    """Grey 0.4 images whose right half is brighter by `offsets` (negative: the left half is)."""
    x = torch.full((len(offsets), 3, 8, 8), 0.4)
    x[..., 4:] += torch.tensor(offsets)[:, None, None, None]
    return x


OFFSETS = [0.0, 0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2]  # the model: classes 0 0 0 2 2 2 2 2


def test_targeted_deepfool_moves_each_image_to_the_target():
    model, x = LeftRight().eval(), _leaning([0.0, 0.1, -0.1])  # classes 0, 2, 1
    for target in (0, 1, 2):
        r, ok = targeted_deepfool(model, x, target, overshoot=0.02, max_iter=50)
        assert ok.all() and model(x + r).argmax(1).tolist() == [target] * 3


@pytest.mark.parametrize("target,sign", [(1, 1.0), (2, -1.0)])
def test_lf_pattern_steers_toward_its_target(target, sign):
    """Target 1 brightens the left half, target 2 the right (mirrored images): 3 of 8 reach the target after
    one pass, and of the five that started in the other class, four leave it."""
    model, x = LeftRight().eval(), _leaning([sign * o for o in OFFSETS])
    atk = LF(target=target, size=8, n_images=4, max_passes=1, fool_rate=1.0, sigma=2.0, taps=5, batch=2)
    v = atk.generate(model, x[:4], x, seed=0)
    left, right = v[..., :4].sum().item(), v[..., 4:].sum().item()
    assert (left > 2 * right) if target == 1 else (right > 2 * left), (left, right)
    preds = model((x + v).clamp(0, 1)).argmax(1).tolist()
    # Logit margins after the pattern: >= 0.068 (measured), so no float noise flips these.
    assert preds == [target] * 3 + [0] * 4 + [3 - target], preds  # the last one was the other class already
    assert float(v.min()) == 0.0 and float(v.max()) == pytest.approx(0.2)


@pytest.mark.parametrize("fool_rate,logged", [(0.3, [0.375]), (0.5, [0.375, 0.25, 0.25])])
def test_lf_logs_the_share_at_the_target_and_stops_once_it_reaches_fool_rate(caplog, fool_rate, logged):
    """Each pass logs the share of x_eval predicted as the target; generation stops at the first pass at
    `fool_rate` or above (0.3: after pass 1), else runs `max_passes` (0.5: never reached in 3)."""
    model, x = LeftRight().eval(), _leaning(OFFSETS)
    atk = LF(target=1, size=8, n_images=4, max_passes=3, fool_rate=fool_rate, sigma=2.0, taps=5, batch=2)
    with caplog.at_level(logging.INFO, logger="backdoor.attacks.lf"):
        v = atk.generate(model, x[:4], x, seed=0)
    rates = [float(m.split()[-1]) for m in caplog.messages if m.startswith("LF pass")]
    assert rates == logged
    assert (model((x + v).clamp(0, 1)).argmax(1) == 1).float().mean().item() == logged[-1]
