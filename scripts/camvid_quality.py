"""The CamVid quality table: does MCKD help on real data? (issue 5; writes docs/benchmarks.md's table)

Rows: supervised (student architecture, labeled only), teacher (labeled only), vanilla KD (one student on the
teacher's labels), MCKD K=2 and MCKD K=3. The KD rows of a seed share that seed's teacher (teacher.checkpoint),
so they differ only in what happens after it. Jobs of one phase run in parallel processes.

    python scripts/camvid_quality.py --seeds 0 1 2 --trainer cpu --parallel 1     # ~1 h per seed on 2 cores
    python scripts/camvid_quality.py --seeds 0 1 2 --trainer gpu --parallel 6     # minutes on one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [("supervised", "camvid_supervised"), ("teacher", "camvid_teacher"), ("vanilla KD", "camvid_vanilla_kd"),
        ("MCKD K=2", "camvid_mckd"), ("MCKD K=3", "camvid_mckd_k3")]
BEGIN, END = "<!-- quality-table:begin -->", "<!-- quality-table:end -->"


def run_job(out: Path, preset: str, seed: int, extra: list[str]) -> Path:
    """One mckd-train run in its own experiment directory; returns the directory."""
    exp = out / f"seed{seed}" / preset
    cmd = [sys.executable, "-m", "mckd.cli", f"experiment={preset}", f"seed={seed}", f"hydra.run.dir={exp}", *extra]
    log = out / f"seed{seed}" / f"{preset}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "CI": "true"})
    if proc.returncode != 0:
        raise SystemExit(f"{preset} seed {seed} failed ({proc.returncode}): see {log}")
    print(f"  {preset} seed {seed}: {time.time() - start:.0f} s", flush=True)
    return exp


def row_figures(exp: Path, preset: str) -> dict:
    res = json.loads((exp / "results.json").read_text())
    if preset in ("camvid_supervised", "camvid_teacher"):
        t = res["teacher"]
        return {"val_miou": t["val_miou"], "labels": [], "seconds": t["wall_time_s"]}
    labels = [res["teacher"]["pseudo_label_miou"]] + [s["pseudo_label_miou"] for s in res["stages"]]
    seconds = sum(s["wall_time_s"] for st in res["stages"] for s in st["students"])
    seconds += res["final"]["wall_time_s"] + sum(st["label_wall_time_s"] or 0 for st in res["stages"])
    return {"val_miou": res["final"]["val_miou"], "labels": labels, "seconds": seconds}


def mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(figures: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = ["| row | val mIoU | pseudo-label mIoU by stage (unlabeled split) | seconds per seed (excl. teacher) |",
             "| --- | ---: | --- | ---: |"]
    for name, preset in ROWS:
        runs = figures[preset]
        stages = len(runs[0]["labels"])
        labels = " → ".join(mean_spread([r["labels"][k] for r in runs]) for k in range(stages)) or "-"
        secs = statistics.mean(r["seconds"] for r in runs)
        lines.append(f"| {name} | {mean_spread([r['val_miou'] for r in runs])} | {labels} | {secs:.0f} |")
    lines.append(f"\nSeeds: {', '.join(map(str, seeds))} (mean ± sample standard deviation where more than one).")
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
    parser.add_argument("overrides", nargs="*", help="extra mckd-train overrides for every job")
    args = parser.parse_args()
    extra = [f"trainer={args.trainer}", *args.overrides]
    start = time.time()
    with ThreadPoolExecutor(args.parallel) as pool:
        first = {(p, s): pool.submit(run_job, args.out, p, s, extra)
                 for s in args.seeds for p in ("camvid_teacher", "camvid_supervised")}
        exps = {k: f.result() for k, f in first.items()}
        later = {}
        for s in args.seeds:
            teacher = exps[("camvid_teacher", s)] / "checkpoints" / "teacher" / "best.ckpt"
            for p in ("camvid_vanilla_kd", "camvid_mckd", "camvid_mckd_k3"):
                later[(p, s)] = pool.submit(run_job, args.out, p, s, [*extra, f"teacher.checkpoint={teacher}"])
        exps.update({k: f.result() for k, f in later.items()})
    figures = {p: [row_figures(exps[(p, s)], p) for s in args.seeds] for _, p in ROWS}
    text = table(figures, args.seeds)
    text += f"\nCommand: `python scripts/camvid_quality.py --seeds {' '.join(map(str, args.seeds))} " \
            f"--trainer {args.trainer} --parallel {args.parallel}{''.join(' ' + o for o in args.overrides)}`; " \
            f"whole table {time.time() - start:.0f} s wall."
    (args.out / "table.md").write_text(text + "\n")
    write_docs(text, args.docs)
    print(text)
    means = {p: statistics.mean(r["val_miou"] for r in figures[p]) for _, p in ROWS}
    print("RESULT " + " ".join(f"{p}={v:.4f}" for p, v in means.items()))


if __name__ == "__main__":
    main()
