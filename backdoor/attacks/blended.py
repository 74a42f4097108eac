"""Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha key, alpha 0.2 for train and test.

BackdoorBench's key image is a copyrighted cartoon; by default we use scikit-learn's
bundled, Creative-Commons-licensed `china.jpg` sample image. Any RGB image can be given
with `key_image=PATH` (CLI `--key-image`). The key is resized to 32x32 without keeping
the aspect ratio, as BackdoorBench does. The resized key is saved in the checkpoint, and
a checkpoint passes it back as `key=`, so a moved key file does not matter once trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .base import Attack

DEFAULT_KEY = "sklearn:china.jpg"
# A key is shrunk to 32x32: anything above 40 megapixels is refused before decoding
# (a small file can declare a huge image: a decompression bomb; PIL's own limit is 89 MP, warned only).
MAX_KEY_PIXELS = 40_000_000


def load_key_image(source: str, size: int = 32) -> torch.Tensor:
    """Load a key image as uint8 [3,size,size]; `sklearn:NAME` names a scikit-learn sample image."""
    if source.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = Image.fromarray(load_sample_image(source.split(":", 1)[1]))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"key image {path} not found; pass an existing RGB image with --key-image")
        img = _open_image(path)
    arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _open_image(path: Path) -> Image.Image:
    """Open and decode an image file; ValueError in one line if it is no image or too large."""
    too_big = f"over the {MAX_KEY_PIXELS // 10**6} MP limit; pass a smaller RGB image with --key-image"
    try:
        img = Image.open(path)  # reads the header only; raises itself above PIL's own (2 x 89 MP) limit
        if img.width * img.height > MAX_KEY_PIXELS:
            raise ValueError(f"key image {path} is {img.width}x{img.height} pixels, {too_big}")
        img.load()
    except Image.DecompressionBombError:
        raise ValueError(f"key image {path} declares a decompression bomb, {too_big}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"key image {path} is not a readable image ({type(e).__name__}); "
                         "pass a PNG or JPEG with --key-image") from None
    return img


class Blended(Attack):
    """Alpha-blend every image with a fixed key image."""

    name = "blended"

    def __init__(self, target: int = 0, alpha: float = 0.2, key_image: str = DEFAULT_KEY, size: int = 32,
                 key: Optional[torch.Tensor] = None):
        """`key` (uint8 [3,size,size], e.g. a checkpoint's) is used as is; `key_image` is then only recorded."""
        super().__init__(target)
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"blend alpha must be in (0, 1], got {alpha}")
        if key is not None and (key.shape != (3, size, size) or key.dtype != torch.uint8):
            raise ValueError(f"a Blended key must be uint8 of shape (3, {size}, {size}), got {key.dtype} "
                             f"{tuple(key.shape)}")
        self.alpha, self.key_image = alpha, key_image
        self.register_buffer("key", key.clone() if key is not None else load_key_image(key_image, size))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        key = self.key.to(dtype=x.dtype) / 255.0
        return (1.0 - self.alpha) * x + self.alpha * key

    def params(self) -> dict[str, Any]:
        return {**super().params(), "alpha": self.alpha, "key_image": self.key_image, "size": self.key.shape[-1]}
