"""Clean accuracy (CA), attack success rate (ASR) and robust accuracy (RA)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Top-1 predictions for uint8 images [N,3,H,W]; runs on the model's device, keeps its mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device, non_blocking=True).float().div_(255.0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            preds.append(model(xb.contiguous(memory_format=torch.channels_last)).argmax(1))
    model.train(was_training)
    return torch.cat(preds).cpu() if preds else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of images predicted as their label."""
    return (predict(model, x) == y.cpu()).float().mean().item() if len(y) else float("nan")


def attack_success_rate(preds: torch.Tensor, y_true: torch.Tensor, target: int) -> float:
    """Fraction of triggered images whose true label is not `target` that are predicted as `target`."""
    keep = y_true != target
    return (preds[keep] == target).float().mean().item() if keep.any() else float("nan")


def make_evaluator(
    x_test: torch.Tensor, y_test: torch.Tensor, x_bd: torch.Tensor, y_bd: torch.Tensor, target: int
) -> Callable[[nn.Module], dict[str, float]]:
    """Return model -> {"ca", "asr", "ra"} on a clean test set and its triggered non-target copy."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        bd_preds = predict(model, x_bd)
        return {
            "ca": accuracy(model, x_test, y_test),
            "asr": attack_success_rate(bd_preds, y_bd, target),
            "ra": (bd_preds == y_bd.cpu()).float().mean().item() if len(y_bd) else float("nan"),
        }

    return evaluate
