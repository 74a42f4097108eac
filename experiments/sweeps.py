"""Sizes of the transfer scenario (Fig. 3) and the ablations (Fig. 7, 8, 9), one bundle per profile.

Model width, training recipe and the SFT schedule come from `experiments.profiles.Profile`;
this module only adds what those figures sweep. An ablation point is named after its settings
(`sft_frac0.1_max0.3`, `ft_lr0.01`) and lives in `<results>/<dataset>/<attack>/ablation/<name>.json`,
unless it is exactly (a prefix of) the standalone run, which it then reads (`sft.json`, `ft.json`).

The sweep sizes are `Profile.sweeps`; Make reads the lists once per run with
`python -m experiments.profiles <profile> sweep_lists` (see `make_fields`).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from backdoor.train import steps_per_epoch
from defenses.finetune import SFTConfig
from experiments import paths
from experiments.common import read_json

if TYPE_CHECKING:  # profiles.py holds a SweepConfig per profile, so it imports this module, not vice versa
    from experiments.profiles import Profile


@dataclass(frozen=True)
class SweepConfig:
    """What Fig. 3 and Fig. 7-9 vary, on top of a Profile."""

    pretrain: str  # dataset the adversary backdoors for transfer (paper: cifar100)
    downstream: tuple[str, ...]  # the user's tasks after the head swap (paper: cifar10, gtsrb)
    transfer_epochs: int  # downstream fine-tuning epochs, FT and SFT (paper: 100)
    fractions: tuple[float, ...]  # Fig. 7: share of the clean fine-tuning set given to SFT
    ft_lrs: tuple[float, ...]  # Fig. 8: constant LRs of conventional FT
    ft_epochs: int  # Fig. 8 epochs
    lr_max1s: tuple[float, ...]  # Fig. 9: SFT peak LR of phase 1
    small_fraction: float = 0.1  # Fig. 9 runs on this share of the fine-tuning set
    sft_epochs: Optional[int] = None  # Fig. 7 and 9 SFT epochs; None: the profile's finetune_epochs
    transfer_ft_lr: Optional[float] = None  # FT LR after the head swap; None: the profile's ft_lr
    subset_seed: int = 0  # which images a fraction keeps (nested: 10% is inside 30%)
    # SFT's half-cycle is a fixed number of optimizer steps (the paper's "500 iterations"). A
    # profile that gives it in epochs means epochs of its standalone training set; True keeps
    # that step count on a subset (Fig. 7, 9) and on the downstream task (Fig. 3), False
    # rescales it to the smaller set's epochs.
    fixed_cycle_steps: bool = True

    def sft_epochs_for(self, prof: Profile) -> int:
        return self.sft_epochs if self.sft_epochs is not None else prof.finetune_epochs

    def sft_for(self, sft: SFTConfig, n_reference: int, batch_size: int) -> SFTConfig:
        """`sft` with its half-cycle fixed to the step count it has on `n_reference` images (if fixed_cycle_steps)."""
        if not self.fixed_cycle_steps or sft.half_cycle_epochs is None:
            return sft
        steps = sft.step_size(steps_per_epoch(n_reference, batch_size))
        return replace(sft, half_cycle_steps=steps, half_cycle_epochs=None)


@dataclass(frozen=True)
class AblationPoint:
    """One standalone fine-tuning run of an ablation: FT at `lr`, or SFT with peak `lr_max1`, on `fraction`."""

    defense: str  # "ft" or "sft"
    fraction: float = 1.0
    lr: Optional[float] = None  # FT only
    lr_max1: Optional[float] = None  # SFT only

    def __post_init__(self) -> None:
        if self.defense not in ("ft", "sft"):
            raise ValueError(f"ablation defense must be ft or sft, got {self.defense!r}")
        if (self.lr is None) != (self.defense == "sft") or (self.lr_max1 is None) != (self.defense == "ft"):
            raise ValueError("an ft point needs lr (no lr_max1); an sft point needs lr_max1 (no lr)")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")

    @property
    def name(self) -> str:
        if self.defense == "ft":
            return f"ft_lr{self.lr:g}" + ("" if self.fraction == 1 else f"_frac{self.fraction:g}")
        return f"sft_frac{self.fraction:g}_max{self.lr_max1:g}"


_NAME = re.compile(r"^(?:ft_lr(?P<lr>[0-9.e+-]+)(?:_frac(?P<ffrac>[0-9.e+-]+))?"
                   r"|sft_frac(?P<frac>[0-9.e+-]+)_max(?P<max>[0-9.e+-]+))$")


def parse_point(name: str) -> AblationPoint:
    """Inverse of `AblationPoint.name`."""
    m = _NAME.match(name)
    if not m:
        raise ValueError(f"bad ablation point {name!r}; expected e.g. sft_frac0.1_max0.3 or ft_lr0.01")
    try:
        if m["lr"] is not None:
            return AblationPoint("ft", float(m["ffrac"] or 1), lr=float(m["lr"]))
        return AblationPoint("sft", float(m["frac"]), lr_max1=float(m["max"]))
    except ValueError as e:
        raise ValueError(f"bad ablation point {name!r}: {e}") from None


def point_epochs(point: AblationPoint, prof: Profile, sw: SweepConfig) -> int:
    return sw.ft_epochs if point.defense == "ft" else sw.sft_epochs_for(prof)


def point_file(point: AblationPoint, prof: Profile, sw: SweepConfig) -> str:
    """Results file of a point, relative to `<results>/<dataset>/<attack>/`.

    A point that is the standalone FT/SFT run, or its first epochs, reads that run: both are
    deterministic and their LR schedules do not depend on the total number of epochs.
    """
    if point.fraction == 1 and point_epochs(point, prof, sw) <= prof.finetune_epochs:
        if point.defense == "ft" and point.lr == prof.ft_lr:
            return paths.in_run("result", defense="ft")
        if point.defense == "sft" and point.lr_max1 == prof.sft.lr_max1:
            return paths.in_run("result", defense="sft")
    return paths.in_run("ablation", point=point.name)


def figure_points(figure: int, prof: Profile, sw: SweepConfig) -> list[AblationPoint]:
    """The points that Fig. 7, 8 or 9 plots, in plotting order."""
    if figure == 7:
        return [AblationPoint("sft", f, lr_max1=prof.sft.lr_max1) for f in sw.fractions]
    if figure == 8:
        return [AblationPoint("ft", lr=lr) for lr in sw.ft_lrs]
    if figure == 9:
        return [AblationPoint("sft", sw.small_fraction, lr_max1=m) for m in sw.lr_max1s]
    raise ValueError(f"no ablation figure {figure}; choose 7, 8 or 9")


def read_point(results: Path | str, dataset: str, attack: str, point: AblationPoint, prof: Profile,
               sw: SweepConfig) -> list[dict]:
    """The point's per-epoch history (epoch 0 = the backdoored model), cut to the point's epochs."""
    path = Path(results) / paths.run(dataset, attack) / point_file(point, prof, sw)
    history, epochs = read_json(path)["history"], point_epochs(point, prof, sw)
    if len(history) <= epochs:
        raise ValueError(f"{path} has {len(history) - 1} epochs, {point.name} needs {epochs}; delete it and rerun make")
    return history[: epochs + 1]


def _make_field(field: str, prof: Profile, sw: SweepConfig) -> str:
    """A space-separated value for the Makefile: a SweepConfig field, `points`, or `files7|8|9`."""
    if field == "points":  # points that need their own run
        names = {p.name: p for f in (7, 8, 9) for p in figure_points(f, prof, sw)
                 if point_file(p, prof, sw) == paths.in_run("ablation", point=p.name)}
        return " ".join(names)
    if field.startswith("files"):
        return " ".join(dict.fromkeys(point_file(p, prof, sw) for p in figure_points(int(field[5:]), prof, sw)))
    value = asdict(sw)[field]
    return " ".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


MAKE_FIELDS = ("pretrain", "downstream", "points", "files7", "files8", "files9")


def make_fields(prof: Profile) -> str:
    """Every list Make needs, as name=v1,v2 words (one Python call per Make run)."""
    return " ".join(f"{f}=" + ",".join(_make_field(f, prof, prof.sweeps).split()) for f in MAKE_FIELDS)
