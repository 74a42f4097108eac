"""Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha key, alpha 0.2 for train and test.

BackdoorBench's key image is a copyrighted cartoon; by default we use scikit-learn's
bundled, Creative-Commons-licensed `china.jpg` sample image. Any RGB image can be given
with `key_image=PATH` (CLI `--key-image`). The key is resized to 32x32 without keeping
the aspect ratio, as BackdoorBench does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import Attack

DEFAULT_KEY = "sklearn:china.jpg"


def load_key_image(source: str, size: int = 32) -> torch.Tensor:
    """Load a key image as uint8 [3,size,size]; `sklearn:NAME` names a scikit-learn sample image."""
    if source.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = Image.fromarray(load_sample_image(source.split(":", 1)[1]))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"key image {path} not found; pass an existing RGB image with --key-image")
        img = Image.open(path)
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class Blended(Attack):
    """Alpha-blend every image with a fixed key image."""

    name = "blended"

    def __init__(self, target: int = 0, alpha: float = 0.2, key_image: str = DEFAULT_KEY, size: int = 32):
        super().__init__(target)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"blend alpha must be in (0, 1], got {alpha}")
        self.alpha, self.key_image = alpha, key_image
        self.register_buffer("key", load_key_image(key_image, size))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        key = self.key.to(dtype=x.dtype) / 255.0
        return (1.0 - self.alpha) * x + self.alpha * key

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "key_image": self.key_image, "size": self.key.shape[-1]}
