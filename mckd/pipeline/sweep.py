"""A Hydra callback that gathers every job's results.json of a multirun into one summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mckd.atomic import atomic_write, write_json
from mckd.layout import FINAL, OVERRIDES, RESULTS, TEACHER
from mckd.report import markdown_table, score


def summarize_sweep(sweep_dir: Path) -> list[dict]:
    """One row per job directory that holds a results.json; writes summary.json and summary.md."""
    rows = []
    for path in sorted(sweep_dir.glob(f"*/{RESULTS}")):
        res = json.loads(path.read_text())
        overrides_file = path.parent / OVERRIDES
        overrides = overrides_file.read_text().replace("\n- ", " ").lstrip("- ").strip() if overrides_file.is_file() else ""
        teacher, final = res.get(TEACHER) or {}, res.get(FINAL) or {}
        stages = res.get("stages") or []
        rows.append({"job": path.parent.name, "overrides": overrides, "teacher_val_miou": teacher.get("val_miou"),
                     "final_val_miou": final.get("val_miou"),
                     "pseudo_label_miou": [teacher.get("pseudo_label_miou")] + [s["pseudo_label_miou"] for s in stages]})
    write_json(sweep_dir / "summary.json", rows)

    lines = markdown_table(
        ("job", "overrides", "teacher val mIoU", "final val mIoU", "pseudo-label mIoU by stage"),
        [(r["job"], r["overrides"], score(r["teacher_val_miou"]), score(r["final_val_miou"]),
          " -> ".join(score(v) for v in r["pseudo_label_miou"])) for r in rows], right=(2, 3))
    text = "\n".join(lines) + "\n"
    atomic_write(sweep_dir / "summary.md", lambda f: f.write(text.encode()))
    print(text)
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summarize_sweep(Path(config.hydra.sweep.dir))
