"""Poisoned training and test sets, following BackdoorBench's rules.

Training: exactly round(ratio * N) indices drawn uniformly from *all* training images
(target class included), triggered and relabelled to the target. Test: every test image
whose true label is not the target, triggered; ASR is measured on those only.
"""
from __future__ import annotations

import math

import torch

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
def bake(attack: Attack, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Trigger uint8 images [N,3,H,W] and round back to uint8, as if saved to disk."""
    out = torch.empty_like(x)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].float() / 255.0
        tb = attack.apply(xb.to(_device_of(attack)))
        out[i : i + batch_size] = (tb * 255.0).round().clamp(0, 255).to(torch.uint8).to(x.device)
    return out


def _device_of(attack: Attack) -> torch.device:
    tensors = list(attack.parameters()) + list(attack.buffers())
    return tensors[0].device if tensors else torch.device("cpu")


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
