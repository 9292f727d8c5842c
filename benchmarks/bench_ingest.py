"""Benchmark: PhysioNet 2012 ingest of all requested stays (default: the 12,000 of sets a, b, c).

Each run is a fresh subprocess (cold interpreter, warm OS file cache after the first), so the figures are
what the ingest stage costs: wall and CPU time of the whole process, time inside `ingest_physionet2012`,
and peak resident memory (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss). Prints figures, asserts nothing.

    python benchmarks/bench_ingest.py [--params params.yaml] [--dir PATH] [--repeat 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import dataclasses, json, sys, tempfile, time
from seqsetvae.config import PROJECT_ROOT, load_params
from seqsetvae.data.physionet2012 import ingest_physionet2012
params_file, data_dir, write = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
p = load_params(params_file).data.physionet2012
if data_dir:
    p = dataclasses.replace(p, dir=data_dir)
t0 = time.perf_counter()
result = ingest_physionet2012(p, PROJECT_ROOT)
t1 = time.perf_counter()
if write:
    from seqsetvae.data.canonical import write_ingested
    with tempfile.TemporaryDirectory() as tmp:
        write_ingested(tmp + "/ingested", result)
t2 = time.perf_counter()
r = result.report
print(json.dumps({"ingest_s": t1 - t0, "write_s": t2 - t1, "subjects": r.subjects, "rows_read": r.rows_read,
                  "events": result.events.num_rows}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"), help="params file (data.physionet2012 is used)")
    ap.add_argument("--dir", default="", help="override data.physionet2012.dir")
    ap.add_argument("--repeat", type=int, default=3, help="runs, each in a fresh process")
    ap.add_argument("--write", action="store_true", help="also write (and MEDS-validate) the parquet outputs")
    args = ap.parse_args()

    print(f"bench_ingest: {args.repeat} run(s), params {args.params}{', dir ' + args.dir if args.dir else ''}")
    cpu_before = 0.0
    for i in range(args.repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, args.params, args.dir, "1" if args.write else "0"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"run {i + 1} failed (exit {proc.returncode}):\n{proc.stderr}")
        fig = json.loads(proc.stdout.strip().splitlines()[-1])
        # ru_maxrss is in KiB on Linux and the max over all children so far: after run k, the peak of 1..k.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_mib = usage.ru_maxrss / 1024
        # CPU time (user + sys) of this run: less sensitive than wall time to other load on the machine.
        cpu, cpu_before = usage.ru_utime + usage.ru_stime - cpu_before, usage.ru_utime + usage.ru_stime
        write = f", write {fig['write_s']:.2f} s" if args.write else ""
        print(
            f"run {i + 1}: process wall {wall:.2f} s (cpu {cpu:.2f} s), ingest {fig['ingest_s']:.2f} s{write}, "
            f"peak RSS so far {peak_mib:.0f} MiB; {fig['subjects']} subjects, {fig['rows_read']} rows read, "
            f"{fig['events']} events"
        )


if __name__ == "__main__":
    main()
