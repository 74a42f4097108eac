"""Poisoned training and test sets, following BackdoorBench's rules.

Training: exactly round(ratio * N) indices drawn uniformly from *all* training images
(target class included), triggered and relabelled to the target. Test: every test image
whose true label is not the target, triggered; ASR is measured on those only.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .train import device_of

if TYPE_CHECKING:  # annotations only: backdoor.attacks imports this module, not the other way round
    from .attacks import Attack


def check_ratio(ratio: float) -> None:
    """Fail in one line on a poison ratio that is not a number in [0, 1]."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or math.isnan(ratio) \
            or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"poison ratio must be a number in [0, 1], got {ratio!r}")


def check_target(target: int, num_classes: int, dataset: str = "the dataset") -> None:
    """Fail in one line when an attack's target class does not exist in the dataset."""
    if not 0 <= target < num_classes:
        raise ValueError(f"target class {target} does not exist in {dataset} ({num_classes} classes: "
                         f"0..{num_classes - 1}); choose a target below {num_classes}")


def poison_indices(n: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """Sorted indices of exactly round(ratio * n) images, drawn uniformly with `seed`."""
    check_ratio(ratio)
    k = round(ratio * n)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:k].sort().values


@torch.no_grad()
def bake_with(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device,
              batch_size: int = 1024) -> torch.Tensor:
    """fn applied on `device` to uint8 images [N,3,H,W] as floats in [0,1], rounded back to uint8 on x's device."""
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].float() / 255.0
        tb = fn(xb.to(device))
        out[i : i + batch_size] = (tb * 255.0).round().clamp(0, 255).to(torch.uint8).to(x.device)
    return out


def bake(attack: Attack, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Trigger uint8 images [N,3,H,W] and round back to uint8, as if saved to disk."""
    return bake_with(attack.apply, x, device_of(attack), batch_size)


def poison_train_set(
    x: torch.Tensor, y: torch.Tensor, attack: Attack, ratio: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (poisoned images, poisoned labels, poison indices); inputs are not modified."""
    idx = poison_indices(len(x), ratio, seed)
    xp, yp = x.clone(), y.clone()
    if len(idx):
        xp[idx] = bake(attack, x[idx])
        yp[idx] = attack.target
    return xp, yp, idx


def poisoned_test_set(x: torch.Tensor, y: torch.Tensor, attack: Attack) -> tuple[torch.Tensor, torch.Tensor]:
    """Triggered copies of the non-target test images, with their true labels."""
    keep = y != attack.target
    return bake(attack, x[keep]), y[keep]


def materialise(x: torch.Tensor, y: torch.Tensor, attack: Attack, bd_ratio: float, cross_ratio: float,
                seed: int, cross: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> dict:
    """The poisoned training set a per-batch attack stands for (BackdoorBench saves one too).

    round(bd_ratio * N) images (the same indices `poison_indices` draws) are triggered and
    relabelled; the next round(cross_ratio * N) of the same permutation go through `cross`
    and keep their labels. Returns poison_idx, cross_idx, x_train, y_train, num_poisoned.
    """
    n = len(x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    kb = round(bd_ratio * n)
    kc = min(round(cross_ratio * n), n - kb) if cross is not None else 0
    bd, cr = perm[:kb].sort().values, perm[kb : kb + kc].sort().values
    device = device_of(attack)
    xp, yp = x.clone(), y.clone()
    if kb:
        xp[bd] = bake_with(attack.apply, x[bd], device)
        yp[bd] = attack.target
    if kc:
        xp[cr] = bake_with(cross, x[cr], device)
    return {"poison_idx": bd, "cross_idx": cr, "x_train": xp, "y_train": yp, "num_poisoned": kb}
