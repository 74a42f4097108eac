"""Figure 1 data: the super-fine-tuning LR over iterations, read off the scheduler SFT really uses.

    python -m experiments.lr_schedule --profile paper --out artifacts/results/paper/figure1_lr.json
"""
from __future__ import annotations

import argparse

from backdoor.train import steps_per_epoch
from defenses.finetune import sft_lr_trace
from experiments.common import positive_int, run_main, setup, write_result
from experiments.profiles import add_profile_args, profile_from

# Training-set sizes used to turn epochs into steps; CIFAR10's 50,000 for the real datasets.
TRAIN_SIZES = {"digits": 1400, "cifar10": 50000, "cifar100": 50000, "gtsrb": 39209}


def main_step(args: argparse.Namespace) -> None:
    prof = profile_from(args)
    dataset = prof.datasets[0]
    spe = steps_per_epoch(TRAIN_SIZES[dataset], prof.finetune_batch)
    epochs = args.epochs if args.epochs is not None else min(prof.finetune_epochs, 2 * prof.sft.phase1_epochs)
    if epochs < 1:  # an empty trace would only crash Figure 1 later
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    setup(f"SFT learning-rate trace ({prof.name})", {"sft": prof.sft, "steps_per_epoch": spe, "epochs": epochs})
    lrs = sft_lr_trace(prof.sft, spe, epochs * spe)
    write_result(args.out, {**prof.stamp(None), "dataset": dataset, "steps_per_epoch": spe,
                            "half_cycle_steps": prof.sft.step_size(spe), "sft": prof.sft, "lr": lrs})


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_profile_args(ap)
    ap.add_argument("--epochs", type=positive_int, help="epochs to trace (default: two phase-1 lengths)")
    ap.add_argument("--out", required=True)
    run_main(main_step, ap.parse_args())
