"""Every claim check can say "does not hold": for each claim of paper_numbers.json, result trees built here from
small JSON records (no training, profile `paper`) where the paper's sentence holds, fails, and ties; and one number
row of each metric kind inside, outside and on its tolerance."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from experiments import report

SPEC = report.load_spec()
CLAIMS = {c["id"]: c for c in SPEC["claims"]}
NUMBERS = {n["id"]: n for n in SPEC["numbers"]}
SCOPE = report.make_scope("paper")
DEFENCES = ("abl", "ac", "fp", "ft", "nad", "nc", "sft", "spectral")  # the 8 of Fig. 5/6 (paper compares all but ft)


def put(root: Path, rel: str, obj: dict) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(obj))


def history(n: int, at: dict[int, dict] | None = None, **every) -> list[dict]:
    """Epochs 0..n with `every`'s fields, overridden per epoch by `at`; device_seconds 60 s per epoch."""
    base = {"ca": 0.9, "asr": 0.5, "seconds": 60.0, **every}
    return [{"epoch": e, **base, "device_seconds": 60.0 * e, **(at or {}).get(e, {})} for e in range(n + 1)]


def std(root: Path, defence: str, ca: float = 0.9, asr: float = 0.01, before: tuple = (0.93, 0.99),
        run: str = "cifar10/badnets", hours: float = 1.0) -> None:
    """A standalone defence result: backdoored (CA, ASR) `before`, final (CA, ASR), 15 epochs of 60 s each."""
    put(root, f"{run}/{defence}.json", {"before": {"ca": before[0], "asr": before[1]}, "final": {"ca": ca, "asr": asr},
                                        "device_hours": hours, "history": history(15)})


def cost(root: Path, hours: dict[str, float], run: str = "cifar10/badnets") -> None:
    """Every defence's cost; SFT's `hours` is what the paper profile charges it (its device_seconds at epoch 15)."""
    for d, h in hours.items():
        rec = {"before": {"ca": 0.93, "asr": 0.99}, "final": {"ca": 0.9, "asr": 0.01}, "device_hours": h * 6.0,
               "history": history(20, {15: {"device_seconds": h * 3600}})}
        if d != "sft":
            rec["device_hours"] = h
        put(root, f"{run}/{d}.json", rec)


def fig5(root: Path, points: dict[str, tuple[float, float]], run: str = "cifar10/badnets") -> None:
    for d, (ca, asr) in points.items():
        std(root, d, ca, asr, run=run)


def transfer(root: Path, attack: str, d: str, asr: float = 0.05, ca1: float = 0.8) -> None:
    put(root, f"transfer/cifar10/{attack}/{d}.json",
        {"final": {"ca": 0.9, f"asr_{attack}": asr}, "history": history(1, {1: {"ca": ca1}})})


def encoder(root: Path, pre: str, down: str, classifier: float, whole1: float) -> None:
    put(root, f"encoder/{pre}/{down}/classifier.json", {"final": {"asr": classifier}, "history": history(1)})
    put(root, f"encoder/{pre}/{down}/whole.json",
        {"final": {"asr": whole1}, "history": history(1, {1: {"asr": whole1}})})


def point(root: Path, rel: str, final: dict, at: dict[int, dict] | None = None, run: str = "cifar10/badnets") -> None:
    """An ablation point (100 epochs, the paper's) whose last epoch is `final`."""
    put(root, f"{run}/{rel}", {"history": history(100, {**(at or {}), 100: final})})


def fig7(root: Path, cas: list[float], asrs: list[float], run: str = "cifar10/blended") -> None:
    fractions = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    files = [f"ablation/sft_frac{f:g}_max0.1.json" for f in fractions] + ["sft.json"]
    for f, ca, asr in zip(files, cas, asrs):
        point(root, f, {"ca": ca, "asr": asr}, run=run)


def fig8(root: Path, small: dict, middle: dict, large: dict, run: str = "cifar10/badnets") -> None:
    """Each LR's {"final": {...}, "e1": {...}} (epoch-0 ASR 0.99: the backdoored model)."""
    for f, v in (("ablation/ft_lr0.0001.json", small), ("ft.json", middle), ("ablation/ft_lr0.1.json", large)):
        point(root, f, v.get("final", {}), {0: {"asr": 0.99}, 1: v.get("e1", {})}, run=run)


def fig9(root: Path, smaller: float, larger: float, run: str = "cifar10/blended") -> None:
    point(root, "ablation/sft_frac0.1_max0.1.json", {"asr": smaller}, run=run)
    point(root, "ablation/sft_frac0.1_max0.3.json", {"asr": larger}, run=run)


def mia(root: Path, run: str, sft: float, backdoor: float) -> None:
    put(root, f"{run}/mia/sft.json", {"accuracy": sft})
    put(root, f"{run}/mia/backdoor.json", {"accuracy": backdoor})


def reinject(root: Path, model: str, asr0: float, first: int | None, asr3: float = 0.5, ratio: str = "0.01") -> None:
    put(root, f"cifar10/badnets/reinject/{model}/{ratio}.json",
        {"epochs_to_asr_0.8": first, "history": history(3, {0: {"asr": asr0}, 3: {"asr": asr3}})})


def reinject_cell(root: Path, clean: int | None, **models: tuple[float, int | None, float]) -> None:
    reinject(root, "clean", 0.0, clean)
    for m, (asr0, first, asr3) in models.items():
        reinject(root, m, asr0, first, asr3)


HOLDS, FAILS, NOT_RUN = "holds", "does not hold", "not run"
ATTACKS = ("badnets", "blended", "inputaware", "lf", "wanet")
ALL_RUNS = [f"{d}/{a}" for d in ("cifar10", "cifar100", "gtsrb") for a in ATTACKS]
# claim -> world -> (build the result tree, expected verdict, why); every claim has holds, does not hold, tie.
World = tuple[Callable[[Path], None], str, str]
WORLDS: dict[str, dict[str, World]] = {
    "encoder-whole-ft-removes": {
        "holds": (lambda r: (encoder(r, "cifar10", "stl10", 0.998, 0.05), encoder(r, "stl10", "cifar10", 0.002, 0.01)),
                  HOLDS, "removed within one epoch; STL10 -> CIFAR10 had nothing to remove and is left out"),
        "does not hold": (lambda r: encoder(r, "cifar10", "stl10", 0.99, 0.90), FAILS,
                          "0.90 after one epoch is not removed"),
        "tie": (lambda r: encoder(r, "stl10", "cifar10", 0.002, 0.010), NOT_RUN,
                "the paper's own Fig. 2 case: classifier-only already at 0.002, nothing to remove"),
    },
    "transfer-sft-asr-le-ft": {
        "holds": (lambda r: (transfer(r, "badnets", "sft", 0.05), transfer(r, "badnets", "ft", 0.40)), HOLDS,
                  "0.05 < 0.40"),
        "does not hold": (lambda r: (transfer(r, "badnets", "sft", 0.30), transfer(r, "badnets", "ft", 0.10)), FAILS,
                          "SFT higher"),
        "tie": (lambda r: (transfer(r, "badnets", "sft", 0.010), transfer(r, "badnets", "ft", 0.011)), FAILS,
                "both removed: no lower ASR in any case, so not in most"),
    },
    "transfer-sft-ca-epoch1-gt-ft": {
        "holds": (lambda r: (transfer(r, "badnets", "sft", ca1=0.798), transfer(r, "badnets", "ft", ca1=0.678)), HOLDS,
                  "the paper's 0.798 vs 0.678"),
        "does not hold": (lambda r: (transfer(r, "badnets", "sft", ca1=0.60), transfer(r, "badnets", "ft", ca1=0.70)),
                          FAILS, "FT higher"),
        "tie": (lambda r: (transfer(r, "badnets", "sft", ca1=0.800), transfer(r, "badnets", "ft", ca1=0.799)), FAILS,
                "0.001 is no effect"),
    },
    "standalone-sft-asr-lt-ft": {
        "holds": (lambda r: (std(r, "sft", asr=0.01), std(r, "ft", asr=0.85)), HOLDS, "0.01 vs 0.85"),
        "does not hold": (lambda r: (std(r, "sft", asr=0.30), std(r, "ft", asr=0.01)), FAILS, "SFT higher: against"),
        "tie": (lambda r: [std(r, d, asr=a, run=f"cifar10/{att}") for att, pair in
                           (("badnets", (0.01, 0.85)), ("blended", (0.0, 1.0)), ("wanet", (0.002, 0.003)))
                           for d, a in zip(("sft", "ft"), pair)], HOLDS,
                "WaNet: both removed, a tie, not a case against; SFT lower in 2 of 3"),
        "all tie": (lambda r: (std(r, "sft", asr=0.0), std(r, "ft", asr=0.0)), FAILS,
                    "FT removes as well as SFT everywhere: no case shows SFT lower"),
    },
    "standalone-sft-removes": {
        "holds": (lambda r: (std(r, "sft", asr=0.05), std(r, "sft", asr=0.5, before=(0.9, 0.10), run="cifar10/lf")),
                  HOLDS, "removed; LF's backdoor was never there (0.10) and is left out"),
        "does not hold": (lambda r: std(r, "sft", asr=0.5), FAILS, "0.5 is not removed"),
        "tie": (lambda r: std(r, "sft", asr=0.2), HOLDS, "on the removed line, which is inclusive"),
    },
    "standalone-sft-keeps-ca": {
        "holds": (lambda r: std(r, "sft", ca=0.92), HOLDS, "0.93 -> 0.92"),
        "does not hold": (lambda r: std(r, "sft", ca=0.80), FAILS, "0.13 lost"),
        "tie": (lambda r: std(r, "sft", ca=0.88), HOLDS, "exactly 0.05 lost: on the inclusive keeps-CA line"),
    },
    "standalone-ft-leaves-blended": {
        "holds": (lambda r: std(r, "ft", asr=0.978, run="cifar10/blended"), HOLDS, "the paper's 0.978"),
        "does not hold": (lambda r: std(r, "ft", asr=0.10, run="cifar10/blended"), FAILS, "FT removed it"),
        "tie": (lambda r: std(r, "ft", asr=0.5, run="cifar10/blended"), HOLDS, "on the inclusive high line"),
    },
    "fig5-sft-lowest-asr": {
        "holds": (lambda r: fig5(r, {**{d: (0.9, 0.6) for d in DEFENCES}, "sft": (0.932, 0.009), "nad": (0.10, 0.0)}),
                  HOLDS, "lowest among the live defences; NAD collapsed (CA 0.10) and is left out"),
        "does not hold": (lambda r: fig5(r, {**{d: (0.9, 0.6) for d in DEFENCES}, "sft": (0.20, 0.0)}), FAILS,
                          "SFT collapsed (CA 0.20 on 10 classes) and cannot win"),
        "tie": (lambda r: fig5(r, {**{d: (0.9, 0.6) for d in DEFENCES}, "sft": (0.93, 0.010), "nc": (0.93, 0.012)}),
                FAILS, "NC ties SFT on ASR and CA: no effect in the one attack judged"),
        "two defences": (lambda r: fig5(r, {"ft": (0.99, 0.85), "sft": (0.98, 0.0)}), NOT_RUN,
                         "only FT and SFT ran: no comparison among all defences"),
    },
    "abl-leaves-badnets": {
        "holds": (lambda r: std(r, "abl", asr=0.896), HOLDS, "the paper's 0.896"),
        "does not hold": (lambda r: std(r, "abl", asr=0.05), FAILS, "ABL removed it"),
        "tie": (lambda r: std(r, "abl", asr=0.5), HOLDS, "on the inclusive high line"),
    },
    "ac-fails-badnets-cifar100": {
        "holds": (lambda r: std(r, "ac", 0.582, 0.9, (0.672, 0.95), run="cifar100/badnets"), HOLDS,
                  "ASR stays high, CA 0.672 -> 0.582"),
        "does not hold": (lambda r: std(r, "ac", 0.582, 0.05, (0.672, 0.95), run="cifar100/badnets"), FAILS,
                          "AC removed it"),
        "tie": (lambda r: std(r, "ac", 0.665, 0.9, (0.672, 0.95), run="cifar100/badnets"), FAILS,
                "a CA drop of 0.007 is within the CA margin: no drop"),
    },
    "nc-misses-three": {
        "holds": (lambda r: [std(r, "nc", asr=0.9, run=f"cifar10/{a}") for a in ("inputaware", "lf", "wanet")], HOLDS,
                  "all three stay high"),
        "does not hold": (lambda r: [std(r, "nc", asr=0.9 if a != "wanet" else 0.05, run=f"cifar10/{a}")
                                     for a in ("inputaware", "lf", "wanet")], FAILS, "NC removed WaNet"),
        "tie": (lambda r: (std(r, "nc", asr=0.5, run="cifar10/lf"),
                           std(r, "nc", asr=0.1, before=(0.9, 0.1), run="cifar10/wanet")), HOLDS,
                "LF on the inclusive high line; WaNet's backdoor was never there and is left out"),
    },
    "fig6-sft-cheapest": {
        "holds": (lambda r: cost(r, {**{d: 0.5 for d in DEFENCES}, "sft": 0.05, "nc": 1.0}), HOLDS, "0.05 h, next 0.5"),
        "does not hold": (lambda r: cost(r, {**{d: 0.5 for d in DEFENCES}, "sft": 0.05, "nad": 0.01}), FAILS,
                          "NAD is cheaper than SFT on our clock"),
        "tie": (lambda r: cost(r, {**{d: 0.5 for d in DEFENCES}, "sft": 0.050, "ft": 0.055}), FAILS,
                "FT within the 1.2 factor of SFT: a tie, no effect"),
        "two defences": (lambda r: cost(r, {"ft": 0.5, "sft": 0.05}), NOT_RUN, "only FT and SFT ran"),
    },
    "fig6-nc-costliest": {
        "holds": (lambda r: cost(r, {**{d: 0.1 for d in DEFENCES}, "nc": 1.0}), HOLDS, "NC 1.0 h, next 0.1"),
        "does not hold": (lambda r: cost(r, {**{d: 0.1 for d in DEFENCES}, "nc": 1.0, "abl": 2.0}), FAILS,
                          "ABL costlier"),
        "tie": (lambda r: cost(r, {**{d: 0.1 for d in DEFENCES}, "nc": 1.0, "abl": 0.95}), FAILS,
                "ABL within the factor: a tie"),
    },
    "fig7-ca-stable": {
        "holds": (lambda r: fig7(r, [0.90 + 0.003 * i for i in range(10)], [0.5] * 10), HOLDS, "range 0.027"),
        "does not hold": (lambda r: fig7(r, [0.80] + [0.93] * 9, [0.5] * 10), FAILS, "range 0.13"),
        "tie": (lambda r: fig7(r, [0.88] + [0.93] * 9, [0.5] * 10), HOLDS, "range exactly 0.05: inclusive line"),
    },
    "fig7-small-set-weaker": {
        "holds": (lambda r: fig7(r, [0.9] * 10, [0.954] + [0.044] * 9), HOLDS, "the paper's 0.954 vs 0.044"),
        "does not hold": (lambda r: fig7(r, [0.9] * 10, [0.04] + [0.30] * 9), FAILS, "the small set is lower"),
        "tie": (lambda r: fig7(r, [0.9] * 10, [0.95] * 10), FAILS, "0.95 at both sizes: no effect"),
    },
    "fig8-small-lr-stays-high": {
        "holds": (lambda r: fig8(r, {"final": {"asr": 0.95}}, {}, {}), HOLDS, "stays 0.95 after 100 epochs"),
        "does not hold": (lambda r: fig8(r, {"final": {"asr": 0.10}}, {}, {}), FAILS, "forgot it"),
        "tie": (lambda r: fig8(r, {"final": {"asr": 0.5}}, {}, {}), HOLDS, "on the inclusive high line"),
    },
    "fig8-mid-lr-forgets-gradually": {
        "holds": (lambda r: fig8(r, {}, {"e1": {"asr": 0.9}, "final": {"asr": 0.3}}, {}), HOLDS, "0.9 -> 0.3"),
        "does not hold": (lambda r: fig8(r, {}, {"e1": {"asr": 0.05}, "final": {"asr": 0.01}}, {}), FAILS,
                          "removed in one epoch: not gradual"),
        "tie": (lambda r: fig8(r, {}, {"e1": {"asr": 0.90}, "final": {"asr": 0.88}}, {}), FAILS,
                "0.02 lower is within the ASR margin: not forgotten"),
    },
    "fig8-large-lr-faster": {
        "holds": (lambda r: fig8(r, {"e1": {"asr": 0.95}}, {}, {"e1": {"asr": 0.05}}), HOLDS,
                  "0.05 vs 0.95 at epoch 1"),
        "does not hold": (lambda r: fig8(r, {"e1": {"asr": 0.95}}, {}, {"e1": {"asr": 0.6}}), FAILS,
                          "0.6 after one epoch is not removed"),
        "tie": (lambda r: fig8(r, {"e1": {"asr": 0.05}}, {}, {"e1": {"asr": 0.05}}), FAILS,
                "both LRs at 0.05 after one epoch: the large LR is not faster"),
    },
    "fig8-large-lr-costs-ca": {
        "holds": (lambda r: fig8(r, {"final": {"ca": 0.92}}, {}, {"final": {"ca": 0.85}}), HOLDS, "0.85 < 0.92"),
        "does not hold": (lambda r: fig8(r, {"final": {"ca": 0.90}}, {}, {"final": {"ca": 0.95}}), FAILS,
                          "the large LR keeps more CA"),
        "tie": (lambda r: fig8(r, {"final": {"ca": 0.920}}, {}, {"final": {"ca": 0.915}}), FAILS, "0.005 is no drop"),
    },
    "fig9-lrmax1-helps": {
        "holds": (lambda r: fig9(r, 0.988, 0.004), HOLDS, "the paper's 0.988 -> 0.004"),
        "does not hold": (lambda r: fig9(r, 0.95, 0.95), FAILS, "0.95 at both: the larger LR_MAX1 removes nothing"),
        "tie": (lambda r: fig9(r, 0.01, 0.01), HOLDS, "both removed: the larger LR_MAX1 still removes it"),
    },
    "mia-sft-not-higher": {
        "holds": (lambda r: mia(r, "cifar10/badnets", 0.569, 0.618), HOLDS, "the paper's 0.569 < 0.618"),
        "does not hold": (lambda r: mia(r, "cifar10/badnets", 0.65, 0.60), FAILS, "higher after SFT"),
        "tie": (lambda r: mia(r, "cifar10/badnets", 0.618, 0.618), FAILS, "equal: no effect"),
        "one of 15 higher": (lambda r: [mia(r, run, 0.61 if i == 0 else 0.55, 0.60) for i, run in enumerate(ALL_RUNS)],
                             HOLDS, "almost all: 1 exception of 15 is allowed"),
    },
    "reinject-defended-faster": {
        "holds": (lambda r: reinject_cell(r, 15, sft=(0.01, 3, 0.9), abl=(0.9, 0, 1.0)), HOLDS,
                  "3 vs 15 epochs; ABL never removed it and is left out"),
        "does not hold": (lambda r: reinject_cell(r, 7, sft=(0.01, 12, 0.5), nad=(0.02, 10, 0.5)), FAILS,
                          "slower than the clean model"),
        "tie": (lambda r: reinject_cell(r, 7, sft=(0.01, 7, 0.5)), FAILS, "the same epoch: no effect"),
        "only unremoved": (lambda r: reinject_cell(r, 7, abl=(0.9, 0, 1.0)), NOT_RUN,
                           "ABL never removed the backdoor: nothing to compare"),
    },
    "reinject-sft-not-most-vulnerable": {
        "holds": (lambda r: reinject_cell(r, 15, sft=(0.01, None, 0.023), abl=(0.02, 3, 0.763)), HOLDS,
                  "the paper's 0.023 vs ABL 0.763"),
        "does not hold": (lambda r: reinject_cell(r, 15, sft=(0.01, 2, 0.9), nad=(0.01, None, 0.3),
                                                  abl=(0.9, 0, 1.0)), FAILS,
                          "SFT above NAD; ABL never removed it and does not count as more vulnerable"),
        "tie": (lambda r: reinject_cell(r, 15, sft=(0.01, 1, 0.95), abl=(0.01, 1, 0.96)), FAILS,
                "saturated: SFT ties the most vulnerable in every case, no case shows it less vulnerable"),
    },
}


def test_every_claim_has_its_three_worlds():
    assert set(WORLDS) == set(CLAIMS), set(WORLDS) ^ set(CLAIMS)
    for cid, worlds in WORLDS.items():
        assert {"holds", "does not hold", "tie"} <= set(worlds), cid
        assert worlds["holds"][1] == HOLDS and worlds["does not hold"][1] == FAILS, cid


CASES = [(cid, w) for cid in CLAIMS for w in WORLDS.get(cid, {})]


@pytest.mark.parametrize("cid,world", CASES, ids=[f"{c}:{w}" for c, w in CASES])
def test_claim_world(tmp_path, cid, world):
    build, expected, why = WORLDS[cid][world]
    build(tmp_path)
    row = report.claim_row(CLAIMS[cid], SCOPE, report.Results(tmp_path))
    assert row["verdict"] == expected, f"{why}: {row['detail']}"
    assert row["detail"].startswith("tie") is (world.endswith("tie") and expected == FAILS), row["detail"]
    assert row["quote"] and row["quote"] in CLAIMS[cid]["quote"]


def _detail(build: Callable[[Path], None], cid: str, root: Path) -> str:
    build(root)
    return report.claim_row(CLAIMS[cid], SCOPE, report.Results(root))["detail"]


def test_details_name_cases_and_what_was_left_out(tmp_path):
    d = _detail(WORLDS["fig5-sft-lowest-asr"]["holds"][0], "fig5-sft-lowest-asr", tmp_path / "a")
    assert "cifar10/badnets effect" in d and "1 collapsed, left out: nad" in d
    d = _detail(WORLDS["fig5-sft-lowest-asr"]["two defences"][0], "fig5-sft-lowest-asr", tmp_path / "b")
    assert "only ft, sft ran (missing abl, ac, fp, nad, nc, spectral)" in d
    d = _detail(WORLDS["reinject-defended-faster"]["holds"][0], "reinject-defended-faster", tmp_path / "c")
    assert "left out 1: abl cifar10/badnets@0.01: never removed the backdoor (ASR 0.900 at epoch 0)" in d
    d = _detail(WORLDS["fig6-sft-cheapest"]["does not hold"][0], "fig6-sft-cheapest", tmp_path / "d")
    assert "not lowest against: nad" in d and "sft at 15 epochs" in d and "nad 0.01, sft 0.05" in d
    d = _detail(WORLDS["encoder-whole-ft-removes"]["holds"][0], "encoder-whole-ft-removes", tmp_path / "e")
    assert "judged: cifar10->stl10 effect" in d and "left out 1: stl10->cifar10: nothing to remove" in d


def test_digits_profile_names_the_dataset_it_judged(tmp_path):
    # The claim text names CIFAR10; on demo the case judged is digits, and the detail says so.
    std(tmp_path, "ft", asr=0.978, run="digits/blended")
    row = report.claim_row(CLAIMS["standalone-ft-leaves-blended"], report.make_scope("demo"), report.Results(tmp_path))
    assert row["verdict"] == HOLDS and "judged: digits/blended effect" in row["detail"]


def test_margins_are_named_once_with_their_source():
    assert {k: m.value for k, m in report.MARGINS.items()} == {
        "ASR": 0.05, "CA": 0.02, "MIA accuracy": 0.02, "epochs": 1, "GPU-hours": 1.2}
    assert {k: m.value for k, m in report.LINES.items()} == {
        "removed": 0.2, "high": 0.5, "collapsed": 0.1, "keeps CA": 0.05, "limited CA range": 0.05}
    assert all(len(m.source) > 20 for m in [*report.MARGINS.values(), *report.LINES.values()])
    assert report.compare(0.010, "<", 0.011, "ASR") == report.TIE  # 0.001 is never an effect
    assert report.compare(0.0, "<", 0.0500001, "ASR") == report.EFFECT
    assert report.compare(0.05, "<", 0.06, "GPU-hours") == report.TIE  # exactly the 1.2 factor: a tie
    assert report.compare(0.05, "<", 0.0601, "GPU-hours") == report.EFFECT
    assert report.compare(0.0601, "<", 0.05, "GPU-hours") == report.AGAINST
    assert report.compare(0.0, "<", 0.01, "GPU-hours") == report.EFFECT  # a zero charge does not crash


@pytest.mark.parametrize("eff,tie,against,most,almost", [
    (5, 5, 0, False, False),  # half is not most
    (6, 4, 0, True, False),
    (14, 0, 1, True, True),  # 1 exception of 15
    (13, 1, 1, True, False),  # 2 exceptions of 15: 10% of 15 is 1
    (27, 2, 1, True, True),  # 3 of 30
    (1, 0, 0, True, True),
    (0, 1, 0, False, False),  # a lone exception never makes "almost all"
])
def test_quantifiers(eff, tie, against, most, almost):
    assert report.QUANTIFIERS["most"](eff, tie, against) is most
    assert report.QUANTIFIERS["almost all"](eff, tie, against) is almost


def test_a_claim_with_an_unknown_quantifier_or_line_fails_in_one_line(tmp_path):
    spec = json.loads(report.SPEC.read_text())
    spec["claims"][0]["params"]["quantifier"] = "usually"
    spec["claims"][1]["params"]["require"][0]["metric"] = "loss"
    next(c for c in spec["claims"] if c["check"] == "lowest")["params"]["defences"].append("magic")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"quantifier 'usually' \(valid: every, most.*metric 'loss' \(valid: ASR"
                                         r".*defence 'magic' \(valid: abl"):
        report.load_spec(bad)


# ---- one number row of each metric kind: inside, outside, and on its tolerance (inclusive) ----------------------
def _row(root: Path, nid: str) -> dict:
    return report.number_row(NUMBERS[nid], report.Results(root), SCOPE)


NUMBER_WORLDS = {
    # id: (build(root, ours), [(ours, verdict), ...])
    "s5.4-sft-badnets-cifar10-ca": (lambda r, v: std(r, "sft", ca=v), [(0.95, "within 0.05"), (0.80, "off"),
                                                                      (0.982, "within 0.05")]),
    "s5.4-sft-badnets-cifar10-asr": (lambda r, v: std(r, "sft", asr=v), [(0.02, "within 0.05"), (0.2, "off"),
                                                                       (0.059, "within 0.05")]),
    "s6.1-mia-abl-blended-cifar10": (lambda r, v: put(r, "cifar10/blended/mia/abl.json", {"accuracy": v}),
                                     [(0.80, "within 0.05"), (0.70, "off"), (0.765, "within 0.05")]),
    "s1-reinject-clean-badnets-cifar10-r0.1-epochs": (
        lambda r, v: reinject(r, "clean", 0.0, v, ratio="0.1"),
        [(7, "within 1 epoch"), (10, "off"), (8, "within 1 epoch")]),
    # NC's whole run over SFT charged at 15 epochs (paper 0.997 / 0.147 = 6.782); 2x is on the line.
    "s5.4-nc-over-sft-badnets-cifar100-hours-ratio": (
        lambda r, v: cost(r, {"nc": v * 0.01, "sft": 0.01}, run="cifar100/badnets"),
        [(6.0, "within 2x"), (2.0, "off"), (2 * 6.782, "within 2x"), (6.782 / 2, "within 2x")]),
}


@pytest.mark.parametrize("nid", NUMBER_WORLDS)
def test_number_rows_of_each_metric(tmp_path, nid):
    build, cases = NUMBER_WORLDS[nid]
    for i, (ours, expected) in enumerate(cases):
        root = tmp_path / str(i)
        build(root, ours)
        row = _row(root, nid)
        assert row["verdict"] == expected and row["ours"] == pytest.approx(ours), (ours, row)
    assert {NUMBERS[n]["metric"] for n in NUMBER_WORLDS} == set(report.METRICS) - {"GPU-hours"}


def test_absolute_hours_are_for_information_and_charged_like_figure6(tmp_path):
    cost(tmp_path, {"nc": 0.997, "sft": 0.02}, run="cifar100/badnets")  # SFT's whole run: 0.12 h; charged: 0.02 h
    row = _row(tmp_path, "s5.4-sft-badnets-cifar100-hours")
    assert row["verdict"] == "for information" and row["ours"] == pytest.approx(0.02) and row["diff"] is None
    ratio = _row(tmp_path, "s5.4-nc-over-sft-badnets-cifar100-hours-ratio")
    assert ratio["ours"] == pytest.approx(0.997 / 0.02) and ratio["verdict"] == "off"  # 49.9 vs the paper's 6.78
    assert ratio["key"] == ("cifar100/badnets/nc.json : charged_hours(nc) / "
                            "cifar100/badnets/sft.json : charged_hours(sft)")


def test_reinjection_minimum_reads_only_models_that_removed_the_backdoor(tmp_path):
    # Fig. 11b's "3-6 epochs": ABL never removed BadNets, so it "reaches" ASR 0.8 at epoch 0 and is not the minimum.
    for m in ("ft", "sft", "abl", "ac", "fp", "nad", "nc", "spectral"):
        reinject(tmp_path, m, 0.9 if m == "abl" else 0.01, 0 if m == "abl" else {"sft": 3}.get(m, 5))
    assert _row(tmp_path, "s6.2-reinject-defended-badnets-cifar10-r0.01-epochs-min")["ours"] == 3
    assert _row(tmp_path, "s6.2-reinject-defended-badnets-cifar10-r0.01-epochs-max")["ours"] == 5
