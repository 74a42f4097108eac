"""Trigger pixels and formulas of BadNets and Blended, exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from backdoor.attacks import ATTACKS, make_attack
from backdoor.attacks.blended import load_key_image
from backdoor.poison import bake


def _images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_badnets_replaces_exactly_the_bottom_right_3x3():
    x = _images()
    xt = bake(make_attack("badnets"), x)
    assert (xt[:, :, 29:32, 29:32] == 255).all()
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[29:32, 29:32] = False
    assert torch.equal(xt[:, :, mask], x[:, :, mask])


def test_badnets_margin_and_size_move_the_patch():
    xt = bake(make_attack("badnets", size=4, margin=1), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    assert xt.sum().item() == 255 * 3 * 16
    assert (xt[0, :, 27:31, 27:31] == 255).all()


def test_blended_is_08x_plus_02key_rounded():
    x = _images()
    atk = make_attack("blended")
    key = atk.key.double()
    expected = (0.8 * x.double() + 0.2 * key).round().to(torch.uint8)
    assert (bake(atk, x).int() - expected.int()).abs().max().item() == 0
    assert atk.alpha == 0.2


def test_blended_default_key_is_a_real_sklearn_image_and_path_overrides(tmp_path):
    default = load_key_image("sklearn:china.jpg")
    assert default.shape == (3, 32, 32) and default.dtype == torch.uint8 and default.float().std() > 10
    arr = np.zeros((40, 50, 3), dtype=np.uint8)
    arr[..., 1] = 200
    Image.fromarray(arr).save(tmp_path / "key.png")
    atk = make_attack("blended", key_image=str(tmp_path / "key.png"))
    assert (atk.key[1] == 200).all() and (atk.key[0] == 0).all()
    with pytest.raises(FileNotFoundError, match="--key-image"):
        make_attack("blended", key_image=str(tmp_path / "missing.png"))


@pytest.mark.parametrize("name", ["badnets", "blended"])
def test_static_attacks_are_deterministic_and_leave_input_alone(name):
    x = _images()
    before = x.clone()
    a, b = bake(make_attack(name), x), bake(make_attack(name), x)
    assert torch.equal(a, b) and torch.equal(x, before) and not torch.equal(a, x)


def test_invalid_attack_parameters_fail():
    with pytest.raises(ValueError, match="alpha"):
        make_attack("blended", alpha=1.5)
    with pytest.raises(ValueError, match="target"):
        make_attack("badnets", target=-1)


def test_unknown_attack_lists_valid_names():
    with pytest.raises(ValueError) as e:
        make_attack("trojan")
    for name in ATTACKS:
        assert name in str(e.value)
