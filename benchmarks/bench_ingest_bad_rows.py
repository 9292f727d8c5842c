"""Benchmark: PhysioNet 2012 ingest of one record file of N rows, all valid or all with a non-numeric value.

The bad-row path must cost about what the good one does (issue 15: a per-row Python loop made it far slower;
figures: docs/benchmark.md, "Speed figures behind code choices", and docs/data_physionet2012.md). Builds the
two folders in a temporary directory, ingests each `--repeat` times in this process and prints the best wall
time. Prints figures, asserts nothing.

    python benchmarks/bench_ingest_bad_rows.py [--rows 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"


def make(root: Path, rows: int, value: str) -> None:
    (root / "set-a").mkdir(parents=True)
    (root / "Outcomes-a.txt").write_text(HEADER + "1001,10,3,7,-1,0\n")
    body = f"00:30,HR,{value}\n" * rows
    (root / "set-a" / "1001.txt").write_text("Time,Parameter,Value\n00:00,RecordID,1001\n" + body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from seqsetvae.config import PhysioNet2012Params
    from seqsetvae.data.physionet2012 import ingest_physionet2012

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, value in (("valid", "80"), ("non_numeric", "abc")):
            root = Path(tmp) / name
            make(root, args.rows, value)
            p = PhysioNet2012Params(dir=str(root), sets=["a"], download=False, url="")
            best = float("inf")
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                result = ingest_physionet2012(p, root)
                best = min(best, time.perf_counter() - t0)
            r = result.report.to_dict()
            out[name] = {"best_s": round(best, 3), "rows_read": r["rows_read"], "skipped": r["skipped_by_reason"]}
    print(json.dumps({"rows": args.rows, **out}, indent=2))


if __name__ == "__main__":
    main()
