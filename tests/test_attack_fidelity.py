"""Attacks as BackdoorBench runs them: WaNet's post-poisoning augmentation, probabilistic per-batch
poisoning at small ratios (re-injection at 0.001 / 0.0001), BadEncoder's reference input, trigger files."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

import backdoor.attacks.wanet as wanet_mod
from backdoor.attacks import make_attack, trigger_record
from backdoor.attacks.lf import pattern_from_array
from backdoor.attacks.per_batch import Draw, apply_draw, draw_count, inputaware_v1_draw, rotate, wanet_v1_draw
from backdoor.attacks.training import train_backdoored
from backdoor.data import ImageData
from backdoor.models import make_model
from backdoor.poison import bake
from backdoor.train import TrainConfig, crop_at
from sequela.reinject import reinject


def _x(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- augmentation as BackdoorBench v1 draws it ----------------------------------------------

def test_rotation_is_torchvisions_random_rotation_exactly():
    """Catches a wrong sense of rotation, centre or interpolation (v1 InputAware: torchvision, nearest)."""
    x = _x()
    for deg in (10.0, -10.0, 7.3, -2.5):
        assert torch.equal(rotate(x, torch.full((4,), deg)), TF.rotate(x, deg)), deg


def test_bilinear_rotation_is_counter_clockwise_about_the_pixel_grid_centre():
    """v1 WaNet's kornia rotation: bilinear about ((W-1)/2, (H-1)/2); 90 degrees is torch.rot90, any angle
    samples where torchvision's bilinear rotation does (float rounding apart)."""
    x = _x()
    assert (rotate(x, torch.full((4,), 90.0), bilinear=True) - torch.rot90(x, 1, (2, 3))).abs().max() < 1e-5
    ref = TF.rotate(x, 7.3, interpolation=TF.InterpolationMode.BILINEAR)
    out = rotate(x, torch.full((4,), 7.3), bilinear=True)
    assert (out - ref).abs().max() < 1e-5 and (out - rotate(x, torch.full((4,), 7.3))).abs().max() > 0.1


def test_crop_is_torchvisions_padded_random_crop_exactly():
    """Catches an off-by-one in the crop window of RandomCrop(32, padding=5)."""
    x = _x()
    for dy, dx in ((0, 0), (10, 3), (5, 5), (7, 10)):
        ref = TF.crop(TF.pad(x, [5]), dy, dx, 32, 32)
        assert torch.equal(crop_at(x, torch.full((4,), dy), torch.full((4,), dx), 5), ref), (dy, dx)


def test_wanet_v1_draws_crop_offsets_angles_and_flips_per_image():
    """Seed 1: both batch coins pass; each image has its own offset and angle, and kornia's p 0.5 leaves
    two of six unrotated (exact values: a change of draw order or probability shows here)."""
    d = wanet_v1_draw(6, 5, 10.0, True, torch.Generator().manual_seed(1))
    assert d.dy.tolist() == [4, 8, 7, 5, 4, 8] and d.dx.tolist() == [8, 6, 3, 10, 3, 0]
    assert [round(a, 4) for a in d.angle.tolist()] == [5.9972, 2.7736, -0.9003, 0.0, 0.4788, 0.0]
    assert d.flip.tolist() == [True, False, False, True, False, False]
    # seed 5: the crop coin fails (0.8), so no image moves, while the rotation coin passes
    d = wanet_v1_draw(6, 5, 10.0, True, torch.Generator().manual_seed(5))
    assert d.dy.tolist() == d.dx.tolist() == [5] * 6 and (d.angle != 0).sum() == 1
    assert not wanet_v1_draw(6, 5, 10.0, False, torch.Generator().manual_seed(1)).flip.any()


@pytest.mark.parametrize("seed", [0, 1])
def test_wanet_v1_rotates_a_quarter_crops_four_fifths_of_batches(seed):
    """ProbTransform's batch coin (p 0.5) times kornia's per-image p 0.5: a quarter of the images rotate, in
    half of the batches; the crop runs in 80% of the batches. 2,000 batches of 64: the rotation rate's standard
    error is 0.0057, the crop's 0.009."""
    gen = torch.Generator().manual_seed(seed)
    draws = [wanet_v1_draw(64, 5, 10.0, True, gen) for _ in range(2000)]
    rotated = torch.stack([d.angle != 0 for d in draws]).float()
    cropped = torch.tensor([bool((d.dy != 5).any() or (d.dx != 5).any()) for d in draws]).float()
    assert abs(rotated.mean().item() - 0.25) < 0.02
    assert abs((rotated.sum(1) > 0).float().mean().item() - 0.5) < 0.04
    assert abs(cropped.mean().item() - 0.8) < 0.03
    assert max(d.angle.abs().max().item() for d in draws) <= 10.0


def test_inputaware_v1_crops_and_rotates_every_image_by_its_own_draw():
    d = inputaware_v1_draw(6, 5, 10.0, False, torch.Generator().manual_seed(0))
    assert d.dy.tolist() == [5, 3, 5, 0, 7, 7] and d.dx.tolist() == [8, 6, 6, 1, 8, 10]
    assert [round(a, 4) for a in d.angle.tolist()] == [-8.2305, -0.1981, -3.0221, -4.1222, -6.7794, -2.058]
    assert not d.flip.any()  # this dataset does not flip
    assert 0.4 < inputaware_v1_draw(1000, 5, 10.0, True, torch.Generator().manual_seed(0)).flip.float().mean() < 0.6


def test_apply_draw_is_crop_then_rotate_then_flip_per_image():
    x = _x(2)
    d = Draw(torch.tensor([0, 5]), torch.tensor([10, 5]), torch.tensor([5.0, 0.0]), torch.tensor([True, False]))
    out = apply_draw(x, d, 5, bilinear=False)
    assert torch.equal(out[0], TF.hflip(TF.rotate(TF.crop(TF.pad(x[:1], [5]), 0, 10, 32, 32), 5.0))[0])
    assert torch.equal(out[1], x[1])  # offset (pad, pad), no angle, no flip: untouched, bit for bit


class Recorder(nn.Module):
    """A linear classifier that keeps every training batch it sees."""

    def __init__(self, size: int):
        super().__init__()
        self.lin, self.seen = nn.Linear(3 * size * size, 10), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def _fixed_draw(n: int, *args) -> Draw:
    """Image i of a batch: crop offset (i, 10 - i), angle 2 i - 7 degrees, flipped when i is odd."""
    i = torch.arange(n)
    return Draw(i, 10 - i, (2 * i - 7).float(), i % 2 == 1)


def _drawn(t: torch.Tensor, bilinear: bool) -> torch.Tensor:
    """torchvision's reference for `_fixed_draw` on images t."""
    mode = TF.InterpolationMode.BILINEAR if bilinear else TF.InterpolationMode.NEAREST
    out = [TF.rotate(TF.crop(TF.pad(t[i : i + 1], [5]), i, 10 - i, 32, 32), 2.0 * i - 7, interpolation=mode)
           for i in range(len(t))]
    return torch.cat([o.flip(3) if i % 2 else o for i, o in enumerate(out)])


def test_wanet_training_batches_are_warped_then_cropped_and_rotated_per_image(monkeypatch):
    """The batches WaNet's training really feeds the model: the engine's crop-4 is off (else the
    rows would move randomly), and each image gets its own crop and bilinear angle after the warp."""
    img = (_x(1) * 255).round().to(torch.uint8)
    x, y = img.expand(16, -1, -1, -1).clone(), torch.arange(16) % 10
    monkeypatch.setattr(wanet_mod, "wanet_v1_draw", _fixed_draw)
    atk = make_attack("wanet", s=2.0, cross_ratio=0.0)
    model = Recorder(32)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, crop_pad=4, flip=True, channels_last=False)
    train_backdoored(atk, model, ImageData("same", x, y, x[:2], y[:2], 10), cfg, 0.25, 0, evaluate=False)
    xf = img.float().expand(8, -1, -1, -1) / 255
    warped, clean = _drawn(atk.apply(xf), True), _drawn(xf, True)
    assert len(model.seen) == 2  # training batches only (materialise bakes with no model call)
    for b in model.seen:
        assert (b[:2] - warped[:2]).abs().max() < 1e-5 and (b[2:] - clean[2:]).abs().max() < 1e-5
    assert not torch.equal(warped, clean) and not torch.equal(clean[2], clean[3])


def test_inputaware_rotates_and_crops_each_image_before_its_trigger(monkeypatch):
    """v1 InputAware augments at load: G and M see the cropped, rotated (nearest) images, and the backdoor rows
    are those images with the trigger G and M made of them; the clean rows are the augmented images."""
    import backdoor.attacks.inputaware as ia_mod

    img = (_x(1) * 255).round().to(torch.uint8)
    x, y = img.expand(16, -1, -1, -1).clone(), torch.arange(16) % 10
    monkeypatch.setattr(ia_mod, "inputaware_v1_draw", _fixed_draw)
    torch.manual_seed(0)
    atk = make_attack("inputaware", width=4, mask_epochs=0, cross_ratio=0.0)
    seen: dict[str, list] = {"g_in": [], "g_out": [], "m_out": []}
    atk.generator.register_forward_hook(lambda m, i, o: seen["g_in"].append(i[0].detach()) or
                                        seen["g_out"].append(o.detach()))
    atk.mask_net.register_forward_hook(lambda m, i, o: seen["m_out"].append(o.detach()))
    model = Recorder(32)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, crop_pad=4, flip=True, channels_last=False)
    train_backdoored(atk, model, ImageData("same", x, y, x[:2], y[:2], 10), cfg, 0.25, 0, evaluate=False)
    aug = _drawn(img.float().expand(8, -1, -1, -1) / 255, False)
    assert len(model.seen) == 2
    for k, b in enumerate(model.seen):
        assert torch.equal(b[2:], aug[2:])
        # G and M run twice a step (backdoor rows, then the empty cross rows): the trigger is made of the augmented images
        assert torch.equal(seen["g_in"][2 * k], aug[:2])
        p, m = seen["g_out"][2 * k], ia_mod.threshold(seen["m_out"][2 * k])
        assert (b[:2] - (aug[:2] + (p - aug[:2]) * m)).abs().max() < 1e-6 and (b[:2] - aug[:2]).abs().max() > 1e-3


# ---- per-batch poisoning at small ratios -----------------------------------------------------

def test_draw_count_poisons_ratio_times_batch_on_average():
    """int(0.001 * 256) = 0 poisoned nothing; BackdoorBench draws one image with probability 0.256."""
    gen = torch.Generator().manual_seed(0)
    for ratio, tol in ((0.001, 0.01), (0.0001, 0.004)):  # ~3.2 and ~3.6 standard errors of 20,000 draws
        mean = sum(draw_count(256, ratio, gen) for _ in range(20000)) / 20000
        assert abs(mean - ratio * 256) < tol, (ratio, mean)
    assert {draw_count(256, 0.1, gen) for _ in range(50)} == {25}  # int(25.6), as before


def test_wanet_hook_at_ratio_0_001_relabels_what_it_draws():
    atk = make_attack("wanet", size=8, target=0)
    tally: dict[str, int] = {}
    hook = atk.batch_hook(0.001, seed=1, tally=tally)
    x, y = torch.rand(256, 3, 8, 8), torch.ones(256, dtype=torch.long)
    relabelled = sum(int((hook(x, y, s)[1] == 0).sum()) for s in range(2000))
    assert relabelled == tally["poisoned"]
    assert abs(tally["poisoned"] / 2000 - 0.256) < 0.03, tally  # 3.1 standard errors


def test_reinject_wanet_at_ratio_0_001_runs_and_reports_the_drawn_count():
    """Before: num_poisoned = int(32 * 0.001) * steps = 0, so the run was skipped and the panel empty."""
    g = torch.Generator().manual_seed(0)
    data = ImageData("digits", torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                     torch.randint(0, 10, (64,), generator=g), torch.randint(0, 256, (16, 3, 32, 32),
                     dtype=torch.uint8, generator=g), torch.randint(0, 10, (16,), generator=g), 10)
    model = make_model("preactresnet18", 10, 4, "digits")
    cfg = TrainConfig(epochs=1, batch_size=32, lr=0.01, channels_last=False)
    rec = reinject(model, make_attack("wanet"), data, cfg, 2, 0.001, seed=1)
    assert "skipped" not in rec and len(rec["history"]) == 3
    assert abs(rec["n_poison"] - 0.032 * 2) < 1e-9  # expected per epoch: ratio x batch x steps
    assert isinstance(rec["n_poison_drawn"], int) and 0 <= rec["n_poison_drawn"] <= 4


# ---- BadEncoder's reference input ------------------------------------------------------------

def test_badencoder_reference_comes_from_training_data_and_is_held_out():
    """Before: the reference was a downstream *test* image, the set ASR is measured on."""
    import experiments.encoder as ex

    z = torch.zeros(6, 3, 32, 32, dtype=torch.uint8)
    x_train = torch.arange(6, dtype=torch.uint8)[:, None, None, None].expand(6, 3, 32, 32).clone()
    data = ImageData("t", x_train, torch.tensor([1, 9, 3, 9, 0, 2]), z, torch.tensor([9, 0, 0, 0, 0, 9]), 10)
    picks = {ex.pick_reference(data, 9, s) for s in range(20)}
    assert picks == {1, 3}  # the training images of class 9 (test images 0 and 5 never)
    held = ex.without_reference(data, {"dataset": "t", "split": "train", "index": 3})
    assert held.x_train[:, 0, 0, 0].tolist() == [0, 1, 2, 4, 5] and held.y_train.tolist() == [1, 9, 3, 0, 2]
    assert torch.equal(held.x_test, data.x_test)
    old = {"dataset": "t", "split": "test", "index": 3}  # checkpoints made before the change
    assert ex.without_reference(data, old) is data


# ---- trigger files -----------------------------------------------------------------------------

def _bb_pattern(tmp_path, shape=(32, 32, 3), seed=0):
    """A file laid out as BackdoorBench's resource/lowFrequency/*_0_255.npy (uint8, H x W x 3)."""
    a = np.random.default_rng(seed).integers(0, 52, size=shape, dtype=np.uint8)
    path = tmp_path / "cifar10_preactresnet18_0_255.npy"
    np.save(path, a)
    return path, a


def test_lf_uses_backdoorbenchs_pattern_file_exactly(tmp_path, monkeypatch):
    """Catches an HWC/CHW mix-up or a wrong scale: baked pixels are clip(x + pattern) in uint8."""
    path, a = _bb_pattern(tmp_path)
    atk = make_attack("lf", pattern_file=str(path))
    monkeypatch.setattr(type(atk), "generate", lambda *a, **k: pytest.fail("a pattern file must not be regenerated"))
    atk.prepare_trigger(None, None, width=4, seed=0)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    ref = (x.int() + torch.from_numpy(a).permute(2, 0, 1).int()).clamp(0, 255)
    assert torch.equal(bake(atk, x).int(), ref)
    p = atk.params()
    assert p["pattern_file"] == str(path) and p["pattern_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    rec = trigger_record(atk)
    assert rec["files"] == {"pattern_file": {"path": str(path), "sha256": p["pattern_sha256"]}}


def test_lf_pattern_file_errors_are_one_line(tmp_path):
    path, _ = _bb_pattern(tmp_path, shape=(16, 16, 3))
    with pytest.raises(ValueError, match="shape \\(16, 16, 3\\); need finite values, 32x32x3"):
        make_attack("lf", pattern_file=str(path)).prepare_trigger(None, None, 4, 0)
    with pytest.raises(FileNotFoundError, match="not found"):
        make_attack("lf", pattern_file=str(tmp_path / "nope.npy")).prepare_trigger(None, None, 4, 0)
    path, _ = _bb_pattern(tmp_path)
    with pytest.raises(ValueError, match="expected 00"):
        make_attack("lf", pattern_file=str(path), pattern_sha256="00").prepare_trigger(None, None, 4, 0)
    grey = np.full((32, 32), 7, dtype=np.uint8)  # BackdoorBench stacks a 2-D pattern into 3 channels
    assert torch.equal(pattern_from_array(grey, 32) * 255, torch.full((3, 32, 32), 7.0))


def test_trigger_record_hashes_key_file_and_trigger_state(tmp_path):
    """Two runs with different key images get different records; the same key, the same record."""
    from PIL import Image

    keys = []
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"k{i}.png")
        keys.append(str(tmp_path / f"k{i}.png"))
    r0, r0b, r1 = (trigger_record(make_attack("blended", key_image=k)) for k in (keys[0], keys[0], keys[1]))
    assert r0["files"]["key_image"]["sha256"] == hashlib.sha256(open(keys[0], "rb").read()).hexdigest()
    assert r0 == r0b and r0["state_sha256"] != r1["state_sha256"]
    builtin = trigger_record(make_attack("blended"))  # sklearn:china.jpg is no file: its pixels are hashed
    assert builtin["files"] == {} and len(builtin["state_sha256"]) == 64


# ---- Fig. 8's two readings of the FT learning rate ---------------------------------------------

def test_figure8_marks_both_readings_of_the_ft_lr():
    from figures.figure8 import lr_label

    assert lr_label(0.001, 0.001) == "LR 0.001 (= training LR: Sec. 3.2/4.4)"
    assert lr_label(0.0001, 0.001) == 'LR 0.0001 (Sec. 5.5\'s "same small LR")'
    assert lr_label(0.1, 0.001) == "LR 0.1"
