"""mckd-train from a regular (non-editable) wheel install, started outside the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_and_runs_from_any_directory(tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True,
                   cwd=tmp_path)
    wheel = next(dist.glob("mckd-*.whl"))
    # a throwaway environment: the wheel alone (no deps), on top of the current site-packages
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled", "CI": "true"}
    where = subprocess.run([sys.executable, "-c", "import mckd; print(mckd.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the source tree
    assert (site / "mckd" / "conf" / "train.yaml").is_file() and (site / "mckd" / "splits" / "coco" / "val.txt").is_file()
    exp = work / "exp"
    proc = subprocess.run([str(site / "bin" / "mckd-train"), "debug=smoke", "stage=teacher", f"hydra.run.dir={exp}"],
                          env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert 0 <= json.loads((exp / "results.json").read_text())["teacher"]["val_miou"] <= 1
