"""Encoder scenario: NT-Xent, batched SimCLR augmentations, BadEncoder, downstream modes,
and the STL10/SVHN conversions on tiny files in each dataset's own on-disk format."""
from __future__ import annotations

import copy
import hashlib
import json
import math

import numpy as np
import pytest
import scipy.io
import torch
import torch.nn as nn
import torchvision.transforms.functional as TF
from torchvision import datasets as tvd

from backdoor import data as bd
from backdoor.attacks.badencoder import BadEncoder, badencoder_losses, train_badencoder
from backdoor.data import ImageData
from backdoor.models import DownstreamClassifier, ResNet18Encoder
from backdoor.ssl import SimCLRAugment, jitter_with, nt_xent, resized_crop_flip, simclr_augment
from backdoor.train import TrainConfig, fit
from experiments import paths
from experiments import encoder as ex
from experiments.common import evaluator_for

CPU = dict(channels_last=False, crop_pad=0)


# ---------------------------------------------------------------- NT-Xent and augmentations


def test_nt_xent_hand_computed():
    # views: (e1, e1) is a pair with cosine 1; (e2, -e2) a pair with cosine -1; cross pairs 0.
    # t = 0.5: anchors e1 give -log(e^2 / (e^2 + 2)), anchors +-e2 give -log(e^-2 / (e^-2 + 2)).
    z1 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # lengths differ: the loss must normalise
    z2 = torch.tensor([[0.5, 0.0], [0.0, -4.0]])
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 * math.exp(2))) / 2
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_nt_xent_matches_per_anchor_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).tolist()
    total = 0.0
    for i in range(8):
        s = [sum(a * b for a, b in zip(z[i], z[k])) / t for k in range(8)]
        total -= s[(i + 4) % 8] - math.log(sum(math.exp(s[k]) for k in range(8) if k != i))
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 8, rel=1e-5)


def test_color_jitter_matches_torchvision():
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    b, c, s, h = (torch.tensor(v) for v in ([0.7, 1.3, 1.0, 0.6], [1.2, 0.7, 1.0, 1.4], [0.6, 1.4, 1.0, 1.2],
                                           [0.1, -0.1, 0.0, 0.05]))
    ref = torch.stack([TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(
        x[i], b[i].item()), c[i].item()), s[i].item()), h[i].item()) for i in range(4)])
    assert torch.allclose(jitter_with(x, b, c, s, h), ref, atol=1e-5)


def test_resized_crop_and_flip():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    full, no, yes = torch.tensor([[0, 0, 32, 32.0]] * 2), torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    assert torch.equal(resized_crop_flip(x, full, no), x)
    assert torch.equal(resized_crop_flip(x, full, yes), x.flip(3))
    # a 16x16 box at (left 8, top 4) is torchvision's bilinear resized crop (away from the box border)
    out = resized_crop_flip(x, torch.tensor([[8, 4, 16, 16.0]] * 2), no)
    ref = TF.resized_crop(x, 4, 8, 16, 16, [32, 32], antialias=False)
    assert torch.allclose(out[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-5)


def test_simclr_augment_switches():
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    off = SimCLRAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    assert torch.allclose(simclr_augment(x, off), x, atol=1e-5)
    gray = simclr_augment(x, SimCLRAugment(crop=False, flip_p=0.0, jitter_p=0.0, gray_p=1.0))
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])
    n_flipped = (simclr_augment(x, SimCLRAugment(crop=False, jitter_p=0.0, gray_p=0.0)) != x).flatten(1).any(1).sum()
    assert 16 < n_flipped < 48  # about half of the images flipped


# ---------------------------------------------------------------- BadEncoder


def _clean_and_perturbed() -> tuple[ResNet18Encoder, ResNet18Encoder, torch.Tensor, BadEncoder]:
    """A tiny 'clean' encoder with BN statistics calibrated on the data (so features differ between
    images), and a copy with noisy convolutions, so that all three loss terms have room to fall."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=g)
    ref = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=g)
    attack = BadEncoder(0, size=5, image_size=16).set_reference(ref)
    torch.manual_seed(0)
    clean = ResNet18Encoder(width=4)
    for m in clean.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        clean(x.float() / 255), clean(attack.apply(x.float() / 255))
    clean.eval()
    enc = copy.deepcopy(clean)
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "conv" in name:
                p.add_(0.2 * p.std() * torch.randn_like(p))
    return clean, enc, x, attack


def _losses(enc, clean, x, attack):
    ref = attack.reference.float() / 255
    enc.eval()
    with torch.no_grad():
        return [v.item() for v in badencoder_losses(enc, clean, x, attack.apply(x), ref, ref.expand(len(x), -1, -1, -1))]


def test_badencoder_trigger_and_reference():
    attack = BadEncoder(target=3)
    x = torch.zeros(1, 3, 32, 32)
    out = attack.apply(x)
    assert out[0, :, 21:31, 21:31].eq(1).all() and out.sum() == 3 * 100  # rows/cols 21-30, 1 px margin
    with pytest.raises(ValueError, match="reference must be uint8"):
        attack.set_reference(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_badencoder_loss_terms_go_down_and_batchnorm_is_frozen():
    clean, enc, x, attack = _clean_and_perturbed()
    xf = x.float() / 255
    before = _losses(enc, clean, xf, attack)
    state0 = {k: v.clone() for k, v in enc.state_dict().items()}
    history = train_badencoder(enc, x, attack, TrainConfig(epochs=4, batch_size=16, lr=0.02, **CPU), clean=clean)
    after = _losses(enc, clean, xf, attack)
    assert all(a < b - 0.01 for a, b in zip(after, before)), (before, after)  # L0, L1, L2 each fall
    assert history[-1]["loss"] < history[1]["loss"]
    bn_keys = [k for k in state0 if ".bn" in k or k.startswith("bn") or "downsample.1" in k]
    assert len(bn_keys) == 5 * 20  # weight, bias, running mean/var, counter of all 20 BN layers
    assert all(torch.equal(state0[k], enc.state_dict()[k]) for k in bn_keys)
    assert not torch.equal(state0["conv1.weight"], enc.state_dict()["conv1.weight"])


# ---------------------------------------------------------------- downstream


def _digit_like(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 4


@pytest.mark.parametrize("frozen", [True, False])
def test_classifier_only_keeps_encoder_bit_identical(frozen):
    x, y = _digit_like(64, 4)
    torch.manual_seed(0)
    model = DownstreamClassifier(ResNet18Encoder(width=4), 4, freeze_encoder=frozen)
    enc0 = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head0 = [p.clone() for p in model.head.parameters()]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, optimizer="adam", weight_decay=0.0, **CPU)
    fit(model, x, y, cfg, params=list(model.head.parameters()) if frozen else None)
    same = [torch.equal(enc0[k], v) for k, v in model.encoder.state_dict().items()]
    assert all(same) if frozen else not all(same)  # whole-model mode moves weights and BN statistics
    assert model.encoder.training is not frozen  # fit's model.train() leaves a frozen encoder in eval
    assert not any(torch.equal(a, b) for a, b in zip(head0, model.head.parameters()))


class _LookupModel(nn.Module):
    """Predicts from pixel (0,0): class code c -> target if c in `to_target`, else c."""

    def __init__(self, target: int, to_target: set[int]):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.target, self.to_target = target, to_target

    def forward(self, x):
        code = (x[:, 0, 0, 0] * 255).round().long()
        pred = torch.where(torch.isin(code, torch.tensor(sorted(self.to_target))), self.target, code)
        return nn.functional.one_hot(pred, 10).float() + 0 * self.w


def test_downstream_asr_excludes_target_class():
    y = torch.tensor([0, 0, 0, 0, 1, 2, 2, 3, 3, 3])
    x = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    x[:, 0, 0, 0] = y.to(torch.uint8)  # class code survives the bottom-right trigger
    data = ImageData("t", x, y, x, y, 10)
    attack = BadEncoder(target=0)
    scores = evaluator_for(data, attack, torch.device("cpu"), bf16=False)(_LookupModel(0, {0, 2}))
    # 6 non-target images, the two of class 2 go to the target: 2/6 (with target images: 6/10)
    assert scores["asr"] == pytest.approx(2 / 6) and scores["ca"] == pytest.approx(8 / 10)


def test_pick_reference_is_a_seeded_target_image():
    y = torch.tensor([1, 9, 3, 9, 9, 0])
    data = ImageData("t", torch.zeros(6, 3, 32, 32, dtype=torch.uint8), y, torch.zeros(6, 3, 32, 32, dtype=torch.uint8), y, 10)
    picks = {ex.pick_reference(data, 9, s) for s in range(20)}
    assert picks == {1, 3, 4} and ex.pick_reference(data, 9, 5) == ex.pick_reference(data, 9, 5)
    with pytest.raises(ValueError, match="no image of target class 7"):
        ex.pick_reference(data, 7, 0)


def test_encoder_chain_smoke(tmp_path, monkeypatch):
    """pretrain -> badencoder -> classifier/whole on a digits subset; files and their contents."""
    full = bd.load_dataset("digits", tmp_path / "data")
    small = ImageData("digits", full.x_train[:64], full.y_train[:64], full.x_test[:40], full.y_test[:40], 10)
    monkeypatch.setattr(ex, "load_data", lambda name, prof=None: small)
    monkeypatch.setattr(paths, "ARTIFACTS", tmp_path)
    base = ["--profile", "smoke", "--pretrain", "digits", "--device", "cpu"]
    ex.main(["pretrain", *base])
    ex.main(["badencoder", *base, "--downstream", "digits"])
    for mode in ("classifier", "whole"):
        ex.main(["downstream", *base, "--downstream", "digits", "--mode", mode])
    rs = tmp_path / "results" / "smoke" / "encoder" / "digits"
    bad = json.loads((rs / "digits" / "badencoder.json").read_text())
    assert bad["reference"]["split"] == "train" and small.y_train[bad["reference"]["index"]] == bad["target"] == 0
    assert all(-1 <= bad[k][c] <= 1 for k in ("alignment_before", "alignment")
               for c in ("cos_triggered_ref", "cos_clean_ref"))
    for mode in ("classifier", "whole"):
        res = json.loads((rs / "digits" / f"{mode}.json").read_text())
        assert [r["epoch"] for r in res["history"]] == [0, 1, 2] and res["first_epoch_seconds"] > 0
        assert res["encoder"] == "badencoder" and res["target"] == 0
        assert all(0 <= r["asr"] <= 1 and 0 <= r["ca"] <= 1 for r in res["history"])
    assert (tmp_path / "checkpoints" / "smoke" / "encoder" / "digits" / "digits" / "badencoder.safetensors").is_file()


# ---------------------------------------------------------------- STL10 / SVHN on-disk formats


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _blocky(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random 32x32 images and their 96x96 versions made of 3x3 constant blocks (area resize inverts it)."""
    small = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    return small, small.repeat(3, axis=2).repeat(3, axis=3)


def test_stl10_real_conversion(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    root = tmp_path / "stl10_binary"
    root.mkdir()
    (s_tr, b_tr), (s_te, b_te), (s_un, b_un) = _blocky(rng, 4), _blocky(rng, 3), _blocky(rng, 5)
    y_tr, y_te = np.array([1, 10, 3, 10], np.uint8), np.array([2, 1, 9], np.uint8)  # on disk: 1-based
    files = {"train_X.bin": b_tr, "test_X.bin": b_te, "unlabeled_X.bin": b_un}
    for name, imgs in files.items():  # column-major, as the STL10 binaries store each channel
        (root / name).write_bytes(np.ascontiguousarray(imgs.transpose(0, 1, 3, 2)).tobytes())
    (root / "train_y.bin").write_bytes(y_tr.tobytes())
    (root / "test_y.bin").write_bytes(y_te.tobytes())
    md5 = {f.name: _md5(f) for f in root.iterdir()}
    monkeypatch.setattr(tvd.STL10, "train_list", [[f, md5[f]] for f in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")])
    monkeypatch.setattr(tvd.STL10, "test_list", [[f, md5[f]] for f in ("test_X.bin", "test_y.bin")])

    d = bd.load_dataset("stl10", tmp_path, sizes=(4, 3))  # tiny files: not the documented size
    assert d.num_classes == 10 and d.x_train.dtype == torch.uint8 and d.x_train.shape == (4, 3, 32, 32)
    assert torch.equal(d.x_train, torch.from_numpy(s_tr)) and torch.equal(d.x_test, torch.from_numpy(s_te))
    assert d.y_train.tolist() == [0, 9, 2, 9] and d.y_test.tolist() == [1, 0, 8]
    u = bd.load_dataset("stl10_unlabeled", tmp_path, sizes=(5, 0))
    assert torch.equal(u.x_train, torch.from_numpy(s_un)) and u.y_train.tolist() == [-1] * 5
    assert u.x_test.shape == (0, 3, 32, 32) and bd.cache_path("stl10_unlabeled", tmp_path).is_file()


def test_svhn_real_conversion(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    root = tmp_path / "svhn"
    root.mkdir()
    split_list = {}
    expected = {}
    for split, labels in (("train", [10, 1, 5, 10, 9]), ("test", [3, 10])):
        x = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
        fname = f"{split}_32x32.mat"
        scipy.io.savemat(root / fname, {"X": x.transpose(2, 3, 1, 0), "y": np.array(labels, np.uint8)[:, None]})
        split_list[split] = ["unused-url", fname, _md5(root / fname)]
        expected[split] = (x, [0 if v == 10 else v for v in labels])
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)

    d = bd.load_dataset("svhn", tmp_path, sizes=(5, 2))
    assert d.num_classes == 10 and d.x_train.is_contiguous() and d.x_train.dtype == torch.uint8
    assert torch.equal(d.x_train, torch.from_numpy(expected["train"][0])) and d.y_train.tolist() == expected["train"][1]
    assert torch.equal(d.x_test, torch.from_numpy(expected["test"][0])) and d.y_test.tolist() == expected["test"][1]


def test_stl10_svhn_missing_say_make_data(tmp_path):
    for name in ("stl10", "stl10_unlabeled", "svhn"):
        with pytest.raises(bd.DatasetMissing, match=f"make data DATASETS={name}"):
            bd.load_dataset(name, tmp_path)


def test_unknown_encoder_profile_one_line():
    # The encoder scenario reads the one Profile tree (experiments.profiles), no table of its own.
    with pytest.raises(SystemExit, match="choose one of: paper, quick, demo, smoke"):
        ex.main(["pretrain", "--profile", "laptop", "--pretrain", "digits"])
