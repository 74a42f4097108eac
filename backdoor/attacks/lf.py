"""LF, the low-frequency trigger (Zeng et al. 2021), as BackdoorBench runs it.

The trigger is one universal additive pattern, values 0..0.2 (0..51 in uint8), applied as
clip(x + pattern). BackdoorBench ships a pre-optimised pattern per dataset; we generate
ours the way its generator does: a universal adversarial perturbation against a *clean*
model of the same architecture (targeted DeepFool toward the target class on `n_images`
training images, passes until `fool_rate` of a 10-per-class subset goes to the target),
each update followed by a separable Gaussian low-pass filter (`taps` taps, `sigma` px,
zero padding) and min-max normalisation into [0, max_value]. BackdoorBench updates after
every image; we average the converged DeepFool steps of `batch` images per update (batch=1
is their rule), which is 10x fewer sequential steps at the default. The result is cached
per dataset, width and target in the cache directory its caller names (the pipeline: <artifacts>/triggers/).
`pattern_file=PATH` instead loads one of BackdoorBench's patterns (resource/lowFrequency/
<dataset>_<model>_0_255.npy: uint8 H x W x 3 on the 0..255 scale, added before the clip, as its
SimpleAdditiveTrigger does) and records its SHA-256 in `params()`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save

from ..checkpoint import atomic_write_bytes
from ..models import DEFAULT_ARCH, make_model
from ..train import fit
from .base import Attack

log = logging.getLogger(__name__)


def gaussian_lowpass(v: torch.Tensor, sigma: float, taps: int) -> torch.Tensor:
    """Separable Gaussian blur of [C,H,W] with zero padding, same output size (even taps allowed)."""
    t = torch.arange(taps, dtype=v.dtype, device=v.device) - (taps - 1) / 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = v.shape[0]
    lo, hi = (taps - 1) // 2, taps // 2
    out = F.conv2d(F.pad(v[None], (lo, hi, 0, 0)), k.view(1, 1, 1, taps).expand(c, 1, 1, taps), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, lo, hi)), k.view(1, 1, taps, 1).expand(c, 1, taps, 1), groups=c)
    return out[0]


def minmax(v: torch.Tensor, max_value: float) -> torch.Tensor:
    """Affine map of v onto [0, max_value] (a constant v maps to 0)."""
    span = (v.max() - v.min()).clamp_min(1e-12)
    return (v - v.min()) / span * max_value


def targeted_deepfool(model: nn.Module, x: torch.Tensor, target: int, overshoot: float,
                      max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image DeepFool steps moving each image of x [B,C,H,W] to `target`; (r, converged mask).

    Batched: the model must be in eval mode so that images do not interact.
    """
    r_tot = torch.zeros_like(x)
    done = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        xa = (x + (1 + overshoot) * r_tot).requires_grad_(True)
        logits = model(xa)
        pred = logits.argmax(1)
        done = pred == target
        if done.all():
            break
        f = logits[:, target] - logits.gather(1, pred[:, None])[:, 0]  # < 0 until converged
        (w,) = torch.autograd.grad(f.sum(), xa)
        step = (f.detach().abs() + 1e-4) / w.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        r_tot = r_tot + torch.where(done, 0.0, step)[:, None, None, None] * w
    return (1 + overshoot) * r_tot, done


class LF(Attack):
    """Additive universal low-frequency pattern in [0, max_value]; needs `prepare_trigger` (or a checkpoint)."""

    name = "lf"

    def __init__(self, target: int = 0, size: int = 32, clean_epochs: int = 10, n_images: int = 100,
                 max_passes: int = 50, fool_rate: float = 0.2, overshoot: float = 0.02, df_max_iter: int = 200,
                 sigma: float = 6.0, taps: int = 30, max_value: float = 0.2, batch: int = 10,
                 pattern_file: Optional[str] = None, pattern_sha256: Optional[str] = None):
        super().__init__(target)
        if not 0 < max_value <= 1 or sigma <= 0 or taps < 1 or n_images < 1:
            raise ValueError(f"invalid LF settings: max_value={max_value}, sigma={sigma}, taps={taps}, "
                             f"n_images={n_images}")
        self.gen_params = {"clean_epochs": clean_epochs, "n_images": n_images, "max_passes": max_passes,
                           "fool_rate": fool_rate, "overshoot": overshoot, "df_max_iter": df_max_iter,
                           "batch": batch, "sigma": sigma, "taps": taps, "max_value": max_value}
        self.pattern_file, self.pattern_sha256 = pattern_file, pattern_sha256
        self.register_buffer("pattern", torch.zeros(3, size, size))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.pattern.any()):
            raise ValueError("LF trigger is empty: call prepare_trigger() (train_backdoored does) or load a "
                             "checkpoint")
        return (x + self.pattern.to(x.dtype)).clamp(0, 1)

    def set_pattern(self, v: torch.Tensor) -> None:
        """Install a pattern, quantised to 1/255 so that baking adds exact uint8 values."""
        self.pattern.copy_((v * 255).round() / 255)

    @torch.no_grad()
    def _fooled(self, model: nn.Module, x: torch.Tensor, v: torch.Tensor) -> float:
        return (model((x + v).clamp(0, 1)).argmax(1) == self.target).float().mean().item()

    def generate(self, model: nn.Module, x_imgs: torch.Tensor, x_eval: torch.Tensor, seed: int) -> torch.Tensor:
        """Universal low-pass perturbation against `model` from float images [N,3,H,W]; returns [3,H,W]."""
        p = self.gen_params
        model.eval()
        gen = torch.Generator().manual_seed(seed)
        v = torch.zeros_like(x_imgs[0])
        for passno in range(p["max_passes"]):
            for chunk in torch.randperm(len(x_imgs), generator=gen).split(p["batch"]):
                xi = (x_imgs[chunk] + v).clamp(0, 1)
                with torch.no_grad():
                    xi = xi[model(xi).argmax(1) != self.target]
                if not len(xi):
                    continue
                dr, ok = targeted_deepfool(model, xi, self.target, p["overshoot"], p["df_max_iter"])
                if ok.any():
                    v = minmax(gaussian_lowpass(v + dr[ok].mean(0), p["sigma"], p["taps"]), p["max_value"])
            rate = self._fooled(model, x_eval, v)
            log.info("LF pass %d: fooling rate %.3f", passno + 1, rate)
            if rate >= p["fool_rate"]:
                break
        if not bool(v.any()):
            raise ValueError("LF generation never converged (DeepFool hit df_max_iter on every image); "
                             "raise df_max_iter or clean_epochs")
        return v

    def load_pattern_file(self) -> None:
        """Install BackdoorBench's pattern from `pattern_file`, checking shape and (if given) its SHA-256."""
        path = Path(self.pattern_file)
        if not path.is_file():
            raise FileNotFoundError(f"LF pattern file {path} not found; pass an existing .npy (BackdoorBench's "
                                    "resource/lowFrequency/<dataset>_<model>_0_255.npy)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if self.pattern_sha256 and digest != self.pattern_sha256:
            raise ValueError(f"LF pattern file {path} has SHA-256 {digest}, expected {self.pattern_sha256}; "
                             "pass the file the run was made with")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:  # not a .npy array (or pickled objects, never loaded)
            raise ValueError(f"LF pattern file {path} is not a numpy array ({type(e).__name__}); pass BackdoorBench's "
                             ".npy (uint8, 32x32x3)") from None
        self.set_pattern(pattern_from_array(array, self.pattern.shape[-1], path).to(self.pattern.device))
        self.pattern_sha256 = digest

    def cache_path(self, dataset: str, width: int, cache_dir: Path) -> Path:
        return Path(cache_dir) / f"lf_{dataset}_w{width}_t{self.target}.safetensors"

    def prepare_trigger(self, data: Any, cfg: Any, width: int, seed: int, arch: str = DEFAULT_ARCH,
                        cache_dir: Optional[Path] = None) -> None:
        """Load `pattern_file`, else the trigger cached under `cache_dir` for (dataset, width, target), else
        train a clean `arch` model and generate it (and cache it, given a `cache_dir`)."""
        if self.pattern_file:
            self.load_pattern_file()
            return
        # arch enters the key only when it is not the default, so caches made before it was a setting stay valid
        made_with = {**self.gen_params, "seed": seed, **({"arch": arch} if arch != DEFAULT_ARCH else {})}
        key, device = json.dumps(made_with, sort_keys=True), self.pattern.device
        path = self.cache_path(data.name, width, cache_dir) if cache_dir is not None else None
        if path is not None and path.is_file():
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("params") == key:
                    self.set_pattern(f.get_tensor("pattern").to(device))
                    return
            log.info("LF cache %s was made with other settings; regenerating", path)
        torch.manual_seed(seed)
        model = make_model(arch, data.num_classes, width, data.name).to(device)
        if self.gen_params["clean_epochs"]:  # 0: an untrained clean model (fit refuses 0 epochs)
            fit(model, data.x_train, data.y_train, replace(cfg, epochs=self.gen_params["clean_epochs"], seed=seed),
                desc="LF clean model")
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(data.x_train), generator=gen)[: self.gen_params["n_images"]]
        per_class = [torch.nonzero(data.y_train == c).flatten()[:10] for c in range(data.num_classes)]
        x_eval = data.x_train[torch.cat(per_class)]
        as_float = lambda t: t.to(device).float() / 255.0  # noqa: E731
        self.set_pattern(self.generate(model, as_float(data.x_train[pick]), as_float(x_eval), seed))
        if path is not None:
            atomic_write_bytes(path, save({"pattern": self.pattern.cpu().contiguous()}, metadata={"params": key}))

    def params(self) -> dict[str, Any]:
        files = {"pattern_file": self.pattern_file, "pattern_sha256": self.pattern_sha256} if self.pattern_file else {}
        return {**super().params(), "size": self.pattern.shape[-1], **self.gen_params, **files}


def pattern_from_array(a: np.ndarray, size: int, source: Any = "array") -> torch.Tensor:
    """BackdoorBench's LF array (HxWx3, HxW grey, or a stack: the first) on 0..255 -> float [3,H,W] in 0..1."""
    if a.ndim == 4:
        a = a[0]  # BackdoorBench: "take the first one"
    if a.ndim == 2:
        a = np.stack((a,) * 3, axis=-1)
    if a.ndim != 3 or a.shape != (size, size, 3) or not np.isfinite(a).all():
        raise ValueError(f"LF pattern {source} has shape {a.shape}; need finite values, {size}x{size}x3 "
                         f"(or {size}x{size}) for {size}x{size} images")
    return torch.from_numpy(a.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
