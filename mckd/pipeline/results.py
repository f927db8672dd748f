"""results.json, results.md and the per-stage plot, gathered from the experiment's step records."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mckd.atomic import atomic_write, write_json
from mckd.layout import FINAL, PICTURES, RESULTS, RESULTS_TABLE, TEACHER, student_names
from mckd.pipeline.experiment import Experiment
from mckd.records import ModelRecord
from mckd.report import markdown_table, score
from mckd.version import git_commit, mckd_version

MODEL_KEYS = ("val_miou", "test_miou", "last_val_miou", "last_test_miou", "per_class_iou", "wall_time_s", "checkpoint")


def _model_entry(record: ModelRecord | None) -> dict | None:
    """A model's figures in results.json: its record's MODEL_KEYS."""
    if record is None:
        return None
    return {k: getattr(record, k) for k in MODEL_KEYS}


def _pseudo(exp: Experiment, stage: int) -> tuple[float | None, float | None]:
    record = exp.label_record(stage)
    return (None, None) if record is None else (record.pseudo_label_miou, record.wall_time_s)


def collect_results(cfg: DictConfig, exp: Experiment) -> dict:
    """Every finished step's figures; null where a step has not run or there is no ground truth."""
    teacher = _model_entry(exp.model_record(TEACHER))
    if teacher is not None:
        teacher["pseudo_label_miou"], teacher["label_wall_time_s"] = _pseudo(exp, 0)
    stages = []
    for k in range(1, cfg.num_stages):
        students = []
        for name in student_names(k, cfg.num_partitions):
            entry = _model_entry(exp.model_record(name))
            if entry is not None:
                entry.pop("per_class_iou")
                students.append({"name": name, **entry})
        if students:
            miou, seconds = _pseudo(exp, k)
            stages.append({"stage": k, "students": students, "pseudo_label_miou": miou, "label_wall_time_s": seconds})
    final = _model_entry(exp.model_record(FINAL))
    return {"experiment": exp.dir.name, "dataset": cfg.dataset.name, "num_stages": cfg.num_stages,
            "num_partitions": cfg.num_partitions, TEACHER: teacher, "stages": stages, FINAL: final,
            "mckd_version": mckd_version(), "git_commit": git_commit()}


def _seconds(*values: float | None) -> str:
    known = [v for v in values if v is not None]
    return "-" if not known else f"{sum(known):.0f}"


def summary_rows(results: dict) -> list[tuple[str, ...]]:
    """(step, val mIoU, last-epoch val mIoU, test mIoU, pseudo-label mIoU, seconds) per model, in pipeline order:
    val mIoU is best.ckpt's, the epoch val picked; the last epoch's is beside it, since val also did the picking."""
    rows = []
    if (t := results.get(TEACHER)) is not None:
        rows.append((TEACHER, *_scores(t), score(t["pseudo_label_miou"]),
                     _seconds(t["wall_time_s"], t["label_wall_time_s"])))
    for stage in results["stages"]:
        for s in stage["students"]:
            rows.append((s["name"], *_scores(s), "", _seconds(s["wall_time_s"])))
        rows.append((f"stage{stage['stage']} labels", "", "", "", score(stage["pseudo_label_miou"]),
                     _seconds(stage["label_wall_time_s"])))
    if (f := results.get(FINAL)) is not None:
        rows.append((FINAL, *_scores(f), "", _seconds(f["wall_time_s"])))
    return rows


def _scores(model: dict) -> tuple[str, str, str]:
    return score(model["val_miou"]), score(model["last_val_miou"]), score(model["test_miou"])


def verdicts(results: dict) -> list[str]:
    """One line per stage: did the pseudo-labels and the models improve on the previous stage?"""
    lines = []
    teacher = results.get(TEACHER) or {}
    prev_labels, prev_val = teacher.get("pseudo_label_miou"), teacher.get("val_miou")
    prev_name = TEACHER
    for stage in results["stages"]:
        labels = stage["pseudo_label_miou"]
        vals = [s["val_miou"] for s in stage["students"]]
        val = sum(vals) / len(vals)
        if labels is not None and prev_labels is not None:
            lines.append(f"stage {stage['stage']} pseudo-labels vs {prev_name}'s: {prev_labels:.4f} -> {labels:.4f} "
                         f"({'improved' if labels > prev_labels else 'did not improve'}, {labels - prev_labels:+.4f})")
        if prev_val is not None:
            lines.append(f"stage {stage['stage']} students' mean val mIoU vs {prev_name}: {prev_val:.4f} -> {val:.4f} "
                         f"({val - prev_val:+.4f})")
        prev_labels, prev_val, prev_name = labels, val, f"stage {stage['stage']}"
    final = results.get(FINAL)
    if final is not None and prev_val is not None:
        lines.append(f"final student val mIoU vs {prev_name}: {prev_val:.4f} -> {final['val_miou']:.4f} "
                     f"({final['val_miou'] - prev_val:+.4f})")
    if final is not None and teacher.get("val_miou") is not None and results["stages"]:  # else the line above
        lines.append(f"final student vs teacher val mIoU: {teacher['val_miou']:.4f} -> {final['val_miou']:.4f} "
                     f"({final['val_miou'] - teacher['val_miou']:+.4f})")
    return lines


def results_markdown(results: dict) -> str:
    table = markdown_table(("step", "val mIoU", "last epoch", "test mIoU", "pseudo-label mIoU", "seconds"),
                           summary_rows(results), right=(1, 2, 3, 4, 5))
    lines = [f"# {results['experiment']} ({results['dataset']}, K={results['num_stages']}, "
             f"N={results['num_partitions']})", "", *table, ""]
    lines += [f"- {v}" for v in verdicts(results)]
    return "\n".join(lines) + "\n"


def plot_stages(results: dict, path: Path) -> None:
    """val mIoU and pseudo-label mIoU across the pipeline's stages, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, val, labels = [], [], []
    if (t := results.get(TEACHER)) is not None:
        names.append(TEACHER)
        val.append(t["val_miou"])
        labels.append(t["pseudo_label_miou"])
    for stage in results["stages"]:
        names.append(f"stage {stage['stage']}")
        vals = [s["val_miou"] for s in stage["students"]]
        val.append(sum(vals) / len(vals))
        labels.append(stage["pseudo_label_miou"])
    if (f := results.get(FINAL)) is not None:
        names.append(FINAL)
        val.append(f["val_miou"])
        labels.append(None)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(names))
    ax.plot(x, val, "o-", label="val mIoU (model)")
    if any(v is not None for v in labels):
        ax.plot(x, [float("nan") if v is None else v for v in labels], "s--", label="pseudo-label mIoU (unlabeled)")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("mIoU")
    ax.set_title(f"{results['experiment']}: MCKD stages")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def write_results(cfg: DictConfig, exp: Experiment) -> dict:
    """Write results.json, results.md and stages.png at the experiment root; returns the results."""
    results = collect_results(cfg, exp)
    write_json(exp.dir / RESULTS, results)
    markdown = results_markdown(results)
    atomic_write(exp.dir / RESULTS_TABLE, lambda f: f.write(markdown.encode()))
    if results[TEACHER] is not None:
        plot_stages(results, exp.dir / PICTURES["stages"])
    print(markdown)
    return results
