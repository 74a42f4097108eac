"""Train backdoored "outside" models the way a practitioner would, independently of the project's code.

Nothing from backdoor/ or defenses/ is imported: digits are rebuilt from scikit-learn with the same fixed
split as the `digits` dataset (so `make defend DATA=digits` evaluates on unseen images), the triggers are
written here, the model comes straight from torchvision, inputs are normalised with ImageNet's statistics
outside the model (as torchvision recipes do), and the loop is a plain SGD loop. Writes MODEL.pt (a plain
state dict) and MODEL.json (the script's own CA/ASR on the test split).

    OMP_NUM_THREADS=1 python scripts/outside_models.py --arch resnet18 --trigger badnets --seed 0 --out m.pt
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
ARCHS = ("resnet18", "cifar_resnet18", "mobilenet_v2", "vgg11_bn")


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits as float [N,3,32,32] in [0,1]; the stratified 1,400/397 split (seed 0)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = F.interpolate(torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, size=(32, 32),
                      mode="bilinear", align_corners=False)
    x = (torch.round(x.clamp(0, 1) * 255) / 255).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=397, random_state=0, stratify=d.target)
    return x[tr], y[tr], x[te], y[te]


def trigger(name: str):
    """BadNets: 3x3 white square flush with the bottom-right corner. Blended: 0.8 x + 0.2 china.jpg."""
    if name == "badnets":
        def apply(x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[..., 29:32, 29:32] = 1.0
            return x
        return apply
    from PIL import Image
    from sklearn.datasets import load_sample_image

    key = np.asarray(Image.fromarray(load_sample_image("china.jpg")).resize((32, 32), Image.BILINEAR))
    key = torch.tensor(key, dtype=torch.float32).permute(2, 0, 1).unsqueeze(0) / 255
    key = torch.round(key * 255) / 255
    return lambda x: 0.8 * x + 0.2 * key


def build(arch: str) -> nn.Module:
    if arch == "cifar_resnet18":  # the common CIFAR stem: 3x3 conv1 stride 1, no max-pool
        net = torchvision.models.resnet18(num_classes=10)
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        return net
    return torchvision.models.get_model(arch, weights=None, num_classes=10)


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, apply, target: int) -> tuple[float, float]:
    net.eval()
    with torch.no_grad():
        ca = (net((x - MEAN) / STD).argmax(1) == y).float().mean().item()
        keep = y != target
        asr = (net((apply(x[keep]) - MEAN) / STD).argmax(1) == target).float().mean().item()
    return ca, asr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=ARCHS, required=True)
    ap.add_argument("--trigger", choices=("badnets", "blended"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    x, y, x_te, y_te = digits()
    apply = trigger(a.trigger)
    g = torch.Generator().manual_seed(a.seed)
    idx = torch.randperm(len(x), generator=g)[: round(a.ratio * len(x))]
    x[idx], y[idx] = apply(x[idx]), a.target
    net, bs = build(a.arch), 64
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps = a.epochs * math.ceil(len(x) / bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(a.epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            b = perm[i:i + bs]
            xb = F.pad(x[b], (2, 2, 2, 2))
            dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
            xb = xb[..., dy:dy + 32, dx:dx + 32]  # one random 2-pixel shift per batch
            loss = F.cross_entropy(net((xb - MEAN) / STD), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    ca, asr = evaluate(net, x_te, y_te, apply, a.target)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), a.out)
    info = {"arch": a.arch, "trigger": a.trigger, "seed": a.seed, "epochs": a.epochs, "ca": ca, "asr": asr,
            "norm": "imagenet", "poisoned": len(idx)}
    a.out.with_suffix(".json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
