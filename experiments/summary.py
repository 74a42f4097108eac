"""Text summary of the standalone runs: CA/ASR of the backdoored model and after FT and SFT."""
from __future__ import annotations

import argparse
from pathlib import Path

from backdoor.checkpoint import atomic_write_bytes
from experiments.common import read_json, run_main


def table(results: Path, datasets: list[str], attacks: list[str]) -> str:
    """Fixed-width table, one row per (dataset, attack)."""
    head = f"{'dataset':<9} {'attack':<11} {'backdoored CA/ASR':>18} {'FT CA/ASR':>14} {'SFT CA/ASR':>14} {'FT s':>6} {'SFT s':>6}"
    rows = [head, "-" * len(head)]
    for d in datasets:
        for a in attacks:
            ft, sft = read_json(results / d / a / "ft.json"), read_json(results / d / a / "sft.json")
            b = ft["before"]
            rows.append(f"{d:<9} {a:<11} {b['ca']:>9.3f}/{b['asr']:.3f} "
                        f"{ft['final']['ca']:>8.3f}/{ft['final']['asr']:.3f} "
                        f"{sft['final']['ca']:>8.3f}/{sft['final']['asr']:.3f} "
                        f"{ft['device_hours'] * 3600:>6.0f} {sft['device_hours'] * 3600:>6.0f}")
    return "\n".join(rows) + "\n"


def main_step(args: argparse.Namespace) -> None:
    text = table(Path(args.results), args.datasets.split(), args.attacks.split())
    atomic_write_bytes(Path(args.out), text.encode())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", required=True)
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--attacks", required=True)
    ap.add_argument("--out", required=True)
    run_main(main_step, ap.parse_args())
