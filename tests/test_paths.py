"""The artifact layout has one owner, experiments/paths.py: no other step, reader or Make file spells a file
name or a directory of it, and Make's paths are the module's."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fresh_make_env
from experiments import paths

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "experiments" / "paths.py"
# An artifact's file name, or a layout directory inside a path, in a string of code.
NAMES = re.compile(r"(^|/)(backdoor|poison|model|simclr|badencoder|table1)\.safetensors$|figure1_lr\.json|summary\.txt"
                   r"|overrides\.json|REPRODUCTION\.md|index\.html|\.report\.json|^(ft|sft|backdoor)\.json$"
                   r"|(^|/)(mia|reinject|ablation|encoder|transfer|clean)/|^\.(json|png|safetensors)$")
# `path / "<literal>"` joins that are no artifact's: a write probe, launch's lock files (named by launch alone,
# in the --locks directory Make passes), the data directory's cache (backdoor.data's layout, not the artifacts').
JOINS_ALLOWED = {("experiments/common.py", ".write-test."), ("experiments/launch.py", "gpu"),
                 ("experiments/launch.py", "out-"), ("experiments/defend.py", "cache")}
# Make: a file composed under an artifact root, or an artifact's file name, outside comments.
MAKE_BAD = re.compile(r"\$\((A|CK|RS|FG|TR|ENC_CK|ENC_RS)\)/(?!%=%)|\.(json|png)\b|summary\.txt|"
                      r"\b(backdoor|model|simclr|badencoder|table1)\.safetensors\b|/(mia|reinject|ablation)/")


def _text(node: ast.AST) -> str | None:
    """A string constant's text, or an f-string's literal parts joined (the fields as {})."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def python_spellings(path: Path, rel: str | None = None) -> list[str]:
    """Where a Python file spells the layout: file-name strings (docstrings aside) and `/ "literal"` joins."""
    tree, rel = ast.parse(path.read_text()), rel or path.relative_to(ROOT).as_posix()
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            for side in (node.left, node.right):
                t = _text(side)
                if t is not None and (rel, t.split("{")[0]) not in JOINS_ALLOWED:
                    found.append(f"{rel}:{node.lineno}: joins {t!r}")
        t = _text(node)
        if t is not None and id(node) not in docs and NAMES.search(t):
            found.append(f"{rel}:{getattr(node, 'lineno', '?')}: {t!r}")
    return found


def make_spellings(path: Path, rel: str | None = None) -> list[str]:
    rel = rel or path.relative_to(ROOT).as_posix()
    return [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
            if not line.lstrip().startswith("#") and MAKE_BAD.search(line)]


def test_no_step_reader_or_make_file_spells_the_layout():
    sources = sorted(p for d in ("experiments", "figures") for p in (ROOT / d).rglob("*.py") if p != OWNER)
    found = [s for p in sources for s in python_spellings(p)]
    found += [s for p in [ROOT / "Makefile", *sorted((ROOT / "make").glob("*.mk"))] for s in make_spellings(p)]
    assert not found, "the layout is experiments/paths.py's; use it:\n" + "\n".join(found)


def test_the_scan_sees_the_old_way_of_spelling_a_path(tmp_path):
    # The scan is not vacuous: the code this replaced would fail it (docstrings and comments may name files).
    old, mk = tmp_path / "old.py", tmp_path / "old.mk"
    old.write_text('def f(rs, d, a, m):\n    """rs/d/a/mia/m.json"""\n    return rs / d / a / "mia" / f"{m}.json"\n'
                   'X = run_dir("checkpoints", "p", "d", "a") / "backdoor.safetensors"\n')
    assert {int(s.split(":")[1]) for s in python_spellings(old, "old.py")} == {3, 4}
    mk.write_text("# $(RS)/%/ft.json in a comment\n$(RS)/%/mia/backdoor.json: $(CK)/%/backdoor.safetensors\n"
                  "$(FG)/figure4.png: $(call defended,$(SRS))\n")
    assert [s.split(":")[1] for s in make_spellings(mk, "old.mk")] == ["2", "3"]


def test_paths_is_stdlib_only():
    # Make runs it with the system python on every start, before the venv exists.
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.paths", "make"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    heavy = {"torch", "numpy", "matplotlib", "backdoor", "experiments.common", "experiments.profiles"}
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not heavy & imported
    assert out.stdout.splitlines()[0] == "p_checkpoints=$(A)/checkpoints/$(1)"


def make_eval(expr: str, *args: str) -> str:
    """The text of a Make expression at PROFILE=smoke with artifacts root /art (no list is read)."""
    out = subprocess.run(["make", "--no-print-directory", "-s", "PROFILE=smoke", "A=/art", *args,
                          f"--eval=_show_: ; @echo '{expr}'", "_show_"], cwd=ROOT, capture_output=True, text=True,
                         env=fresh_make_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def art(monkeypatch) -> Path:
    monkeypatch.setattr(paths, "ARTIFACTS", Path("/art"))
    return Path("/art")


def test_make_paths_are_the_modules(art):
    ck, rs, fg = paths.checkpoints("smoke"), paths.results("smoke"), paths.figures("smoke")
    run = {"dataset": "digits", "attack": "badnets"}
    want = [ck, rs, fg, paths.path("backdoor", ck, **run), paths.path("result", rs, defense="sft", **run),
            paths.path("mia", rs, model="ft", **run), paths.path("reinject", rs, model="clean", ratio="0.01", **run),
            paths.path("ablation", rs, point="ft_lr0.1", **run), paths.path("clean_model", ck, dataset="digits"),
            paths.path("transfer", paths.path("transfer_dir", rs), downstream="d5", attack="clean", defense="ft"),
            paths.path("downstream", paths.path("encoder_dir", rs), pretrain="digits", downstream="d5", mode="whole"),
            paths.path("table1", rs), paths.path("figure1_lr", rs), paths.path("summary", rs),
            paths.path("figure", fg, name="figure4"), paths.report("smoke"), paths.path("defend", stem="m")]
    expr = ("$(CK) $(RS) $(FG) $(call p_backdoor,$(CK),digits/badnets) $(call p_result,$(RS),digits/badnets,sft) "
            "$(call p_mia,$(RS),digits/badnets,ft) $(call p_reinject,$(RS),digits/badnets,clean,0.01) "
            "$(call p_ablation,$(RS),digits/badnets,ft_lr0.1) $(call p_clean_model,$(CK),digits) "
            "$(call p_transfer,$(TR),d5,clean,ft) $(call p_downstream,$(ENC_RS),digits,d5,whole) "
            "$(call p_table1,$(RS)) $(call p_figure1_lr,$(RS)) $(call p_summary,$(RS)) "
            "$(call fig_file,figure4) $(call p_report,$(PDIR)) $(call p_defend,m)")
    assert make_eval(expr, "DATASETS=digits", "ATTACKS=badnets").split() == [str(p) for p in want]
    assert paths.run("digits", "badnets") == make_eval("$(call p_run,digits,badnets)", "DATASETS=", "ATTACKS=")


def test_make_has_a_rule_for_the_files_the_steps_write(art, tmp_path):
    # `make -n` of the step's own output path (as the step computes it) runs that step: Make's rule and the
    # step's path are one path.
    rs, ck = paths.results("smoke"), paths.checkpoints("smoke")
    run = {"dataset": "digits", "attack": "badnets"}
    cases = {paths.path("backdoor", ck, **run): "experiments.standalone train",
             paths.path("result", rs, defense="ft", **run): "experiments.standalone defend",
             paths.path("mia", rs, model="sft", **run): "experiments.sequela mia",
             paths.path("reinject", rs, model="ft", ratio="0.1", **run): "experiments.sequela reinject",
             paths.path("clean_model", ck, dataset="digits"): "experiments.clean"}
    lists = ["DATASETS=digits", "ATTACKS=badnets", "SEQ_RATIOS=0.1", "_SW=points=ft_lr0.1", "ENC_PRE=", "ENC_DOWN="]
    for target, step in cases.items():
        out = subprocess.run(["make", "-n", "-B", "--no-print-directory", "PROFILE=smoke", "A=/art", "LAUNCHER=local",
                              "GPUS=", *lists, str(target)], cwd=ROOT, capture_output=True, text=True,
                             env=fresh_make_env(), timeout=60)
        assert out.returncode == 0, out.stderr
        assert f"--target {target} " in out.stdout and step in out.stdout, (target, out.stdout)
