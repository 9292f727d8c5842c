"""Wall time and peak memory of split + preprocess on the 12,000 PhysioNet 2012 stays. Prints figures only.

    python benchmarks/bench_preprocess.py [INGESTED_DIR]

Without INGESTED_DIR the raw data (params `data.physionet2012.dir`, or SEQSETVAE_PHYSIONET2012_DIR) is
ingested first into a temporary folder, untimed. Each stage then runs as its own CLI process (what
Snakemake / DVC run), so its peak RSS is its own; the preprocess computation is also timed in-process,
without interpreter start-up and imports.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from seqsetvae.config import PROJECT_ROOT, load_params


def _run_stage(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one `python -m seqsetvae` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seqsetvae", *args], check=True, cwd=PROJECT_ROOT)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # max over children so far (KiB)
    if peak <= before:
        print("  (peak RSS below an earlier child's; figure is an upper bound)")
    return wall, peak / 1024


def main() -> None:
    params_file = PROJECT_ROOT / "params.yaml"
    params = load_params(params_file)
    with tempfile.TemporaryDirectory(prefix="bench_preprocess.") as tmp:
        tmp = Path(tmp)
        if len(sys.argv) > 1:
            ingested = Path(sys.argv[1])
        else:
            from seqsetvae.data.canonical import write_ingested
            from seqsetvae.data.physionet2012 import ingest_physionet2012

            p12 = params.data.physionet2012
            if os.environ.get("SEQSETVAE_PHYSIONET2012_DIR"):
                from dataclasses import replace

                p12 = replace(p12, dir=os.environ["SEQSETVAE_PHYSIONET2012_DIR"])
            ingested = tmp / "ingested"
            print("ingesting PhysioNet 2012 (untimed) ...", flush=True)
            write_ingested(ingested, ingest_physionet2012(p12, PROJECT_ROOT))
        splits, out = tmp / "splits.parquet", tmp / "processed"
        common = ["--params", str(params_file)]

        wall_s, rss_s = _run_stage(["split", *common, "--ingested", str(ingested), "--out", str(splits)])
        wall_p, rss_p = _run_stage(
            ["preprocess", *common, "--ingested", str(ingested), "--splits", str(splits), "--out", str(out)]
        )

        from seqsetvae.data.canonical import read_ingested
        from seqsetvae.data.preprocess import preprocess
        from seqsetvae.data.splits import read_splits

        t = time.perf_counter()
        events, subjects, labels = read_ingested(ingested)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        preprocess(events, subjects, labels, read_splits(splits), params.preprocess, tmp / "processed2")
        t_compute = time.perf_counter() - t

        print(f"events: {events.num_rows:,}  subjects: {subjects.num_rows:,}  folds: {params.split.folds}")
        print(f"split       (CLI process): {wall_s:6.2f} s wall, peak RSS {rss_s:7.1f} MiB")
        print(f"preprocess  (CLI process): {wall_p:6.2f} s wall, peak RSS {rss_p:7.1f} MiB")
        print(f"preprocess  (in-process):  read {t_read:.2f} s + compute and write {t_compute:.2f} s")


if __name__ == "__main__":
    main()
