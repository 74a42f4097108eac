"""The one training engine every trainer uses: `fit()`.

Speed comes from airbench's habits: the whole uint8 dataset sits on the device, batches
are slices of a device-side permutation, crop and flip run batched on the device,
channels_last layout, bf16 autocast on CUDA, and no host sync inside an epoch.
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# (x float [B,3,H,W] in [0,1], y [B], global step) -> (x, y); used by on-the-fly attacks.
BatchHook = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
Evaluator = Callable[[nn.Module], dict]
# (net, x, y) -> scalar loss; replaces cross-entropy (flooding, gradient ascent, distillation).
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
SchedulerFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run; the defaults are the paper's (Section 4.4)."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.001  # SGD learning rate (peak for cosine)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "constant"  # "constant" or "cosine" (BackdoorBench: per-epoch cosine, T_max fixed)
    cosine_t_max: int = 100  # epochs; BackdoorBench hard-codes 100 even for 50-epoch GTSRB
    crop_pad: int = 4  # random crop with zero padding, pixels; 0 disables
    flip: bool = False  # random horizontal flip (BackdoorBench: CIFAR10 only)
    drop_last: bool = True
    bf16: bool = True  # autocast on CUDA only
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    optimizer: str = "sgd"  # "sgd" or "adam" (Adam: default betas, momentum unused; encoder downstream)
    eval_every: int = 1  # evaluate after every n-th epoch and the last (epoch 0 always)
    # Batches per epoch at most (None: every batch). For rehearsals that run every code path at full
    # data size on a CPU box, where even one full epoch per stage takes core-hours; never for results.
    max_steps: Optional[int] = None

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of: constant, cosine")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of: sgd, adam")
        if self.epochs < 0:
            raise ValueError(f"TrainConfig.epochs must be >= 0, got {self.epochs}")
        capped_to_zero = self.max_steps is not None and self.max_steps < 1
        if self.batch_size < 1 or self.lr < 0 or self.eval_every < 1 or capped_to_zero:
            raise ValueError(f"invalid TrainConfig: epochs={self.epochs}, batch={self.batch_size}, lr={self.lr}, "
                             f"eval_every={self.eval_every}, max_steps={self.max_steps}")


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def steps_per_epoch(n: int, batch_size: int, drop_last: bool = True, max_steps: Optional[int] = None) -> int:
    """Optimizer steps in one pass over n images, at most `max_steps` (TrainConfig.max_steps)."""
    spe = max(1, n // batch_size) if drop_last else math.ceil(n / batch_size)
    return spe if max_steps is None else min(spe, max_steps)


def crop_at(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Crop of the zero-padded images at per-image offsets (dy, dx) in [0, 2 * pad]; (pad, pad) = identity."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[torch.arange(b, device=x.device)[:, None, None, None], chans, rows, cols]


def augment(x: torch.Tensor, pad: int, flip: bool, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per-image random crop (zero padding `pad`) and horizontal flip, batched on x's device."""
    b = len(x)
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device, generator=gen)
        x = crop_at(x, dy, dx, pad)
    if flip:
        mask = torch.rand(b, device=x.device, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay) or Adam (weight decay) over `params`, as `cfg.optimizer` says."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig) -> SchedulerFactory:
    """Per-step LR schedule for `cfg.schedule` (cosine is stepped per epoch, as BackdoorBench does)."""

    def factory(opt: torch.optim.Optimizer, spe: int) -> torch.optim.lr_scheduler.LRScheduler:
        if cfg.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1 + math.cos(math.pi * (step // spe) / cfg.cosine_t_max))
        )

    return factory


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer; CPU for one with neither (BadNets' trigger)."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def use_channels_last(device: torch.device, enabled: bool = True) -> bool:
    """The one channels_last rule (fit, the SSL loops, batched inference): CUDA only. There it is faster;
    on the CPU it is slower here, and torch 2.14's CPU backward in channels_last corrupts the heap on odd
    batch sizes (fit's last batch without drop_last, BadEncoder's 2B+B+1 batches)."""
    return enabled and device.type == "cuda"


def channels_last(x: torch.Tensor, on: bool = True) -> torch.Tensor:
    """x in channels_last layout when `on` (`use_channels_last`)."""
    return x.contiguous(memory_format=torch.channels_last) if on else x


def uses_bf16(device: torch.device, bf16: bool) -> bool:
    """Whether a run with the `bf16` flag computes in bf16 here: only on CUDA (CPU runs stay fp32)."""
    return bf16 and device.type == "cuda"


def precision_used(device: torch.device, bf16: bool) -> str:
    """What results record as their precision: "bf16" (autocast) or "fp32"."""
    return "bf16" if uses_bf16(device, bf16) else "fp32"


def autocast(device: torch.device, bf16: bool) -> torch.autocast:
    """The one context every forward pass runs in: bf16 autocast when `uses_bf16`, else plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, bf16))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall time measures it (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """The one timer of device time: synchronised wall seconds since start, minus monitored evaluations.

    Evaluations that only record CA/ASR go through `monitor` and are not charged; evaluations
    a method decides on (FP's accuracy rule) are called directly and therefore counted.
    """

    def __init__(self, device: torch.device):
        self.device, self.excluded = device, 0.0
        sync(device)
        self.t0 = time.perf_counter()

    def monitor(self, evaluate: Optional[Evaluator]) -> Optional[Evaluator]:
        """`evaluate` whose own time is not charged (idempotent: a monitored one is returned as is)."""
        if evaluate is None or getattr(evaluate, "clock", None) is self:
            return evaluate

        def timed(model: nn.Module) -> dict:
            sync(self.device)
            t = time.perf_counter()
            out = evaluate(model)
            sync(self.device)
            self.excluded += time.perf_counter() - t
            return out

        timed.clock = self  # type: ignore[attr-defined]
        return timed

    def seconds(self) -> float:
        """Device seconds charged so far."""
        sync(self.device)
        return time.perf_counter() - self.t0 - self.excluded

    def hours(self) -> float:
        """Device hours charged so far."""
        return self.seconds() / 3600


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    scheduler: Optional[SchedulerFactory] = None,
    evaluate: Optional[Evaluator] = None,
    batch_hook: Optional[BatchHook] = None,
    params: Optional[list] = None,
    loss_fn: Optional[LossFn] = None,
    clock: Optional[Clock] = None,
    desc: str = "train",
    allow_zero_epochs: bool = False,
) -> list[dict]:
    """Train `model` in place with SGD (or Adam, `cfg.optimizer`) on uint8 images x [N,3,H,W] and labels y.

    Returns one record per epoch (epoch 0 = before training): lr, loss, train seconds
    (device-synchronised, evaluation excluded) and whatever `evaluate(model)` returns
    (after every `cfg.eval_every`-th epoch and the last).
    `params` restricts the optimised parameters (default: all); `loss_fn(net, x, y)`
    replaces cross-entropy. Each record also holds `device_seconds`, the cumulative charge of
    `clock` (default: one started here) after that epoch, so a caller can charge any budget.
    0 epochs are refused (they would hand back the untrained model as if trained) unless
    `allow_zero_epochs`: a defence stage configured to 0 epochs (detection only) is then just evaluated.
    """
    if cfg.epochs < 1 and not allow_zero_epochs:
        raise ValueError(f"fit: epochs must be >= 1, got {cfg.epochs} (0 would return the model untrained)")
    device = device_of(model)
    clock = clock or Clock(device)
    evaluate = clock.monitor(evaluate)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    x, y = x.to(device), y.to(device)
    spe = steps_per_epoch(len(x), cfg.batch_size, cfg.drop_last, cfg.max_steps)
    use_cl = use_channels_last(device, cfg.channels_last)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if cfg.compile else model
    opt = make_optimizer(cfg, params if params is not None else model.parameters())
    sched = (scheduler or make_scheduler(cfg))(opt, spe)
    history = [{"epoch": 0, "lr": opt.param_groups[0]["lr"], "loss": float("nan"), "seconds": 0.0,
                **(evaluate(model) if evaluate else {}), "device_seconds": clock.seconds()}]
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, disable=None, leave=False)
    for epoch in bar:
        model.train()
        sync(device)
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        perm = torch.randperm(len(x), device=device, generator=gen)
        for s in range(spe):
            idx = perm[s * cfg.batch_size : (s + 1) * cfg.batch_size]
            xb, yb = x[idx].float().div_(255.0), y[idx]
            xb = augment(xb, cfg.crop_pad, cfg.flip, gen)
            if batch_hook is not None:
                xb, yb = batch_hook(xb, yb, (epoch - 1) * spe + s)
            xb = channels_last(xb, use_cl)
            with autocast(device, cfg.bf16):
                loss = loss_fn(net, xb, yb) if loss_fn is not None else F.cross_entropy(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        sync(device)
        rec = {"epoch": epoch, "lr": opt.param_groups[0]["lr"], "loss": loss_sum.item() / spe,
               "seconds": time.perf_counter() - t0, "device_seconds": clock.seconds()}
        if not math.isfinite(rec["loss"]):  # the weights are then NaN too: refuse, rather than save them
            raise ValueError(f"fit{' (' + desc + ')' if desc else ''}: the training loss became {rec['loss']} in "
                             f"epoch {epoch}; the weights are no longer finite (lower the LR, or another seed)")
        if evaluate and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            rec.update(evaluate(model))
        history.append(rec)
        bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k in ("loss", "ca", "asr")})
        log.info("%s epoch %d %s", desc, epoch, rec)
    return history
