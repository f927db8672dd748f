"""mckd's version (from the installed package's metadata; pyproject.toml is its one source) and the git commit of
the code, for results.json."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def mckd_version() -> str | None:
    """pyproject.toml's version, as installed; None when mckd is run from a source tree that was never installed."""
    try:
        return version("mckd")
    except PackageNotFoundError:
        return None


def git_commit(package_dir: Path = PACKAGE_DIR) -> str | None:
    """`git rev-parse HEAD` of the checkout this code is in; None without git, outside a checkout (an installed
    wheel), or when the checkout holding `package_dir` is not mckd's own (a wheel in a virtual environment inside
    some other repository)."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() / package_dir.name != package_dir.resolve():
        return None
    return git("rev-parse", "HEAD")
