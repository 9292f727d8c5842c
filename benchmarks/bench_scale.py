"""How the data layer scales: ingest -> split -> preprocess -> a few training steps on an N-times PhysioNet 2012.

    python benchmarks/bench_scale.py [--n 1 10 30] [--source physionet2012|meds] [--p12 DIR] [--work DIR]
                                     [--keep] [--code DIR]

For each N it builds an N-times cohort from the real files (N copies of every stay of sets a, b and c, copy
r with RecordID `r * 10**6 + id`, the file renamed to match and the Outcomes rows copied with the same ids),
then runs each stage as its own `python -m seqsetvae` process, as DVC / Snakemake run it, and prints wall
time and peak RSS per stage (the child's own ru_maxrss, from wait4). Training: `bench_train.py --processed`
for a few steps of the default model. Prints figures; asserts nothing. The cohort and the stage outputs go
to `--work` (default: a temporary folder under /tmp), deleted afterwards unless `--keep`; a 30x cohort
takes about 3 GB of raw files plus its outputs.

`--source meds` times the MEDS source's ingest instead: the N-times cohort is ingested (PhysioNet 2012
source, untimed) and exported as a MEDS dataset shard by shard (each ingested events shard, with its
subjects' static descriptors as null-time rows, becomes one MEDS data shard; plus labels.parquet), never
the whole cohort in memory; then `seqsetvae ingest` with data.source meds is timed. `--code DIR` runs the
stages from another checkout of the project (e.g. an older commit in a git worktree) for a before/after.

Preprocess runs as `seqsetvae preprocess` (every shard job in one process, one after the other), with
`data.shards` scaled with N (six shards of 2,000 stays per copy, as the recorded PhysioNet 2012 runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY_STRIDE = 10**6  # P12 RecordIDs are 6 digits (132539..163037): copy r adds r * 10**6


def build_cohort(p12: Path, n: int, out: Path) -> int:
    """Write an n-times copy of the P12 layout into `out`; returns the number of stays."""
    stays = 0
    for s in ("a", "b", "c"):
        src, dst = p12 / f"set-{s}", out / f"set-{s}"
        dst.mkdir(parents=True)
        outcome_lines = (p12 / f"Outcomes-{s}.txt").read_text().splitlines()
        header, rows = outcome_lines[0], [r for r in outcome_lines[1:] if r.strip()]
        new_rows = [header]
        names = sorted(os.listdir(src))
        for r in range(n):
            for name in names:
                old_id = name.removesuffix(".txt")
                new_id = str(r * COPY_STRIDE + int(old_id))
                body = (src / name).read_bytes()
                # The RecordID row is the file's second line: `00:00,RecordID,<id>`.
                body = body.replace(f"00:00,RecordID,{old_id}\n".encode(), f"00:00,RecordID,{new_id}\n".encode(), 1)
                (dst / f"{new_id}.txt").write_bytes(body)
            stays += len(names)
            for row in rows:
                rid, rest = row.split(",", 1)
                new_rows.append(f"{r * COPY_STRIDE + int(rid)},{rest}")
        (out / f"Outcomes-{s}.txt").write_text("\n".join(new_rows) + "\n")
    return stays


def _tree_rss(root: int) -> int:
    """Resident bytes of process `root` and all its descendants, from /proc (Linux); 0 once it is gone."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            parent[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])  # field 4: ppid
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def run_child(cmd: list[str], env: dict[str, str], cwd: Path = ROOT, tree: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS GiB, stdout+stderr tail) of one child process; raises on failure. Peak RSS is
    the child's own (its largest descendant's, if larger); with `tree`, tree["peak_gib"] is also set to the
    peak of the RSS summed over the child and its descendants (worker processes), sampled every 0.1 s."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sampler = None
    if tree is not None:
        tree["peak_gib"] = 0.0
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.1):
                tree["peak_gib"] = max(tree["peak_gib"], _tree_rss(proc.pid) / 2**30)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    out_bytes = proc.stdout.read()  # type: ignore[union-attr]
    if sampler is not None:
        done.set()
        sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    text = out_bytes.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return wall, usage.ru_maxrss / 2**20, text


def export_meds(ingested: Path, out: Path) -> int:
    """Write an ingest output folder as a MEDS dataset, one ingested events shard at a time: shard k becomes
    data/k.parquet (its subjects' static descriptors as null-time rows first, then their events), labels
    are copied. Returns the number of data rows written."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from seqsetvae.data.canonical import EVENTS_SCHEMA, event_shards, read_subjects_labels
    from seqsetvae.data.meds_source import LABELS_FILE, _static_events

    subjects, labels = read_subjects_labels(ingested)
    subject_ids = subjects.column("subject_id")
    (out / "data").mkdir(parents=True)
    rows = 0
    for k, path in enumerate(event_shards(ingested)):
        events = pq.read_table(path)
        ids = pc.unique(events.column("subject_id"))
        static = _static_events(subjects.filter(pc.is_in(subject_ids, value_set=ids)))
        shard = pa.concat_tables([static, events.select(EVENTS_SCHEMA.names).cast(EVENTS_SCHEMA)]).sort_by(
            [("subject_id", "ascending"), ("time", "ascending", "at_start"), ("code", "ascending")]
        )
        pq.write_table(shard, out / "data" / f"{k}.parquet", compression="zstd")
        rows += shard.num_rows
    pq.write_table(labels, out / LABELS_FILE, compression="zstd")
    return rows


def bench_meds(n: int, p12: Path, work: Path, code: Path) -> dict[str, tuple[float, float]]:
    """Time `seqsetvae ingest` with data.source meds on the N-times cohort exported as MEDS."""
    import yaml

    raw, meds = work / f"raw_{n}x", work / f"meds_{n}x"
    t = time.perf_counter()
    stays = build_cohort(p12, n, raw)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["data"]["source"] = "physionet2012"
    base["data"]["shards"] = list(range(6 * n))  # 2,000 stays a shard
    base["data"]["physionet2012"].update({"dir": str(raw), "download": False})
    p12_params = work / f"params_p12_{n}x.yaml"
    p12_params.write_text(yaml.safe_dump(base, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    p12_ingested = work / f"ingested_p12_{n}x"
    run_child([sys.executable, "-m", "seqsetvae", "ingest", "--params", str(p12_params), "--out", str(p12_ingested)],
              {**env, "PYTHONPATH": str(ROOT)})  # fmt: skip
    shutil.rmtree(raw)
    rows = export_meds(p12_ingested, meds)
    shards = len(list((meds / "data").iterdir()))
    shutil.rmtree(p12_ingested)
    print(f"\n== {n}x: {stays:,} stays as MEDS, {rows:,} rows in {shards} data shards "
          f"(written in {time.perf_counter() - t:.0f} s, untimed)", flush=True)  # fmt: skip
    base["data"]["source"] = "meds"
    base["data"]["meds"] = {"dir": str(meds), "labels": str(meds / "labels.parquet"), "window_start_column": None}
    params = work / f"params_meds_{n}x.yaml"
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    out = work / f"ingested_meds_{n}x"
    wall, rss, _ = run_child([sys.executable, "-m", "seqsetvae", "ingest", "--params", str(params), "--out", str(out)],
                             env, cwd=code)  # fmt: skip
    print(f"  {'meds ingest':12s} {wall:8.1f} s  peak RSS {rss:6.2f} GiB", flush=True)
    shutil.rmtree(meds)
    shutil.rmtree(out)
    return {"meds ingest": (wall, rss)}


def bench(n: int, p12: Path, work: Path, train_batches: int, folds: list[int]) -> dict[str, tuple[float, float]]:
    raw = work / f"raw_{n}x"
    t = time.perf_counter()
    stays = build_cohort(p12, n, raw)
    print(f"\n== {n}x: {stays:,} stays (cohort written in {time.perf_counter() - t:.0f} s, untimed)", flush=True)
    params = work / f"params_{n}x.yaml"
    import yaml

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["data"]["source"] = "physionet2012"
    base["data"]["physionet2012"].update({"dir": str(raw), "download": False})
    base["data"]["shards"] = list(range(6 * n))  # 2,000 stays a shard
    base["split"]["folds"] = folds
    params.write_text(yaml.safe_dump(base, sort_keys=False))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    py = [sys.executable, "-m", "seqsetvae"]
    ingested, splits, processed = work / f"ingested_{n}x", work / f"splits_{n}x.parquet", work / f"processed_{n}x"
    common = ["--params", str(params)]
    stages = {
        "ingest": [*py, "ingest", *common, "--out", str(ingested)],
        "split": [*py, "split", *common, "--ingested", str(ingested), "--out", str(splits)],
        "preprocess": [*py, "preprocess", *common, "--ingested", str(ingested), "--splits", str(splits),
                       "--out", str(processed)],
        "train steps": [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--params", str(params),
                        "--processed", str(processed), "--size", "default", "--batches", str(train_batches),
                        "--warmup", "2", "--json"],
    }  # fmt: skip
    figures = {}
    for name, cmd in stages.items():
        wall, rss, text = run_child(cmd, env)
        figures[name] = (wall, rss)
        extra = ""
        if name == "train steps":
            r = json.loads(text.strip().splitlines()[-1])
            extra = f"  ({r['batches_timed']} steps, {r['sets_per_s']:.0f} sets/s, {r['train_stays']:,} train stays)"
        print(f"  {name:12s} {wall:8.1f} s  peak RSS {rss:6.2f} GiB{extra}", flush=True)
    shutil.rmtree(raw)  # the raw copy is the bulk of the disk use
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 10, 30], help="cohort multiples (default 1 10 30)")
    ap.add_argument("--p12", type=Path, default=ROOT.parent / "shared" / "data" / "physionet2012")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--train-batches", type=int, default=5)
    ap.add_argument("--folds", type=int, nargs="+", default=[0])
    ap.add_argument("--source", choices=["physionet2012", "meds"], default="physionet2012",
                    help="physionet2012: every stage on the raw files; meds: the MEDS ingest only")  # fmt: skip
    ap.add_argument("--code", type=Path, default=ROOT, help="the checkout whose stages run (default: this one)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_scale."))
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    try:
        for n in args.n:
            if args.source == "meds":
                results[n] = bench_meds(n, args.p12, work, args.code.resolve())
            else:
                results[n] = bench(n, args.p12, work, args.train_batches, args.folds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\nN    stage         wall s   vs N x 1x   peak RSS GiB")
    for n, fig in results.items():
        for name, (wall, rss) in fig.items():
            # a fixed number of training steps does not scale with N: no ratio for it
            scales = 1 in results and n != 1 and name != "train steps"
            ratio = f"{wall / (n * results[1][name][0]):8.2f}" if scales else "       -"
            print(f"{n:<4d} {name:12s} {wall:8.1f}   {ratio}   {rss:8.2f}")


if __name__ == "__main__":
    main()
