"""The CamVid quality table: does MCKD help on real data? (issue 5; writes docs/benchmarks.md's table)

Rows: supervised (student architecture, labeled only), teacher (labeled only), vanilla KD (one student on the
teacher's labels), MCKD K=2, MCKD K=3, and a ceiling: K=2's final student trained on the unlabeled frames' ground
truth in place of its stage-1 labels (what a perfect labeler would give it). The KD rows of a seed share that
seed's teacher (teacher_checkpoint), so they differ only in what happens after it; K=3 and the ceiling start from
a copy of K=2's first pair stage (the same computation). Jobs run as soon as what they need has finished,
`--parallel` at a time; the members of a pair stage are separate processes. Re-running with the same --out
resumes: finished steps are skipped.

    OMP_NUM_THREADS=1 python scripts/camvid_quality.py --seeds 0 --trainer cpu --parallel 2 dataset.num_workers=1
    python scripts/camvid_quality.py --seeds 0 1 2 --trainer gpu --parallel 6     # minutes on one GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
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
CEILING = "camvid_mckd_ground_truth"  # the ceiling row's directory: K=2 with ground truth as its stage-1 labels
ROWS = [("supervised", "camvid_supervised"), ("teacher", "camvid_teacher"), ("vanilla KD", "camvid_vanilla_kd"),
        ("MCKD K=2", "camvid_mckd"), ("MCKD K=3", "camvid_mckd_k3"),
        ("K=2 on ground-truth labels (ceiling)", CEILING)]
# the job that finishes each row (see seed_jobs); a row needs it and everything it depends on
ROW_JOBS = {"camvid_supervised": "supervised", "camvid_teacher": "teacher", "camvid_vanilla_kd": "vanilla",
            "camvid_mckd": "k2-final", "camvid_mckd_k3": "k3-final", CEILING: "ceiling"}
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


def run_job(out: Path, preset: str, seed: int, extra: list[str], tag: str = "", exp: Path | None = None) -> Path:
    """One mckd-train process in an experiment directory (by default the row's; re-running it resumes)."""
    exp = exp or out / f"seed{seed}" / preset
    cmd = [sys.executable, "-m", "mckd.cli", f"experiment={preset}", f"seed={seed}", f"hydra.run.dir={exp}", *extra]
    log = exp.parent / f"{exp.name}{tag}.log"
    done, written = log.with_suffix(".done"), shlex.join(cmd[1:])  # the command, once it finished: a re-run skips it
    if done.is_file() and done.read_text() == written:                # without starting a process
        return exp
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "CI": "true"})
    if proc.returncode != 0:
        raise SystemExit(f"{exp.name}{tag} seed {seed} failed ({proc.returncode}): see {log}")
    done.write_text(written)
    print(f"  {exp.name}{tag} seed {seed}: {time.time() - start:.0f} s", flush=True)
    return exp


def copy_steps(src: Path, dst: Path, steps: list[str], label_stages: list[int]) -> None:
    """Copy finished steps (records, checkpoints) and pseudo-label stages of one experiment into another: runs that
    share a computation (same seed and settings up to that point) do it once."""
    models = [step for step in steps if not layout.is_label_step(step)]
    checkpoints = [layout.checkpoint_dir(src, m) for m in models]  # none for a teacher given as teacher_checkpoint
    paths = [*(layout.record_path(src, step) for step in steps),
             *(layout.label_stage_dir(layout.pseudo_label_dir(src), stage) for stage in label_stages),
             *(path for path in checkpoints if path.is_dir())]
    for path in paths:
        target = dst / path.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, target)


def copy_teacher_labels(teacher_row: Path, dst: Path) -> None:
    """Give a KD run its seed's stage-0 labels: the teacher row labeled the unlabeled split already with the same
    checkpoint and settings, so labeling again would repeat the computation (a minute per seed on an H100)."""
    if layout.record_path(teacher_row, layout.label_step(0)).is_file():
        copy_steps(teacher_row, dst, [layout.label_step(0)], [0])


def copy_first_stage(src: Path, dst: Path) -> None:
    """Give K=3 the K=2 run's teacher step and first pair stage, which are the same computation (same seed)."""
    members = layout.student_names(1, 2)  # the presets' num_partitions
    copy_steps(src, dst, [layout.TEACHER, layout.label_step(0), layout.label_step(1), *members], [0, 1])


def write_ground_truth_labels(exp: Path, config: Path, stage: int) -> None:
    """Replace a finished label stage's labels by the frames' own masks (confidence 1), and its record's mIoU by
    theirs: the labels a perfect labeler would give the next students. `config`: the run's saved Hydra config."""
    import numpy as np  # here, not at the top: the scheduler and the table need neither torch nor the readers
    from omegaconf import OmegaConf

    from mckd.atomic import read_json, write_json
    from mckd.data.datamodule import SegmentationData
    from mckd.modules.segmentation import mean_iou
    from mckd.pipeline.labeling import pseudo_label_iou
    from mckd.pipeline.store import PseudoLabelStore
    from mckd.records import LabelRecord

    cwd = os.getcwd()
    os.chdir(ROOT)  # the config's relative paths (the dataset root) are relative to where mckd-train ran
    try:
        data = SegmentationData.build(OmegaConf.load(config).dataset)
        store = PseudoLabelStore(layout.pseudo_label_dir(exp), data.num_classes)
        ids = {i for part in store.reader(stage).manifest["partitions"] for i in part["ids"]}
        samples = [s for s in data.splits.unlabeled if s.id in ids]
        if len(samples) != len(ids) or any(s.mask is None for s in samples):
            raise SystemExit(f"{exp}: the ceiling needs the ground truth of all {len(ids)} frames of stage {stage}")
        for sample in samples:
            truth = data.source.read_mask(sample)
            store.write_sample(stage, sample.id, truth, np.ones(truth.shape, np.float32))
        per_class = pseudo_label_iou(data.source, samples, store.reader(stage))
    finally:
        os.chdir(cwd)
    record = layout.record_path(exp, layout.label_step(stage))
    scored = dataclasses.replace(LabelRecord.from_json(read_json(record)), pseudo_label_miou=float(mean_iou(per_class)),
                                 pseudo_label_per_class_iou=dict(zip(data.class_names, per_class.tolist())))
    write_json(record, scored.to_json())


def label_with_ground_truth(k2: Path, dst: Path) -> None:
    """The ceiling row's start: K=2's teacher and first pair stage, its stage-1 labels replaced by ground truth."""
    if (dst / layout.RESULTS).is_file():
        return
    copy_first_stage(k2, dst)
    write_ground_truth_labels(dst, k2 / ".hydra" / "config.yaml", 1)


# the ablation: each knob of the recipe off, one pair stage on the recipe's teacher (a probe). What a probe takes
# from the recipe's own run: its students (the probe only relabels), its stage-0 labels (the probe trains new
# students on them), or its teacher alone (the probe labels stage 0 anew: a knob of the labeler)
REUSE_STUDENTS, REUSE_LABELS0, REUSE_TEACHER = "students", "stage-0 labels", "teacher"
PROBES = {  # name -> (overrides, what it reuses), in the order they run (after the table's jobs): most telling first
    "no strong noise": (["student_aug.color_jitter=0", "student_aug.grayscale_prob=0", "student_aug.blur_prob=0",
                         "student_aug.cutout_prob=0", "student_aug.cutmix_prob=0"], REUSE_LABELS0),
    "students as long as the teacher": (["train.student_ratio=1"], REUSE_LABELS0),
    "no label blending (previous_weight=0)": (["pseudo.previous_weight=0"], REUSE_STUDENTS),
    # the earlier recipe's blending and partitions
    "heavier label blending (previous_weight=0.5)": (["pseudo.previous_weight=0.5"], REUSE_STUDENTS),
    "partitions by video (partition_group)": (["partition_group='^([^_]+)_'"], REUSE_LABELS0),
    # an addition, not in the recipe
    "plus EMA weights (train.ema_decay=0.995)": (["train.ema_decay=0.995"], REUSE_LABELS0),
    "no CutMix": (["student_aug.cutmix_prob=0"], REUSE_LABELS0),
    # UniMatch's conf_thresh (0.95), here on the stored labels
    "plus a confidence threshold (confidence_threshold=0.95)": (["pseudo.confidence_threshold=0.95"], REUSE_LABELS0),
    # a lower one that keeps more of the rare classes (0.95 keeps 3% of the teacher's bicyclist pixels, 0.8 about 18%)
    "plus a lower confidence threshold (confidence_threshold=0.8)": (["pseudo.confidence_threshold=0.8"], REUSE_LABELS0),
    "labels at one scale, no flip": (["pseudo.scales=[1.0]", "pseudo.flip=false"], REUSE_TEACHER),
}


def probe_dir(out: Path, seed: int, name: str) -> Path:
    return out / f"seed{seed}" / ("probe_" + "".join(c if c.isalnum() else "_" for c in name).strip("_"))


def seed_jobs(out: Path, seed: int, extra: list[str], probes: bool = False) -> dict[str, tuple[list[str], Callable]]:
    """The jobs of one seed as {name: (dependencies, run)}; pair members train in parallel processes."""
    def job(preset: str, *args: str, tag: str = "", exp: Path | None = None) -> Callable[[], Path]:
        return lambda: run_job(out, preset, seed, [*extra, *args], tag, exp)

    teacher_row = out / f"seed{seed}" / "camvid_teacher"
    teacher = f"teacher_checkpoint={layout.best_checkpoint(teacher_row, layout.TEACHER)}"
    k2, k3 = out / f"seed{seed}" / "camvid_mckd", out / f"seed{seed}" / "camvid_mckd_k3"
    ceiling = out / f"seed{seed}" / CEILING
    vanilla = out / f"seed{seed}" / "camvid_vanilla_kd"

    def after_teacher_labels(dst: Path, run: Callable[[], Path]) -> Callable[[], Path]:
        return lambda: (copy_teacher_labels(teacher_row, dst), run())[1]

    members = layout.student_names(1, 2)  # the presets' num_partitions
    # the longest chain first (teacher -> K=2 pair -> K=3 pair -> K=3 final); jobs off it fill the gaps
    jobs: dict[str, tuple[list[str], Callable]] = {
        "teacher": ([], job("camvid_teacher")),
        "supervised": ([], job("camvid_supervised")),
        "k2-labels0": (["teacher"], after_teacher_labels(k2, job("camvid_mckd", teacher, "stage=teacher",
                                                                 tag="-labels0"))),
        "k2-a": (["k2-labels0"], job("camvid_mckd", teacher, "stage=pairs", "member=a", tag="-a")),
        "k2-b": (["k2-labels0"], job("camvid_mckd", teacher, "stage=pairs", "member=b", tag="-b")),
        "k2-labels1": (["k2-a", "k2-b"], job("camvid_mckd", teacher, "stage=pairs", tag="-labels1")),
        "k3-copy": (["k2-labels1"], lambda: copy_first_stage(k2, k3)),
        "k3-a": (["k3-copy"], job("camvid_mckd_k3", teacher, "stage=pairs", "pair_stage=2", "member=a", tag="-a")),
        "k3-b": (["k3-copy"], job("camvid_mckd_k3", teacher, "stage=pairs", "pair_stage=2", "member=b", tag="-b")),
        "k3-final": (["k3-a", "k3-b"], job("camvid_mckd_k3", teacher)),
        # after the copy, so that the K=3 members, listed first, take the free slots before it
        "k2-final": (["k3-copy"], job("camvid_mckd", teacher)),
        "vanilla": (["teacher"], after_teacher_labels(vanilla, job("camvid_vanilla_kd", teacher))),
        "ceiling-labels": (["k2-labels1"], lambda: label_with_ground_truth(k2, ceiling)),
        "ceiling": (["ceiling-labels"], job("camvid_mckd", teacher, exp=ceiling)),
    }
    for name, (overrides, reuses) in PROBES.items() if probes else ():
        d = probe_dir(out, seed, name)
        if reuses == REUSE_STUDENTS:  # the recipe's students, labeling with other settings
            jobs[f"{name}/copy"] = (["k2-a", "k2-b"], lambda d=d: copy_steps(
                k2, d, [layout.TEACHER, layout.label_step(0), *members], [0]))
            jobs[name] = ([f"{name}/copy"], job("camvid_mckd", teacher, "stage=pairs", *overrides, exp=d))
            continue
        stage0 = [0] if reuses == REUSE_LABELS0 else []
        start = job("camvid_mckd", teacher, "stage=teacher", *overrides, tag="-labels0", exp=d)
        jobs[f"{name}/labels0"] = (["k2-labels0"], lambda d=d, start=start, stage0=stage0: (
            copy_steps(k2, d, [layout.TEACHER, *map(layout.label_step, stage0)], stage0), start()))
        for m in ("a", "b"):
            jobs[f"{name}/{m}"] = ([f"{name}/labels0"], job("camvid_mckd", teacher, "stage=pairs", f"member={m}",
                                                            *overrides, tag=f"-{m}", exp=d))
        jobs[name] = ([f"{name}/a", f"{name}/b"], job("camvid_mckd", teacher, "stage=pairs", *overrides, exp=d))
    return {f"seed{seed}/{name}": ([f"seed{seed}/{d}" for d in deps], run) for name, (deps, run) in jobs.items()}


def wanted_jobs(seed: int, rows: list[str], probes: list[str]) -> list[str]:
    """The jobs that finish the chosen rows and ablation probes of one seed."""
    return [f"seed{seed}/{ROW_JOBS[row]}" for row in rows] + [f"seed{seed}/{name}" for name in probes]


def needed_by(jobs: dict[str, tuple[list[str], Callable[[], object]]], wanted: list[str]) -> dict:
    """The jobs in `wanted` and everything they depend on, in their original order."""
    keep, todo = set(), list(wanted)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(jobs[name][0])
    return {name: job for name, job in jobs.items() if name in keep}


def run_graph(jobs: dict[str, tuple[list[str], Callable[[], object]]], parallel: int) -> list[str]:
    """Run jobs as soon as their dependencies are done, at most `parallel` at once, in the order given. A job that
    fails is reported and skips what depends on it; the others go on. Returns the jobs that failed or were skipped."""
    done: set[str] = set()
    failed: set[str] = set()
    running: dict[Future, str] = {}
    with ThreadPoolExecutor(parallel) as pool:
        while len(done | failed) < len(jobs):
            started = set(running.values())
            for name, (deps, run) in jobs.items():
                if name in done | failed | started:
                    continue
                if any(d in failed for d in deps):
                    print(f"  {name}: skipped (needs a failed job)", flush=True)
                    failed.add(name)
                elif len(running) < parallel and all(d in done for d in deps):
                    running[pool.submit(run)] = name
                    started.add(name)
            if not running:
                if len(done | failed) < len(jobs):
                    raise ValueError(f"jobs whose dependencies never finish: {sorted(set(jobs) - done - failed)}")
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    future.result()
                    done.add(name)
                except (Exception, SystemExit) as error:  # run_job raises SystemExit naming the job's log
                    print(f"  {name}: FAILED: {error}", flush=True)
                    failed.add(name)
    return sorted(failed)


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
         ("vanilla KD - teacher", "camvid_vanilla_kd", ("camvid_teacher",)),
         ("ceiling (K=2 on ground truth) - MCKD K=2", CEILING, ("camvid_mckd",)),
         ("ceiling (K=2 on ground truth) - vanilla KD", CEILING, ("camvid_vanilla_kd",))]


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


def pair_stage_figures(exp: Path) -> dict | None:
    """Stage 0 and stage 1 label mIoU and the stage-1 students' mean val mIoU of a run; None until labeled."""
    paths = [layout.record_path(exp, step) for step in
             (layout.label_step(0), layout.label_step(1), *layout.student_names(1, 2))]
    if not all(path.is_file() for path in paths):
        return None
    labels0, labels1, *students = (json.loads(path.read_text()) for path in paths)
    return {"labels0": labels0["pseudo_label_miou"], "labels1": labels1["pseudo_label_miou"],
            "students": statistics.mean(r["val_miou"] for r in students)}


def ablation_table(out: Path, seeds: list[int]) -> str:
    """Each probe (one knob of the recipe off) against the recipe's own first pair stage, seed by seed."""
    recipe = {s: f for s in seeds if (f := pair_stage_figures(out / f"seed{s}" / "camvid_mckd"))}
    lines = ["| first pair stage | seeds | stage-0 labels (teacher) | students' val mIoU | stage-1 labels "
             "| stage-1 labels minus the recipe's (same seed) |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    rows = [("the recipe (`camvid_mckd`)", recipe)]
    rows += [(name, {s: f for s in recipe if (f := pair_stage_figures(probe_dir(out, s, name)))}) for name in PROBES]
    for name, figures in rows:
        if not figures:
            continue
        diffs = [f["labels1"] - recipe[s]["labels1"] for s, f in figures.items()]
        lines.append(f"| {name} | {', '.join(map(str, figures))} | "
                     + " | ".join(mean_spread([f[key] for f in figures.values()])
                                  for key in ("labels0", "students", "labels1"))
                     + f" | {'-' if figures is recipe else mean_spread(diffs)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


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
    parser.add_argument("--probe-seeds", type=int, nargs="*", default=[],
                        help="also run the ablation probes (PROBES) for these seeds, after the table's jobs")
    parser.add_argument("--probes", nargs="+", choices=list(PROBES), default=list(PROBES), metavar="NAME",
                        help="only these probes (PROBES' names, quoted), e.g. 'no CutMix'; default: all")
    parser.add_argument("overrides", nargs="*", help="extra mckd-train overrides for every job")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the ceiling's labeling changes directory while other jobs' threads write here
    extra = [f"trainer={args.trainer}", *args.overrides]
    start = time.time()
    if not args.table_only:
        graphs = []
        for seed in args.seeds:
            seed_graph = seed_jobs(args.out, seed, extra, probes=seed in args.probe_seeds)
            wanted = wanted_jobs(seed, args.rows, args.probes if seed in args.probe_seeds else [])
            graphs.append(list(needed_by(seed_graph, wanted).items()))
        # the same job of every seed before the next job: each seed's longest chain moves at the same pace
        order = sorted((i, k) for k, graph in enumerate(graphs) for i in range(len(graph)))
        failed = run_graph(dict(graphs[k][i] for i, k in order), args.parallel)
    exps = {(p, s): args.out / f"seed{s}" / p for _, p in ROWS for s in args.seeds}
    runs = {(p, s): row_figures(exps[(p, s)], p) for (p, s) in exps}
    figures = {p: {s: runs[(p, s)] for s in args.seeds if runs[(p, s)] is not None} for _, p in ROWS}
    text = table(figures)
    if paired := paired_table(figures):
        text += f"\n\nPaired differences:\n\n{paired}"
    classes = label_classes_table([exps[("camvid_mckd_k3", s)] for s in figures["camvid_mckd_k3"]])
    if classes:
        text += f"\n\nPer-class IoU of the MCKD K=3 row's pseudo-labels on the unlabeled split:\n\n{classes}\n"
    if ablation := ablation_table(args.out, args.seeds):
        text += f"\n\nAblation (one knob of the recipe off; the first pair stage on the recipe's teacher):\n\n{ablation}"
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
    if not args.table_only and failed:
        raise SystemExit(f"{len(failed)} jobs failed or were skipped: {', '.join(failed)}")


if __name__ == "__main__":
    main()
