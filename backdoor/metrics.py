"""Clean accuracy (CA), attack success rate (ASR) and robust accuracy (RA)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .train import autocast, channels_last, device_of, use_channels_last


@torch.no_grad()
def batched(model: nn.Module, x: torch.Tensor, step: Callable[[torch.Tensor, slice], torch.Tensor],
            batch_size: int = 1024, *, bf16: bool, also: tuple[nn.Module, ...] = ()) -> torch.Tensor:
    """The one batched-inference loop: step(float batch in [0,1] on the model's device, its slice of x) for
    uint8 images x [N,3,H,W], concatenated on the CPU.

    No grad, eval mode (`model` and `also`, restored after), in the run's precision (`autocast`) and the
    engine's memory layout (`use_channels_last`).
    """
    device = device_of(model)
    modules = (model, *also)
    modes = [m.training for m in modules]
    on = use_channels_last(device)
    for m in modules:
        m.eval()
    out = []
    try:
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            xb = x[sl].to(device, non_blocking=True).float().div_(255.0)
            with autocast(device, bf16):
                out.append(step(channels_last(xb, on), sl).cpu())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return torch.cat(out) if out else torch.empty(0)


def batched_outputs(model: nn.Module, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor] = lambda o: o,
                    batch_size: int = 1024, *, bf16: bool) -> torch.Tensor:
    """fn(model output) for uint8 images [N,3,H,W] (`batched`: eval mode, batched on the model's device); on the CPU."""
    return batched(model, x, lambda xb, _: fn(model(xb)), batch_size, bf16=bf16)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, *, bf16: bool) -> torch.Tensor:
    """Top-1 predictions for uint8 images [N,3,H,W]; runs on the model's device, keeps its mode."""
    return batched_outputs(model, x, lambda o: o.argmax(1), batch_size, bf16=bf16).long()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bf16: bool) -> float:
    """Fraction of images predicted as their label."""
    return (predict(model, x, bf16=bf16) == y.cpu()).float().mean().item() if len(y) else float("nan")


def attack_success_rate(preds: torch.Tensor, y_true: torch.Tensor, target: int) -> float:
    """Fraction of triggered images whose true label is not `target` that are predicted as `target`."""
    keep = y_true != target
    return (preds[keep] == target).float().mean().item() if keep.any() else float("nan")


def make_evaluator(
    x_test: torch.Tensor, y_test: torch.Tensor, x_bd: torch.Tensor, y_bd: torch.Tensor, target: int, *, bf16: bool
) -> Callable[[nn.Module], dict[str, float]]:
    """Return model -> {"ca", "asr", "ra"} on a clean test set and its triggered non-target copy."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        bd_preds = predict(model, x_bd, bf16=bf16)
        return {
            "ca": accuracy(model, x_test, y_test, bf16=bf16),
            "asr": attack_success_rate(bd_preds, y_bd, target),
            "ra": (bd_preds == y_bd.cpu()).float().mean().item() if len(y_bd) else float("nan"),
        }

    return evaluate


# ---- transfer-based scenario: the adversary's target class does not exist downstream ----------


def transfer_attack_success_rate(preds: torch.Tensor, y_true: torch.Tensor, num_classes: int) -> tuple[float, int]:
    """Max over downstream classes c of the share of triggered images with true label != c predicted as c.

    Returns (ASR, the maximising class c; the smallest such c on ties). Images of class c are
    left out of c's rate, so a model that merely classifies triggered images correctly scores low.
    """
    preds, y_true = preds.cpu().long(), y_true.cpu().long()
    if len(y_true) == 0:
        return float("nan"), -1
    hits = torch.bincount(preds, minlength=num_classes)[:num_classes]
    hits -= torch.bincount(preds[preds == y_true], minlength=num_classes)[:num_classes]
    others = len(y_true) - torch.bincount(y_true, minlength=num_classes)[:num_classes]
    rates = torch.where(others > 0, hits.double() / others.clamp(min=1).double(), torch.zeros((), dtype=torch.double))
    c = int(rates.argmax())
    return float(rates[c]), c


def make_transfer_evaluator(
    x_test: torch.Tensor, y_test: torch.Tensor, triggered: dict[str, torch.Tensor], num_classes: int, *, bf16: bool
) -> Callable[[nn.Module], dict[str, float]]:
    """Return model -> {"ca", "asr_<name>", "asr_class_<name>"} for each triggered copy of the test set.

    `triggered[name]` holds the whole test set with trigger `name` applied, in the order of `y_test`.
    """

    def evaluate(model: nn.Module) -> dict[str, float]:
        out = {"ca": accuracy(model, x_test, y_test, bf16=bf16)}
        for name, x_bd in triggered.items():
            out[f"asr_{name}"], out[f"asr_class_{name}"] = transfer_attack_success_rate(
                predict(model, x_bd, bf16=bf16), y_test, num_classes)
        return out

    return evaluate
