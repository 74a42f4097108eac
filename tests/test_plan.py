"""experiments.plan: parsing `make -n` lines and the work of each step kind (exact image-pass counts)."""
from __future__ import annotations

import pytest

from experiments import plan

LAUNCH = ".venv/bin/python -m experiments.launch --launcher local -- "


def test_parse_step_through_the_launcher_and_without():
    s = plan.parse_step(LAUNCH + "experiments.standalone defend --profile paper --dataset gtsrb --attack lf --defense nc ")
    assert (s.module, s.command, s.opt("dataset"), s.opt("defense")) == ("experiments.standalone", "defend", "gtsrb", "nc")
    assert s.label == "standalone defend gtsrb lf nc"
    a = plan.parse_step(LAUNCH + 'experiments.ablations --profile paper --dataset cifar10 --attack wanet '
                                 '--points sft_frac0.1_max0.3')
    assert (a.command, a.opt("points")) == ("", "sft_frac0.1_max0.3")
    t = plan.parse_step(LAUNCH + 'experiments.transfer run --profile demo --downstream digits5to9 --attack clean '
                                 '--defense ft --triggers "badnets blended"')
    assert t.opt("triggers") == "badnets blended" and t.opt("defense") == "ft"
    # plotting and venv lines are not steps; the same step twice is one step
    assert plan.parse_step(".venv/bin/python -m figures.figure4 --results x --out y.png") is None


def test_split_by_figure_gives_each_shared_step_to_the_first_figure():
    """Serial `make -n` prints a figure's whole prerequisite tree before its plotting line."""
    train = LAUNCH + "experiments.standalone train --profile p --dataset cifar10 --attack badnets"
    ft = LAUNCH + "experiments.standalone defend --profile p --dataset cifar10 --attack badnets --defense ft"
    lines = [train, ft, ".venv/bin/python -m figures.figure4 --results r --out a/figures/p/figure4.png",
             LAUNCH + "experiments.table1 --profile p --datasets cifar10 --out a/results/p/table1.safetensors",
             ".venv/bin/python -m figures.table1 a/results/p/table1.safetensors --out a/figures/p/table1.png",
             ".venv/bin/python -m experiments.summary --results r --out a/results/p/summary.txt"]
    out = plan.split_by_figure(lines, ["figure4", "table1", "summary"])
    assert [s.label for s in out["figure4"]] == ["standalone train cifar10 badnets", "standalone defend cifar10 badnets ft"]
    assert [s.label for s in out["table1"]] == ["table1 cifar10"]  # its training step was figure4's
    assert [s.label for s in out["summary"]] == ["summary"]
    with pytest.raises(SystemExit, match="1 steps of make -n belong to no figure"):
        plan.split_by_figure(lines[:2] + lines[2:3] + [LAUNCH + "experiments.sequela mia --dataset x"], ["figure4"])


def _step(line: str) -> plan.Step:
    return plan.parse_step(LAUNCH + line)


def test_paper_costs_exact():
    """Counts from the paper's budgets: 200 attack epochs, 100 FT epochs, NC 80 epochs x every class on 5%."""
    c = plan.Costs("paper")
    ev = lambda epochs, test: (epochs + 1) * 2 * test / 3  # CA + ASR each epoch and before training
    assert c(_step("experiments.standalone train --dataset cifar10 --attack badnets")) == pytest.approx(
        200 * 50000 + ev(200, 10000))
    assert c(_step("experiments.standalone defend --dataset gtsrb --attack badnets --defense sft")) == pytest.approx(
        100 * 39209 + ev(100, 12630))
    nc = c(_step("experiments.standalone defend --dataset cifar100 --attack badnets --defense nc"))
    # NC scales with classes; evaluated before, then at each of the 100 unlearning epochs and its epoch 0
    assert nc == pytest.approx(100 * 80 * 2500 + 100 * 2500 + ev(101, 10000))
    # MIA: posteriors of 2 x 5,000 members and 2 x 5,000 non-members once, then the model's CA/ASR
    assert c(_step("experiments.sequela mia --dataset cifar10 --attack lf --model ft")) == pytest.approx(
        20000 / 3 + ev(0, 10000))
    assert c(_step("experiments.sequela reinject --dataset cifar10 --attack lf --model ft --ratio 0.01")) == \
        pytest.approx(25 * 50000 + ev(25, 10000))
    ab = c(_step("experiments.ablations --dataset cifar10 --attack lf --points sft_frac0.3_max0.1"))
    assert ab == pytest.approx(100 * 0.3 * 50000 + ev(100, 10000))


def test_rehearsal_costs_follow_the_step_cap_and_the_evaluation_subset():
    """Catches a cost model that ignores max_steps (2 batches per epoch) or eval_images (512 test images)."""
    c = plan.Costs("rehearsal")
    ev = lambda calls: calls * 2 * 512 / 3  # every evaluator call: CA + ASR on the 512-image subset
    assert c(_step("experiments.standalone train --dataset cifar10 --attack badnets")) == pytest.approx(
        2 * 256 + ev(2))  # 1 epoch of 2 batches of 256
    nc = c(_step("experiments.standalone defend --dataset cifar100 --attack badnets --defense nc"))
    assert nc == pytest.approx(100 * 512 + 512 + ev(3))  # per class 1 capped epoch on 5% (2,500 images)
    fp = c(_step("experiments.standalone defend --dataset cifar10 --attack badnets --defense fp"))
    assert fp == pytest.approx(2500 / 3 + 512 + ev(1 + 32 + 1 + 2))  # one evaluation per channel of width 4
    # MIA's member/non-member posteriors use the whole test split: only its CA/ASR is on the subset
    assert c(_step("experiments.sequela mia --dataset gtsrb --attack lf --model ft")) == pytest.approx(
        4 * 6315 / 3 + ev(1))
    tr = c(_step('experiments.transfer run --downstream gtsrb --attack clean --defense ft --triggers "badnets lf"'))
    assert tr == pytest.approx(512 + 2 * 3 * 512 / 3)  # 1 epoch; CA + two triggered copies, at epochs 0 and 1
    assert c(_step("experiments.encoder pretrain --pretrain stl10")) == pytest.approx(2 * 256 * 2)


def test_unknown_step_kind_fails_naming_the_file():
    with pytest.raises(ValueError, match="no cost model for experiments.newthing run; add one to experiments/plan.py"):
        plan.Costs("demo")(_step("experiments.newthing run --dataset digits"))


def test_report_total_is_the_sum_of_the_figures():
    c = plan.Costs("demo")
    train = _step("experiments.standalone train --dataset digits --attack badnets")
    ft = _step("experiments.standalone defend --dataset digits --attack badnets --defense ft")
    lines = plan.report("demo", {"figure4": [train, ft], "table1": []}, c, 1000.0, show_steps=True)
    total = c(train) + c(ft)
    assert lines[-1].split()[:3] == ["total", "2", "steps"]
    assert f"{total / 1000 / 3600:9.2f} device-h" in lines[-1] and f"{total / 1000 / 3600:9.2f}" in lines[1]
    assert lines[2].strip().endswith("standalone train digits badnets") and lines[4].startswith("table1        0 new")


def test_bench_file_parsed_for_the_profiles_precision(tmp_path):
    f = tmp_path / "bench.txt"
    f.write_text("loop  img/s s/epoch\nreference (PIL + DataLoader, fp32, NCHW)       5000 (4000-6000)   4.00\n"
                 "ours fp32 (device uint8, channels_last)     12000 (11000-13000)   1.60\n"
                 "ours bf16 autocast (device uint8, channels_last)     21234 (20000-22000)   0.94\n")
    assert (plan.bench_img_per_s(f, "fp32"), plan.bench_img_per_s(f, "bf16")) == (12000.0, 21234.0)
    f.write_text("ours fp32 (device uint8, channels_last)     108 (80-132)   1.2\n")  # a CPU bench: fp32 only
    assert plan.bench_img_per_s(f, "bf16") == 108.0
    f.write_text("nothing here\n")
    with pytest.raises(SystemExit, match="no 'ours bf16 ... img/s' line"):
        plan.bench_img_per_s(f, "bf16")
