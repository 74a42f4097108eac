"""What WaNet and InputAware share as per-batch poisoners, following BackdoorBench v1.

Counts: BackdoorBench's `generalize_to_lower_pratio` poisons int(ratio * B) images of a batch
when ratio * B >= 1, and otherwise one image with probability ratio * B, so that the expected
number per epoch stays ratio x N at ratios below 1 / batch (0.001 and 0.0001 at B = 256).

Augmentation, as v1 draws it (all draws per image unless said otherwise):
- WaNet (`wanet_v1_draw`, v1:attack/wanet_attack.py:186-212 `ProbTransform`/`PostTensorTransform`,
  kornia 0.5.0 ops with same_on_batch=False), after the trigger: one coin per batch (p 0.8) decides
  whether the batch is cropped, then every image gets its own offset (zero padding 5); one coin per
  batch (p 0.5) decides whether rotation runs, then kornia's own p 0.5 rotates each image by its own
  U(-10, 10) degrees (so a quarter of the images rotate), bilinear, align_corners=True, zero fill;
  then a flip with p 0.5 per image where the dataset flips (CIFAR10).
- InputAware (`inputaware_v1_draw`, v1:attack/inputaware_attack.py:319-335 `get_transform`,
  torchvision on each PIL image at load), before the trigger: RandomCrop(padding 5) and
  RandomRotation(10) always (nearest, zero fill), flip p 0.5 where the dataset flips.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..train import crop_at

P_CROP, P_ROTATE, P_FLIP = 0.8, 0.5, 0.5  # v1 ProbTransform's batch coins, kornia's per-image p, the flip


class PerBatchAttack(Protocol):
    def cross_count(self, nb: int, batch: int) -> int: ...


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


@dataclass(frozen=True)
class Draw:
    """One batch's augmentation: per-image crop offsets (pad = no shift), angles (0 = not rotated), flips."""

    dy: torch.Tensor
    dx: torch.Tensor
    angle: torch.Tensor
    flip: torch.Tensor


def _offsets(u: torch.Tensor, pad: int) -> torch.Tensor:
    """Uniform integer offsets in [0, 2 * pad] from uniforms u (kornia's and torchvision's floor rule)."""
    span = 2 * pad + 1
    return (u * span).long().clamp(max=span - 1)


def wanet_v1_draw(n: int, pad: int, degrees: float, flip: bool, gen: torch.Generator) -> Draw:
    """v1 WaNet's PostTensorTransform for n images: batch coins for crop (0.8) and rotation (0.5), per-image rest."""
    coin = torch.rand(2, device=gen.device, generator=gen)  # on the device: no sync for a Python bool
    u = torch.rand(n, 5, device=gen.device, generator=gen)  # dy, dx, rotate?, angle, flip?
    crop = coin[0] < P_CROP
    rot = (coin[1] < P_ROTATE) & (u[:, 2] < P_ROTATE)
    return Draw(torch.where(crop, _offsets(u[:, 0], pad), pad), torch.where(crop, _offsets(u[:, 1], pad), pad),
                torch.where(rot, (2 * u[:, 3] - 1) * degrees, 0.0), (u[:, 4] < P_FLIP) & flip)


def inputaware_v1_draw(n: int, pad: int, degrees: float, flip: bool, gen: torch.Generator) -> Draw:
    """v1 InputAware's train transform for n images: crop and rotation always, flip with p 0.5."""
    u = torch.rand(n, 4, device=gen.device, generator=gen)  # dy, dx, angle, flip?
    return Draw(_offsets(u[:, 0], pad), _offsets(u[:, 1], pad), (2 * u[:, 2] - 1) * degrees,
                (u[:, 3] < P_FLIP) & flip)


def rotate(x: torch.Tensor, degrees: torch.Tensor, bilinear: bool = False) -> torch.Tensor:
    """Rotate each square image counter-clockwise about its centre, zero fill: torchvision's RandomRotation
    (nearest, pixel-centre grid) or, `bilinear`, kornia's (bilinear, align_corners=True)."""
    a = degrees * (math.pi / 180)
    cos, sin, zero = a.cos(), a.sin(), torch.zeros_like(a)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=bilinear)
    return F.grid_sample(x, grid, mode="bilinear" if bilinear else "nearest", padding_mode="zeros",
                         align_corners=bilinear)


def apply_draw(x: torch.Tensor, d: Draw, pad: int, bilinear: bool) -> torch.Tensor:
    """Crop, rotate, flip x as drawn; images drawn unrotated stay bit-exact (no resampling)."""
    if pad > 0:
        x = crop_at(x, d.dy, d.dx, pad)
    x = torch.where((d.angle != 0)[:, None, None, None], rotate(x, d.angle, bilinear), x)
    return torch.where(d.flip[:, None, None, None], x.flip(3), x)
