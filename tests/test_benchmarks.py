"""Every benchmark in scripts/ runs in --quick mode and prints its RESULT line with all its keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "train": ["throughput_ratio", "mckd_img_s", "plain_img_s", "rounds", "steps", "batch_size"],
    "label": ["throughput_ratio", "mckd_img_s", "plain_img_s", "throughput_ratio_total", "bytes_per_label_hard",
              "bytes_ratio_hard", "bytes_per_label_soft3", "bytes_ratio_soft3", "images", "rounds"],
    "loader": ["loader_headroom", "loader_img_s", "teacher_loader_img_s", "student_loader_img_s", "step_img_s",
               "batch_size", "num_workers"],
    "memory": ["rss_ratio", "pss_ratio", "self_maxrss_ratio", "peak_rss_mb_n", "peak_rss_mb_4n", "n"],
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "memory" else n for n in sorted(KEYS)])
def test_benchmark_quick(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"bench_{name}.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    fields = dict(item.split("=", 1) for item in lines[0].split()[1:])
    assert list(fields) == KEYS[name]
    for key in KEYS[name]:
        float(fields[key])  # every figure is a number
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and list(data["result"]) == KEYS[name]
