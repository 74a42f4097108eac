"""SimCLR pre-training (Chen et al. 2020) as BadEncoder's `pretraining_encoder.py` runs it.

NT-Xent at temperature 0.5 over 2B views; augmentations (random resized crop, flip,
colour jitter p=0.8, grayscale p=0.2, no blur) run batched on the device with plain
tensor ops. `run_epochs` is the label-free twin of `backdoor.train.fit` (device-resident
uint8 data, permutation slices, channels_last, bf16 autocast on CUDA, synced timing)
that SimCLR and BadEncoder share; supervised training stays in `fit`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .metrics import batched_outputs
from .train import TrainConfig, autocast, channels_last, device_of, make_optimizer, steps_per_epoch, sync as _sync, \
    use_channels_last

log = logging.getLogger(__name__)

# (x float [B,3,H,W] in [0,1] on the device, generator) -> (loss, {name: scalar tensor})
Step = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]]
GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class SimCLRAugment:
    """BadEncoder's `train_transform` (torchvision defaults); crop=False gives its reference-image augmentation."""

    crop: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor, gen: Optional[torch.Generator]) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, device=like.device, generator=gen)


def resized_crop_flip(x: torch.Tensor, box: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop box [B,4] = (x0, y0, w, h) in pixels from each image, resize bilinearly to full size, flip where set."""
    b, _, h, w = x.shape
    x0, y0, bw, bh = box.unbind(1)
    sx = torch.where(flip, -1.0, 1.0) * bw / w
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, (2 * x0 + bw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh / h, (2 * y0 + bh) / h - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_crop_boxes(x: torch.Tensor, scale, ratio, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """RandomResizedCrop boxes; instead of torchvision's rejection loop, sides are clipped to the image."""
    b, _, h, w = x.shape
    area = _uniform(b, *scale, x, gen) * h * w
    r = torch.exp(_uniform(b, math.log(ratio[0]), math.log(ratio[1]), x, gen))
    bw, bh = (area * r).sqrt().clamp(max=w), (area / r).sqrt().clamp(max=h)
    x0, y0 = torch.rand(b, device=x.device, generator=gen) * (w - bw), torch.rand(b, device=x.device, generator=gen) * (h - bh)
    return torch.stack([x0, y0, bw, bh], 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma [B,1,H,W] with torchvision's weights."""
    wts = torch.tensor(GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * wts).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * other).clamp(0, 1)


def _hue_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` [B] (fraction of a turn) through HSV, as torchvision's adjust_hue."""
    maxc = x.amax(1)
    delta = maxc - x.amin(1)
    r, g, b = x.unbind(1)
    d = delta.clamp_min(1e-12)
    h = torch.where(maxc == r, ((g - b) / d) % 6, torch.where(maxc == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    h = (h + shift.view(-1, 1, 1)) % 1.0
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1) + 6 * h.unsqueeze(1)) % 6
    return maxc.unsqueeze(1) - (maxc * s).unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def jitter_with(x: torch.Tensor, bright: torch.Tensor, contrast: torch.Tensor, sat: torch.Tensor,
                hue: torch.Tensor) -> torch.Tensor:
    """Per-image brightness, contrast, saturation factors and hue shift [B], in that fixed order."""
    x = _blend(x, torch.zeros_like(x), bright)
    x = _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), contrast)
    x = _blend(x, grayscale(x), sat)
    return _hue_shift(x, hue)


def color_jitter(x: torch.Tensor, strength, p: float, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """ColorJitter(*strength) applied with probability p per image (unselected images pass unchanged)."""
    b = len(x)
    on = torch.rand(b, device=x.device, generator=gen) < p
    factors = [1 + _uniform(b, -s, s, x, gen) for s in strength[:3]]
    jittered = jitter_with(x, *factors, _uniform(b, -strength[3], strength[3], x, gen))
    return torch.where(on.view(-1, 1, 1, 1), jittered, x)


def simclr_augment(x: torch.Tensor, aug: SimCLRAugment, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """One random view of each image in x float [B,3,H,W] in [0,1]."""
    flip = torch.rand(len(x), device=x.device, generator=gen) < aug.flip_p
    if aug.crop:
        x = resized_crop_flip(x, random_crop_boxes(x, aug.crop_scale, aug.crop_ratio, gen), flip)
    else:
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    x = color_jitter(x, aug.jitter, aug.jitter_p, gen)
    gray = torch.rand(len(x), device=x.device, generator=gen) < aug.gray_p
    return torch.where(gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent: mean over 2B views of -log(exp(s_pos/t) / sum_{k != i} exp(s_ik/t)), s = cosine."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    b = len(z1)
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(sim, pos)


def run_epochs(module: nn.Module, x: torch.Tensor, cfg: TrainConfig, step: Step, params, *,
               train_mode: Optional[Callable[[], None]] = None, evaluate: Optional[Callable[[], dict]] = None,
               desc: str = "ssl") -> list[dict]:
    """Label-free training loop: `step(batch, gen)` gives the loss; returns per-epoch means and seconds.

    `train_mode` (default `module.train()`) runs before every epoch, so modules that must
    keep some layers in eval mode (BadEncoder's frozen BatchNorm) survive evaluation.
    """
    device = device_of(module)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    x = x.to(device)
    if use_channels_last(device, cfg.channels_last):
        module.to(memory_format=torch.channels_last)
    opt = make_optimizer(cfg, params)
    spe = steps_per_epoch(len(x), cfg.batch_size, cfg.drop_last, cfg.max_steps)
    history = [{"epoch": 0, "seconds": 0.0, **(evaluate() if evaluate else {})}]
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, disable=None, leave=False)
    for epoch in bar:
        (train_mode or module.train)()
        _sync(device)
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        perm = torch.randperm(len(x), device=device, generator=gen)
        for s in range(spe):
            xb = x[perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]].float().div_(255.0)
            with autocast(device, cfg.bf16):
                loss, parts = step(xb, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        _sync(device)
        rec = {"epoch": epoch, "seconds": time.perf_counter() - t0, **{k: v.item() / spe for k, v in sums.items()}}
        rec.update(evaluate() if evaluate else {})
        history.append(rec)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k != "epoch"})
        log.info("%s epoch %d %s", desc, epoch, rec)
    return history


def pretrain_simclr(model: nn.Module, x: torch.Tensor, cfg: TrainConfig, aug: SimCLRAugment = SimCLRAugment(),
                    temperature: float = 0.5, evaluate: Optional[Callable[[], dict]] = None) -> list[dict]:
    """SimCLR on uint8 images x: two views per image, one forward each (BN per view, as BadEncoder)."""

    def step(xb: torch.Tensor, gen: torch.Generator):
        on = use_channels_last(xb.device, cfg.channels_last)
        z1 = model(channels_last(simclr_augment(xb, aug, gen), on))
        z2 = model(channels_last(simclr_augment(xb, aug, gen), on))
        return nt_xent(z1, z2, temperature), {}

    return run_epochs(model, x, cfg, step, model.parameters(), evaluate=evaluate, desc="simclr")


def encode(encoder: nn.Module, x: torch.Tensor, batch_size: int = 1024, *, bf16: bool) -> torch.Tensor:
    """L2-normalised eval-mode features of uint8 images x, on the encoder's device (mode restored)."""
    return batched_outputs(encoder, x, lambda z: F.normalize(z.float(), dim=1), batch_size, bf16=bf16)


@torch.no_grad()
def knn_accuracy(encoder: nn.Module, x_bank: torch.Tensor, y_bank: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, k: int = 200, temperature: float = 0.5, *, bf16: bool) -> float:
    """BadEncoder's monitor: weighted kNN (weights exp(cos/t)) over the bank's features."""
    bank, feats = encode(encoder, x_bank, bf16=bf16), encode(encoder, x_test, bf16=bf16)
    y_bank = y_bank.to(bank.device)
    classes = int(y_bank.max()) + 1
    sim, idx = (feats @ bank.T).topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(feats), classes, device=bank.device)
    votes.scatter_add_(1, y_bank[idx], (sim / temperature).exp())
    return (votes.argmax(1).cpu() == y_test.cpu()).float().mean().item()
