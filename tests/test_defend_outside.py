"""SFT on models and data the paper never saw (issue 25): schedule in epochs, LR_MAX1 guard, held-out CA,
normalisation detection, CIFAR-stem ResNet-18 and timm architectures, output folders, docs/defend.md's code."""
from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from backdoor.checkpoint import save_model
from backdoor.data import ImageData
from backdoor.external import detect_norm, fitting_hint
from backdoor.models import make_model, with_input_norm
from backdoor.train import TrainConfig
from defenses import DefenseContext, SFTConfig, choose_lr_max1
from experiments.defend import hold_out, out_stem, verdict
from experiments.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]
ft = importlib.import_module("defenses.finetune")  # the module; `defenses.finetune` is also FT's function


# ---- schedule ----------------------------------------------------------------------------------------


def test_paper_profile_schedule_is_unchanged_on_the_papers_data():
    # The values every paper-profile result was made with: 500-step half-cycle on CIFAR10 at batch 256.
    sft = get_profile("paper").sft
    assert sft == SFTConfig(3e-4, 0.1, 1e-3, 10, 500, None)
    assert sft.step_size(50_000 // 256) == 500 and sft.peak_problem(50_000 // 256, 100) is None
    lrs = ft.sft_lr_trace(sft, 195, 2400)
    assert max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 500
    assert max(lrs[1950:]) <= 1e-3 + 1e-12  # phase 2 after 10 epochs of 195 steps


def test_outside_data_schedule_reaches_the_peak_in_whole_cycles():
    # The world: 1,397 images at batch 256 = 5 steps per epoch, where 500 steps never reach the peak.
    paper = get_profile("paper").sft
    assert ft.PAPER_HALF_CYCLE_EPOCHS == pytest.approx(2.56)
    msg = paper.peak_problem(5, 15)
    assert msg.startswith("SFT's LR peaks at 0.0103, never LR_MAX1 0.1: its half-cycle is 500 steps but phase 1 "
                          "has 50 (5 per epoch)") and "\n" not in msg
    outside = paper.in_epochs()
    assert outside.half_cycle_epochs == 2.5  # 2.56 epochs rounded to 2 whole cycles in the 10-epoch phase 1
    assert outside.peak_problem(5, 15) is None
    lrs = ft.sft_lr_trace(outside, 5, 75)
    assert max(lrs[:50]) == pytest.approx(0.1, rel=0.05)
    # A profile that already gives its half-cycle in epochs (demo, quick) is kept as it is.
    demo = get_profile("demo").sft
    assert demo.in_epochs() is demo
    # Too few epochs for even one half-cycle is caught too.
    assert "never LR_MAX1" in outside.peak_problem(5, 2)


def test_small_data_phase1_gets_its_step_floor_and_keeps_phase2():
    demo = get_profile("demo").sft  # phase 1: 5 of 10 epochs
    assert ft.PHASE1_MIN_STEPS == 100
    # 504 images at batch 64: 7 steps per epoch -> phase 1 of ceil(100 / 7) = 15 epochs, phase 2's 5 kept.
    sft, epochs = demo.stretched(7, 10)
    assert (sft.phase1_epochs, epochs) == (15, 20) and sft.half_cycle_epochs == demo.half_cycle_epochs
    assert demo.stretched(21, 10) == (demo, 10)  # 1,400 images: 105 steps already
    paper, epochs = get_profile("paper").sft.stretched(1, 100)  # 504 images at batch 256: one step per epoch
    assert (paper.phase1_epochs, epochs) == (100, 190)
    lrs = ft.sft_lr_trace(paper.in_epochs(), 1, 190)
    assert max(lrs[:100]) == pytest.approx(0.1, rel=0.05) and max(lrs[100:]) <= 1e-3 + 1e-12


# ---- LR_MAX1 guard -------------------------------------------------------------------------------------


def _ctx(num_classes: int = 10) -> DefenseContext:
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    return DefenseContext(model=nn.Sequential(nn.Flatten(), nn.Linear(192, num_classes)), x_clean=x,
                          y_clean=torch.arange(64) % num_classes, train=TrainConfig(epochs=1, batch_size=16, crop_pad=0),
                          evaluate=None, num_classes=num_classes, target_label=0, params={})


def test_guard_takes_the_largest_peak_below_the_limit(monkeypatch):
    seen = []

    def fake(ctx, cfg, sft):
        seen.append((sft.lr_max1, cfg.epochs))
        return {0.1: 1.61, 0.05: 1.16, 0.03: 0.4}[sft.lr_max1]  # 1.16: just above the limit

    monkeypatch.setattr(ft, "_probe_loss", fake)
    sft = SFTConfig(half_cycle_epochs=2.5)
    got = choose_lr_max1(_ctx(), sft)
    limit = 0.5 * math.log(10)  # 1.151
    assert (got.lr_max1, got.passed, got.limit) == (0.03, True, pytest.approx(limit))
    assert seen == [(0.1, 3), (0.05, 3), (0.03, 3)]  # stops at the first pass; a probe covers the first half-cycle
    monkeypatch.setattr(ft, "_probe_loss", lambda ctx, cfg, s: 5.0)
    none = choose_lr_max1(_ctx(), sft)
    assert (none.lr_max1, none.passed) == (0.003, False) and list(none.losses) == [0.1, 0.05, 0.03, 0.01, 0.003]


def test_guard_probe_counts_a_diverged_run_as_failed_and_leaves_the_model_alone():
    ctx = _ctx()
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=16, crop_pad=0, lr=3e-4)
    assert ft._probe_loss(ctx, cfg, SFTConfig(lr_max1=1e30, half_cycle_epochs=0.5)) == math.inf
    calm = ft._probe_loss(ctx, cfg, SFTConfig(lr_max1=0.01, half_cycle_epochs=0.5))
    assert 0 < calm < 5
    assert all(torch.equal(v, before[k]) for k, v in ctx.model.state_dict().items())


# ---- utility, normalisation, output folders -------------------------------------------------------------


def test_verdict_names_each_missed_bar_and_what_may_still_remove_it():
    r = {"defense": "sft", "test_data": "digits", "sft": {"lr_max1": 0.01},
         "before": {"ca": 0.985, "asr": 1.0}, "after": {"ca": 0.965, "asr": 0.824}}
    lines = verdict(r)
    assert len(lines) == 1 and lines[0].startswith("sft left ASR 0.824 (above 0.05): the backdoor is not removed; ")
    assert 'SET="sft.lr_max1=0.03"' in lines[0]  # a third of a step up from the guard's choice
    r["after"] = {"ca": 0.95, "asr": 0.05}  # ASR exactly at the bar passes
    assert verdict(r) == ['sft cost 0.035 CA (more than 0.03) on digits; a smaller LR_MAX1 than 0.01 '
                          '(SET="sft.lr_max1=0.005") may keep more, and remove less']
    assert verdict({**r, "defense": "ft", "after": {"ca": 0.98, "asr": 0.9}}) == [
        "ft left ASR 0.900 (above 0.05): the backdoor is not removed"]


def test_hold_out_moves_a_seeded_share_to_the_test_split():
    x = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 2, 2).contiguous()
    data = ImageData("f", x, torch.arange(100) % 10, x[:0], torch.zeros(0, dtype=torch.int64), 10)
    a, b = hold_out(data, 0.2, 0), hold_out(data, 0.2, 0)
    assert (len(a.x_train), len(a.x_test)) == (80, 20) and torch.equal(a.x_test, b.x_test)
    train, test = set(a.x_train[:, 0, 0, 0].tolist()), set(a.x_test[:, 0, 0, 0].tolist())
    assert not train & test and len(train | test) == 100
    assert torch.equal(a.y_test, a.x_test[:, 0, 0, 0].long() % 10)  # labels travel with their images
    assert not torch.equal(hold_out(data, 0.2, 1).x_test, a.x_test)


class Blue(nn.Module):
    """Class 1 iff the normalised blue channel's mean is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 2].mean((1, 2))
        return torch.stack([-m, m], 1)


def test_missing_normalisation_is_detected():
    # Blue 0.400 / 0.420: only ImageNet's blue mean (0.406) lies between them among the candidates before
    # the data's own (none 0, tiny 0.3975, cifar100 0.4409, cifar10 0.4465, mnist 0.5).
    x = torch.zeros(40, 3, 4, 4, dtype=torch.uint8)
    y = torch.arange(40) % 2
    x[:, 2] = torch.where(y.view(-1, 1, 1) == 1, 107, 102).to(torch.uint8)
    model = with_input_norm(Blue(), 2)
    name, norm, scores = detect_norm(model, x, y)
    assert name == "imagenet" and norm == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert scores["imagenet"] == 1.0 and scores["none"] == 0.5 and scores["cifar10"] == 0.5
    assert model.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_output_folders_of_same_named_files_differ(tmp_path):
    a, b = tmp_path / "badnet_0_1" / "attack_result.pt", tmp_path / "blended_0_1" / "attack_result.pt"
    assert out_stem(str(a)).startswith("badnet_0_1-attack_result-") and out_stem(str(a)) != out_stem(str(b))
    assert out_stem(str(a)) == out_stem(str(tmp_path / "badnet_0_1" / ".." / "badnet_0_1" / "attack_result.pt"))


# ---- architectures ------------------------------------------------------------------------------------


def test_cifar_resnet18_is_torchvisions_with_the_cifar_stem():
    import torchvision

    net = make_model("cifar_resnet18", 10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.layer1[0], torchvision.models.resnet.BasicBlock)
    ref = torchvision.models.resnet18(num_classes=10)  # what a CIFAR script writes, built independently
    ref.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    ref.maxpool = nn.Identity()
    assert {k: v.shape for k, v in ref.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items() if k not in ("mean", "std")}
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    # The mismatch hint names the architecture the file fits.
    assert fitting_hint(ref.state_dict(), "resnet18", 10) == "the file fits --arch cifar_resnet18"
    assert fitting_hint(torchvision.models.resnet18(num_classes=5).state_dict(), "resnet18", 10) == \
        "the file fits --num-classes 5"


def test_timm_models_by_name_without_download_and_only_when_named():
    net = make_model("timm:resnet18", 7, norm=((0.5,) * 3, (0.5,) * 3))
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 7) and net.std.flatten().tolist() == [0.5] * 3
    assert "fc.weight" in net.state_dict() and net.fc.out_features == 7
    with pytest.raises(ValueError, match="unknown timm model 'nosuchnet'"):
        make_model("timm:nosuchnet", 7)
    code = "import sys, backdoor.models, backdoor.external, experiments.defend; print('timm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- docs/defend.md: loading the defended weights back into plain torchvision ----------------------------


def test_docs_load_back_code_reproduces_the_defended_model(tmp_path):
    torch.manual_seed(0)
    ours = make_model("resnet18", 10, norm=((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))).eval()
    save_model(tmp_path / "sft.safetensors", ours, {"arch": {"name": "resnet18", "num_classes": 10}})
    text = (ROOT / "docs" / "defend.md").read_text()
    code = re.search(r"```python\n(# load back.*?)```", text, re.S).group(1)
    code = code.replace("artifacts/defend/MODEL/sft.safetensors", str(tmp_path / "sft.safetensors"))
    x = torch.rand(4, 3, 32, 32)
    scope = {"x": x}
    exec(code, scope)  # noqa: S102 - the documented snippet itself
    with torch.no_grad():
        assert torch.allclose(scope["logits"], ours(x), atol=1e-5)
