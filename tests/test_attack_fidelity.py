"""Attacks as BackdoorBench runs them: WaNet's post-poisoning augmentation, probabilistic per-batch
poisoning at small ratios (re-injection at 0.001 / 0.0001), BadEncoder's reference input, trigger files."""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

import backdoor.attacks.wanet as wanet_mod
from backdoor.attacks import make_attack
from backdoor.attacks.per_batch import N_DRAWS, crop_shift, draw_count, post_augment, rotate
from backdoor.data import ImageData
from backdoor.models import make_model
from backdoor.train import TrainConfig
from sequela.reinject import reinject


def _x(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _u(crop: float, dy: float, dx: float, rot: float, angle: float, flip: float) -> torch.Tensor:
    return torch.tensor([[crop, dy, dx, rot, angle, flip]])


# ---- post-poisoning augmentation ------------------------------------------------------------

def test_rotation_is_torchvisions_random_rotation_exactly():
    """Catches a wrong sense of rotation, centre or interpolation (BackdoorBench: torchvision, nearest)."""
    x = _x()
    for deg in (10.0, -10.0, 7.3, -2.5):
        assert torch.equal(rotate(x, torch.full((4,), deg)), TF.rotate(x, deg)), deg


def test_crop_is_torchvisions_padded_random_crop_exactly():
    """Catches an off-by-one in the crop window of RandomCrop(32, padding=5)."""
    x = _x()
    for dy, dx in ((0, 0), (10, 3), (5, 5), (7, 10)):
        ref = TF.crop(TF.pad(x, [5]), dy, dx, 32, 32)
        assert torch.equal(crop_shift(x, torch.full((4,), dy), torch.full((4,), dx), 5), ref), (dy, dx)


def test_post_augment_is_crop_then_rotate_then_flip_with_its_probabilities():
    x = _x()
    # crop drawn (0.1 < 0.8) at offset (0, 10); rotation drawn (0.2 < 0.5) by (2 * 0.75 - 1) * 10 = 5 deg; flip drawn
    out = post_augment(x, _u(0.1, 0.0, 0.999, 0.2, 0.75, 0.3), pad=5, degrees=10.0, flip=True)
    ref = TF.hflip(TF.rotate(TF.crop(TF.pad(x, [5]), 0, 10, 32, 32), 5.0))
    assert torch.equal(out, ref)
    # each step skipped: crop 0.8 >= p 0.8, rotation 0.5 >= p 0.5, flip 0.5 >= p 0.5 -> the identity
    assert torch.equal(post_augment(x, _u(0.8, 0.0, 0.0, 0.5, 1.0, 0.5), 5, 10.0, True), x)
    # a dataset that does not flip never flips, whatever the draw
    assert torch.equal(post_augment(x, _u(0.9, 0, 0, 0.9, 0, 0.0), 5, 10.0, False), x)


def test_batch_mode_uses_one_draw_for_the_whole_batch():
    """BackdoorBench applies torchvision's transforms to the batch tensor: one crop/angle/flip per batch."""
    x = _x(1).expand(6, -1, -1, -1)
    u = torch.rand(1, N_DRAWS, generator=torch.Generator().manual_seed(3))
    out = post_augment(x, u, 5, 10.0, True)
    assert all(torch.equal(out[0], o) for o in out[1:])


class Recorder(nn.Module):
    """A linear classifier that keeps every training batch it sees."""

    def __init__(self, size: int):
        super().__init__()
        self.lin, self.seen = nn.Linear(3 * size * size, 10), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def test_wanet_training_batches_are_warped_then_cropped_and_rotated(monkeypatch):
    """The batches WaNet's training really feeds the model: the engine's crop-4 is off (else the
    rows would move randomly), and every image is cropped at (2, 8) and rotated by -6 deg after the warp."""
    img = (_x(1) * 255).round().to(torch.uint8)
    x, y = img.expand(16, -1, -1, -1).clone(), torch.arange(16) % 10
    monkeypatch.setattr(wanet_mod, "augment_draws", lambda n, device, gen: _u(0.0, 0.2, 0.75, 0.0, 0.2, 0.0))
    atk = make_attack("wanet", s=2.0, cross_ratio=0.0)
    model = Recorder(32)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.01, crop_pad=4, flip=True, channels_last=False)
    atk.train_backdoor(model, x, y, cfg, ratio=0.25, seed=0)
    xf = img.float() / 255
    aug = lambda t: TF.hflip(TF.rotate(TF.crop(TF.pad(t, [5]), 2, 8, 32, 32), -6.0))  # noqa: E731
    warped, clean = aug(atk.apply(xf)), aug(xf)
    # training batches only (materialise also bakes, but with no model call)
    assert len(model.seen) == 2
    for b in model.seen:
        assert (b[:2] - warped).abs().max() < 1e-6 and (b[2:] - clean).abs().max() < 1e-6
    assert not torch.equal(warped, clean)


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
