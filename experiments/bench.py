"""`make bench`: training images/s of our engine vs a BackdoorBench-style loop, same model and batch.

The reference feeds data the way BackdoorBench does: a Dataset returning PIL images
through torchvision transforms (RandomCrop pad 4, flip, ToTensor, Normalize), a
DataLoader, fp32, default memory format, a host sync (`loss.item()`) every step.
Ours runs in both precisions a profile can name: fp32 (`paper`) and, on CUDA, bf16 autocast;
on a CPU the engine never autocasts, so there is no bf16 row to measure.
The loops run interleaved, one epoch of each per round (order rotating), so that a
change in machine load hits all of them; medians and the min-max spread over the rounds are printed,
never a single run. Sizes are chosen to finish in a few minutes on a CPU and use the full
model on a GPU.

    python -m experiments.bench [--device cuda] [--width 64 --batch 256 --images 20000 --epochs 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from backdoor.models import DEFAULT_ARCH, make_model
from backdoor.train import TrainConfig, fit, precision_used, sync, uses_bf16
from defenses import DefenseContext, SFTConfig, get_defense
from experiments.common import positive_int, resolve_device

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


class PILDataset(Dataset):
    """BackdoorBench-style: each item is a PIL image pushed through torchvision transforms."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                      transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(Image.fromarray(self.x[i])), int(self.y[i])


EpochTimer = Callable[[int], float]  # (round) -> seconds of one training epoch


def reference_loop(model, x: torch.Tensor, y: torch.Tensor, batch: int, workers: int,
                   device: torch.device) -> EpochTimer:
    """One epoch of the reference loop per call (its DataLoader and optimizer live across calls)."""
    ds = PILDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy())
    dl = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                    pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def epoch(_round: int) -> float:
        model.train()
        sync(device)
        t0 = time.perf_counter()
        for xb, yb in dl:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()  # BackdoorBench logs the loss every batch
        sync(device)
        return time.perf_counter() - t0

    return epoch


def our_loop(model, x: torch.Tensor, y: torch.Tensor, batch: int, bf16: bool, compiled: bool = False) -> EpochTimer:
    """One epoch of `fit` per call; its own device-synchronised epoch time (set-up excluded)."""
    def epoch(rnd: int) -> float:
        cfg = TrainConfig(epochs=1, batch_size=batch, lr=0.01, flip=True, seed=rnd, bf16=bf16, compile=compiled)
        return fit(model, x, y, cfg)[1]["seconds"]

    return epoch


def interleaved(loops: dict[str, EpochTimer], rounds: int, deadline: Optional[float] = None,
                warm: bool = True) -> dict[str, list[float]]:
    """Seconds per epoch of each loop over `rounds` rounds, one epoch of each per round, the order
    rotating, after one untimed warm-up epoch each (`warm`): a load change hits every loop alike.
    Past `deadline` (time.perf_counter) no further round starts; the first always runs."""
    for loop in loops.values() if warm else ():
        loop(0)
    times: dict[str, list[float]] = {name: [] for name in loops}
    names = list(loops)
    for r in range(rounds):
        if r and deadline is not None and time.perf_counter() > deadline:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(loops[name](r + 1))
    return times


def spread(values: list[float], fmt: str, unit: str = "") -> str:
    """'median (min-max)' of `values`."""
    med, lo, hi = (format(v, fmt) + unit for v in (statistics.median(values), min(values), max(values)))
    return f"{med} ({lo}-{hi})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device")
    ap.add_argument("--width", type=positive_int, help="default: 64 on GPU, 16 on CPU")
    ap.add_argument("--batch", type=positive_int, help="default: 256 on GPU, 128 on CPU")
    ap.add_argument("--images", type=positive_int, help="default: 50000 on GPU, 1024 on CPU")
    ap.add_argument("--epochs", type=positive_int, default=5,
                    help="timed epochs per loop, interleaved one of each per round (plus one warm-up each)")
    ap.add_argument("--workers", type=int, choices=range(0, 65), metavar="0..64",
                    help="reference DataLoader workers (default: 4 on GPU, 0 on CPU)")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        ap.error(str(e))
    gpu = device.type == "cuda"
    width = args.width if args.width is not None else (64 if gpu else 16)
    batch = args.batch if args.batch is not None else (256 if gpu else 128)
    n = args.images if args.images is not None else (50000 if gpu else 1024)
    workers = args.workers if args.workers is not None else (4 if gpu else 0)
    if n < batch:
        ap.error(f"--images {n} is fewer than one batch ({batch}); no step would run")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    load = "n/a" if not hasattr(os, "getloadavg") else " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"bench: PreAct-ResNet18 width {width}, batch {batch}, {n} images, {args.epochs} interleaved rounds, "
          f"{name}, torch {torch.__version__}, load average {load}")

    precisions = bench_precisions(device)
    if len(precisions) == 1:
        print(f"bf16 autocast: not measured; on {device.type} the engine runs fp32 whatever the profile's precision")
    times = interleaved(loops(x, y, batch, workers, device, width, precisions), args.epochs)
    imgs = (n // batch) * batch
    print(f"{'loop':<48} {'img/s median (min-max)':>24} {'s/epoch median (min-max)':>26}")
    for loop, t in times.items():
        print(f"{loop:<48} {spread([imgs / s for s in t], '.0f'):>24} {spread(t, '.2f'):>26}")
    ref = times[REFERENCE]
    for bf16 in precisions:
        ours = times[ours_name(bf16)]
        print(f"speed-up per round, {precision_used(device, bf16)}, median (min-max): "
              f"{spread([r / o for r, o in zip(ref, ours)], '.2f', 'x')}")
    for bf16 in precisions:
        print(f"one SFT epoch over {n} images, {precision_used(device, bf16)}: "
              f"{sft_seconds(x, y, batch, width, device, bf16):.2f} s wall (one run, includes warm-up)")


REFERENCE = "reference (PIL + DataLoader, fp32, NCHW)"


def ours_name(bf16: bool, compiled: bool = False) -> str:
    """The row name `experiments.plan` reads a profile's img/s from ("ours fp32 ..." / "ours bf16 ...")."""
    return f"ours {'bf16 autocast' if bf16 else 'fp32'}{' + torch.compile' if compiled else ''} " \
           "(device uint8, channels_last on CUDA)"


def bench_precisions(device: torch.device) -> tuple[bool, ...]:
    """The bf16 flags worth timing here: both on CUDA, only fp32 where the engine never autocasts."""
    return (False, True) if uses_bf16(device, True) else (False,)


def loops(x: torch.Tensor, y: torch.Tensor, batch: int, workers: int, device: torch.device, width: int,
          precisions: tuple[bool, ...], compiled: tuple[bool, ...] = (False,)) -> dict[str, EpochTimer]:
    """The reference and one `fit` loop per precision (and per `compiled` flag), each on its own model of the
    same initial weights."""
    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return make_model(DEFAULT_ARCH, 10, width, "cifar10").to(device)

    return {REFERENCE: reference_loop(model(), x, y, batch, workers, device),
            **{ours_name(b, c): our_loop(model(), x, y, batch, b, c) for c in compiled for b in precisions}}


def sft_seconds(x: torch.Tensor, y: torch.Tensor, batch: int, width: int, device: torch.device, bf16: bool) -> float:
    """Wall seconds of one SFT epoch through the defence registry (one run)."""
    model = make_model(DEFAULT_ARCH, 10, width, "cifar10").to(device)
    ctx = DefenseContext(model, x, y, TrainConfig(epochs=1, batch_size=batch, flip=True, bf16=bf16),
                         params={"sft": SFTConfig()})
    sync(device)
    t0 = time.perf_counter()
    get_defense("sft")(ctx)
    sync(device)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
