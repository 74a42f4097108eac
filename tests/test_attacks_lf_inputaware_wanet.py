"""LF, InputAware and WaNet: exact trigger mechanics, determinism, and (slow) trained ASR on digits."""
from __future__ import annotations

import time

import pytest
import torch

from backdoor.attacks import make_attack
from backdoor.attacks.inputaware import InputAware
from backdoor.attacks.lf import LF, gaussian_lowpass
from backdoor.attacks.training import train_backdoored
from backdoor.data import ImageData
from backdoor.models import make_model
from backdoor.poison import bake
from backdoor.train import TrainConfig
from experiments.profiles import get_profile

TINY = TrainConfig(epochs=1, batch_size=32, lr=0.01, channels_last=False)


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _subset(data: ImageData, n: int) -> ImageData:
    return ImageData(data.name, data.x_train[:n], data.y_train[:n], data.x_test[:64], data.y_test[:64],
                     data.num_classes)


def low_freq_fraction(v: torch.Tensor, cutoff: int = 4) -> float:
    """Share of the (mean-removed) spectral energy at frequencies <= cutoff cycles per image."""
    f = torch.fft.fft2(v - v.mean(dim=(-2, -1), keepdim=True)).abs().pow(2).sum(0)
    k = torch.fft.fftfreq(v.shape[-1]) * v.shape[-1]
    radius = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
    return (f[radius <= cutoff].sum() / f.sum()).item()


# ---- WaNet ----------------------------------------------------------------------------------

def test_wanet_with_zero_strength_is_the_identity():
    x = torch.rand(4, 3, 32, 32)
    assert (make_attack("wanet", s=0.0).apply(x) - x).abs().max() < 1e-5


def test_wanet_moves_pixels_along_its_grid_exactly():
    # Bilinear sampling of a linear ramp is exact, so the output reads back the grid's x coordinate.
    atk = make_attack("wanet")
    ramp = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)
    expected = (atk.grid()[0, ..., 0] + 1) / 2
    out = atk.apply(ramp)[0]
    assert (out - expected).abs().max() < 1e-5
    shift = (out[0] - ramp[0, 0]).abs().max() * 31  # in pixels
    assert 0.05 < shift < 1.5  # a small, sub-pixel-to-pixel warp, as in BackdoorBench


def test_wanet_is_deterministic_per_seed():
    a, b, c = (make_attack("wanet", seed=s) for s in (3, 3, 4))
    assert torch.equal(a.noise_grid, b.noise_grid) and not torch.equal(a.noise_grid, c.noise_grid)


def test_wanet_batch_hook_relabels_bd_and_keeps_cross_labels():
    atk = make_attack("wanet", target=0)
    x, y = torch.rand(64, 3, 32, 32), torch.randint(1, 10, (64,))
    xh, yh = atk.batch_hook(0.1, seed=0)(x, y, 0)
    nb, nc = 6, 12  # int(0.1 * 64), int(6 * cross_ratio 2)
    assert (yh[:nb] == 0).all() and torch.equal(yh[nb:], y[nb:])
    assert torch.allclose(xh[:nb], atk.apply(x[:nb]))
    assert not torch.allclose(xh[nb : nb + nc], atk.apply(x[nb : nb + nc]), atol=1e-3)  # jittered warp
    assert torch.equal(xh[nb + nc :], x[nb + nc :])


# ---- LF -------------------------------------------------------------------------------------

def test_gaussian_lowpass_removes_high_frequencies():
    noise = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert low_freq_fraction(noise) < 0.1  # white noise: energy spread over all frequencies
    assert low_freq_fraction(gaussian_lowpass(noise, sigma=6.0, taps=30)) > 0.95


def test_lf_generated_trigger_is_low_frequency_bounded_and_deterministic():
    # On a linear model DeepFool converges in one step, so this runs in a moment.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x = _images(6).float() / 255
    atk = LF(n_images=6, max_passes=2)
    v1, v2 = atk.generate(model, x, x, seed=1), atk.generate(model, x, x, seed=1)
    assert torch.equal(v1, v2)
    assert v1.min().item() == 0.0 and abs(v1.max().item() - 0.2) < 1e-6
    assert low_freq_fraction(v1) > 0.95


def test_lf_adds_the_pattern_with_clipping_in_uint8():
    atk = LF()
    atk.set_pattern(gaussian_lowpass(torch.rand(3, 32, 32), 6.0, 30).clamp(0, 0.2))
    p = (atk.pattern * 255).round().int()
    x = _images()
    assert torch.equal(bake(atk, x).int(), (x.int() + p).clamp(0, 255))
    with pytest.raises(ValueError, match="prepare"):
        LF().apply(torch.rand(1, 3, 32, 32))


def test_lf_prepare_caches_the_trigger_per_dataset(digits, tmp_path, monkeypatch):
    data, fixed = _subset(digits, 64), gaussian_lowpass(torch.rand(3, 32, 32), 6.0, 30).clamp(0, 0.2)
    calls = []
    monkeypatch.setattr(LF, "generate", lambda self, *a: calls.append(a) or fixed)
    a = LF(clean_epochs=0)
    a.prepare_trigger(data, TINY, width=4, seed=0, cache_dir=tmp_path)
    assert a.cache_path("digits", 4, tmp_path).is_file() and len(calls) == 1
    b = LF(clean_epochs=0)
    b.prepare_trigger(data, TINY, width=4, seed=0, cache_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(a.pattern, b.pattern)
    LF(clean_epochs=0).prepare_trigger(data, TINY, width=4, seed=1, cache_dir=tmp_path)  # other settings: regenerate
    assert len(calls) == 2


# ---- InputAware ------------------------------------------------------------------------------

def test_inputaware_triggers_differ_between_images_and_stay_in_range():
    torch.manual_seed(0)
    atk = InputAware(width=4)
    x = torch.rand(2, 3, 32, 32)
    r = atk.apply(x) - x
    assert (r[0] - r[1]).abs().mean() > 1e-3
    out = atk.apply(x)
    assert out.min() >= 0 and out.max() <= 1


def test_inputaware_hook_relabels_and_trains_the_generator():
    torch.manual_seed(0)
    atk = InputAware(width=4).train()
    opt = torch.optim.Adam(atk.generator.parameters(), lr=0.01)
    hook, flush = atk.batch_hook(0.1, opt)
    x, y = torch.rand(40, 3, 32, 32), torch.randint(1, 10, (40,))
    xh, yh = hook(x, y, 0)
    xa = atk.augment(x, False, torch.Generator().manual_seed(1))  # the hook's draw (seed + 1), before the trigger
    assert (yh[:4] == 0).all() and torch.equal(yh[4:], y[4:]) and torch.equal(xh[8:], xa[8:])
    before = [p.detach().clone() for p in atk.generator.parameters()]
    torch.nn.functional.cross_entropy(torch.randn(40, 10) + xh.mean(dim=(1, 2, 3))[:, None], yh).backward()
    flush()
    assert any(not torch.equal(b, p) for b, p in zip(before, atk.generator.parameters()))
    assert all(p.grad is None for p in atk.mask_net.parameters())


def _naive_rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean(dim=(1, 2, 3)).sqrt()


def test_diversity_gradient_stays_finite_when_g_gives_two_images_the_same_pattern(monkeypatch):
    """The cause of InputAware's NaN (two CPU threads, epoch 17): once G's output layer is constant (here its
    last BN's gamma is 0, as for a dead channel, so every pixel is its bias), two images get bit-identical patterns,
    and sqrt's infinite derivative at 0 times the mean square's 0 is NaN in every G weight. Our gradient there is 0."""
    import backdoor.attacks.inputaware as ia_mod

    torch.manual_seed(0)
    g = ia_mod.Generator(4, 3).train()
    with torch.no_grad():
        g[-1][1].weight.zero_()
    x1, x2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    grads = {}
    for name, rms in (("ours", ia_mod.rms_distance), ("naive", _naive_rms)):
        monkeypatch.setattr(ia_mod, "rms_distance", rms)
        g.zero_grad()
        p1, p2 = g(x1), g(x2)
        assert torch.equal(p1, p2)
        (ia_mod.diversity(x1, x2, p1, p2) + p1.mean()).backward()
        grads[name] = torch.cat([p.grad.flatten() for p in g.parameters()])
    assert grads["naive"].isnan().any()  # the world without the fix
    assert grads["ours"].isfinite().all() and grads["ours"].abs().sum() > 0  # p1.mean() still trains G
    d = torch.rand(3, 3, 8, 8)
    assert torch.equal(ia_mod.rms_distance(d, d.flip(0)), _naive_rms(d, d.flip(0)))  # same values elsewhere


def test_inputaware_mask_stage_shrinks_the_mask(digits):
    torch.manual_seed(0)
    atk = InputAware(width=4, mask_epochs=2)
    x = digits.x_train[:64]
    before = atk.pattern_and_mask(x[:32].float() / 255)[1].mean().item()
    atk.train_mask(x, TINY, seed=0)
    after = atk.pattern_and_mask(x[:32].float() / 255)[1].mean().item()
    assert after < before and not atk.mask_net.training


def test_own_loop_training_is_deterministic(digits):
    data = _subset(digits, 64)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        atk, model = InputAware(width=4, mask_epochs=1), make_model("preactresnet18", 10, 4, "digits")
        hist, info = train_backdoored(atk, model, data, TINY, 0.1, seed=0, evaluate=False)
        runs.append((hist[-1]["loss"], info["x_train"], model.linear.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[0][2], runs[1][2])
    # int(0.1 * 32) = 3 backdoor images per batch of 32, so 3/32 of the 64 images are materialised
    assert len(info["poison_idx"]) == 6 and (info["y_train"][info["poison_idx"]] == 0).all()


def test_static_training_returns_the_poisoned_set(digits):
    data = _subset(digits, 64)
    torch.manual_seed(0)
    model = make_model("preactresnet18", 10, 4, "digits")
    hist, info = train_backdoored(make_attack("badnets"), model, data, TINY, 0.25, seed=0, evaluate=False)
    idx = info["poison_idx"]
    changed = (info["x_train"] != data.x_train).flatten(1).any(1).nonzero().flatten()
    assert len(idx) == 16 and set(changed.tolist()) <= set(idx.tolist()) and len(hist) == 2
    with pytest.raises(ValueError, match="ratio"):
        train_backdoored(make_attack("badnets"), model, data, TINY, 1.5, seed=0)


# ---- trained on digits (slow) ----------------------------------------------------------------

SMOKE = get_profile("smoke")
# Final CA / ASR measured (NCHW on CPU, one thread, seed 0 / every torch seed +1): LF 0.992/1.000, 0.995/1.000;
# WaNet 0.997/0.994, 0.985/0.969; InputAware 0.995/0.844, 0.992/0.774 (its ASR swings 0.69-0.92 between
# evaluations: the generator is trained per batch on 1,400 images), so its bar is lower; a clean model's is ~0.1.
# With two threads InputAware diverged (CA 0.796 at epoch 10, then 0.098 = one class; twice, deterministic) since
# CPU training is NCHW; it reached 0.995/0.955 in channels_last. Cause: the diversity loss's sqrt gradient at
# distance 0 (fixed in issue 26, test_diversity_gradient_stays_finite_...); the bar was measured on one thread,
# and with v1's crop 5 + rotation since issue 26 it is not re-measured here, so one thread stays until it is.
MIN_ASR = {"lf": 0.8, "wanet": 0.8, "inputaware": 0.6}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lf", "inputaware", "wanet"])
def test_attack_reaches_high_asr_on_digits(name, digits):
    # The smoke profile's own recipe and attack presets (width 16, 40 epochs; measured in docs/attacks.md).
    torch.manual_seed(SMOKE.seed)
    model = make_model("preactresnet18", digits.num_classes, SMOKE.width, "digits")
    attack = make_attack(name, **SMOKE.attack_kwargs(name))
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    if name == "inputaware":  # two threads diverge here, see MIN_ASR
        torch.set_num_threads(1)
    try:
        hist, _ = train_backdoored(attack, model, digits, SMOKE.train_config("digits"), SMOKE.poison_ratio, SMOKE.seed)
    finally:
        torch.set_num_threads(threads)
    curve = [(r["epoch"], round(r["ca"], 3), round(r["asr"], 3)) for r in hist if "ca" in r]  # eval_every=10
    print(f"{name}: {time.perf_counter() - t0:.0f} s, (CA, ASR) per epoch {curve}")
    assert hist[-1]["asr"] >= MIN_ASR[name] and hist[-1]["ca"] >= 0.8, curve
