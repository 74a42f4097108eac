"""`make bench`: training images/s of our engine vs a BackdoorBench-style loop, same model and batch.

The reference feeds data the way BackdoorBench does: a Dataset returning PIL images
through torchvision transforms (RandomCrop pad 4, flip, ToTensor, Normalize), a
DataLoader, fp32, default memory format, a host sync (`loss.item()`) every step.
Sizes are chosen to finish in a few minutes on a CPU and use the full model on a GPU.

    python -m experiments.bench [--device cuda] [--width 64 --batch 256 --images 20000]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from backdoor.models import make_model
from backdoor.train import TrainConfig, fit
from defenses import DefenseContext, SFTConfig, get_defense
from experiments.common import resolve_device

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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_epoch_seconds(model, x: torch.Tensor, y: torch.Tensor, batch: int, workers: int,
                            device: torch.device, epochs: int) -> list[float]:
    """Seconds per epoch of the reference loop (first epoch included in the list, report the rest)."""
    ds = PILDataset(x.permute(0, 2, 3, 1).numpy(), y.numpy())
    dl = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                    pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    times = []
    for _ in range(epochs):
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
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device")
    ap.add_argument("--width", type=int, help="default: 64 on GPU, 16 on CPU")
    ap.add_argument("--batch", type=int, help="default: 256 on GPU, 128 on CPU")
    ap.add_argument("--images", type=int, help="default: 50000 on GPU, 2048 on CPU")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per loop; the first is warm-up")
    ap.add_argument("--workers", type=int, help="reference DataLoader workers (default: 4 on GPU, 0 on CPU)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    width, batch = args.width or (64 if gpu else 16), args.batch or (256 if gpu else 128)
    n, workers = args.images or (50000 if gpu else 2048), args.workers if args.workers is not None else (4 if gpu else 0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench: PreAct-ResNet18 width {width}, batch {batch}, {n} images, {args.epochs} epochs, {name}, "
          f"torch {torch.__version__}")

    torch.manual_seed(0)
    ref = reference_epoch_seconds(make_model("preactresnet18", 10, width, "cifar10").to(device), x, y, batch,
                                  workers, device, args.epochs)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=args.epochs, batch_size=batch, lr=0.01, flip=True)
    ours = [r["seconds"] for r in fit(make_model("preactresnet18", 10, width, "cifar10").to(device), x, y, cfg)[1:]]
    steady = lambda t: min(t[1:]) if len(t) > 1 else t[0]  # noqa: E731  first epoch holds warm-up
    imgs = (n // batch) * batch
    r_ips, o_ips = imgs / steady(ref), imgs / steady(ours)
    print(f"{'loop':<44} {'img/s':>9} {'s/epoch':>9}")
    print(f"{'reference (PIL + DataLoader, fp32, NCHW)':<44} {r_ips:>9.0f} {steady(ref):>9.2f}")
    print(f"{'ours (device uint8, channels_last, bf16 on GPU)':<44} {o_ips:>9.0f} {steady(ours):>9.2f}")
    print(f"speed-up: {o_ips / r_ips:.2f}x")

    model = make_model("preactresnet18", 10, width, "cifar10").to(device)
    ctx = DefenseContext(model, x, y, TrainConfig(epochs=1, batch_size=batch, flip=True),
                         params={"sft": SFTConfig()})
    sync(device)
    t0 = time.perf_counter()
    get_defense("sft")(ctx)
    sync(device)
    print(f"one SFT epoch over {n} images: {time.perf_counter() - t0:.2f} s wall (includes warm-up)")


if __name__ == "__main__":
    main()
