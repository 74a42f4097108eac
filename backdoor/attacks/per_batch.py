"""What WaNet and InputAware share as per-batch poisoners, following BackdoorBench.

Counts: BackdoorBench's `generalize_to_lower_pratio` poisons int(ratio * B) images of a batch
when ratio * B >= 1, and otherwise one image with probability ratio * B, so that the expected
number per epoch stays ratio x N at ratios below 1 / batch (0.001 and 0.0001 at B = 256).

Post-poisoning augmentation (WaNet's `PostTensorTransform`): after the trigger, random crop with
zero padding 5 (p = 0.8), random rotation by U(-10, 10) degrees (p = 0.5, nearest, zero fill) and,
where the dataset flips (CIFAR10), a horizontal flip (p = 0.5), in that order. BackdoorBench calls
torchvision's transforms on the whole batch tensor, so one draw decides for all images of a
batch (`mode="batch"`); `mode="image"` draws per image; `mode="off"` leaves the engine's own
crop/flip, which runs before the trigger.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F

AUGMENT_MODES = ("batch", "image", "off")
P_CROP, P_ROTATE, P_FLIP = 0.8, 0.5, 0.5  # BackdoorBench's ProbTransform probabilities
N_DRAWS = 6  # uniforms per draw: crop?, dy, dx, rotate?, angle, flip?


class PerBatchAttack(Protocol):
    def cross_count(self, nb: int, batch: int) -> int: ...


def check_augment(mode: str) -> None:
    """Fail in one line on an unknown post-poisoning augmentation mode."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augment mode {mode!r}; choose one of: {', '.join(AUGMENT_MODES)}")


def draw_count(batch: int, ratio: float, gen: torch.Generator) -> int:
    """Poisoned images in one batch: int(ratio * batch), or 1 with probability ratio * batch below 1."""
    e = ratio * batch
    if e >= 1:
        return int(e)
    # a CPU generator: the decision is a slice length, so drawing it on the GPU would sync every step
    return int(torch.rand((), generator=gen).item() < e)


def expected_counts(attack: PerBatchAttack, batch: int, ratio: float) -> tuple[float, float]:
    """Expected (backdoor, cross) images per batch under `draw_count`."""
    e = ratio * batch
    if e >= 1:
        nb = int(e)
        return float(nb), float(attack.cross_count(nb, batch))
    return e, e * attack.cross_count(1, batch)


def augment_draws(n: int, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """[n, N_DRAWS] uniforms that decide one post-augmentation (n = 1: one for the whole batch)."""
    return torch.rand(n, N_DRAWS, device=device, generator=gen)


def crop_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop of the zero-padded image at per-image offsets (dy, dx) in [0, 2 * pad]; pad, pad = identity."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[torch.arange(b, device=x.device)[:, None, None, None], chans, rows, cols]


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each square image counter-clockwise about its centre (torchvision's sense), nearest, zero fill."""
    a = degrees * (math.pi / 180)
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def post_augment(x: torch.Tensor, u: torch.Tensor, pad: int, degrees: float, flip: bool) -> torch.Tensor:
    """Crop (p 0.8), rotate (p 0.5), flip (p 0.5, if `flip`) as decided by uniforms u [1 or B, N_DRAWS]."""
    u = u.expand(len(x), N_DRAWS)
    if pad > 0:
        span = 2 * pad + 1
        on = u[:, 0] < P_CROP
        dy = torch.where(on, (u[:, 1] * span).long().clamp(max=span - 1), pad)
        dx = torch.where(on, (u[:, 2] * span).long().clamp(max=span - 1), pad)
        x = crop_shift(x, dy, dx, pad)
    if degrees > 0:
        on = u[:, 3] < P_ROTATE
        x = torch.where(on[:, None, None, None], rotate(x, (2 * u[:, 4] - 1) * degrees), x)
    if flip:
        x = torch.where((u[:, 5] < P_FLIP)[:, None, None, None], x.flip(3), x)
    return x
