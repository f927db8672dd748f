"""The CamVid quality table: does MCKD help on real data? (issue 5; writes docs/benchmarks.md's table)

Rows: supervised (student architecture, labeled only), teacher (labeled only), vanilla KD (one student on the
teacher's labels), MCKD K=2 and MCKD K=3. The KD rows of a seed share that seed's teacher (teacher.checkpoint),
so they differ only in what happens after it; K=3 starts from a copy of K=2's first pair stage (the same
computation). Jobs run as soon as what they need has finished, `--parallel` at a time; the members of a pair
stage are separate processes. Re-running with the same --out resumes: finished steps are skipped.

    OMP_NUM_THREADS=1 python scripts/camvid_quality.py --seeds 0 --trainer cpu --parallel 2 dataset.num_workers=1
    python scripts/camvid_quality.py --seeds 0 1 2 --trainer gpu --parallel 6     # minutes on one GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from mckd import layout

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("supervised", "camvid_supervised"), ("teacher", "camvid_teacher"), ("vanilla KD", "camvid_vanilla_kd"),
        ("MCKD K=2", "camvid_mckd"), ("MCKD K=3", "camvid_mckd_k3")]
# the job that finishes each row (see seed_jobs); a row needs it and everything it depends on
ROW_JOBS = {"camvid_supervised": "supervised", "camvid_teacher": "teacher", "camvid_vanilla_kd": "vanilla",
            "camvid_mckd": "k2-final", "camvid_mckd_k3": "k3-final"}
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


def run_job(out: Path, preset: str, seed: int, extra: list[str], tag: str = "") -> Path:
    """One mckd-train process in the row's experiment directory (re-running it resumes); returns the directory."""
    exp = out / f"seed{seed}" / preset
    cmd = [sys.executable, "-m", "mckd.cli", f"experiment={preset}", f"seed={seed}", f"hydra.run.dir={exp}", *extra]
    log = out / f"seed{seed}" / f"{preset}{tag}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "CI": "true"})
    if proc.returncode != 0:
        raise SystemExit(f"{preset}{tag} seed {seed} failed ({proc.returncode}): see {log}")
    print(f"  {preset}{tag} seed {seed}: {time.time() - start:.0f} s", flush=True)
    return exp


def copy_first_stage(src: Path, dst: Path) -> None:
    """Give K=3 the K=2 run's teacher step and first pair stage, which are the same computation (same seed)."""
    members = layout.student_names(1, 2)  # the presets' num_partitions
    records = [layout.TEACHER, layout.label_step(0), layout.label_step(1), *members]
    paths = [*(layout.record_path(src, step) for step in records),
             layout.pseudo_label_dir(src),  # K=2 has stages 0 and 1 only
             *(layout.checkpoint_dir(src, m) for m in members)]
    for path in paths:
        target = dst / path.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)


def seed_jobs(out: Path, seed: int, extra: list[str]) -> dict[str, tuple[list[str], Callable[[], object]]]:
    """The jobs of one seed as {name: (dependencies, run)}; pair members train in parallel processes."""
    def job(preset: str, *args: str, tag: str = "") -> Callable[[], Path]:
        return lambda: run_job(out, preset, seed, [*extra, *args], tag)

    teacher = f"teacher.checkpoint={layout.best_checkpoint(out / f'seed{seed}' / 'camvid_teacher', layout.TEACHER)}"
    k2, k3 = out / f"seed{seed}" / "camvid_mckd", out / f"seed{seed}" / "camvid_mckd_k3"
    # the longest chain first (teacher -> K=2 pair -> K=3 pair -> K=3 final); jobs off it fill the gaps
    jobs: dict[str, tuple[list[str], Callable[[], object]]] = {
        "teacher": ([], job("camvid_teacher")),
        "supervised": ([], job("camvid_supervised")),
        "k2-labels0": (["teacher"], job("camvid_mckd", teacher, "stage=teacher", tag="-labels0")),
        "k2-a": (["k2-labels0"], job("camvid_mckd", teacher, "stage=first", "member=a", tag="-a")),
        "k2-b": (["k2-labels0"], job("camvid_mckd", teacher, "stage=first", "member=b", tag="-b")),
        "k2-labels1": (["k2-a", "k2-b"], job("camvid_mckd", teacher, "stage=first", tag="-labels1")),
        "k3-copy": (["k2-labels1"], lambda: copy_first_stage(k2, k3)),
        "k3-a": (["k3-copy"], job("camvid_mckd_k3", teacher, "stage=first", "pair_stage=2", "member=a", tag="-a")),
        "k3-b": (["k3-copy"], job("camvid_mckd_k3", teacher, "stage=first", "pair_stage=2", "member=b", tag="-b")),
        "k3-final": (["k3-a", "k3-b"], job("camvid_mckd_k3", teacher)),
        # after the copy, so that the K=3 members, listed first, take the free slots before it
        "k2-final": (["k3-copy"], job("camvid_mckd", teacher)),
        "vanilla": (["teacher"], job("camvid_vanilla_kd", teacher)),
    }
    return {f"seed{seed}/{name}": ([f"seed{seed}/{d}" for d in deps], run) for name, (deps, run) in jobs.items()}


def needed_by(jobs: dict[str, tuple[list[str], Callable[[], object]]], wanted: list[str]) -> dict:
    """The jobs in `wanted` and everything they depend on, in their original order."""
    keep, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(jobs[name][0])
    return {name: job for name, job in jobs.items() if name in keep}


def run_graph(jobs: dict[str, tuple[list[str], Callable[[], object]]], parallel: int) -> None:
    """Run jobs as soon as their dependencies are done, at most `parallel` at once, in the order given."""
    done: set[str] = set()
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(parallel) as pool:
        while len(done) < len(jobs):
            started = set(running.values())
            for name, (deps, run) in jobs.items():
                if len(running) < parallel and name not in done | started and all(d in done for d in deps):
                    running[pool.submit(run)] = name
                    started.add(name)
            if not running:
                raise ValueError(f"jobs whose dependencies never finish: {sorted(set(jobs) - done)}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                future.result()
                done.add(running.pop(future))


def row_figures(exp: Path, preset: str) -> dict | None:
    """A row's figures for one seed; None until its run has its last model."""
    if not (exp / layout.RESULTS).is_file():
        return None
    res = json.loads((exp / layout.RESULTS).read_text())
    if preset in ("camvid_supervised", "camvid_teacher"):
        t = res[layout.TEACHER]
        return None if t is None else {"val_miou": t["val_miou"], "last_val_miou": t.get("last_val_miou"),
                                       "labels": [], "seconds": t["wall_time_s"]}
    if res[layout.FINAL] is None:
        return None
    labels = [res[layout.TEACHER]["pseudo_label_miou"]] + [s["pseudo_label_miou"] for s in res["stages"]]
    seconds = sum(s["wall_time_s"] for st in res["stages"] for s in st["students"])
    final = res[layout.FINAL]
    seconds += final["wall_time_s"] + sum(st["label_wall_time_s"] or 0 for st in res["stages"])
    return {"val_miou": final["val_miou"], "last_val_miou": final.get("last_val_miou"),
            "labels": labels, "seconds": seconds}


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(figures: dict[str, dict[int, dict]]) -> str:
    lines = ["| row | seeds | val mIoU (best epoch) | val mIoU (last epoch) | pseudo-label mIoU by stage (unlabeled split) "
             "| training seconds per seed (KD rows: after the teacher) |",
             "| --- | --- | ---: | ---: | --- | ---: |"]
    for name, preset in ROWS:
        runs = list(figures[preset].values())
        if not runs:
            continue
        stages = len(runs[0]["labels"])
        labels = " → ".join(mean_spread([r["labels"][k] for r in runs]) for k in range(stages)) or "-"
        secs = statistics.mean(r["seconds"] for r in runs)
        seeds = ", ".join(map(str, figures[preset]))
        last = [r["last_val_miou"] for r in runs if r.get("last_val_miou") is not None]
        lines.append(f"| {name} | {seeds} | {mean_spread([r['val_miou'] for r in runs])} | "
                     f"{mean_spread(last) if last else '-'} | {labels} | {secs:.0f} |")
    lines.append("\nMean ± sample standard deviation over the seeds where a row has more than one.")
    return "\n".join(lines)


# paired comparisons: (name, preset, baselines); with several baselines, the best of them in that seed
PAIRS = [("MCKD K=3 - best of supervised, teacher, vanilla KD", "camvid_mckd_k3",
          ("camvid_supervised", "camvid_teacher", "camvid_vanilla_kd")),
         ("MCKD K=3 - MCKD K=2", "camvid_mckd_k3", ("camvid_mckd",)),
         ("MCKD K=2 - vanilla KD", "camvid_mckd", ("camvid_vanilla_kd",)),
         ("vanilla KD - teacher", "camvid_vanilla_kd", ("camvid_teacher",))]


def paired_table(figures: dict[str, dict[int, dict]]) -> str:
    """Per-seed differences of val mIoU (same seed, so the same labeled split and teacher), mean ± sd."""
    lines = ["| comparison (val mIoU, same seed) | seeds | per seed | mean ± sd |", "| --- | --- | --- | ---: |"]
    for name, preset, baselines in PAIRS:
        seeds = [s for s in figures[preset] if all(s in figures[b] for b in baselines)]
        if not seeds:
            continue
        diffs = [figures[preset][s]["val_miou"] - max(figures[b][s]["val_miou"] for b in baselines) for s in seeds]
        per_seed = ", ".join(f"{d:+.4f}" for d in diffs)
        lines.append(f"| {name} | {', '.join(map(str, seeds))} | {per_seed} | {mean_spread(diffs)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def label_classes_table(k3_dirs: list[Path]) -> str:
    """Per-class IoU of the K=3 row's pseudo-labels at each stage (mean over seeds): which classes are lost."""
    if not k3_dirs:
        return ""
    stages = json.loads((k3_dirs[0] / layout.RESULTS).read_text())["num_stages"]  # label stages 0..K-1
    records = [[json.loads(layout.record_path(d, layout.label_step(k)).read_text()) for k in range(stages)]
               for d in k3_dirs]
    per_stage = [[r[k].get("pseudo_label_per_class_iou") for r in records] for k in range(len(records[0]))]
    if not per_stage or any(c is None for stage in per_stage for c in stage):
        return ""
    names = list(per_stage[0][0])
    lines = ["| labels | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for k, stage in enumerate(per_stage):
        means = [statistics.mean(math.nan if c[n] is None else c[n] for c in stage) for n in names]  # null: NaN
        lines.append(f"| stage {k} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return "\n".join(lines)


def write_docs(text: str, docs: Path) -> None:
    old = docs.read_text() if docs.is_file() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END):] if BEGIN in old else f"{old}\n{block}\n"
    tmp = docs.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--trainer", default="cpu", help="mckd trainer config: cpu | gpu")
    parser.add_argument("--parallel", type=int, default=1, help="jobs run at once")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "camvid_quality")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    parser.add_argument("--rows", nargs="+", choices=list(ROW_JOBS), default=list(ROW_JOBS),
                        help="run only these rows (and what they need); the table shows every finished row")
    parser.add_argument("overrides", nargs="*", help="extra mckd-train overrides for every job")
    args = parser.parse_args()
    extra = [f"trainer={args.trainer}", *args.overrides]
    start = time.time()
    if not args.table_only:
        jobs = {}
        for seed in args.seeds:  # seed by seed, so that the first seeds' rows finish first
            seed_graph = seed_jobs(args.out, seed, extra)
            jobs.update(needed_by(seed_graph, [f"seed{seed}/{ROW_JOBS[row]}" for row in args.rows]))
        run_graph(jobs, args.parallel)
    exps = {(p, s): args.out / f"seed{s}" / p for _, p in ROWS for s in args.seeds}
    runs = {(p, s): row_figures(exps[(p, s)], p) for (p, s) in exps}
    figures = {p: {s: runs[(p, s)] for s in args.seeds if runs[(p, s)] is not None} for _, p in ROWS}
    text = table(figures)
    if paired := paired_table(figures):
        text += f"\n\nPaired differences:\n\n{paired}"
    classes = label_classes_table([exps[("camvid_mckd_k3", s)] for s in figures["camvid_mckd_k3"]])
    if classes:
        text += f"\n\nPer-class IoU of the MCKD K=3 row's pseudo-labels on the unlabeled split:\n\n{classes}\n"
    seeds = " ".join(map(str, args.seeds))
    if args.table_only:
        text += f"\nRebuilt from the finished runs in `{args.out}` by `python scripts/camvid_quality.py --seeds {seeds} " \
                f"--out {args.out} --table-only`."
    else:
        text += f"\nCommand: `python scripts/camvid_quality.py --seeds {seeds} --trainer {args.trainer} " \
                f"--parallel {args.parallel}{''.join(' ' + o for o in args.overrides)}`; " \
                f"whole table {time.time() - start:.0f} s wall."
    (args.out / "table.md").write_text(text + "\n")
    write_docs(text, args.docs)
    print(text)
    means = {p: statistics.mean(r["val_miou"] for r in figures[p].values()) for _, p in ROWS if figures[p]}
    print("RESULT " + " ".join(f"{p}={v:.4f}" for p, v in means.items()))


if __name__ == "__main__":
    main()
