"""Backdoor re-injection (paper Section 6.2, Fig. 11, 14-17).

The adversary knows the earlier attack: it poisons a fresh copy of the training set with the
same trigger and trains the (defended) model again with the same procedure, recording CA and
ASR after every epoch (epoch 0 = the model before re-injection).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

import torch.nn as nn

from backdoor.attacks import Attack
from backdoor.attacks.per_batch import expected_counts
from backdoor.attacks.training import live_evaluator, train_backdoored
from backdoor.data import ImageData
from backdoor.poison import check_ratio
from backdoor.train import TrainConfig, device_of, fit, steps_per_epoch

Evaluator = Callable[[nn.Module], dict]


def num_poisoned(attack: Attack, n: int, ratio: float, cfg: TrainConfig) -> float:
    """Poisoned images per epoch: round(ratio * n) for baked triggers; for per-batch attacks the
    expected count, ratio x batch x steps below one image per batch (drawn per batch, see per_batch)."""
    check_ratio(ratio)
    if attack.poisoning == "per_batch":
        spe = steps_per_epoch(n, cfg.batch_size, cfg.drop_last, cfg.max_steps)
        return expected_counts(attack, cfg.batch_size, ratio)[0] * spe
    return round(ratio * n)


def reinject(model: nn.Module, attack: Attack, data: ImageData, cfg: TrainConfig, epochs: int, ratio: float,
             seed: int, evaluate: Optional[Evaluator] = None, control: bool = False) -> dict[str, Any]:
    """Train `model` in place for `epochs` on `data` poisoned by `attack` at `ratio`; returns the record.

    A ratio that poisons no image is reported as skipped (`history` empty) unless `control`
    is set, which runs the same training on the unpoisoned set (a ratio-0 baseline). Per-batch
    attacks poison a random number of images; `n_poison_drawn` is how many they really poisoned over all epochs.
    `seed` draws the poisoned images and the batch order; pass one that differs from the
    original attack's so the poisoned set is fresh.
    """
    cfg = replace(cfg, epochs=epochs, seed=seed, eval_every=1)  # Fig. 11 plots every epoch
    n_poison = num_poisoned(attack, len(data.x_train), ratio, cfg)
    record: dict[str, Any] = {"ratio": ratio, "n_poison": n_poison, "epochs": epochs, "seed": seed,
                              "n_train": len(data.x_train)}
    if n_poison == 0 and not control:
        return {**record, "skipped": f"ratio {ratio} poisons 0 of {len(data.x_train)} training images",
                "history": []}
    device = device_of(model)
    attack.to(device)
    ev = evaluate or live_evaluator(data, attack, device, cfg.bf16)
    if n_poison == 0:
        history = fit(model, data.x_train, data.y_train, cfg, evaluate=ev, desc="reinject (control)")
        return {**record, "history": history}
    # The trigger is the loaded one (LF's trigger is not rebuilt: that would draw a new pattern). WaNet keeps
    # its warping field; InputAware keeps training its generator, as in its own procedure.
    history, info = train_backdoored(attack, model, data, cfg, ratio, seed, ev, build_trigger=False,
                                     desc=f"reinject {attack.name}")
    drawn = {"n_poison_drawn": info["poisoned_seen"]} if attack.poisoning == "per_batch" else {}
    return {**record, **drawn, "history": history}


def epochs_to(history: list[dict], key: str = "asr", threshold: float = 0.8) -> Optional[int]:
    """First epoch whose `key` reaches `threshold` (0 = already before re-injection); None if never."""
    return next((r["epoch"] for r in history if r.get(key, float("nan")) >= threshold), None)

