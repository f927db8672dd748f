"""mckd.layout is the one owner of step names and of where artifacts live: nothing else spells them."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import cli_env

from mckd import layout

ROOT = Path(__file__).resolve().parents[1]


def test_steps_in_running_order():
    assert layout.all_steps(3, 2) == ["teacher", "label-stage0", "stage1-a", "stage1-b", "label-stage1",
                                      "stage2-a", "stage2-b", "label-stage2", "final"]
    assert layout.model_steps(2, 3) == ["teacher", "stage1-a", "stage1-b", "stage1-c", "final"]
    assert [layout.member_of(s) for s in ("stage2-b", "teacher", "label-stage1", "final")] == ["b", None, None, None]
    assert layout.is_label_step(layout.label_step(4)) and not layout.is_label_step("stage4-a")


def spells_layout(text: str) -> list[str]:
    """The names layout owns that a string literal spells: file names anywhere, folder names as path parts."""
    files = [layout.LABEL_PREFIX, layout.IDENTITY, layout.RESULTS, layout.RESULTS_TABLE, *layout.PICTURES.values(),
             str(layout.CONFIG), layout.CLI_LOG, layout.WANDB_IDS, layout.LAST]
    folders = [layout.RECORDS, layout.CHECKPOINTS, layout.PSEUDO_LABELS, layout.LOCKS, layout.EVAL]
    return [name for name in files if name in text] + [
        name for name in folders if f"{name}/" in text or f"/{name}" in text]


def test_no_other_module_spells_the_layout():
    found = []
    for path in [*sorted((ROOT / "mckd").rglob("*.py")), *sorted((ROOT / "scripts").glob("*.py"))]:
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name!r}" for name in spells_layout(node.value)]
    assert not found, "spelled outside mckd/layout.py:\n" + "\n".join(found)


RENAMED = """
import sys
from mckd import layout
layout.TEACHER, layout.FINAL, layout.LABEL_PREFIX = "mentor", "graduate", "relabel-"
layout.RECORDS, layout.CHECKPOINTS, layout.PSEUDO_LABELS = "records", "weights", "labels"
layout.RESULTS, layout.RESULTS_TABLE = "summary.json", "summary.md"
layout.PICTURES = {k: f"fig-{v}" for k, v in layout.PICTURES.items()}
from mckd.cli import train
sys.argv = ["mckd-train", *sys.argv[1:]]
train()
"""


def test_renaming_in_layout_renames_everywhere(tmp_path):
    """A smoke run with every name changed in mckd.layout alone writes, resumes and summarises under the new names."""
    exp = tmp_path / "exp"
    command = [sys.executable, "-c", textwrap.dedent(RENAMED), "debug=smoke", "num_stages=2", f"hydra.run.dir={exp}"]
    for _ in range(2):  # the second run finds every step done under its new name and only re-summarises
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=cli_env(tmp_path))
        assert proc.returncode == 0, proc.stderr[-4000:]
    assert "done already" in proc.stdout + proc.stderr
    records = sorted(p.stem for p in (exp / "records").glob("*.json"))
    assert records == sorted(["mentor", "relabel-0", "stage1-a", "stage1-b", "relabel-1", "graduate"])
    assert sorted(p.name for p in (exp / "weights").iterdir()) == ["graduate", "mentor", "stage1-a", "stage1-b"]
    assert (exp / "labels" / "stage1" / "manifest.json").is_file()
    results = json.loads((exp / "summary.json").read_text())
    assert results["mentor"]["val_miou"] is not None and results["graduate"]["val_miou"] is not None
    assert results["mentor"]["pseudo_label_miou"] is not None
    assert (exp / "fig-stages.png").is_file() and (exp / "fig-qualitative.png").is_file()
    for old in ("steps", "checkpoints", "pseudo_labels", "results.json", "stages.png"):
        assert not (exp / old).exists(), old
