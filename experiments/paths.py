"""Where every artifact lives: the one table of the layout, read by the steps, the readers and Make.

Stdlib only (Make runs `python -m experiments.paths make` on every start, before any venv exists):
    python -m experiments.paths make     the table as Make functions, p_<name> (see `make_definitions`)
A template's first field is the directory it lies in ({root}: the artifacts root, ARTIFACTS / Make's A),
the others follow in order; {run} is a run's `run(dataset, attack)` part, Make's pattern stem %.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# The artifacts root: ARTIFACTS (Make exports its A as ARTIFACTS); tests point it elsewhere by setting it here.
ARTIFACTS = Path(os.environ.get("ARTIFACTS", "artifacts"))

TEMPLATES: dict[str, str] = {
    # ---- directories under the root
    "checkpoints": "{root}/checkpoints/{profile}",  # models of a profile (name or <name>+<hash>)
    "results": "{root}/results/{profile}",  # results JSONs of a profile; the readers' --results
    "figures": "{root}/figures/{profile}",
    "report": "{root}/report/{profile}",  # experiments/report.py
    "triggers": "{root}/triggers",  # built triggers (LF's), shared by every profile with the same settings
    "defend": "{root}/defend/{stem}",  # experiments/defend.py of a model file <stem>.*
    "locks": "{root}/.locks",  # experiments/launch.py's output and GPU locks
    "logs": "{root}/logs",  # Slurm logs, one folder per step
    "fake_data": "{root}/fake_data",  # `make fake-data`'s default directory
    "gpu_check": "{root}/gpu_check.json",  # experiments/gpu_check.py's default output
    # ---- a run: Make's stem % (runargs splits it back)
    "run": "{dataset}/{attack}",
    # ---- in a profile's checkpoints directory
    "backdoor": "{dir}/{run}/backdoor.safetensors",  # experiments/standalone.py train
    "poison": "{dir}/{run}/poison.safetensors",  # its poisoned training set
    "defended": "{dir}/{run}/{defense}.safetensors",  # experiments/standalone.py defend
    "clean_model": "{dir}/{dataset}/clean/model.safetensors",  # experiments/clean.py
    # ---- in a profile's results directory
    "backdoor_result": "{dir}/{run}/backdoor.json",
    "result": "{dir}/{run}/{defense}.json",  # standalone defend
    "clean_result": "{dir}/{dataset}/clean/model.json",
    "mia": "{dir}/{run}/mia/{model}.json",  # experiments/sequela.py mia
    "reinject": "{dir}/{run}/reinject/{model}/{ratio}.json",  # experiments/sequela.py reinject
    "ablation": "{dir}/{run}/ablation/{point}.json",  # experiments/ablations.py
    "table1": "{dir}/table1.safetensors",  # experiments/table1.py
    "figure1_lr": "{dir}/figure1_lr.json",  # experiments/lr_schedule.py
    "summary": "{dir}/summary.txt",  # experiments/summary.py
    "transfer_dir": "{dir}/transfer",  # figure3's --results
    "encoder_dir": "{dir}/encoder",  # in checkpoints and in results; figure2's --results
    # ---- in a user's LF_PATTERNS folder: BackdoorBench's LF pattern per dataset (its resource/lowFrequency names)
    "lf_pattern": "{dir}/{dataset}_{arch}_0_255.npy",
    # ---- in either profile directory: an overridden profile's --set values
    "overrides": "{dir}/overrides.json",
    # ---- in transfer_dir: experiments/transfer.py run
    "transfer": "{dir}/{downstream}/{attack}/{defense}.json",
    # ---- in encoder_dir: experiments/encoder.py
    "simclr": "{dir}/{pretrain}/simclr.safetensors",
    "simclr_result": "{dir}/{pretrain}/simclr.json",
    "badencoder": "{dir}/{pretrain}/{downstream}/badencoder.safetensors",
    "badencoder_result": "{dir}/{pretrain}/{downstream}/badencoder.json",
    "downstream": "{dir}/{pretrain}/{downstream}/{mode}.json",
    # ---- in a profile's figures directory
    "figure": "{dir}/{name}.png",
    # ---- in a report directory
    "report_md": "{dir}/REPRODUCTION.md",
    "report_html": "{dir}/index.html",
    # ---- in a defend directory
    "defend_model": "{dir}/{defense}.safetensors",
    "defend_report": "{dir}/{defense}.report.json",
}
_FIELD = re.compile(r"\{(\w+)\}")


def fields(name: str) -> list[str]:
    """The fields of template `name`, in order ({root} aside: it is always the artifacts root)."""
    return [f for f in dict.fromkeys(_FIELD.findall(TEMPLATES[name])) if f != "root"]


def path(name: str, dir: Path | str | None = None, /, **values: object) -> Path:
    """Template `name` filled in: `dir` is its {dir}, {run} may be given as dataset= and attack=."""
    if "{run}" in TEMPLATES[name] and "run" not in values:
        values["run"] = run(str(values.pop("dataset")), str(values.pop("attack")))
    if dir is not None:
        values["dir"] = str(dir)
    missing = set(fields(name)) - set(values)
    if missing:
        raise TypeError(f"path {name!r} needs {', '.join(sorted(missing))}")
    return Path(TEMPLATES[name].format(root=str(ARTIFACTS), **{k: str(v) for k, v in values.items()}))


def run(dataset: str, attack: str) -> str:
    """A run's part of a path (dataset/attack); a stem in Make."""
    return TEMPLATES["run"].format(dataset=dataset, attack=attack)


def in_run(name: str, /, **values: object) -> str:
    """A run file's path relative to its run directory (e.g. `ft.json`, `ablation/<point>.json`)."""
    prefix = "{dir}/{run}/"
    assert TEMPLATES[name].startswith(prefix), name
    return TEMPLATES[name][len(prefix):].format(**{k: str(v) for k, v in values.items()})


def relative(name: str, within: str | None = None, /, **values: object) -> str:
    """Template `name`'s path relative to its {dir}, or to the dir of directory template `within` (one level
    up), as text; values such as "{dataset}" keep it a format string."""
    return str(path(name, path(within, ".") if within else ".", **values))


def checkpoints(profile: str) -> Path:
    return path("checkpoints", profile=profile)


def results(profile: str) -> Path:
    return path("results", profile=profile)


def figures(profile: str) -> Path:
    return path("figures", profile=profile)


def report(profile: str) -> Path:
    return path("report", profile=profile)


def make_definitions() -> str:
    """One word per template, `p_<name>=<text>`, its fields as $(1), $(2)... in order and {root} as $(A);
    Make $(eval)s each word (words: $(shell) turns newlines into spaces), so no template holds a space."""
    words = []
    for name, text in TEMPLATES.items():
        assert " " not in text and "$" not in text, name
        pos = {f: f"$({i})" for i, f in enumerate(fields(name), 1)}
        words.append(f"p_{name}=" + _FIELD.sub(lambda m: "$(A)" if m[1] == "root" else pos[m[1]], text))
    return "\n".join(words)


if __name__ == "__main__":
    if sys.argv[1:] != ["make"]:
        sys.exit("usage: python -m experiments.paths make")
    print(make_definitions())
