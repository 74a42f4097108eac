"""Input-aware dynamic backdoor (Nguyen & Tran 2020) with BackdoorBench v1's settings.

A generator G and a mask net M (same encoder-decoder; base channels `width`, 32 in
BackdoorBench) make a per-image trigger: x' = x + (G(x) - x) * M(x). Stage 1 trains M
alone (`mask_epochs`, Adam 0.01, betas (0.5, 0.9), LR x0.1 at 40% and 80% of the stage =
BackdoorBench's milestones 10/20 of 25) for sparsity (mask density 0.032, lambda_norm 100) and
diversity. Stage 2 trains the classifier with `fit` while G learns with Adam 0.01: per batch,
int(ratio * B) images (below one per batch: one with probability ratio * B, see `per_batch`)
get their own trigger and the target label, as many "cross" images get the trigger of another
image and keep their label, and a diversity loss keeps G's patterns as far apart as the images
they come from. Augmentation as v1 loads its training set (v1:attack/inputaware_attack.py:319-335,
`get_transform`, used for the mask stage and the classifier stage alike, :849-850), before the trigger:
per image, crop with zero padding `random_crop` (5), rotation by U(-`random_rotation`, +) degrees (10,
nearest) and a flip where the dataset flips (`per_batch.inputaware_v1_draw`); the engine's crop-4 is off.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..poison import materialise
from ..train import device_of, steps_per_epoch
from .base import Attack, PerBatchTraining
from .per_batch import apply_draw, draw_count, expected_counts, inputaware_v1_draw

EPS = 1e-7


def conv_block(cin: int, cout: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Generator(nn.Sequential):
    """BackdoorBench's 3-level encoder-decoder (channels width, 2w, 4w); output in (0, 1)."""

    def __init__(self, width: int = 32, out_channels: int = 3):
        c = [width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        cin = 3
        for ch in c:
            layers += [conv_block(cin, ch), conv_block(ch, ch), nn.MaxPool2d(2)]
            cin = ch
        layers.append(conv_block(c[2], c[2]))
        outs = [c[1], c[0], out_channels]
        for i, ch in enumerate([c[2], c[1], c[0]]):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), conv_block(ch, ch),
                       conv_block(ch, outs[i], relu=i < 2)]
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(super().forward(x)) / (2 + EPS) + 0.5


def threshold(m: torch.Tensor) -> torch.Tensor:
    """BackdoorBench's soft step: masks become almost binary."""
    return torch.tanh(m * 20 - 10) / (2 + EPS) + 0.5


def rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image RMS distance, with gradient 0 where it is 0.

    sqrt's derivative at 0 is infinite and the mean square's is 0 there, so plain autograd gives 0 * inf = NaN
    whenever two patterns (or masks) are bit-identical, e.g. once G's last layer is constant (BN of a dead
    channel outputs its bias for every image) or saturates tanh; one such batch makes G, then the model, NaN.
    The forward value is unchanged but for mean squares below float's smallest normal number (`tiny`)."""
    ms = (a - b).pow(2).mean(dim=(1, 2, 3))
    return torch.where(ms > 0, ms.clamp_min(torch.finfo(ms.dtype).tiny).sqrt(), torch.zeros_like(ms))


def diversity(x1: torch.Tensor, x2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """Image distance over pattern distance: small when different images get different patterns."""
    return (rms_distance(x1, x2) / (rms_distance(p1, p2) + EPS)).mean()


class InputAware(Attack):
    """Per-image triggers from a trained generator and mask; owns its (fit-based) training loop."""

    name = "inputaware"
    poisoning = "per_batch"
    learns_trigger = True

    def __init__(self, target: int = 0, width: int = 32, mask_epochs: int = 25, mask_density: float = 0.032,
                 lambda_div: float = 1.0, lambda_norm: float = 100.0, cross_ratio: float = 1.0,
                 lr_g: float = 0.01, lr_m: float = 0.01, random_crop: int = 5, random_rotation: float = 10.0):
        super().__init__(target)
        if width < 1 or mask_epochs < 0 or not 0 < mask_density < 1 or cross_ratio < 0 or random_crop < 0:
            raise ValueError(f"invalid InputAware settings: width={width}, mask_epochs={mask_epochs}, "
                             f"mask_density={mask_density}, cross_ratio={cross_ratio}, random_crop={random_crop}")
        self.hp = {"width": width, "mask_epochs": mask_epochs, "mask_density": mask_density,
                   "lambda_div": lambda_div, "lambda_norm": lambda_norm, "cross_ratio": cross_ratio,
                   "lr_g": lr_g, "lr_m": lr_m, "random_crop": random_crop,
                   "random_rotation": random_rotation}
        self.generator = Generator(width, 3)
        self.mask_net = Generator(width, 1)
        self.eval()  # apply() uses BN running statistics unless a trainer says otherwise

    def pattern_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.generator(x), threshold(self.mask_net(x))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p, m = self.pattern_and_mask(x)
        return x + (p - x) * m

    def cross(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """x triggered with the pattern and mask made for `source` images."""
        p, m = self.pattern_and_mask(source)
        return x + (p - x) * m

    def cross_count(self, nb: int, batch: int) -> int:
        """Cross samples next to nb backdoor samples (each needs a second image to lend its trigger)."""
        return min(int(nb * self.hp["cross_ratio"]), (batch - nb) // 2)

    def _adam(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(module.parameters(), lr=lr, betas=(0.5, 0.9))

    def augment(self, x: torch.Tensor, flip: bool, gen: torch.Generator) -> torch.Tensor:
        """v1's train transform on [0,1] images x: crop, rotation, flip (if the dataset flips), per image."""
        pad = self.hp["random_crop"]
        return apply_draw(x, inputaware_v1_draw(len(x), pad, self.hp["random_rotation"], flip, gen), pad, False)

    def train_mask(self, x_train: torch.Tensor, cfg: Any, seed: int) -> list[float]:
        """Stage 1: mask net alone, on the engine's device-resident batches; returns per-epoch loss."""
        device = device_of(self)
        gen = torch.Generator(device=device).manual_seed(seed + 1)
        x = x_train.to(device)
        opt = self._adam(self.mask_net, self.hp["lr_m"])
        n_ep = self.hp["mask_epochs"]
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [math.ceil(0.4 * n_ep), math.ceil(0.8 * n_ep)], 0.1)
        spe, losses = steps_per_epoch(len(x), cfg.batch_size, cfg.drop_last, cfg.max_steps), []
        self.mask_net.train()
        for _ in range(n_ep):
            total = torch.zeros((), device=device)
            p1, p2 = (torch.randperm(len(x), device=device, generator=gen) for _ in range(2))
            for s in range(spe):
                sl = slice(s * cfg.batch_size, (s + 1) * cfg.batch_size)
                x1 = self.augment(x[p1[sl]].float() / 255, cfg.flip, gen)
                x2 = self.augment(x[p2[sl]].float() / 255, cfg.flip, gen)
                m1, m2 = threshold(self.mask_net(x1)), threshold(self.mask_net(x2))
                loss = (self.hp["lambda_norm"] * F.relu(m1 - self.hp["mask_density"]).mean()
                        + self.hp["lambda_div"] * diversity(x1, x2, m1, m2))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
            sched.step()
            losses.append(total.item() / spe)
        self.mask_net.eval().requires_grad_(False)
        return losses

    def batch_hook(self, ratio: float, opt_g: torch.optim.Optimizer, seed: int = 0, flip: bool = False,
                   tally: Optional[dict] = None) -> tuple[Callable, Callable]:
        """fit() hook for stage 2, and a `flush` that applies G's pending Adam step.

        `flip`: the dataset flips; `tally["poisoned"]` adds up the backdoor images actually drawn.

        fit() backpropagates the classifier loss through the poisoned batch into G, after the
        hook returns; G's step therefore runs at the start of the next hook call (or at
        `flush`), which is the same update as stepping right after backward.
        """
        pending = {"step": False}
        gen: dict[str, torch.Generator] = {"count": torch.Generator().manual_seed(seed)}

        def flush() -> None:
            if pending["step"]:
                opt_g.step()
                pending["step"] = False

        def hook(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            flush()
            opt_g.zero_grad(set_to_none=True)
            if "aug" not in gen:
                gen["aug"] = torch.Generator(device=x.device).manual_seed(seed + 1)
            x = self.augment(x, flip, gen["aug"])  # before the trigger, as v1's loader
            nb = draw_count(len(x), ratio, gen["count"])
            nc = self.cross_count(nb, len(x))
            if tally is not None:
                tally["poisoned"] = tally.get("poisoned", 0) + nb
            src = x.flip(0)[:nc]  # other images of the batch lend their triggers
            p_bd, p_src = self.generator(x[:nb]), self.generator(src)
            with torch.no_grad():  # M is frozen after stage 1
                m_bd, m_src = threshold(self.mask_net(x[:nb])), threshold(self.mask_net(src))
            x_bd = x[:nb] + (p_bd - x[:nb]) * m_bd
            x_cross = x[nb : nb + nc] + (p_src - x[nb : nb + nc]) * m_src
            k = min(nb, nc)
            if k:
                # fit's backward adds the classifier loss's gradient to this one
                (self.hp["lambda_div"] * diversity(x[:k], src[:k], p_bd[:k], p_src[:k])).backward(retain_graph=True)
            pending["step"] = True
            x = torch.cat([x_bd, x_cross, x[nb + nc :]])
            return x, torch.cat([torch.full_like(y[:nb], self.target), y[nb:]])

        return hook, flush

    def per_batch_training(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, cfg: Any,
                           ratio: float, seed: int, evaluate: Optional[Callable] = None) -> PerBatchTraining:
        """Stage 1 (mask) here; stage 2 (classifier + G) is `fit` with the returned hook; `finish` after it."""
        torch.manual_seed(seed)
        mask_losses = self.train_mask(x_train, cfg, seed)
        opt_g = self._adam(self.generator, self.hp["lr_g"])
        tally: dict[str, int] = {"poisoned": 0}
        hook, flush = self.batch_hook(ratio, opt_g, seed, cfg.flip, tally)
        fit_cfg = replace(cfg, crop_pad=0, flip=False)  # the hook augments, as v1's loader

        def evaluate_now(m: nn.Module) -> dict:
            flush()
            self.generator.eval()
            out = evaluate(m) if evaluate else {}
            self.generator.train()
            return out

        def finish() -> dict:
            flush()
            self.eval()
            nb, nc = expected_counts(self, cfg.batch_size, ratio)

            def cross(xb: torch.Tensor) -> torch.Tensor:
                return self.cross(xb, xb.roll(1, 0))  # each image gets its neighbour's trigger

            with torch.no_grad():
                info = materialise(x_train, y_train, self, nb / cfg.batch_size, nc / cfg.batch_size, seed,
                                   cross=cross)
            return {**info, "bd_per_batch": nb, "cross_per_batch": nc, "mask_losses": mask_losses,
                    "poisoned_seen": tally["poisoned"]}

        self.generator.train()
        return PerBatchTraining(fit_cfg, hook, evaluate_now, finish)

    def params(self) -> dict[str, Any]:
        return {**super().params(), **self.hp}
