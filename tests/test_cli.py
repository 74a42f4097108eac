"""Unknown names fail at once with the valid list; CLI errors are one line, not a traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from backdoor.data import DATASETS, load_dataset
from backdoor.models import MODELS, make_model
from defenses import DEFENSES, get_defense
from experiments.profiles import PROFILES, get_profile


@pytest.mark.parametrize("lookup,registry", [
    (lambda: load_dataset("imagenet"), DATASETS),
    (lambda: make_model("vgg", 10), MODELS),
    (lambda: get_defense("magic"), DEFENSES),
    (lambda: get_profile("huge"), PROFILES),
])
def test_unknown_name_lists_valid_ones(lookup, registry):
    with pytest.raises(ValueError) as e:
        lookup()
    assert all(name in str(e.value) for name in registry)


@pytest.mark.parametrize("args,expect", [
    (["train", "--profile", "huge", "--dataset", "digits", "--attack", "badnets"], "unknown profile 'huge'"),
    (["train", "--profile", "smoke", "--dataset", "digits", "--attack", "trojan"], "unknown attack 'trojan'"),
    (["defend", "--profile", "smoke", "--dataset", "digits", "--attack", "badnets", "--defense", "magic"],
     "unknown defense 'magic'"),
])
def test_cli_errors_are_one_line(args, expect, tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.standalone", *args], capture_output=True, text=True,
                       env={"ARTIFACTS": str(tmp_path), "PATH": ""}, timeout=120)
    assert r.returncode == 2  # the one exit status of user errors (experiments.common.USER_ERROR)
    assert expect in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_defend_without_backdoored_model_names_the_fix(tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.standalone", "defend", "--profile", "smoke",
                        "--dataset", "digits", "--attack", "badnets", "--defense", "sft"],
                       capture_output=True, text=True, env={"ARTIFACTS": str(tmp_path), "PATH": ""}, timeout=120)
    assert r.returncode == 2 and "re-run the step" in r.stderr and "Traceback" not in r.stderr
