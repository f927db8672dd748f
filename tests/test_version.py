"""One version source (pyproject.toml, read back through the installed package's metadata) and the git commit,
both written into results.json."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import mckd
from mckd.pipeline.experiment import Experiment
from mckd.pipeline.results import collect_results
from mckd.version import PACKAGE_DIR, git_commit, mckd_version

ROOT = Path(__file__).resolve().parents[1]


def pyproject_version() -> str:
    return re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def test_the_version_is_pyprojects() -> None:
    assert mckd.__version__ == mckd_version() == version("mckd") == pyproject_version()


def test_no_module_writes_the_version_itself() -> None:
    literal = re.compile(r"""__version__\s*=\s*["']|["']""" + re.escape(pyproject_version()) + r"""["']""")
    assert not [p for p in PACKAGE_DIR.rglob("*.py") if literal.search(p.read_text())]


def checkout_head() -> str | None:
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_the_commit_is_the_checkouts() -> None:
    head = checkout_head()
    if head is None:
        pytest.skip("mckd is not in a git checkout here")
    assert re.fullmatch(r"[0-9a-f]{40}", head) and git_commit() == head


def test_no_commit_outside_mckds_own_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "venv" / "site-packages" / "mckd"
    package.mkdir(parents=True)
    assert git_commit(package) is None  # not in a checkout
    if shutil.which("git"):  # in some other repository, e.g. a virtual environment inside a project
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        assert git_commit(package) is None
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # no git at all
    assert git_commit() is None


def test_results_name_the_version_and_the_commit(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"dataset": {"name": "synthetic"}, "num_stages": 2, "num_partitions": 2})
    results = collect_results(cfg, Experiment(tmp_path / "exp", num_classes=3))
    assert results["mckd_version"] == pyproject_version()
    assert results["git_commit"] == checkout_head()
