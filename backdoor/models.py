"""PreAct-ResNet18 as BackdoorBench defines it, with a `width` knob for narrow CPU demos.

Layer names (`conv1, layer1..4, avgpool, linear`) match BackdoorBench so that defences
which hook named layers (FP, NAD, AC, Spectral) address the same places.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, identity or 1x1 shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """PreAct-ResNet18 for 32x32 inputs; width 64 is the paper's (64/128/256/512 channels)."""

    def __init__(self, num_classes: int = 10, width: int = 64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.num_classes, self.width = num_classes, width
        # Normalisation lives in the model so that every caller (attacks, NC's trigger
        # search, MIA) works on images in [0,1], as BackdoorBench's transforms would.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.layer1 = self._make_layer(width, 2, 1)
        self.layer2 = self._make_layer(2 * width, 2, 2)
        self.layer3 = self._make_layer(4 * width, 2, 2)
        self.layer4 = self._make_layer(8 * width, 2, 2)
        # BackdoorBench's final block has no trailing BN-ReLU before pooling.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (avgpool) features, [B, 8*width]."""
        out = self.conv1((x - self.mean) / self.std)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


# BackdoorBench's per-dataset normalisation (GTSRB: none); other datasets default to none.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

# The paper's classifier: what a profile trains unless its `arch` says otherwise.
DEFAULT_ARCH = "preactresnet18"
MODELS: dict[str, Callable[..., nn.Module]] = {DEFAULT_ARCH: PreActResNet18}


def make_model(name: str, num_classes: int, width: int = 64, dataset: str | None = None, *,
               norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
               input_size: int | None = None) -> nn.Module:
    """Build a registered or torchvision model by name, normalising for `dataset` (or `norm` = (mean, std)).

    Unknown names fail with the valid list. `input_size` (torchvision models only) resizes inputs first.
    """
    mean, std = norm or DATASET_STATS.get(dataset or "", ((0.0,) * 3, (1.0,) * 3))
    if name in MODELS:
        return MODELS[name](num_classes=num_classes, width=width, mean=mean, std=std)
    if name.startswith(TIMM_PREFIX):
        return timm_model(name[len(TIMM_PREFIX):], num_classes, mean, std, input_size)
    if name == CIFAR_RESNET18:
        return cifar_resnet18(num_classes, mean, std)
    if name not in torchvision_models():
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}, "
                         f"or {TIMM_PREFIX}<timm model name>")
    return torchvision_model(name, num_classes, mean, std, input_size)


# ---- torchvision's classification models, by their torchvision names --------------------------
# A second registry (torchvision's own), looked up lazily: importing torchvision doubles the import
# time of every step, and only foreign models need it.
# Auxiliary heads return tuples in training mode, which the engine's cross-entropy cannot take.
TORCHVISION_KWARGS: dict[str, dict] = {"googlenet": {"aux_logits": False, "init_weights": True},
                                       "inception_v3": {"aux_logits": False, "init_weights": True}}


def torchvision_models() -> list[str]:
    """torchvision's classification model names (torchvision.models.list_models)."""
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def model_names() -> list[str]:
    """Every name make_model accepts (timm's, `timm:<name>`, aside): ours, then torchvision's."""
    return sorted(MODELS) + [CIFAR_RESNET18] + [n for n in torchvision_models() if n not in MODELS]


def _normalise_input(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: optional resize to `module.input_size`, then (x - mean) / std, on images in [0,1]."""
    x = args[0]
    size = module.input_size
    if size and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x - module.mean) / module.std, *args[1:])


def torchvision_model(name: str, num_classes: int, mean=(0.0,) * 3, std=(1.0,) * 3,
                      input_size: int | None = None) -> nn.Module:
    """A randomly initialised torchvision classifier that takes [0,1] images, as our models do.

    Normalisation (and resizing) is a forward pre-hook, not a wrapper, so that layer names stay
    torchvision's (`layer4`, `fc`); `mean`/`std` are buffers as in PreActResNet18.
    """
    import torchvision.models as tvm

    net = tvm.get_model(name, weights=None, num_classes=num_classes, **TORCHVISION_KWARGS.get(name, {}))
    return with_input_norm(net, num_classes, mean, std, input_size)


def with_input_norm(net: nn.Module, num_classes: int, mean=(0.0,) * 3, std=(1.0,) * 3,
                    input_size: int | None = None) -> nn.Module:
    """`net` taking [0,1] images: `mean`/`std` buffers and a pre-hook that (resizes and) normalises."""
    net.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    net.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    net.num_classes, net.input_size = num_classes, input_size
    net.register_forward_pre_hook(_normalise_input)
    return net


# The CIFAR-stem ResNet-18 most CIFAR code trains (kuangliu's pytorch-cifar and its descendants):
# torchvision's resnet18 with a 3x3 stride-1 conv1 and no max-pool; layer names stay torchvision's.
CIFAR_RESNET18 = "cifar_resnet18"


def cifar_resnet18(num_classes: int, mean=(0.0,) * 3, std=(1.0,) * 3) -> nn.Module:
    """torchvision resnet18 (BasicBlocks) with the CIFAR stem: conv1 3x3 stride 1, no max-pool."""
    import torchvision.models as tvm

    net = tvm.resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return with_input_norm(net, num_classes, mean, std)


# timm's models by name, `timm:<name>` (e.g. timm:resnet18, which differs from torchvision's). timm is
# imported only here, so nothing else depends on it; pretrained=False: the file's weights replace them.
TIMM_PREFIX = "timm:"


def timm_model(name: str, num_classes: int, mean=(0.0,) * 3, std=(1.0,) * 3,
               input_size: int | None = None) -> nn.Module:
    """timm.create_model(name, pretrained=False, num_classes=...) taking [0,1] images; no download."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models(), e.g. {TIMM_PREFIX}resnet18")
    return with_input_norm(timm.create_model(name, pretrained=False, num_classes=num_classes),
                           num_classes, mean, std, input_size)


# ---- encoder-based scenario (BadEncoder): SimCLR ResNet-18 encoder and its heads ----------

# BadEncoder's input normalisation per pre-training set (its datasets/*_dataset.py); the
# downstream task reuses the encoder's own normalisation, as BadEncoder does.
ENCODER_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "stl10": ((0.44087798, 0.42790666, 0.38678814), (0.25507198, 0.24801506, 0.25641308)),
}


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: conv-BN-ReLU-conv-BN plus (1x1 conv-BN) shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18Encoder(nn.Module):
    """BadEncoder's CIFAR ResNet-18 `f`: 3x3 stem, no max-pool, no FC; returns 8*width avgpool features."""

    def __init__(self, width: int = 64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.width, self.feature_dim = width, 8 * width
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes = [width, 2 * width, 4 * width, 8 * width]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(BasicBlock(p_in, p, s), BasicBlock(p, p))
            for p_in, p, s in zip([width] + planes[:3], planes, (1, 2, 2, 2)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.avgpool(out).flatten(1)


def projection_head(in_dim: int, hidden: int = 512, out: int = 128) -> nn.Sequential:
    """SimCLR projection g: Linear(no bias)-BN-ReLU-Linear, 512-512-128 in BadEncoder."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def mlp_head(in_dim: int, num_classes: int) -> nn.Sequential:
    """BadEncoder's downstream `NeuralNet`: in-512-256-C, ReLU, Dropout(0.5) after the first hidden layer."""
    return nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Linear(256, num_classes))


class SimCLRModel(nn.Module):
    """Encoder f plus projection head g; forward returns the projection (NT-Xent normalises it)."""

    def __init__(self, width: int = 64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        super().__init__()
        self.f = ResNet18Encoder(width, mean, std)
        self.g = projection_head(self.f.feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.f(x))


class DownstreamClassifier(nn.Module):
    """Encoder -> L2-normalised features -> MLP head, as BadEncoder's downstream classifier.

    With `freeze_encoder` the encoder gets no gradients and stays in eval mode even under
    `.train()`, so neither its weights nor its BatchNorm statistics move (classifier-only).
    """

    def __init__(self, encoder: ResNet18Encoder, num_classes: int, freeze_encoder: bool = False):
        super().__init__()
        self.encoder, self.frozen = encoder, freeze_encoder
        self.head = mlp_head(encoder.feature_dim, num_classes)
        self.encoder.requires_grad_(not freeze_encoder)
        self.train()

    def train(self, mode: bool = True) -> "DownstreamClassifier":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised encoder features [B, 8*width]."""
        return F.normalize(self.encoder(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

