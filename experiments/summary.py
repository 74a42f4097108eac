"""Text summary of the standalone runs: CA/ASR of the backdoored model and after FT and SFT, and their cost.

Cost is the device time of the one clock (`backdoor.train.Clock`, evaluation excluded), charged at the
profile's `charge_epochs` (Fig. 6's budget; docs/defenses.md "Cost") and over the full run.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Mapping, Optional

from backdoor.checkpoint import atomic_write_bytes
from experiments.common import read_json, run_main
from experiments.profiles import add_profile_args, profile_from


def charged_hours(result: dict, epochs: Optional[int]) -> float:
    """Device hours of a defence run after `epochs` epochs (None: the whole run), from its history's clock."""
    if epochs is None:
        return result["device_hours"]
    rows = [r for r in result["history"] if r["epoch"] == epochs and "device_seconds" in r]
    if not rows:
        raise ValueError(f"{result.get('defense')} result of {result.get('dataset')}/{result.get('attack')} has no "
                         f"epoch {epochs} with device_seconds; delete it and rerun make")
    return rows[-1]["device_seconds"] / 3600


def table(results: Path, datasets: list[str], attacks: list[str], charge: Mapping[str, int]) -> str:
    """Fixed-width table, one row per (dataset, attack); costs in device seconds, charged and full."""
    at = {d: f"@{charge[d]}" if d in charge else "" for d in ("ft", "sft")}
    head = (f"{'dataset':<9} {'attack':<11} {'backdoored CA/ASR':>18} {'FT CA/ASR':>14} {'SFT CA/ASR':>14} "
            f"{'FT s' + at['ft']:>8} {'SFT s' + at['sft']:>8} {'FT s all':>8} {'SFT s all':>9}")
    rows = [head, "-" * len(head)]
    for d in datasets:
        for a in attacks:
            ft, sft = read_json(results / d / a / "ft.json"), read_json(results / d / a / "sft.json")
            b = ft["before"]
            cost = [charged_hours(r, charge.get(n)) * 3600 for n, r in (("ft", ft), ("sft", sft))]
            rows.append(f"{d:<9} {a:<11} {b['ca']:>9.3f}/{b['asr']:.3f} "
                        f"{ft['final']['ca']:>8.3f}/{ft['final']['asr']:.3f} "
                        f"{sft['final']['ca']:>8.3f}/{sft['final']['asr']:.3f} "
                        f"{cost[0]:>8.0f} {cost[1]:>8.0f} {ft['device_hours'] * 3600:>8.0f} "
                        f"{sft['device_hours'] * 3600:>9.0f}")
    return "\n".join(rows) + "\n"


def main_step(args: argparse.Namespace) -> None:
    prof = profile_from(args)
    text = table(Path(args.results), args.datasets.split(), args.attacks.split(), prof.charge_epochs)
    atomic_write_bytes(Path(args.out), text.encode())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    add_profile_args(ap)
    ap.add_argument("--results", required=True)
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--attacks", required=True)
    ap.add_argument("--out", required=True)
    run_main(main_step, ap.parse_args())
