"""`make report` (experiments/report.py, experiments/paper_numbers.json): every paper number names a
result file and field the real writers produce, verdicts are exact, the page's images exist and
every table row has a verdict, and missing results never make the report fail."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from backdoor.data import load_dataset
from experiments import ablations, clean, encoder, report, sequela, standalone, transfer
from experiments import paths
from experiments.profiles import PROFILES

SPEC = report.load_spec()
SMOKE = PROFILES["smoke"]
# The smoke profile cut to seconds: width 4, one attack, 1 training epoch, 2 FT/SFT epochs, one ratio.
TINY = replace(SMOKE, width=4, attacks=("badnets",), attack_train=replace(SMOKE.attack_train, epochs=1),
               finetune_epochs=2, reinject_epochs=2, reinject_ratios=(0.1,), mia_epochs=2,
               encoder=replace(SMOKE.encoder, downstream=replace(SMOKE.encoder.downstream, epochs=1)),
               sweeps=replace(SMOKE.sweeps, transfer_epochs=1, sft_epochs=1))
WRITERS = (standalone, clean, sequela, transfer, encoder, ablations)


@pytest.fixture(scope="module")
def real_results(tmp_path_factory):
    """Result files written by the real writers (tiny smoke budget) under a temp artifacts dir."""
    root, data_dir = tmp_path_factory.mktemp("artifacts"), tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PROFILES, "smoke", TINY)
        mp.setattr(paths, "ARTIFACTS", root)
        for mod in WRITERS:
            mp.setattr(mod, "load_data", lambda name, prof=None: load_dataset(name, data_dir=data_dir))
        base = ["--profile", "smoke", "--device", "cpu"]
        run = ["--dataset", "digits", "--attack", "badnets"]
        standalone.main(["train", *base, *run])
        for d in ("ft", "sft"):
            standalone.main(["defend", *base, *run, "--defense", d])
        for m in ("backdoor", "sft"):
            sequela.main(["mia", *base, *run, "--model", m])
        clean.main([*base, "--dataset", "digits"])
        for m in ("clean", "sft"):
            sequela.main(["reinject", *base, *run, "--model", m, "--ratio", "0.1"])
        ablations.main([*base, *run, "--points", "sft_frac0.1_max0.1"])
        for d in ("ft", "sft"):
            transfer.main(["run", *base, "--downstream", "digits5to9", "--attack", "badnets", "--defense", d])
        encoder.main(["pretrain", *base, "--pretrain", "digits"])
        encoder.main(["badencoder", *base, "--pretrain", "digits", "--downstream", "digits"])
        for m in ("classifier", "whole"):
            encoder.main(["downstream", *base, "--pretrain", "digits", "--downstream", "digits", "--mode", m])
        yield root / "results" / "smoke"


def smoke_setting(entry: dict) -> dict:
    """The paper setting moved onto what the tiny smoke run wrote (same layout, smoke's names)."""
    s = dict(entry["setting"])
    s.update(dataset="digits5to9" if s["scenario"] == "transfer" else "digits", attack="badnets")
    if s["scenario"] == "encoder":
        s["pretrain"] = "digits"
    if "defense" in s:
        s["defense"] = s["defense"] if s["defense"] in ("ft", "sft") else "sft"
    if "model" in s:
        s["model"] = s["model"] if s["model"] in ("backdoor", "clean", "sft") else "sft"
    s.update({k: v for k, v in (("ratio", "0.1"), ("point", "sft_frac0.1_max0.1")) if k in s})
    return s


def smoke_field(field: str, record: dict) -> str:
    """The paper's epoch N becomes the run's last epoch when the tiny run is shorter."""
    last = record["history"][-1]["epoch"] if record.get("history") else 0
    clamp = lambda m: str(min(int(m[1]), last))  # noqa: E731
    field = re.sub(r"(?<=\[@)(\d+)(?=\])", clamp, field)
    field = re.sub(r"(?<=hours_through_epoch\()(\d+)(?=\))", clamp, field)
    return field


def test_every_number_names_a_file_and_field_the_writers_really_write(real_results):
    # Catches a renamed result field or path in a writer (e.g. `epochs_to_asr_0.8`, `device_hours`,
    # `first_epoch_device_hours`, `mia/`), and a typo in paper_numbers.json, which would otherwise
    # leave the report silently "not run". `charged_hours` reads the history's clock at the profile's charge.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PROFILES, "smoke", TINY)
        scope = report.make_scope("smoke")
    for e in SPEC["numbers"]:
        s = smoke_setting(e)
        for res in (e["result"], *([e["result"]["divide_by"]] if "divide_by" in e["result"] else [])):
            rel = report.LAYOUTS[e["result"]["layout"]].format(**s) if res is e["result"] else smoke_file(res["file"])
            path = real_results / rel
            assert path.is_file(), f"{e['id']}: the writers did not write {rel}"
            rec = json.loads(path.read_text())
            value = report.field_value(rec, {**res, "field": smoke_field(res["field"], rec)}, scope)
            assert isinstance(value, (int, float)) or (value is None and e["metric"] == "epochs"), (e["id"], value)


def smoke_file(rel: str) -> str:
    """A divisor's file (always FT/SFT, BadNets) moved onto the tiny smoke run's names."""
    rel = re.sub(r"^transfer/[^/]+/", "transfer/digits5to9/", rel)
    return re.sub(r"^(cifar10|cifar100|gtsrb)/", "digits/", rel)


def test_file_keys_follow_the_writers_layout():
    # Catches a hand-edited `file` that disagrees with its setting (the report reads `file`).
    for e in SPEC["numbers"]:
        res, s = e["result"], e["setting"]
        names = {**s, **{k: "{" + k + "}" for k in res.get("over", {})}}
        assert res["file"] == report.LAYOUTS[res["layout"]].format(**names), e["id"]
        assert e["target"].startswith("figure") and isinstance(e["paper"], (int, float)), e["id"]
    sections = {e["section"] for e in SPEC["numbers"]}
    assert sections == {"1", "5.1", "5.2", "5.3", "5.4", "5.5", "6.1", "6.2"}, sections
    ids = [e["id"] for e in SPEC["numbers"]] + [c["id"] for c in SPEC["claims"]]
    assert len(ids) == len(set(ids))


def test_claims_are_checked_on_real_results(real_results, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PROFILES, "smoke", TINY)
        rep = report.build("smoke", real_results, tmp_path / "figs", tmp_path / "out")
    claims = {c["id"]: c for c in rep["claims"]}
    evaluated = ["encoder-whole-ft-removes", "transfer-sft-asr-le-ft", "transfer-sft-ca-epoch1-gt-ft",
                 "standalone-sft-asr-lt-ft", "standalone-sft-keeps-ca", "mia-sft-not-higher"]
    for cid in evaluated:
        assert claims[cid]["verdict"] in ("holds", "does not hold", "not run"), claims[cid]
        assert claims[cid]["verdict"] != "not run" or "nothing left to compare" in claims[cid]["detail"], claims[cid]
    # The verdict is the comparison itself, recomputed from the files with the report's margin.
    ft, sft = (json.loads((real_results / "digits/badnets" / f).read_text()) for f in ("ft.json", "sft.json"))
    lower = report.compare(sft["final"]["asr"], "<", ft["final"]["asr"], "ASR")
    assert claims["standalone-sft-asr-lt-ft"]["verdict"] == ("holds" if lower == report.EFFECT else "does not hold")
    mb, ms = (json.loads((real_results / "digits/badnets/mia" / f).read_text())["accuracy"]
              for f in ("backdoor.json", "sft.json"))
    lower = report.compare(ms, "<", mb, "MIA accuracy")
    assert claims["mia-sft-not-higher"]["verdict"] == ("holds" if lower == report.EFFECT else "does not hold")
    assert "judged: digits/badnets" in claims["mia-sft-not-higher"]["detail"]
    # Nothing of Fig. 5 ran (no baseline defence): not run, with the target that makes it.
    assert claims["abl-leaves-badnets"]["verdict"] == "not run"
    assert claims["abl-leaves-badnets"]["detail"].startswith("make figure5 PROFILE=smoke")
    # Only FT and SFT ran: a comparison among all defences is not run, and says which ran.
    assert claims["fig6-sft-cheapest"]["verdict"] == "not run"
    assert "only ft, sft ran" in claims["fig6-sft-cheapest"]["detail"]
    assert {n["verdict"] for n in rep["numbers"]} == {"not in profile"}  # digits: no paper dataset


class _Page(HTMLParser):
    """Images and, per table row, the cells with class `v` (the verdict)."""

    def __init__(self):
        super().__init__()
        self.images, self.rows, self._in_v = [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag == "tr":
            self.rows.append([])
        if tag == "td" and "v" in (a.get("class") or "").split():
            self._in_v = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._in_v = False

    def handle_data(self, data):
        if self._in_v:
            self.rows[-1][-1] += data


def tiny_png(path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(0.5, 0.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def test_page_images_exist_and_every_row_has_a_verdict(tmp_path):
    figs = tmp_path / "figures" / "paper"
    for name in ("figure4", "figure99"):  # figure99: a PNG the paper has no caption for
        tiny_png(figs / f"{name}.png")
    out = tmp_path / "report" / "paper"
    rep = report.build("paper", tmp_path / "results" / "paper", figs, out)
    page = _Page()
    page.feed((out / "index.html").read_text())
    assert sorted(Path(s).name for s in page.images) == ["figure4.png", "figure99.png"]
    for src in page.images:
        assert (out / src).resolve().is_file(), src
    data_rows = [r for r in page.rows if r]  # header rows have no verdict cell
    assert len(data_rows) == len(rep["numbers"]) + len(rep["claims"])
    allowed = set(report.NUMBER_VERDICTS) | set(report.CLAIM_VERDICTS)
    assert all(len(r) == 1 and r[0] in allowed for r in data_rows), data_rows[:3]
    md = (out / "REPRODUCTION.md").read_text()
    assert md.count("| not run yet |") == len(SPEC["numbers"]) and "digits" not in md.split("## Numbers")[1][:200]
    fig4 = next(f for f in rep["figures"] if f["name"] == "figure4")
    assert fig4["caption"].startswith("Figure 4: Accuracy of conventional fine-tuning")
    page_html = (out / "index.html").read_text()
    assert f'<details open><summary>{len(SPEC["numbers"])} rows</summary>' in page_html  # paper: numbers shown
    assert f'Figures (2 of {len(rep["figures"])} made)' in page_html


def test_digits_page_folds_the_numbers_it_cannot_compare(tmp_path):
    # Checked in headless Chromium: on digits 62 "not in profile" rows stood between the claims and the figures.
    out = tmp_path / "out"
    report.build("smoke", tmp_path / "nothing", tmp_path / "nofigs", out)
    page_html = (out / "index.html").read_text()
    assert f'<details><summary>{len(SPEC["numbers"])} rows</summary>' in page_html
    assert page_html.index('id="claims"') < page_html.index('id="numbers"') < page_html.index('id="figures"')


def test_missing_results_are_not_run_with_their_target(tmp_path):
    rep = report.build("paper", tmp_path / "nothing", tmp_path / "nofigs", tmp_path / "out")
    for n, e in zip(rep["numbers"], SPEC["numbers"]):
        assert n["verdict"] == "not run yet" and n["detail"].startswith(f"make {e['target']} PROFILE=paper"), n
    assert {c["verdict"] for c in rep["claims"]} == {"not run"}
    assert [f["src"] for f in rep["figures"]] == [None] * len(SPEC["captions"])
    # an overridden profile's hint is a command that runs: its base name plus SET=, never PROFILE=paper+<hash>
    over = report.build("paper", tmp_path / "nothing", tmp_path / "nofigs", tmp_path / "out2", sets=("ft_lr=0.5",))
    e = SPEC["numbers"][0]
    assert over["numbers"][0]["detail"].startswith(f'make {e["target"]} PROFILE=paper SET="ft_lr=0.5"'), over["numbers"][0]


def _write(root: Path, rel: str, obj: dict) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(obj))


def test_verdicts_are_exact(tmp_path):
    res = tmp_path / "results"
    hist = [{"epoch": e, "ca": 0.9, "asr": 0.5, "seconds": 36.0, "device_seconds": 36.0 * e} for e in range(0, 21)]
    # Paper: before ASR 0.997, final ASR 0.082, CA 0.937, 0.089 h (Section 1, Blended CIFAR10 SFT).
    _write(res, "cifar10/blended/sft.json", {"before": {"ca": 0.94, "asr": 0.95}, "final": {"ca": 0.80, "asr": 0.12},
                                             "device_hours": 0.17, "history": hist})
    _write(res, "cifar10/blended/ft.json", {"history": hist})  # 20 epochs: the paper's epoch 100 is missing
    rows = {r["id"]: r for r in report.build("paper", res, tmp_path / "f", tmp_path / "o")["numbers"]}
    r = rows["s1-standalone-sft-blended-cifar10-asr-after"]
    assert r["verdict"] == "within 0.05" and r["diff"] == pytest.approx(0.12 - 0.082)
    assert rows["s1-standalone-sft-blended-cifar10-asr-before"]["verdict"] == "within 0.05"  # 0.047 off
    assert rows["s1-standalone-sft-blended-cifar10-ca-after"]["verdict"] == "off"  # 0.137 off
    # Absolute hours: for information, SFT charged at the paper profile's 15 epochs (15 x 36 s), not its 0.17 h.
    hours = rows["s1-standalone-sft-blended-cifar10-hours"]
    assert hours["verdict"] == "for information" and hours["ours"] == pytest.approx(15 * 36 / 3600)
    assert rows["s5.3-standalone-ft-blended-cifar10-asr-epoch100"]["verdict"] == "not comparable"
    assert rows["s5.3-standalone-sft-blended-cifar10-asr-after"]["verdict"] == "within 0.05"


def test_resolve_addresses_epochs_not_list_positions():
    # Backdoor training evaluates every 10th epoch: history[@10] must be the epoch-10 record, not item 10.
    rec = {"history": [{"epoch": 0, "asr": 0.0, "seconds": 0.0}, {"epoch": 10, "asr": 0.9, "seconds": 60.0},
                       {"epoch": 20, "asr": 1.0, "seconds": 30.0}]}
    assert report.resolve(rec, "history[@10].asr") == 0.9
    assert report.resolve(rec, "history[-1].asr") == 1.0
    assert report.resolve(rec, "hours_through_epoch(20)") == pytest.approx(90 / 3600)
    with pytest.raises(KeyError):
        report.resolve(rec, "history[@5].asr")
    assert report.reduce_values([3, None, 6], "min") == 3
    assert report.reduce_values([3, None, 6], "max") is None  # one model never reached the ASR


def test_unknown_check_fails_in_one_line(tmp_path):
    spec = json.loads(report.SPEC.read_text())
    spec["claims"][0]["check"] = "nonsense"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"nonsense.*valid checks: compare"):
        report.load_spec(bad)
