"""Peak memory of the baseline features: dense stays x codes (before) against per-sample CSR, shard by shard (after).

    python benchmarks/bench_baseline_memory.py [--stays 2000 20000] [--codes 3400] [--events-per-stay 400]
                                               [--shard-stays 5000] [--modes after before] [--before-code DIR]

Writes a synthetic ingested cohort per size (`write_ingested` layout: events shards of `--shard-stays`
stays; a Zipf-like mix of `--codes` codes, `--events-per-stay` events per stay with times from 12 h before
admission to 60 h after it, so some fall outside the 48 h window; 10 % of values missing; descriptors Age,
Gender, ICUType) and a random split table, then builds fold 0's baseline features in a child process per
mode and prints the child's peak RSS (ru_maxrss from wait4) and wall time:

- `after`: this checkout's `fold_features`: the events shards read one at a time, per-sample summaries as
  CSR (seqsetvae.data.summaries.per_sample_summaries), split into train / val / test CSR matrices.
- `before`: `fold_features` of the checkout at `--before-code` (a folder holding an older `seqsetvae`
  package, e.g. `git archive <main commit> seqsetvae workflow/schemas | tar -x -C DIR`): `read_ingested`
  joins every shard, then dense `per_variable_summaries` and its frames. Without `--before-code`, this
  checkout's dense `per_variable_summaries` over the joined shards (the core of the old features).

Features only: no model is fitted (the fits densify the training rows of the kept columns; see
docs/baselines.md). Prints figures; asserts nothing. The cohorts go to a temporary folder, deleted after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


def write_cohort(out: Path, n_stays: int, n_codes: int, events_per_stay: int, shard_stays: int, seed: int = 0) -> int:
    """Write a synthetic ingested cohort and its split table into `out`; returns the number of events."""
    import pyarrow as pa

    from seqsetvae.data.canonical import EVENTS_SCHEMA, LABELS_SCHEMA, IngestReport, IngestResult, write_ingested
    from seqsetvae.io import write_parquet

    rng = np.random.default_rng(seed)
    adm = np.datetime64("2000-01-01T00:00", "us")
    p = 1.0 / np.arange(1, n_codes + 1) ** 1.1
    p /= p.sum()
    code_names = np.array([f"C{k:05d}" for k in range(n_codes)], dtype=object)
    ids = np.arange(1, n_stays + 1, dtype=np.int64)
    subjects = pa.table({
        "subject_id": pa.array(ids),
        "admission_time": pa.array(np.full(n_stays, adm), pa.timestamp("us")),
        "group": pa.array(["synthetic"] * n_stays),
        "Age": pa.array(rng.uniform(18, 90, n_stays).astype(np.float32)),
        "Gender": pa.array(rng.integers(0, 2, n_stays).astype(np.float32)),
        "ICUType": pa.array(rng.integers(1, 5, n_stays).astype(np.float32)),
    })
    died = rng.random(n_stays) < 0.14
    labels = pa.Table.from_arrays([pa.array(ids), pa.array(np.full(n_stays, adm + np.timedelta64(48, "h"))),
                                   pa.array(died)], schema=LABELS_SCHEMA)

    def batches():
        for lo in range(0, n_stays, shard_stays):
            sid = np.repeat(ids[lo:lo + shard_stays], events_per_stay)
            n = sid.size
            minutes = rng.integers(-12 * 60, 60 * 60, n)
            order = np.lexsort((minutes, sid))
            value = rng.normal(size=n).astype(np.float32)
            value[rng.random(n) < 0.1] = np.nan
            events = pa.Table.from_arrays([
                pa.array(sid[order]),
                pa.array(adm + minutes[order].astype("timedelta64[m]").astype("timedelta64[us]"), pa.timestamp("us")),
                pa.array(code_names[rng.choice(n_codes, n, p=p)], pa.string()),
                pa.array(value[order], pa.float32(), from_pandas=True),
            ], schema=EVENTS_SCHEMA)
            sel = slice(lo, lo + shard_stays)
            yield IngestResult(events=events, subjects=subjects.slice(lo, shard_stays),
                               labels=labels.slice(lo, shard_stays),
                               report=IngestReport(source="bench", subjects=min(shard_stays, n_stays - lo),
                                                   positives=int(died[sel].sum())))

    write_ingested(out / "ingested", batches())
    split = np.where(rng.random(n_stays) < 0.8, "train", np.where(rng.random(n_stays) < 0.5, "val", "test"))
    write_parquet(out / "splits.parquet", pa.table({"subject_id": pa.array(ids), "fold": pa.array(np.zeros(n_stays, np.int64)),
                                                    "split": pa.array(split)}))
    return n_stays * events_per_stay


CHILD = r"""
import json, sys, time
mode, ingested, splits = sys.argv[1], sys.argv[2], sys.argv[3]
t0 = time.perf_counter()
from seqsetvae.data.splits import read_splits
splits = read_splits(splits)
if mode == "after":
    from seqsetvae.data.canonical import read_subjects_labels
    from seqsetvae.data.summaries import samples_from_labels
    from seqsetvae.baselines import fold_features
    from seqsetvae.stages.baseline import iter_event_shards
    subjects, labels = read_subjects_labels(ingested)
    f = fold_features(iter_event_shards(ingested), subjects, samples_from_labels(subjects, labels), splits, 0,
                      48.0, ["ICUType"])
    shape = [sum(m.shape[0] for m in f.X.values()), len(f.columns)]
    stored = sum(m.nnz for m in f.X.values())
elif mode == "before":
    from seqsetvae.data.canonical import read_ingested
    from seqsetvae.models import baselines
    events, subjects, labels = read_ingested(ingested)
    if hasattr(baselines, "select_rows"):  # this checkout: the dense function over the joined shards
        from seqsetvae.data.summaries import per_variable_summaries
        df = per_variable_summaries(events, subjects, 48.0)
        shape, stored = list(df.shape), df.size
    else:  # an older checkout's fold_features: dense frames
        f = baselines.fold_features(events, subjects, labels, splits, 0, 48.0, ["ICUType"])
        shape = [sum(x.shape[0] for x in f.X.values()), f.X["train"].shape[1]]
        stored = shape[0] * shape[1]
print(json.dumps({"shape": shape, "stored": int(stored), "wall_s": time.perf_counter() - t0}))
"""


def measure(mode: str, work: Path, code: Path) -> dict:
    """Peak RSS of a child running `mode`: ru_maxrss of the child (KiB on Linux), via os.wait4."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    pid = os.fork()
    if pid == 0:  # child: exec the measurement
        os.chdir(code)
        out = os.open(str(work / f"{mode}.json"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.execve(sys.executable, [sys.executable, "-c", CHILD, mode, str(work / "ingested"),
                                   str(work / "splits.parquet")], env)
    t0 = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{mode} child exited with {os.waitstatus_to_exitcode(status)}")
    result = json.loads((work / f"{mode}.json").read_text().strip().splitlines()[-1])
    return {**result, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB, "process_wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stays", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--codes", type=int, default=3400)
    ap.add_argument("--events-per-stay", type=int, default=400)
    ap.add_argument("--shard-stays", type=int, default=5000)
    ap.add_argument("--modes", nargs="+", choices=["after", "before"], default=["after", "before"])
    ap.add_argument("--before-code", type=Path, default=None,
                    help="folder holding an older seqsetvae package for the `before` mode (default: this checkout)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    print(f"{'stays':>7} {'codes':>6} {'events':>11} {'mode':>7} {'rows x columns':>16} {'stored':>12} "
          f"{'peak RSS GiB':>12} {'wall s':>7}")
    for n in args.stays:
        with tempfile.TemporaryDirectory(prefix="bench_baseline_memory_") as tmp:
            work = Path(tmp)
            n_events = write_cohort(work, n, args.codes, args.events_per_stay, args.shard_stays)
            for mode in args.modes:
                code = (args.before_code if mode == "before" and args.before_code else ROOT).resolve()
                r = measure(mode, work, code)
                print(f"{n:>7} {args.codes:>6} {n_events:>11,} {mode:>7} {r['shape'][0]:>7} x {r['shape'][1]:<6} "
                      f"{r['stored']:>12,} {r['peak_rss_gib']:>12.2f} {r['process_wall_s']:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
