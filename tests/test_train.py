"""The engine's on-device augmentation and determinism."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backdoor.models import make_model
from backdoor.metrics import batched
from backdoor.train import TrainConfig, augment, fit, steps_per_epoch, use_channels_last


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
    x = torch.rand(16, 3, 32, 32)
    out = augment(x, pad=4, flip=False, gen=torch.Generator().manual_seed(0))
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert hits, f"image {i} is not a crop of its padded self"
    offsets = {tuple(torch.nonzero(out[i].sum(0) != 0)[0].tolist()) for i in range(16)}
    assert len(offsets) > 1  # different images get different shifts


def test_flip_mirrors_about_half_and_pad0_is_identity():
    x = torch.rand(400, 3, 8, 8)
    out = augment(x, pad=0, flip=True, gen=torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(400)]
    same = [torch.equal(out[i], x[i]) for i in range(400)]
    assert all(f or s for f, s in zip(flipped, same)) and 150 < sum(flipped) < 250
    assert torch.equal(augment(x, pad=0, flip=False), x)


def test_fit_is_deterministic_and_learns():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(128) % 2
    # Two trivially separable classes: bright vs dark images.
    x = (torch.rand(128, 3, 32, 32, generator=g) * 100 + 150 * y[:, None, None, None]).to(torch.uint8)
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, crop_pad=2)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = make_model("preactresnet18", 2, width=4)
        hist = fit(model, x, y, cfg, evaluate=lambda m: {"ca": float((m(x.float() / 255).argmax(1) == y).float().mean())})
        runs.append(([r["loss"] for r in hist[1:]], hist[-1]["ca"]))
    assert runs[0] == runs[1]
    assert runs[0][1] > 0.9 and len(hist) == 4 and hist[0]["epoch"] == 0


def test_eval_every_evaluates_every_nth_epoch_and_the_last_with_the_same_training():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 2
    runs = []
    for every in (1, 3):
        torch.manual_seed(0)
        model = make_model("preactresnet18", 2, width=4)
        calls: list[int] = []
        hist = fit(model, x, y, TrainConfig(epochs=7, batch_size=16, eval_every=every),
                   evaluate=lambda m: calls.append(1) or {"ca": 0.5})
        runs.append([r["loss"] for r in hist[1:]])
    assert [r["epoch"] for r in hist if "ca" in r] == [0, 3, 6, 7] and len(calls) == 4
    assert runs[0] == runs[1]  # skipping evaluation does not change training


def test_steps_per_epoch():
    assert steps_per_epoch(50000, 256) == 195 and steps_per_epoch(50000, 256, drop_last=False) == 196
    assert steps_per_epoch(10, 256) == 1


def test_one_channels_last_rule_cuda_only_for_training_and_inference():
    # Catches a second rule: fit used channels_last on the CPU for even batches, batched inference always.
    assert use_channels_last(torch.device("cuda")) and not use_channels_last(torch.device("cuda"), False)
    assert not use_channels_last(torch.device("cpu"))
    torch.manual_seed(0)
    model = make_model("preactresnet18", 2, 4, "digits")
    x, y = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 2
    fit(model, x, y, TrainConfig(epochs=1, batch_size=32, lr=0.01, crop_pad=0))  # channels_last=True asked
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()  # NCHW: a channels_last 4-d weight is not
    seen = []
    batched(model, x, lambda xb, sl: seen.append(xb.is_contiguous()) or xb[:, 0, 0, 0], 16, bf16=False)
    assert seen == [True] * 4


def test_fit_refuses_a_loss_that_is_no_longer_finite():
    # Catches a run that trains on and saves NaN weights (InputAware on two CPU threads reached NaN at epoch 17).
    torch.manual_seed(0)
    model = make_model("preactresnet18", 2, 4, "digits")
    x, y = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 2
    calls: list[int] = []

    def nan_in_epoch_2(net, xb, yb):  # two batches per epoch: the third call is epoch 2's first
        calls.append(1)
        return F.cross_entropy(net(xb), yb) * (float("nan") if len(calls) > 2 else 1.0)

    with pytest.raises(ValueError, match=r"^fit \(ia\): the training loss became nan in epoch 2; the weights"):
        fit(model, x, y, TrainConfig(epochs=3, batch_size=32, lr=0.01, crop_pad=0), loss_fn=nan_in_epoch_2, desc="ia")
