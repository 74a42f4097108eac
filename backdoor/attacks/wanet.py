"""WaNet (Nguyen & Tran 2021): a small, smooth, fixed warp of the image is the trigger.

Warp field as BackdoorBench v1 builds it: k x k uniform noise in [-1,1], divided by its
mean |.|, bicubic-upsampled to the image size, added to the identity grid with strength
s / H, times grid_rescale, clamped to [-1,1]. Training poisons on the fly per batch:
int(ratio * batch) images (below one per batch: one with probability ratio * batch, see
`per_batch`) are warped and relabelled to the target, int(that * cross_ratio) "noise-mode"
images get the warp plus fresh random jitter and keep their labels. Then the whole batch goes
through v1's post-poisoning augmentation (`augment="v1"`, `per_batch.wanet_v1_draw`: per-image crop
pad 5 under a p-0.8 batch coin, per-image bilinear rotation up to 10 degrees with p 0.5 under a p-0.5
batch coin, flip where the dataset flips), and the engine's own crop/flip is off, as v1 loads WaNet's
training set with the test transform (v1:attack/wanet_attack.py:170-183, 397). `augment="off"` (the
digits profiles) keeps the engine's crop/flip before the trigger and adds nothing after it.

Our models take [0,1] images (normalisation lives in the model), so the [0,1] image is
warped; BackdoorBench warps the normalised tensor, which differs only in the colour of the
zero padding at the border (the clamp keeps sampling inside the image, so it rarely shows).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..poison import materialise
from ..train import device_of
from .base import Attack, PerBatchTraining
from .per_batch import apply_draw, draw_count, expected_counts, wanet_v1_draw

AUGMENTS = ("v1", "off")


def identity_grid(size: int) -> torch.Tensor:
    """[1,H,W,2] sampling grid that reproduces the image under align_corners=True."""
    t = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(t, t, indexing="ij")
    return torch.stack((cols, rows), 2)[None]  # grid_sample wants (x, y)


def warp_noise(k: int, size: int, seed: int) -> torch.Tensor:
    """BackdoorBench's warp field: k x k noise, mean-|.| normalised, bicubic-upsampled, [1,H,W,2]."""
    gen = torch.Generator().manual_seed(seed)
    ins = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    ins = ins / ins.abs().mean()
    return F.interpolate(ins, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)


class WaNet(Attack):
    """Warp every image with one fixed smooth field; cross (noise-mode) samples keep labels."""

    name = "wanet"
    poisoning = "per_batch"

    def __init__(self, target: int = 0, k: int = 4, s: float = 0.5, grid_rescale: float = 1.0,
                 cross_ratio: float = 2.0, size: int = 32, seed: int = 0, augment: str = "v1",
                 random_crop: int = 5, random_rotation: float = 10.0):
        super().__init__(target)
        if augment not in AUGMENTS:
            raise ValueError(f"unknown WaNet augment {augment!r}; choose one of: {', '.join(AUGMENTS)}")
        if k < 2 or s < 0 or grid_rescale <= 0 or cross_ratio < 0 or random_crop < 0 or random_rotation < 0:
            raise ValueError(f"invalid WaNet settings: k={k}, s={s}, grid_rescale={grid_rescale}, "
                             f"cross_ratio={cross_ratio}, random_crop={random_crop}, "
                             f"random_rotation={random_rotation}")
        self.k, self.s, self.grid_rescale, self.cross_ratio, self.seed = k, s, grid_rescale, cross_ratio, seed
        self.augment, self.random_crop, self.random_rotation = augment, random_crop, random_rotation
        self.register_buffer("noise_grid", warp_noise(k, size, seed))
        self.register_buffer("identity_grid", identity_grid(size))

    def grid(self) -> torch.Tensor:
        """The backdoor warp, [1,H,W,2]."""
        h = self.identity_grid.shape[1]
        return ((self.identity_grid + self.s * self.noise_grid / h) * self.grid_rescale).clamp(-1, 1)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid().to(x.dtype).expand(len(x), -1, -1, -1)
        return F.grid_sample(x, g, align_corners=True)

    def apply_noise(self, x: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        """Noise mode: the backdoor warp plus fresh per-image jitter of up to one pixel."""
        g = self.grid().to(x.dtype)
        h = g.shape[1]
        jitter = torch.rand(len(x), *g.shape[1:], device=x.device, generator=gen, dtype=x.dtype) * 2 - 1
        return F.grid_sample(x, (g + jitter / h).clamp(-1, 1), align_corners=True)

    def cross_count(self, nb: int, batch: int) -> int:
        """Noise-mode samples next to nb backdoor samples, BackdoorBench's int() rounding."""
        return min(int(nb * self.cross_ratio), batch - nb)

    def batch_hook(self, ratio: float, seed: int, tally: Optional[dict] = None) -> Callable:
        """fit() hook: the first bd images of each (shuffled) batch go to the target, the next are noise.

        `tally["poisoned"]` (if given) adds up the backdoor images actually drawn.
        """
        gen: dict[str, torch.Generator] = {"count": torch.Generator().manual_seed(seed)}

        def hook(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            if "g" not in gen:
                gen["g"] = torch.Generator(device=x.device).manual_seed(seed)
            nb = draw_count(len(x), ratio, gen["count"])
            nc = self.cross_count(nb, len(x))
            if tally is not None:
                tally["poisoned"] = tally.get("poisoned", 0) + nb
            x = torch.cat([self.apply(x[:nb]), self.apply_noise(x[nb : nb + nc], gen["g"]), x[nb + nc :]])
            return x, torch.cat([torch.full_like(y[:nb], self.target), y[nb:]])

        return hook

    def training_hook(self, ratio: float, seed: int, flip: bool, tally: Optional[dict] = None) -> Callable:
        """`batch_hook` followed by the post-poisoning augmentation of `self.augment` (none for "off")."""
        poison = self.batch_hook(ratio, seed, tally)
        if self.augment == "off":
            return poison
        gen: dict[str, torch.Generator] = {}

        def hook(x: torch.Tensor, y: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
            if "g" not in gen:
                gen["g"] = torch.Generator(device=x.device).manual_seed(seed + 1)
            x, y = poison(x, y, step)
            d = wanet_v1_draw(len(x), self.random_crop, self.random_rotation, flip, gen["g"])
            return apply_draw(x, d, self.random_crop, bilinear=True), y

        return hook

    def per_batch_training(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, cfg: Any,
                           ratio: float, seed: int, evaluate: Optional[Callable] = None) -> PerBatchTraining:
        """On-the-fly warping inside `fit`; `finish` materialises the poisoned set it stands for."""
        # BackdoorBench trains WaNet on un-augmented loads; the augmentation follows the trigger
        fit_cfg = cfg if self.augment == "off" else replace(cfg, crop_pad=0, flip=False)
        tally: dict[str, int] = {"poisoned": 0}

        def finish() -> dict:
            nb, nc = expected_counts(self, cfg.batch_size, ratio)
            gen = torch.Generator(device=device_of(self)).manual_seed(seed)
            info = materialise(x_train, y_train, self, nb / cfg.batch_size, nc / cfg.batch_size, seed,
                               cross=lambda xb: self.apply_noise(xb, gen))
            return {**info, "bd_per_batch": nb, "cross_per_batch": nc, "poisoned_seen": tally["poisoned"]}

        return PerBatchTraining(fit_cfg, self.training_hook(ratio, seed, cfg.flip, tally), evaluate, finish)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "k": self.k, "s": self.s, "grid_rescale": self.grid_rescale,
                "cross_ratio": self.cross_ratio, "size": self.noise_grid.shape[1], "seed": self.seed,
                "augment": self.augment, "random_crop": self.random_crop, "random_rotation": self.random_rotation}
