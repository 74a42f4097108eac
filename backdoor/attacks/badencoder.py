"""BadEncoder (Jia et al. 2022): backdoor a pre-trained encoder so that triggered images embed
like a reference image of the target class.

Facts from the official code (github.com/jinyuan-jia/BadEncoder): the trigger is a 10x10 white
patch at rows/cols 21-30 of a 32x32 image (1 px from the bottom-right corner) replacing
the pixels; the loss is L0 + lambda1*L1 + lambda2*L2 on L2-normalised features:
  L0 = -cos(f_bd(x + trigger), f_bd(x_ref))          effectiveness on the trigger
  L1 = -cos(f_bd(aug(x_ref)), f_clean(x_ref))        the reference keeps its embedding
  L2 = -cos(f_bd(x), f_clean(x))                     utility on clean shadow images
with SGD (lr 0.001, momentum 0.9, wd 5e-4) over the encoder only, every BatchNorm in eval
mode with frozen affine parameters, shadow images without augmentation, and the
reference augmented by flip + colour jitter + grayscale (no crop).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ssl import SimCLRAugment, run_epochs, simclr_augment
from ..train import TrainConfig, channels_last, device_of, use_channels_last
from .badnets import BadNets

REFERENCE_AUG = SimCLRAugment(crop=False)  # BadEncoder's finetune_transform
PAPER_CONFIG = TrainConfig(epochs=200, batch_size=256, lr=0.001, momentum=0.9, weight_decay=5e-4, crop_pad=0)


class BadEncoder(BadNets):
    """BadEncoder's patch trigger plus the attacker's reference image(s) of the target class (uint8 buffer)."""

    name = "badencoder"
    poisoning = "encoder"

    def __init__(self, target: int = 0, size: int = 10, margin: int = 1, value: float = 1.0,
                 num_references: int = 1, image_size: int = 32):
        super().__init__(target, size, margin, value)
        if num_references < 1:
            raise ValueError(f"BadEncoder needs at least one reference image, got {num_references}")
        self.register_buffer("reference", torch.zeros(num_references, 3, image_size, image_size, dtype=torch.uint8))

    def set_reference(self, images: torch.Tensor) -> "BadEncoder":
        """Store reference images uint8 [R,3,H,W] (R as constructed)."""
        if images.shape != self.reference.shape or images.dtype != torch.uint8:
            raise ValueError(f"reference must be uint8 {tuple(self.reference.shape)}, got "
                             f"{images.dtype} {tuple(images.shape)}")
        self.reference.copy_(images)
        return self

    def params(self) -> dict[str, Any]:
        return {**super().params(), "num_references": len(self.reference), "image_size": self.reference.shape[-1]}


def freeze_batchnorm(module: nn.Module) -> list[nn.Module]:
    """Stop gradients into every BatchNorm's affine parameters; returns the BN layers (to keep in eval mode)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.requires_grad_(False)
    return bns


def badencoder_losses(encoder: nn.Module, clean: nn.Module, x: torch.Tensor, x_bd: torch.Tensor,
                      ref: torch.Tensor, ref_aug: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L0, L1, L2) for shadow images x, their triggered copies x_bd, references ref [R,...] and
    augmented reference copies ref_aug [R*B,...] (row r*B+i is reference r). BN must be in eval mode:
    then one forward over the concatenation equals separate forwards, and is faster."""
    b, r = len(x), len(ref)
    with torch.no_grad():
        c = F.normalize(clean(torch.cat([x, ref])).float(), dim=1)
    f = F.normalize(encoder(torch.cat([x, x_bd, ref_aug, ref])).float(), dim=1)
    f_x, f_bd, f_aug, f_ref = f.split([b, b, r * b, r])
    c_x, c_ref = c.split([b, r])
    l0 = -(f_bd.unsqueeze(0) * f_ref.unsqueeze(1)).sum(-1).mean()
    l1 = -(f_aug.view(r, b, -1) * c_ref.unsqueeze(1)).sum(-1).mean()
    l2 = -(f_x * c_x).sum(1).mean()
    return l0, l1, l2


def train_badencoder(encoder: nn.Module, x_shadow: torch.Tensor, attack: BadEncoder, cfg: TrainConfig = PAPER_CONFIG,
                     lambda1: float = 1.0, lambda2: float = 1.0, aug: SimCLRAugment = REFERENCE_AUG,
                     evaluate: Optional[Callable[[], dict]] = None, clean: Optional[nn.Module] = None) -> list[dict]:
    """Backdoor `encoder` in place on uint8 shadow images; the clean encoder is `clean` or a frozen copy.

    Returns per-epoch means of loss, l0, l1, l2 and train seconds (plus `evaluate()`).
    """
    clean = copy.deepcopy(clean if clean is not None else encoder).eval().requires_grad_(False)
    on = use_channels_last(device_of(encoder), cfg.channels_last)
    if on:
        clean.to(memory_format=torch.channels_last)
    bns = freeze_batchnorm(encoder)
    params = [p for p in encoder.parameters() if p.requires_grad]

    def train_mode() -> None:
        encoder.train()
        for m in bns:
            m.eval()

    def step(xb: torch.Tensor, gen: torch.Generator):
        ref = attack.reference.to(xb.device).float().div(255.0)
        ref_aug = simclr_augment(ref.repeat_interleave(len(xb), 0), aug, gen)
        l0, l1, l2 = badencoder_losses(encoder, clean, channels_last(xb, on), channels_last(attack.apply(xb), on),
                                       channels_last(ref, on), channels_last(ref_aug, on))
        return l0 + lambda1 * l1 + lambda2 * l2, {"l0": l0, "l1": l1, "l2": l2}

    return run_epochs(encoder, x_shadow, cfg, step, params, train_mode=train_mode, evaluate=evaluate,
                      desc="badencoder")
