"""Profiles: frozen bundles of sizes and budgets. `paper` is the paper; the rest are smaller.

- paper: Section 4.4 (SGD lr 0.001, batch 256, 200 epochs; FT/SFT 100 epochs), width 64, GPU.
- quick: the same pipeline on the real datasets with BackdoorBench's faster recipe and
  short budgets, for one GPU in well under an hour.
- demo:  embedded `digits`, narrow net, CPU, a few minutes (`make demo`).
- smoke: the tests' budget.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, replace

from backdoor.train import TrainConfig
from defenses.finetune import SFTConfig

# BackdoorBench's attack recipe (notes: lr 0.01, cosine with T_max 100, batch 128, 100 epochs).
BACKDOORBENCH = TrainConfig(epochs=100, batch_size=128, lr=0.01, schedule="cosine", cosine_t_max=100)
PAPER = TrainConfig(epochs=200, batch_size=256, lr=0.001, schedule="constant")
RECIPES = {"paper": PAPER, "backdoorbench": BACKDOORBENCH}
FLIP_DATASETS = frozenset({"cifar10"})  # BackdoorBench flips CIFAR10 only
ATTACKS = ("badnets", "blended", "lf", "inputaware", "wanet")  # the paper's five (Section 4.1)


@dataclass(frozen=True)
class Profile:
    """Everything that differs between a paper run and a laptop run."""

    name: str
    datasets: tuple[str, ...]
    attacks: tuple[str, ...]
    width: int  # PreAct-ResNet18 base width (64 = paper)
    attack_train: TrainConfig  # how the adversary trains the backdoored model
    finetune_epochs: int  # FT and SFT epochs in the standalone scenario
    finetune_batch: int
    ft_lr: float  # conventional FT LR; the paper uses the training LR
    sft: SFTConfig = field(default_factory=SFTConfig)
    poison_ratio: float = 0.1
    target: int = 0
    seed: int = 0
    # Section 6 (backdoor sequela): re-injection epochs and poison ratios, MIA attack-model epochs.
    reinject_epochs: int = 25
    reinject_ratios: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
    mia_epochs: int = 50

    def __post_init__(self) -> None:
        bad = [r for r in self.reinject_ratios if not 0.0 < r <= 1.0]
        if bad or self.reinject_epochs < 1 or self.mia_epochs < 1:
            raise ValueError(f"profile {self.name!r}: re-injection ratios must be in (0, 1] (got {bad}), "
                             f"reinject_epochs and mia_epochs >= 1")

    def train_config(self, dataset: str) -> TrainConfig:
        """The attack-training config with the dataset's flip rule."""
        return replace(self.attack_train, flip=dataset in FLIP_DATASETS, seed=self.seed)

    def finetune_config(self, dataset: str) -> TrainConfig:
        """The FT config (constant LR = ft_lr); SFT takes its LRs from `sft`."""
        return replace(self.train_config(dataset), epochs=self.finetune_epochs, batch_size=self.finetune_batch,
                       lr=self.ft_lr, schedule="constant", eval_every=1)

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", ("cifar10", "cifar100", "gtsrb"), ATTACKS, 64, PAPER,
                     finetune_epochs=100, finetune_batch=256, ft_lr=PAPER.lr),
    "quick": Profile("quick", ("cifar10", "cifar100", "gtsrb"), ATTACKS, 64,
                     replace(BACKDOORBENCH, epochs=30, cosine_t_max=30), finetune_epochs=20, finetune_batch=256,
                     ft_lr=0.001, sft=SFTConfig(half_cycle_epochs=2.5)),
    # 30 + 10 + 10 epochs per attack keep `make demo` (five attacks) under 10 minutes on 2 cores; the
    # backdoored model is evaluated every 10 epochs (figures need only its final CA/ASR).
    "demo": Profile("demo", ("digits",), ATTACKS, 16,
                    TrainConfig(epochs=30, batch_size=64, lr=0.01, schedule="cosine", cosine_t_max=30, eval_every=10),
                    finetune_epochs=10, finetune_batch=64, ft_lr=0.001,
                    sft=SFTConfig(half_cycle_epochs=2.5, phase1_epochs=5), reinject_epochs=10, mia_epochs=100),
    "smoke": Profile("smoke", ("digits",), ("badnets", "blended"), 16,
                     TrainConfig(epochs=40, batch_size=64, lr=0.01, schedule="cosine", cosine_t_max=40, eval_every=10),
                     finetune_epochs=10, finetune_batch=64, ft_lr=0.001,
                     sft=SFTConfig(half_cycle_epochs=2.5, phase1_epochs=5), reinject_epochs=15, mia_epochs=100),
}


def get_profile(name: str) -> Profile:
    """Look up a profile; unknown names fail with the list of valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print a profile's field (for the Makefile) or all of it.")
    ap.add_argument("profile")
    ap.add_argument("field", nargs="?")
    a = ap.parse_args()
    p = get_profile(a.profile)
    value = getattr(p, a.field) if a.field else p.to_dict()
    print(" ".join(map(str, value)) if isinstance(value, tuple) else value)
