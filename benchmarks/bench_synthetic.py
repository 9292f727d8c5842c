"""Synthetic cohort generation and per-variable summaries: wall time and peak RSS. Prints figures only.

    python benchmarks/bench_synthetic.py [--subjects 2000 12000 100000] [--seed 0]

For each size: generation time, events, sets per stay, then the summaries of those events (48 h window).
Peak RSS is the process high-water mark so far (sizes run in increasing order).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqsetvae.config import PROJECT_ROOT, load_params  # noqa: E402
from seqsetvae.data.summaries import per_variable_summaries  # noqa: E402
from seqsetvae.data.synthetic import ingest_synthetic  # noqa: E402


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, nargs="+", default=[2000, 12000, 100000])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = load_params(PROJECT_ROOT / "params.yaml").data.synthetic
    window = load_params(PROJECT_ROOT / "params.yaml").preprocess.window_hours
    for n in sorted(args.subjects):
        p = type(base)(n_subjects=n, seed=args.seed, positive_rate=base.positive_rate)
        t0 = time.perf_counter()
        res = ingest_synthetic(p)
        t_gen = time.perf_counter() - t0
        n_events = res.events.num_rows
        t0 = time.perf_counter()
        feats = per_variable_summaries(res.events, res.subjects, window)
        t_sum = time.perf_counter() - t0
        print(
            f"subjects={n:>7d}  events={n_events:>10,d}  generate={t_gen:6.2f}s  "
            f"summaries={t_sum:6.2f}s ({feats.shape[1]} features)  peak_rss={_peak_rss_gib():.2f} GiB",
            flush=True,
        )
        del res, feats


if __name__ == "__main__":
    main()
