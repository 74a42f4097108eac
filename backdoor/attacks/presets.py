"""Per-profile attack settings: keyword arguments for `make_attack` by profile name.

paper/quick: BackdoorBench's defaults (each attack's own defaults). demo/smoke: the embedded
`digits` on CPU, where some defaults cannot work at all or cost too much (measured numbers
in docs/attacks.md):
- WaNet: s = 0.5 moves pixels by about a quarter pixel; on 1,437 upsampled 8x8 digits the
  noise-mode model never separates that warp from the random ones (ASR 0.01 after 40 epochs).
  Also augment "off" (crop-4 before the warp): with BackdoorBench's crop-5 + rotation-10 after
  it, digits' ASR after 40 epochs is 0.33 at seed 0 (0.88 "off"), 0.97 at seed 1 (docs/attacks.md).
- InputAware: generator/mask base width 8 instead of 32, mask stage 5 epochs instead of 25.
- LF: the clean model for DeepFool trains 5 epochs, at most 10 passes of 50 DeepFool steps.
"""
from __future__ import annotations

from typing import Any

_CPU_DIGITS: dict[str, dict[str, Any]] = {
    "inputaware": {"width": 8, "mask_epochs": 5},
    "lf": {"clean_epochs": 5, "max_passes": 10, "df_max_iter": 50},
    "wanet": {"s": 2.0, "augment": "off"},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "quick": {},
    "demo": _CPU_DIGITS,
    "smoke": _CPU_DIGITS,
}


def attack_params(profile: str, attack: str) -> dict[str, Any]:
    """`make_attack` keyword arguments for `attack` under `profile` (unknown profiles: the defaults)."""
    return dict(PRESETS.get(profile, {}).get(attack, {}))
