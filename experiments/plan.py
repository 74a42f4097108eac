"""`make plan`: each figure's steps (from one `make -n -B`), their work, and the device-hours of `make all`.

Work is counted in image-passes: one image through forward + backward of the model being trained. An
evaluation or feature forward counts 1/3 (backward is about twice a forward), so dividing by a training
throughput (`make bench`'s "ours" img/s, or IMG_PER_S=) gives device-seconds. Budgets are read from the
profile tree (experiments.profiles: attack presets, defence configs, sweeps, encoder); dataset sizes from
backdoor.data.SOURCES. Early stopping (NC, FP's pruning loop) is counted at its upper bound. A profile's
`max_steps` (batches per epoch) caps each training epoch and its `eval_images` each evaluation's test set.

    python -m experiments.plan --profile paper --img-per-s 20000 [--figures "figure4 figure5"] [--steps]
"""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from experiments import paths

FWD = 1 / 3  # a forward-only pass, in training image-passes
ALL_FIGURES_VAR = "ALL_FIGURES"  # the Makefile's list of what `make all` builds


@dataclass(frozen=True)
class Step:
    """One recipe line that runs an experiment step: its module, sub-command and --options."""

    module: str
    command: str
    opts: tuple[tuple[str, str], ...]

    def opt(self, key: str, default: str = "") -> str:
        return dict(self.opts).get(key, default)

    @property
    def label(self) -> str:
        keep = [v for k, v in self.opts if k not in ("profile", "triggers", "device", "out", "results")]
        return " ".join(w for w in [self.module.removeprefix("experiments."), self.command, *keep] if w)


def parse_step(line: str) -> Optional[Step]:
    """A `make -n` line -> Step, if it runs `experiments.<module>` (through experiments.launch or not)."""
    if "experiments." not in line:
        return None
    try:
        words = shlex.split(line)
    except ValueError:  # a recipe continued with a backslash: its words are plain
        words = line.split()
    mods = [i for i, w in enumerate(words) if w.startswith("experiments.") and w != "experiments.launch"]
    if not mods:
        return None
    i = mods[0]
    rest = words[i + 1:]
    command = rest[0] if rest and not rest[0].startswith("--") else ""
    opts, j = [], 1 if command else 0
    while j < len(rest):
        if rest[j].startswith("--"):
            val = rest[j + 1] if j + 1 < len(rest) and not rest[j + 1].startswith("--") else ""
            opts.append((rest[j][2:], val))
            j += 2 if val else 1
        else:
            j += 1
    return Step(words[i], command, tuple(opts))


# ---------------------------------------------------------------- sizes and budgets (read-only)
def sizes(name: str) -> tuple[int, int, int]:
    """(train, test, classes) of a dataset, or of a derived downstream task (digits5to9: half of digits)."""
    from backdoor.data import SOURCES

    if name in SOURCES:
        s = SOURCES[name]
        return s.sizes[0], s.sizes[1], s.num_classes
    if name.startswith("digits"):  # experiments.transfer's derived digit tasks: 5 of the 10 classes
        tr, te = SOURCES["digits"].sizes
        return tr // 2, te // 2, 5
    raise ValueError(f"plan: no size for dataset {name!r}; add it to backdoor.data.SOURCES")


def _evals(epochs: int, every: int, test: int) -> float:
    """CA on the test set + ASR on its non-target part, each evaluated epoch and at epoch 0."""
    return (epochs // max(1, every) + 1) * 2 * test * FWD


def _epoch(n: float, cfg) -> float:
    """Images one training epoch of `cfg` (a TrainConfig) sees: all n, or its `max_steps` batches."""
    return n if cfg.max_steps is None else min(n, cfg.max_steps * cfg.batch_size)


class Costs:
    """Image-passes of each step kind under one profile."""

    def __init__(self, profile: str, sets: tuple[str, ...] = ()) -> None:
        from experiments.profiles import resolve

        self.prof = resolve(profile, sets)
        self.name, self.sw = self.prof.name, self.prof.sweeps
        self.table: dict[tuple[str, str], Callable[[Step], float]] = {
            ("experiments.standalone", "train"): self.train,
            ("experiments.standalone", "defend"): self.defend,
            ("experiments.clean", ""): lambda s: self._train_from_scratch(s.opt("dataset")),
            ("experiments.sequela", "mia"): self.mia,
            ("experiments.sequela", "reinject"): self.reinject,
            ("experiments.transfer", "run"): self.transfer,
            ("experiments.ablations", ""): self.ablation,
            ("experiments.encoder", "pretrain"): self.simclr,
            ("experiments.encoder", "badencoder"): self.badencoder,
            ("experiments.encoder", "downstream"): self.downstream,
            ("experiments.table1", ""): lambda s: 0.0,  # a handful of images
            ("experiments.summary", ""): lambda s: 0.0,  # reads results files
            ("experiments.lr_schedule", ""): lambda s: 0.0,
        }

    def __call__(self, step: Step) -> float:
        key = (step.module, step.command)
        if key not in self.table:
            raise ValueError(f"plan: no cost model for {step.module} {step.command}; add one to experiments/plan.py")
        return float(self.table[key](step))

    def _test(self, t: int) -> int:
        """Test images of one evaluation: the whole split or the profile's `eval_images` subset."""
        return t if self.prof.eval_images is None else min(t, self.prof.eval_images)

    def _train_from_scratch(self, dataset: str, extra_epochs: int = 0) -> float:
        n, t, _ = sizes(dataset)
        cfg = self.prof.train_config(dataset)
        return (cfg.epochs + extra_epochs) * _epoch(n, cfg) + _evals(cfg.epochs, cfg.eval_every, self._test(t))

    def train(self, s: Step) -> float:
        """The attack's training, plus what the attack trains of its own (generator, DeepFool model)."""
        dataset, attack = s.opt("dataset"), s.opt("attack")
        p, (n, _, k) = self.prof.attack_params.get(attack, {}), sizes(dataset)
        base, cfg = self._train_from_scratch(dataset), self.prof.train_config(dataset)
        if attack == "inputaware":  # mask generator stage, then a generator step beside every classifier step
            return base + (p.get("mask_epochs", 25) + cfg.epochs) * _epoch(n, cfg)
        if attack == "lf":  # a clean model, then DeepFool passes (one fb pass per image per iteration)
            return base + p.get("clean_epochs", 10) * _epoch(n, cfg) + p.get("max_passes", 50) * \
                p.get("n_images", 100) * p.get("df_max_iter", 200)
        return base

    def defend(self, s: Step) -> float:
        dataset, defense = s.opt("dataset"), s.opt("defense")
        n, t, k = sizes(dataset)
        base = self.prof.finetune_config(dataset)  # the defence's ctx.train
        if defense in ("ft", "sft"):
            e = self.prof.finetune_epochs
            return e * _epoch(n, base) + _evals(e, 1, self._test(t))
        train, evals = self._baseline(defense, n, k, base)
        return train + evals * _evals(0, 1, self._test(t))

    def _baseline(self, defense: str, n: int, k: int, base) -> tuple[float, int]:
        """(training work, evaluator calls) of a BackdoorBench-style defence at the profile's budgets: one call
        before it starts and one per epoch of every stage plus that stage's epoch 0 (defenses.common.Stages)."""
        if defense not in self.prof.defenses:
            raise ValueError(f"plan: no cost model for defence {defense!r}; add one to experiments/plan.py")
        cfg = self.prof.defenses[defense]
        ep = lambda budget, images: budget.epochs * _epoch(images, budget.config(base))  # noqa: E731
        if defense == "abl":
            stages = (cfg.tuning, cfg.finetune, cfg.unlearn)
            return ep(cfg.tuning, n) + ep(cfg.finetune, n) + n * FWD + ep(cfg.unlearn, cfg.isolation_ratio * n), \
                1 + sum(b.epochs + 1 for b in stages)
        if defense in ("ac", "spectral"):  # features of every image, then a fresh model on the kept ones
            return n * FWD + ep(cfg.retrain, n), 2 + cfg.retrain.epochs
        clean = cfg.clean_ratio * n
        if defense == "fp":  # channel means on the clean set; the pruning rule reads CA through the evaluator,
            channels = 8 * self.prof.width  # once unpruned and once per pruned channel (upper bound: all)
            return clean * FWD + ep(cfg.finetune, clean), 1 + channels + 1 + cfg.finetune.epochs + 1
        if defense == "nad":  # teacher fine-tune (no evaluation), then student epochs with a teacher forward each
            student = replace(cfg.teacher, epochs=cfg.epochs, batch_size=cfg.batch_size)
            return ep(cfg.teacher, clean) + ep(student, clean) * (1 + FWD), 2 + cfg.epochs
        # NC: a trigger search per class (upper bound: no early stop) at its own batch, then unlearning
        search = replace(cfg.unlearn, epochs=cfg.epochs, batch_size=cfg.batch_size)
        return k * ep(search, clean) + ep(cfg.unlearn, clean), 2 + cfg.unlearn.epochs

    def mia(self, s: Step) -> float:
        """Posteriors of the split's members and non-members (half the test split per side, as many training
        images), once; the attack MLP trains on those features, not on images. Then the model's CA/ASR."""
        _, t, _ = sizes(s.opt("dataset"))
        return 4 * (t // 2) * FWD + _evals(0, 1, self._test(t))

    def reinject(self, s: Step) -> float:
        n, t, _ = sizes(s.opt("dataset"))
        e, cfg = self.prof.reinject_epochs, self.prof.train_config(s.opt("dataset"))
        return e * _epoch(n, cfg) + _evals(e, 1, self._test(t))

    def transfer(self, s: Step) -> float:
        """Fine-tuning on the downstream task; each evaluation is CA plus one triggered copy per trigger."""
        n, t, _ = sizes(s.opt("downstream"))
        e, cfg = self.sw.transfer_epochs, self.prof.finetune_config(s.opt("downstream"))
        triggers = len(s.opt("triggers").split()) if s.opt("attack") == "clean" else 1
        return e * _epoch(n, cfg) + (e + 1) * (1 + triggers) * self._test(t) * FWD

    def ablation(self, s: Step) -> float:
        from experiments.sweeps import parse_point, point_epochs

        n, t, _ = sizes(s.opt("dataset"))
        cfg, total = self.prof.finetune_config(s.opt("dataset")), 0.0
        for name in s.opt("points").split():
            p = parse_point(name)
            e = point_epochs(p, self.prof, self.sw)
            total += e * _epoch(p.fraction * n, cfg) + _evals(e, 1, self._test(t))
        return total

    def _enc(self):
        return self.prof.encoder

    def simclr(self, s: Step) -> float:
        from experiments.encoder import PRETRAIN_DATA

        pre = s.opt("pretrain")
        n, cfg = sizes(PRETRAIN_DATA.get(pre, pre))[0], self.prof.encoder_config("simclr")
        return cfg.epochs * _epoch(n, cfg) * 2  # two augmented views per image

    def badencoder(self, s: Step) -> float:
        e, cfg = self._enc(), self.prof.encoder_config("badencoder")
        # shadow + triggered shadow + reference through the trained encoder, clean one frozen
        return cfg.epochs * _epoch(e.shadow_size, cfg) * (3 + 3 * FWD)

    def downstream(self, s: Step) -> float:
        n, t, _ = sizes(s.opt("downstream"))
        cfg = self.prof.encoder_config("downstream")
        per_image = 1.0 if s.opt("mode") == "whole" else FWD  # classifier-only: the encoder only forwards
        return cfg.epochs * _epoch(n, cfg) * per_image + _evals(cfg.epochs, cfg.eval_every, self._test(t))


# ---------------------------------------------------------------- make -n
def make_lines(profile: str, figures: list[str], python: Optional[str] = None) -> list[str]:
    """`make -n -B -j1` of `figures`: the whole chain as if nothing were built, in make's serial order.
    `python` replaces the venv's interpreter in Make's own calls (a machine with no venv: experiments.gpu_check)."""
    interp = [f"PY={python}", f"PYTHON={python}"] if python else []
    cmd = ["make", "-n", "-B", "-j1", "--no-print-directory", f"PROFILE={profile}", f"FIGS={' '.join(figures)}",
           "LAUNCHER=local", "GPUS=", *interp, "figure-files"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"plan: {' '.join(cmd[:7])} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout.splitlines()


def split_by_figure(lines: list[str], figures: list[str]) -> dict[str, list[Step]]:
    """Each figure's new steps. Serial make runs a goal's whole prerequisite tree before the goal's own
    plotting line (`--out .../<figure>.png`), so the steps printed since the previous figure are its new ones."""
    goal = lambda f: paths.path("summary", ".") if f == "summary" else paths.path("figure", ".", name=f)  # noqa: E731
    files = {goal(f).name: f for f in figures}
    out: dict[str, list[Step]] = {f: [] for f in figures}
    seen: set[Step] = set()
    pending: list[Step] = []
    for line in lines:
        s = parse_step(line)
        if s is not None and s not in seen:
            seen.add(s)
            pending.append(s)
        m = re.search(r"--out\s+(\S+)", line)
        if m and Path(m.group(1)).name in files:
            out[files[Path(m.group(1)).name]] += pending
            pending = []
    if pending:
        raise SystemExit(f"plan: {len(pending)} steps of make -n belong to no figure (first: {pending[0].label})")
    return out


# ---------------------------------------------------------------- report
def bench_img_per_s(path: Path, precision: str) -> float:
    """The 'ours' img/s of a saved `make bench` output in `precision` ("fp32", "bf16"); a CPU bench has only fp32."""
    text = path.read_text()
    rows = dict(re.findall(r"^ours (fp32|bf16)\b.*?\)\s+([0-9.]+)\s", text, re.M))
    if precision in rows or "fp32" in rows:
        return float(rows.get(precision, rows.get("fp32")))
    raise SystemExit(f"plan: no 'ours {precision} ... img/s' line in {path}; save the output of `make bench` there")


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def priced(per_figure: dict[str, list[Step]], cost: Callable[[Step], float]) -> dict[str, tuple[int, float]]:
    """Each figure's (new steps, work in image-passes); device-seconds are work / img/s."""
    return {fig: (len(steps), sum(cost(s) for s in steps)) for fig, steps in per_figure.items()}


def report(profile: str, per_figure: dict[str, list[Step]], cost: Callable[[Step], float],
           img_per_s: Optional[float], show_steps: bool) -> list[str]:
    """Lines of the plan: each figure's new steps (a step shared by figures counts in the first one)."""
    hours = (lambda w: f"  {w / img_per_s / 3600:9.2f} device-h") if img_per_s else (lambda w: "")
    out = [f"plan PROFILE={profile}: work in image-passes (fwd+bwd; a forward counts 1/3)"
           + (f", at {img_per_s:g} img/s" if img_per_s else "")]
    total, count = 0.0, 0
    for fig, (n, work) in priced(per_figure, cost).items():
        out.append(f"{fig:<10} {n:4d} new steps  work {_fmt(work):>9}" + hours(work))
        if show_steps:
            out += [f"    {_fmt(cost(s)):>9}  {s.label}" for s in per_figure[fig]]
        total, count = total + work, count + n
    out.append(f"{'total':<10} {count:4d} steps      work {_fmt(total):>9}" + hours(total))
    if not img_per_s:
        out.append("give IMG_PER_S= (training img/s of `make bench` on your device) or BENCH=<saved make bench output>")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--figures", required=True, help="space-separated figure names (make: ALL_FIGURES)")
    ap.add_argument("--img-per-s", type=float, help="training images/s of one device")
    ap.add_argument("--bench", type=Path, help="a saved `make bench` output (its 'ours' img/s)")
    ap.add_argument("--steps", action="store_true", help="list every step with its work")
    a = ap.parse_args(argv)
    if a.img_per_s is not None and a.img_per_s <= 0:
        raise SystemExit(f"plan: IMG_PER_S must be > 0, got {a.img_per_s:g}")
    try:
        cost = Costs(a.profile)  # fails on an unknown profile before make runs
        rate = a.img_per_s or (bench_img_per_s(a.bench, cost.prof.precision) if a.bench else None)
        figs = a.figures.split()
        per_figure = split_by_figure(make_lines(a.profile, figs), figs)
        print("\n".join(report(a.profile, per_figure, cost, rate, a.steps)))
    except ValueError as e:  # unknown profile, or a step kind without a cost model
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
