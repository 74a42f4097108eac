"""Profiles: the one tree of every per-profile setting. `paper` is the paper; the rest are smaller.

- paper: Section 4.4 (SGD lr 0.001, batch 256, 200 epochs; FT/SFT 100 epochs), width 64, GPU, fp32.
- quick: the same pipeline on the real datasets with BackdoorBench's faster recipe and
  short budgets, for one GPU in well under an hour.
- demo:  embedded `digits`, narrow net, CPU, a few minutes (`make demo`).
- smoke: the tests' budget.
- rehearsal: `paper`'s every step at real data sizes, tiny budgets, 2 batches per epoch (`make rehearsal`, fake data).

A Profile holds the attack presets, the baseline defences' configs, the sweep points (Fig. 3,
7-9) and the encoder scenario's settings; a profile lacking one fails when it is defined.
`--set key=value` (Make: SET="k=v ...") overrides any leaf, typed; see `resolve`.

    python -m experiments.profiles demo datasets            # one field, for the Makefile
    python -m experiments.profiles quick name --set finetune_epochs=5   # quick+<hash>
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import sys
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any, Mapping, Optional, Union, get_args, get_origin, get_type_hints

import torch

from backdoor.attacks import ATTACKS as ATTACK_CLASSES
from backdoor.attacks.badencoder import PAPER_CONFIG as BADENCODER_PAPER
from backdoor.checkpoint import atomic_write_json
from backdoor.errors import UserExit
from backdoor.models import DEFAULT_ARCH
from backdoor.train import TrainConfig, precision_used
from defenses import ABLConfig, ACConfig, Budget, FPConfig, NADConfig, NCConfig, SFTConfig, SpectralConfig
from experiments import paths
from experiments.common import jsonable
from experiments.sweeps import SweepConfig, make_fields

# BackdoorBench's attack recipe (lr 0.01, cosine with T_max 100, batch 128, 100 epochs).
BACKDOORBENCH = TrainConfig(epochs=100, batch_size=128, lr=0.01, schedule="cosine", cosine_t_max=100)
# Sec. 4.4 names no schedule: constant is our reading; v1's attack default (cosine, T_max 100 per epoch) is
# SET="attack_train.schedule=cosine attack_train.cosine_t_max=100" (docs/deviations.md).
PAPER = TrainConfig(epochs=200, batch_size=256, lr=0.001, schedule="constant")
FLIP_DATASETS = frozenset({"cifar10"})  # BackdoorBench flips CIFAR10 only
ATTACKS = ("badnets", "blended", "lf", "inputaware", "wanet")  # the paper's five (Section 4.1)
BASELINES = {"abl": ABLConfig, "ac": ACConfig, "fp": FPConfig, "nad": NADConfig, "nc": NCConfig,
             "spectral": SpectralConfig}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class EncoderConfig:
    """Sizes and budgets of the encoder scenario (Fig. 2); `paper` follows Section 4.4 and BadEncoder's code."""

    pretrain_sets: tuple[str, ...]
    downstream_sets: tuple[str, ...]
    width: int  # ResNet-18 base width (64 = paper, 512-d features)
    simclr: TrainConfig
    badencoder: TrainConfig
    downstream: TrainConfig
    shadow_size: int  # shadow images (first n of a seeded shuffle of the pre-training set)
    temperature: float = 0.5
    lambda1: float = 1.0
    lambda2: float = 1.0


SIMCLR = TrainConfig(epochs=1000, batch_size=256, lr=3e-4, optimizer="adam", weight_decay=1e-6, crop_pad=0)
BADENCODER = BADENCODER_PAPER  # the official code's settings, owned by the attack (backdoor/attacks/badencoder.py)
DOWNSTREAM = TrainConfig(epochs=200, batch_size=64, lr=3e-4, optimizer="adam", weight_decay=0.0, crop_pad=0)


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
    ft_lr: float  # conventional FT LR (paper: the training LR, Section 4.4)
    attack_params: Mapping[str, Mapping[str, Any]]  # `make_attack` kwargs per attack ({} = its defaults)
    defenses: Mapping[str, Any]  # config of each baseline defence (BASELINES)
    sweeps: SweepConfig  # Fig. 3, 7, 8, 9
    encoder: EncoderConfig  # Fig. 2
    # Fig. 6 charges these defences their device time after this many epochs (others: the full run).
    charge_epochs: Mapping[str, int] = field(default_factory=dict)
    arch: str = DEFAULT_ARCH  # the classifier every standalone, clean and transfer model is (backdoor.models)
    precision: str = "bf16"  # "fp32" or "bf16" (autocast on CUDA; CPU runs are always fp32)
    sft: SFTConfig = field(default_factory=SFTConfig)
    poison_ratio: float = 0.1
    target: int = 0
    seed: int = 0
    # Several seeds (SET="seeds=0,1"): Make runs each standalone step once per seed, each where SET="seed=s" writes
    # (`seed_runs`), and figure4/summary/report combine them; () = one run at `seed`.
    seeds: tuple[int, ...] = ()
    # Section 6 (backdoor sequela): re-injection epochs and poison ratios, MIA attack-model epochs.
    reinject_epochs: int = 25
    reinject_ratios: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
    mia_epochs: int = 50
    # CA/ASR of every evaluation on a seeded, class-balanced subset of this many test images (None: all of them).
    eval_images: Optional[int] = None
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set values (parsed) that made this profile

    def __post_init__(self) -> None:
        bad = [r for r in self.reinject_ratios if not 0.0 < r <= 1.0]
        if bad or self.reinject_epochs < 1 or self.mia_epochs < 1:
            raise ValueError(f"profile {self.name!r}: re-injection ratios must be in (0, 1] (got {bad}), "
                             f"reinject_epochs and mia_epochs >= 1")
        if self.finetune_epochs < 1 or self.attack_train.epochs < 1:
            raise ValueError(f"profile {self.name!r}: finetune_epochs and attack_train.epochs must be >= 1 "
                             f"(got {self.finetune_epochs}, {self.attack_train.epochs})")
        sizes = {"width": self.width, "finetune_batch": self.finetune_batch, "encoder.width": self.encoder.width,
                 "encoder.shadow_size": self.encoder.shadow_size,
                 "eval_images": 1 if self.eval_images is None else self.eval_images}
        small = [f"{k}={v}" for k, v in sizes.items() if v < 1]
        if small:
            raise ValueError(f"profile {self.name!r}: {small[0]}: sizes must be >= 1 (eval_images: none = all)")
        if not self.ft_lr > 0 or self.target < 0:
            raise ValueError(f"profile {self.name!r}: ft_lr must be > 0 (got {self.ft_lr}) and target >= 0 "
                             f"(got {self.target})")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"profile {self.name!r}: seeds {self.seeds} repeat a seed; give each once")
        if self.precision not in PRECISIONS:
            raise ValueError(f"profile {self.name!r}: precision {self.precision!r}; choose one of: "
                             f"{', '.join(PRECISIONS)}")
        _check_entries(self.name, "attack_params", self.attack_params, ATTACK_CLASSES)
        for attack, params in self.attack_params.items():
            unknown = set(params) - set(attack_param_types(attack))
            if unknown:
                raise ValueError(f"profile {self.name!r}: {attack} has no parameter {sorted(unknown)}; "
                                 f"valid: {', '.join(attack_param_types(attack))}")
        _check_entries(self.name, "defenses", self.defenses, BASELINES)
        wrong = [d for d, c in self.defenses.items() if not isinstance(c, BASELINES[d])]
        if wrong:
            raise ValueError(f"profile {self.name!r}: defenses {wrong} need a {[BASELINES[d].__name__ for d in wrong]}")
        bad_charge = {d: e for d, e in self.charge_epochs.items() if not 1 <= e <= self.finetune_epochs}
        if bad_charge or not set(self.charge_epochs) <= {"ft", "sft"}:
            raise ValueError(f"profile {self.name!r}: charge_epochs {dict(self.charge_epochs)} must map ft/sft to "
                             f"1..finetune_epochs ({self.finetune_epochs}); lower it with --set charge_epochs.sft=N")

    @property
    def bf16(self) -> bool:
        """The `bf16` flag of every config this profile builds (autocast takes effect on CUDA only)."""
        return self.precision == "bf16"

    def train_config(self, dataset: str) -> TrainConfig:
        """The attack-training config with the dataset's flip rule and the profile's precision."""
        return replace(self.attack_train, flip=dataset in FLIP_DATASETS, seed=self.seed,
                       bf16=self.bf16)

    def finetune_config(self, dataset: str) -> TrainConfig:
        """The FT config (constant LR = ft_lr); SFT takes its LRs from `sft`."""
        return replace(self.train_config(dataset), epochs=self.finetune_epochs, batch_size=self.finetune_batch,
                       lr=self.ft_lr, schedule="constant", eval_every=1)

    def encoder_config(self, stage: str) -> TrainConfig:
        """The encoder scenario's `stage` config (simclr, badencoder, downstream) with seed and precision."""
        return replace(getattr(self.encoder, stage), seed=self.seed, bf16=self.bf16)

    def arch_record(self, dataset: str, num_classes: int) -> dict[str, Any]:
        """The checkpoint's `arch` record of this profile's classifier (read back by `common.build_model`)."""
        return {"name": self.arch, "num_classes": num_classes, "width": self.width, "dataset": dataset}

    def attack_kwargs(self, attack: str) -> dict[str, Any]:
        """`make_attack` keyword arguments for `attack` (target and the profile's preset)."""
        if attack not in self.attack_params:
            raise ValueError(f"unknown attack {attack!r}; choose one of: {', '.join(sorted(self.attack_params))}")
        return {"target": self.target, **self.attack_params[attack]}

    def defense_params(self) -> dict[str, Any]:
        """`DefenseContext.params`: the SFT schedule and each baseline's config."""
        return {"sft": self.sft, **self.defenses}

    def stamp(self, device: Optional[torch.device]) -> dict[str, Any]:
        """What every result records about its run: profile name, overrides, and the precision really used
        on `device` ("bf16" only on CUDA; None for a result that ran no model)."""
        precision = None if device is None else precision_used(device, self.bf16)
        return {"profile": self.name, "precision": precision, "overrides": dict(self.overrides)}

    def to_dict(self) -> dict:
        return jsonable(asdict(self))


def _check_entries(profile: str, what: str, got: Mapping[str, Any], need: Mapping[str, Any]) -> None:
    missing, extra = sorted(set(need) - set(got)), sorted(set(got) - set(need))
    if missing or extra:
        raise ValueError(f"profile {profile!r}: {what} must have exactly one entry per {', '.join(sorted(need))}; "
                         f"missing {missing}, unknown {extra}")


def attack_param_types(attack: str) -> dict[str, Any]:
    """Keyword parameter -> type of an attack's constructor (for presets and --set)."""
    cls = ATTACK_CLASSES[attack]
    hints = get_type_hints(cls.__init__)
    sig = inspect.signature(cls.__init__).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: hints.get(n, type(p.default)) for n, p in sig.items() if n not in ("self", "target") and p.kind in kinds}


# ---- the baselines' budgets ----------------------------------------------------------------

def _budget(epochs: int, batch_size: int = 256, **kw: Any) -> Budget:
    return Budget(epochs=epochs, cosine_t_max=max(1, epochs), batch_size=batch_size, **kw)


def _scaled(retrain: int, abl: tuple[int, int, int, int], nad: tuple[int, int, int], nc_epochs: int,
            clean_ratio: float, batch: int, clean_batch: int, nad_lr: float = 0.01,
            variant: str = "backdoorbench") -> dict[str, Any]:
    """Configs with the given budgets; abl = (tuning, finetune, lr-drop epoch, unlearn), nad = (teacher, student, drop).

    `clean_batch` is the batch of the defences that train on the small clean subset (FP, NAD, NC);
    `variant` is AC's, Spectral's and ABL's ("backdoorbench": its code, as the paper ran it; "method": their papers);
    each cosine T_max equals its stage's epochs.
    """
    tune, ft, drop, unl = abl
    return {
        "abl": ABLConfig(tuning=_budget(tune, batch, weight_decay=1e-4), finetune=_budget(ft, batch, weight_decay=1e-4),
                         finetune_drop_epoch=drop, unlearn=_budget(unl, batch, lr=1e-4, weight_decay=1e-4),
                         variant=variant),
        "ac": ACConfig(retrain=_budget(retrain, batch), variant=variant),
        "fp": FPConfig(clean_ratio=clean_ratio, finetune=_budget(retrain, clean_batch)),
        "nad": NADConfig(clean_ratio=clean_ratio, teacher=_budget(nad[0], clean_batch), epochs=nad[1], lr=nad_lr,
                         lr_drop_epoch=nad[2], batch_size=clean_batch),
        "nc": NCConfig(clean_ratio=clean_ratio, epochs=nc_epochs, batch_size=clean_batch,
                       unlearn=_budget(retrain, clean_batch)),
        "spectral": SpectralConfig(retrain=_budget(retrain, batch), variant=variant),
    }


# paper/quick: each attack's own defaults (BackdoorBench's). demo/smoke: the embedded `digits`
# on CPU, where some defaults cannot work at all or cost too much (measured in docs/attacks.md):
# - WaNet: s = 0.5 moves pixels by about a quarter pixel; on 1,437 upsampled 8x8 digits the
#   noise-mode model never separates that warp from the random ones (ASR 0.01 after 40 epochs).
# - InputAware: generator/mask base width 8 instead of 32, mask stage 5 epochs instead of 25.
# - LF: the clean model for DeepFool trains 5 epochs, at most 10 passes of 50 DeepFool steps.
# - WaNet: no post-warp augmentation (BackdoorBench's crop 5 / rotate 10 / flip): with it the demo's
#   seed-0 WaNet ends at ASR 0.33 after 40 epochs instead of 0.88 (docs/attacks.md).
_DEFAULT_ATTACKS: dict[str, dict[str, Any]] = {a: {} for a in ATTACK_CLASSES}
_CPU_DIGITS_ATTACKS = {**_DEFAULT_ATTACKS, "inputaware": {"width": 8, "mask_epochs": 5},
                       "lf": {"clean_epochs": 5, "max_passes": 10, "df_max_iter": 50},
                       "wanet": {"s": 2.0, "augment": "off"}}

_PAPER_SWEEPS = dict(pretrain="cifar100", downstream=("cifar10", "gtsrb"), ft_lrs=(1e-4, 1e-3, 0.1),
                     lr_max1s=(0.1, 0.3))
# digits: the standalone 10-class model is the pre-trained one; the user's task is digits 5-9.
# FT LRs bracket the demo's training LR (0.01) as the paper's bracket its 0.001.
_DIGITS_SWEEPS = dict(pretrain="digits", downstream=("digits5to9",), lr_max1s=(0.1, 0.3))

_PAPER_ENCODER = EncoderConfig(("cifar10", "stl10"), ("cifar10", "stl10", "svhn"), 64, SIMCLR, BADENCODER, DOWNSTREAM,
                               shadow_size=50_000)

# Fig. 6 cost regime (docs/defenses.md "Cost"): the paper charges SFT 0.089 GPU-h (CIFAR10 Blended)
# against 0.617 GPU-h for 100 FT epochs; at FT's 0.00617 GPU-h per epoch that is 14.4 epochs, so
# SFT is charged at 15 of its 100 epochs (15%); smaller profiles keep the share (quick 3 of 20, demo 2 of 10).
PROFILES: dict[str, Profile] = {
    # fp32: BackdoorBench (which the paper ran) trains in fp32 unless --amp is given.
    "paper": Profile("paper", ("cifar10", "cifar100", "gtsrb"), ATTACKS, 64, PAPER,
                     finetune_epochs=100, finetune_batch=256, ft_lr=PAPER.lr, attack_params=_DEFAULT_ATTACKS,
                     defenses={n: cls() for n, cls in BASELINES.items()},
                     sweeps=SweepConfig(**_PAPER_SWEEPS, transfer_epochs=100, ft_epochs=100,
                                        fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)),
                     encoder=_PAPER_ENCODER, charge_epochs={"sft": 15}, precision="fp32"),
    "quick": Profile("quick", ("cifar10", "cifar100", "gtsrb"), ATTACKS, 64,
                     replace(BACKDOORBENCH, epochs=30, cosine_t_max=30), finetune_epochs=20, finetune_batch=256,
                     ft_lr=0.001, sft=SFTConfig(half_cycle_epochs=2.5), attack_params=_DEFAULT_ATTACKS,
                     defenses=_scaled(20, (4, 12, 8, 4), (2, 20, 4), 40, 0.05, 256, 256),
                     sweeps=SweepConfig(**_PAPER_SWEEPS, transfer_epochs=20, ft_epochs=20,
                                        fractions=(0.1, 0.2, 0.5, 1.0)),
                     encoder=replace(_PAPER_ENCODER, simclr=replace(SIMCLR, epochs=50),
                                     badencoder=replace(BADENCODER, epochs=20),
                                     downstream=replace(DOWNSTREAM, epochs=20, batch_size=256), shadow_size=10_000),
                     charge_epochs={"sft": 3}),
    # 30 + 10 + 10 epochs per attack keep `make demo` (five attacks) under 10 minutes on 2 cores; the
    # backdoored model is evaluated every 10 epochs (figures need only its final CA/ASR).
    # NAD at lr 0.01 on a few hundred digits images collapses (measured: CA 0.98 -> 0.10 within one
    # epoch of 2 steps); 1e-3 with batch 32 keeps CA (0.92) and lowers the attention loss 7x.
    # Encoder (CPU, digits, docs/encoder.md): SimCLR 20 epochs at BadEncoder's code LR 1e-3 (3 epochs
    # left every image at cosine ~0.99); BadEncoder 5 epochs at lr 0.01 (its 200-epoch budget cut to
    # 105 steps); downstream 5 epochs at Adam 1e-3, batch 32 in both modes (3e-4 is too slow for 5
    # epochs; batch 32 gives one epoch 43 steps, about the paper's STL10 epoch of 78, instead of 21).
    "demo": Profile("demo", ("digits",), ATTACKS, 16,
                    TrainConfig(epochs=30, batch_size=64, lr=0.01, schedule="cosine", cosine_t_max=30, eval_every=10),
                    finetune_epochs=10, finetune_batch=64, ft_lr=0.001,
                    sft=SFTConfig(half_cycle_epochs=2.5, phase1_epochs=5), reinject_epochs=10, mia_epochs=100,
                    attack_params=_CPU_DIGITS_ATTACKS,
                    defenses=_scaled(10, (2, 8, 6, 5), (3, 10, 5), 20, 0.2, 64, 32, nad_lr=1e-3),
                    sweeps=SweepConfig(**_DIGITS_SWEEPS, transfer_epochs=12, fractions=(0.1, 0.3, 1.0),
                                       ft_lrs=(0.001, 0.01, 0.1), ft_epochs=6),
                    encoder=EncoderConfig(("digits",), ("digits",), 8,
                                          replace(SIMCLR, epochs=20, batch_size=128, lr=1e-3),
                                          replace(BADENCODER, epochs=5, batch_size=64, lr=0.01),
                                          replace(DOWNSTREAM, epochs=5, batch_size=32, lr=1e-3),
                                          shadow_size=1400),
                    charge_epochs={"sft": 2}),
    "smoke": Profile("smoke", ("digits",), ("badnets", "blended"), 16,
                     TrainConfig(epochs=40, batch_size=64, lr=0.01, schedule="cosine", cosine_t_max=40, eval_every=10),
                     finetune_epochs=10, finetune_batch=64, ft_lr=0.001,
                     sft=SFTConfig(half_cycle_epochs=2.5, phase1_epochs=5), reinject_epochs=15, mia_epochs=100,
                     attack_params=_CPU_DIGITS_ATTACKS,
                     # "method": CI runs the non-default variants too, and BackdoorBench's ABL would take no
                     # ascent step in a 1-epoch unlearning stage (its first epoch only evaluates).
                     defenses=_scaled(1, (1, 1, 1, 1), (1, 1, 1), 3, 0.1, 64, 32, nad_lr=1e-3, variant="method"),
                     sweeps=SweepConfig(**_DIGITS_SWEEPS, transfer_epochs=2, fractions=(0.1, 0.5),
                                        ft_lrs=(0.001, 0.1), ft_epochs=2, sft_epochs=2),
                     encoder=EncoderConfig(("digits",), ("digits",), 4, replace(SIMCLR, epochs=1, batch_size=128),
                                           replace(BADENCODER, epochs=1, batch_size=128, lr=0.01),
                                           replace(DOWNSTREAM, epochs=2), shadow_size=256),
                     charge_epochs={"sft": 2}),
}

# rehearsal: `paper`'s whole pipeline (every dataset, attack, defence, sweep point, ratio, figure) at real data
# sizes with the smallest budgets that run every code path, on the fake data (`make rehearsal`). Even 1 epoch per
# stage at full size is tens of core-hours on 2 CPU cores (3.9e7 image-passes at ~200 img/s), so every stage
# also stops after REHEARSAL_STEPS batches per epoch (TrainConfig.max_steps); its numbers mean nothing.
REHEARSAL_STEPS = 2
_rehearse = dict(epochs=1, max_steps=REHEARSAL_STEPS)
PROFILES["rehearsal"] = replace(
    PROFILES["paper"], name="rehearsal", width=4,
    attack_train=replace(PAPER, lr=0.01, schedule="cosine", cosine_t_max=1, **_rehearse),
    finetune_epochs=2, sft=SFTConfig(phase1_epochs=1, half_cycle_epochs=0.25), reinject_epochs=1, mia_epochs=1,
    attack_params={**_DEFAULT_ATTACKS, "inputaware": {"width": 8, "mask_epochs": 1},
                   "lf": {"clean_epochs": 1, "max_passes": 1, "df_max_iter": 50}},
    defenses=_scaled(1, (1, 1, 1, 1), (1, 1, 1), 1, 0.05, 256, 256),
    sweeps=SweepConfig(**_PAPER_SWEEPS, transfer_epochs=1, ft_epochs=2, fractions=PROFILES["paper"].sweeps.fractions),
    encoder=replace(_PAPER_ENCODER, width=4, simclr=replace(SIMCLR, **_rehearse),
                    badencoder=replace(BADENCODER, **_rehearse),
                    downstream=replace(DOWNSTREAM, batch_size=256, **_rehearse), shadow_size=1024),
    charge_epochs={"sft": 1}, eval_images=512)


def get_profile(name: str) -> Profile:
    """Look up a profile; unknown names fail with the list of valid ones."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


# ---- overrides: --set key=value, typed ------------------------------------------------------

def _parse(text: str, tp: Any, key: str) -> Any:
    """`text` as a value of type `tp` (int, float, bool, str, tuples of them, Optional of them)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if text.lower() in ("none", "null"):
            return None
        tp = next(a for a in args if a is not type(None))
        return _parse(text, tp, key)
    if origin is tuple:
        return tuple(_parse(t, args[0], key) for t in text.split(",") if t)
    try:
        if tp is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
        value = tp(text) if tp in (int, float, str) else None
    except (KeyError, ValueError):
        raise ValueError(f"--set {key}={text}: not a valid {getattr(tp, '__name__', tp)}") from None
    if tp is float and not math.isfinite(value):  # "nan"/"inf" parse, then fail an epoch in
        raise ValueError(f"--set {key}={text}: not a finite number; give a float such as 0.01")
    if tp in (int, float, str):
        return value
    raise ValueError(f"--set {key}: a {tp} cannot be set from the command line; set one of its fields")


def _set(obj: Any, path: list[str], text: str, key: str, hint: Any = None) -> Any:
    """`obj` with the leaf at `path` replaced by `text` parsed against the leaf's declared type."""
    head, rest = path[0], path[1:]
    if is_dataclass(obj):
        hints, names = get_type_hints(type(obj)), [f.name for f in fields(obj) if f.name not in ("name", "overrides")]
        valid, child, child_hint = names, getattr(obj, head, None), hints.get(head)
    elif key.startswith("attack_params.") and len(path) == 1:  # an attack's constructor parameter
        attack = key.split(".")[1]
        param_types = attack_param_types(attack)
        valid, child, child_hint = list(param_types), obj.get(head), param_types.get(head)
    else:
        valid, child, child_hint = list(obj), obj.get(head), None
    if head not in valid:
        raise ValueError(f"--set {key}: unknown key {head!r}; valid keys here: {', '.join(valid)}")
    if rest:
        new = _set(child, rest, text, key)
    elif is_dataclass(child) or isinstance(child, Mapping):
        raise ValueError(f"--set {key}: {head!r} is a group; set one of its keys: "
                         f"{', '.join(f.name for f in fields(child)) if is_dataclass(child) else ', '.join(child)}")
    else:
        new = _parse(text, child_hint if child_hint is not None else type(child), key)
    return replace(obj, **{head: new}) if is_dataclass(obj) else {**obj, head: new}


def parse_sets(sets: list[str]) -> list[tuple[str, str]]:
    """`key=value` words to pairs; a word without `=` fails."""
    pairs = []
    for s in sets:
        key, eq, value = s.partition("=")
        if not eq or not key:
            raise ValueError(f"--set {s!r}: write key=value, e.g. finetune_epochs=5 or sft.lr_max1=0.3")
        pairs.append((key.strip(), value.strip()))
    return pairs


def resolve(name: str, sets: list[str] | tuple[str, ...] = ()) -> Profile:
    """Profile `name` with the `key=value` overrides; overridden, it is named `<name>+<hash>` (its own artifacts)."""
    prof = get_profile(name)
    if not sets:
        return prof
    pairs = parse_sets(list(sets))
    keys = {key for key, _ in pairs}
    for key, text in pairs:
        prof = _set(prof, key.split("."), text, key)
    if "seeds" in keys and ("seed" in keys or not prof.seeds):
        raise ValueError("--set seeds=a,b: give at least one seed and no seed= beside it (each seed is its own run)")
    parsed = {key: jsonable(_get(prof, key.split("."))) for key, _ in pairs}
    digest = hashlib.sha256(json.dumps(parsed, sort_keys=True).encode()).hexdigest()[:8]
    return replace(prof, name=f"{name}+{digest}", overrides=parsed)


def seed_runs(name: str, sets: list[str] | tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """(seed, artifact directory) of each seed: exactly where `sets` minus seeds= plus seed=s writes.

    No seeds: the profile's one run. The one owner of this mapping (Make reads it as the `seed_dirs` field)."""
    prof = resolve(name, sets)
    if not prof.seeds:
        return [(prof.seed, prof.name)]
    others = [s for s, (key, _) in zip(sets, parse_sets(list(sets))) if key != "seeds"]
    return [(s, resolve(name, [*others, f"seed={s}"]).name) for s in prof.seeds]


def _get(obj: Any, path: list[str]) -> Any:
    for p in path:
        obj = getattr(obj, p) if is_dataclass(obj) else obj[p]
    return obj


def add_profile_args(ap: argparse.ArgumentParser) -> None:
    """--profile (default paper, as in Make) and repeatable --set key=value."""
    ap.add_argument("--profile", default="paper", help=", ".join(PROFILES))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a profile setting, e.g. finetune_epochs=5 or sft.lr_max1=0.3 (repeatable)")


def profile_from(args: argparse.Namespace, several_seeds: bool = False) -> Profile:
    """The step's profile; an overridden one writes its overrides beside its artifacts. A step that runs one seed
    refuses seeds= (its results would land in the combined directory, where nothing reads them)."""
    prof = resolve(args.profile, args.set)
    if prof.seeds and not several_seeds:
        raise ValueError(f"--set seeds={','.join(map(str, prof.seeds))}: this step runs one seed; `make figure4`, "
                         "`summary` and `report` run each seed (one seed alone: --set seed=S)")
    if prof.overrides:
        for d in (paths.checkpoints(prof.name), paths.results(prof.name)):
            atomic_write_json(paths.path("overrides", d),
                              {"base": args.profile, "set": dict(prof.overrides)})
    return prof


def field_text(prof: Profile, key: str) -> str:
    """A (dotted) field as Make reads it: lists space-separated; `sweep_lists` for make/transfer_ablations.mk."""
    value = make_fields(prof) if key == "sweep_lists" else _get(prof, key.split("."))
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def cli_text(name: str, key: str | None, sets: list[str] | tuple[str, ...] = ()) -> str:
    """What `python -m experiments.profiles NAME [KEY] [--set ...]` prints: a field as Make reads it, or the profile."""
    prof = resolve(name, sets)
    if key == "seed_dirs":  # seed:directory words, for the Makefile's per-seed sub-makes
        return " ".join(f"{seed}:{d}" for seed, d in seed_runs(name, sets))
    return field_text(prof, key) if key else json.dumps(prof.to_dict(), indent=1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print a profile's field (for the Makefile) or all of it.")
    ap.add_argument("profile")
    ap.add_argument("field", nargs="?", help="e.g. datasets, name, encoder.pretrain_sets, sweep_lists, seed_dirs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = ap.parse_args()
    try:
        print(cli_text(a.profile, a.field, a.set))
    except (ValueError, KeyError, AttributeError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise UserExit(f"error: {e}") from None
