"""Every figure script (figures/*.py) and experiments/summary.py, table1.py and bench.py run once on small results
in the real layout: the smoke chain's own files (Fig. 4, 5, 6, 10, 11, summary, Table 1) and, where a step is too
long for CI (clean model, encoder chain, transfer, ablation sweeps), copies of its histories written where that
step writes. Each PNG must exist, be non-empty, and every panel must have a title or axis label and some data."""
from __future__ import annotations

import argparse
import json
import runpy
import shutil
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import figures.style  # noqa: E402
from experiments import lr_schedule, paths, sequela, summary, sweeps, table1  # noqa: E402
from experiments.profiles import get_profile  # noqa: E402

SMOKE = get_profile("smoke")
DEFENSES = "sft ft spectral"


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def results(smoke_chain, tmp_path_factory) -> Path:
    """results/smoke of the chain (copied), plus stand-ins for the steps CI does not run."""
    for d in DEFENSES.split():
        smoke_chain.defend(d)
    for m in ("backdoor", *DEFENSES.split()):
        smoke_chain.run(sequela, "mia", "--dataset", "digits", "--attack", "badnets", "--model", m)
    for m, r in (("sft", "0.01"), ("sft", "0.0001"), ("ft", "0.0001"), ("spectral", "0.0001")):
        smoke_chain.run(sequela, "reinject", "--dataset", "digits", "--attack", "badnets", "--model", m, "--ratio", r)
    root = tmp_path_factory.mktemp("fig") / "smoke"
    shutil.copytree(smoke_chain.root / "results" / "smoke", root)
    run = root / "digits" / "badnets"
    sft, ft = json.loads((run / "sft.json").read_text()), json.loads((run / "ft.json").read_text())
    # Fig. 11's other lines: the clean model (40 epochs, not run in CI) and ft/spectral at 0.01 read the SFT record.
    for m in ("clean", "ft", "spectral"):
        shutil.copy(run / "reinject" / "sft" / "0.01.json", _mk(run / "reinject" / m / "0.01.json"))
    shutil.copy(run / "reinject" / "sft" / "0.0001.json", _mk(run / "reinject" / "clean" / "0.0001.json"))
    # Fig. 3 (transfer): per-trigger ASR keys as `transfer run` writes them.
    tr = lambda h: {"history": [{**r, "asr_badnets": r["asr"], "asr_class_badnets": 0} for r in h]}  # noqa: E731
    for a in ("badnets", "clean"):
        for name, rec in (("ft", ft), ("sft", sft)):
            _write(root / "transfer" / "digits5to9" / a / f"{name}.json", tr(rec["history"]))
    # Fig. 7-9: each ablation point that has its own file, with an FT/SFT history of the right length.
    sw = SMOKE.sweeps
    for fig in (7, 8, 9):
        for p in sweeps.figure_points(fig, SMOKE, sw):
            path = run / sweeps.point_file(p, SMOKE, sw)
            if not path.is_file():
                src = ft if p.defense == "ft" else sft
                _write(path, {"history": (src["history"] * 2)[: sweeps.point_epochs(p, SMOKE, sw) + 1]})
    # Fig. 2 (encoder): classifier/whole/clean downstream histories.
    for mode in ("classifier", "whole", "clean"):
        _write(root / "encoder" / "digits" / "digits" / f"{mode}.json", {"history": ft["history"]})
    return root


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _draw(monkeypatch, module: str, *argv: str) -> list:
    """Run `python -m module argv`; returns the figures it saved."""
    saved, real = [], figures.style.save
    monkeypatch.setattr(figures.style, "save", lambda fig, out: saved.append(fig) or real(fig, out))
    monkeypatch.setattr(sys, "argv", [module, *argv])
    runpy.run_module(module, run_name="__main__")
    return saved


def _check(figs: list, out: Path) -> None:
    assert len(figs) == 1 and out.stat().st_size > 5000 and out.with_suffix(".pdf").stat().st_size > 1000
    axes = [ax for ax in figs[0].axes if ax.get_visible()]
    for ax in axes:  # catches an empty panel (wrong key or path read nothing) and an unlabelled one
        assert ax.get_title() or ax.get_xlabel() or ax.get_ylabel(), ax  # Fig. 6: one box panel, y label only
        assert ax.lines or ax.collections or ax.patches or ax.images or ax.texts, ax.get_title()
    assert any(ax.get_ylabel() for ax in axes)


FIGURES = {
    "figure4": lambda r: ["--results", r, "--datasets", "digits", "--attacks", "badnets"],
    "figure5": lambda r: ["--results", r, "--dataset", "digits", "--attacks", "badnets", "--defenses", DEFENSES],
    "figure6": lambda r: ["--results", r, "--profile", "smoke", "--datasets", "digits", "--attacks", "badnets",
                          "--defenses", DEFENSES],
    "figure10": lambda r: ["--results", r, "--datasets", "digits", "--attacks", "badnets", "--defenses", DEFENSES],
    "reinjection": lambda r: ["--results", r, "--dataset", "digits", "--attack", "badnets", "--defenses", DEFENSES,
                              "--ratios", "0.01 0.0001"],
    "figure3": lambda r: ["--results", f"{r}/transfer", "--downstream", "digits5to9", "--attacks", "badnets"],
    "figure2": lambda r: ["--results", f"{r}/encoder", "--pretrain", "digits", "--downstream", "digits"],
    **{f"figure{n}": (lambda r: ["--results", r, "--profile", "smoke", "--datasets", "digits", "--attacks", "badnets"])
       for n in (7, 8, 9)},
}


def test_every_figure_script_is_covered():
    scripts = {p.stem for p in Path(figures.style.__file__).parent.glob("*.py")} - {"__init__", "style"}
    assert scripts == {*FIGURES, "figure1", "table1"}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_draws_every_panel(name, results, tmp_path, monkeypatch):
    out = tmp_path / f"{name}.png"
    _check(_draw(monkeypatch, f"figures.{name}", *FIGURES[name](str(results)), "--out", str(out)), out)


def test_figure4_plots_the_results_histories(results, tmp_path, monkeypatch):
    # Catches swapped FT/SFT files or metrics: the SFT ASR line is sft.json's ASR per epoch.
    out = tmp_path / "f4.png"
    fig, = _draw(monkeypatch, "figures.figure4", *FIGURES["figure4"](str(results)), "--out", str(out))
    lines = {ln.get_label(): list(ln.get_ydata()) for ln in fig.axes[0].lines}
    sft = json.loads((results / "digits" / "badnets" / "sft.json").read_text())["history"]
    assert lines["SFT ASR"] == [r["asr"] for r in sft] and lines["SFT CA"] == [r["ca"] for r in sft]


def test_figure1_from_the_lr_schedule_step(tmp_path, monkeypatch):
    trace = tmp_path / "figure1_lr.json"
    lr_schedule.main_step(argparse.Namespace(profile="smoke", set=[], epochs=None, out=str(trace)))
    out = tmp_path / "figure1.png"
    _check(_draw(monkeypatch, "figures.figure1", str(trace), "--out", str(out)), out)
    r = json.loads(trace.read_text())
    assert len(r["lr"]) == 2 * SMOKE.sft.phase1_epochs * r["steps_per_epoch"] and r["half_cycle_steps"] == 52


def test_table1_images_and_figure(smoke_chain, tmp_path, monkeypatch):
    smoke_chain.train()
    from experiments import common
    monkeypatch.setattr(paths, "ARTIFACTS", smoke_chain.root)
    monkeypatch.setattr(table1, "load_data", lambda name: smoke_chain.data)
    images = tmp_path / "table1.safetensors"
    table1.main(["--profile", "smoke", "--datasets", "digits", "--attacks", "badnets", "--out", str(images),
                 "--device", "cpu"])
    from safetensors.torch import load_file
    t = load_file(images)
    i = table1.pick_image(smoke_chain.data.y_test, SMOKE.target, 0)
    assert (t["digits/clean"] == smoke_chain.data.x_test[i]).all()
    diff = (t["digits/badnets"] != t["digits/clean"]).any(0)
    assert diff.sum() <= 9 and (t["digits/badnets"][:, 29:, 29:] == 255).all()  # only the 3x3 patch changes
    out = tmp_path / "table1.png"
    figs = _draw(monkeypatch, "figures.table1", str(images), "--out", str(out))
    assert len(figs) == 1 and out.stat().st_size > 5000 and all(ax.images for ax in figs[0].axes)


def test_summary_rows_are_the_final_rows(results, tmp_path):
    out = tmp_path / "summary.txt"
    summary.main_step(argparse.Namespace(profile="smoke", set=[], results=str(results), datasets="digits",
                                         attacks="badnets", out=str(out)))
    lines = out.read_text().splitlines()
    ft, sft = (json.loads((results / "digits" / "badnets" / f"{d}.json").read_text()) for d in ("ft", "sft"))
    row = lines[2].split()
    assert len(lines) == 3 and row[:2] == ["digits", "badnets"]
    assert row[2:5] == [f"{ft['before']['ca']:.3f}/{ft['before']['asr']:.3f}",
                        f"{ft['final']['ca']:.3f}/{ft['final']['asr']:.3f}",
                        f"{sft['final']['ca']:.3f}/{sft['final']['asr']:.3f}"]


def test_bench_runs_tiny(monkeypatch, capsys):
    from experiments import bench
    monkeypatch.setattr(sys, "argv", ["bench", "--device", "cpu", "--width", "4", "--batch", "16", "--images", "64",
                                      "--epochs", "2"])
    bench.main()
    text = capsys.readouterr().out
    assert "64 images" in text and "speed-up per round, fp32" in text and "one SFT epoch over 64 images, fp32" in text
    # A CPU has no bf16 row: the engine never autocasts there, and the bench says so instead of timing fp32 twice.
    assert "bf16 autocast: not measured; on cpu" in text and text.count("\nours ") == 1


def test_figure5_places_each_defence_at_its_final_row(results, tmp_path, monkeypatch):
    # Catches a reader that returns the undefended point (or the first row) for every defence.
    out = tmp_path / "f5.png"
    fig, = _draw(monkeypatch, "figures.figure5", *FIGURES["figure5"](str(results)), "--out", str(out))
    pts = {c.get_label(): tuple(float(v) for v in c.get_offsets()[0]) for c in fig.axes[0].collections}
    run = results / "digits" / "badnets"
    for d, label in (("backdoor", "Undefended"), ("sft", "SFT"), ("ft", "FT"), ("spectral", "Spectral")):
        f = json.loads((run / f"{d}.json").read_text())["final"]
        assert pts[label] == (f["ca"], f["asr"]), label
