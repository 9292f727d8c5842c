"""The preprocess jobs: scan each shard, fit each fold, pack each shard, assemble (seqsetvae/data/preprocess.py).

`seqsetvae preprocess STEP ...`, one job per step and shard or fold (dvc.yaml: preprocess_scan@<shard>,
preprocess_fit@<fold>, preprocess_pack@<shard>, preprocess):

- `[all] --ingested DIR --splits FILE --out DIR` (no step): every step in this one process, one shard after
  the other (scripts, benchmarks); the same output as the jobs;

- `scan --ingested DIR --splits FILE --shard K --out DIR`: shard K's windows, train counts and values;
- `fit --scans DIR --fold F --splits FILE --out DIR`: fold F's vocabulary and normalisation from every scan;
- `pack --ingested DIR --splits FILE --shard K --fits DIR --out DIR`: shard K's packed pieces, every fold;
- `assemble --fits DIR --packs DIR --splits FILE --out DIR`: `out/fold_<k>/{vocab.json, norm_stats.json,
  train/, val/, test/}` and `out/preprocess_report.json`, the pieces appended in shard order.

The shards are those of params `data.shards`; every output folder is written atomically. See
docs/preprocess.md for the rules and the format.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from seqsetvae.config import Params
from seqsetvae.data import preprocess as prep
from seqsetvae.data.splits import read_splits

log = logging.getLogger(__name__)

STEPS = ("all", "scan", "fit", "pack", "assemble")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", nargs="?", default="all", choices=STEPS,
                        help="which job: scan / fit / pack / assemble; all (default): every step in this process")
    parser.add_argument("--ingested", type=Path, help="folder written by the ingest stage (scan, pack)")
    parser.add_argument("--splits", required=True, type=Path, help="split table written by the split stage")
    parser.add_argument("--shard", type=int, help="shard index, one of data.shards (scan, pack)")
    parser.add_argument("--fold", type=int, help="fold (fit)")
    parser.add_argument("--scans", type=Path, help="folder of the scan jobs' outputs, shard_<k> (fit)")
    parser.add_argument("--fits", type=Path, help="folder of the fit jobs' outputs, fold_<f> (pack, assemble)")
    parser.add_argument("--packs", type=Path, help="folder of the pack jobs' outputs, shard_<k> (assemble)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced whole)")


_NEEDS = {"all": ("ingested",), "scan": ("ingested", "shard"), "fit": ("scans", "fold"), "pack": ("ingested", "shard", "fits"),
          "assemble": ("fits", "packs")}  # fmt: skip


def run(params: Params, args: argparse.Namespace) -> None:
    missing = [f"--{a}" for a in _NEEDS[args.step] if getattr(args, a) is None]
    if missing:
        raise SystemExit(f"seqsetvae preprocess {args.step}: {', '.join(missing)} required")
    p, n = params.preprocess, len(params.data.shards)
    splits = read_splits(args.splits)
    if args.step == "all":
        report = prep.preprocess_ingested(args.ingested, splits, p, args.out, splits_path=args.splits)
        _log_report(report, args.out)
    elif args.step == "scan":
        scan = prep.run_scan(args.ingested, splits, p, n, args.shard, args.out, args.splits)
        e = scan.events
        log.info("preprocess scan, shard %d: %d events read, %d in window, %d kept in %d sets -> %s", args.shard,
                 e["read"], e["in_window"], e["kept"], e["sets"], args.out)  # fmt: skip
    elif args.step == "fit":
        fit = prep.run_fit(args.scans, n, p, args.fold, args.out, args.splits)
        log.info("preprocess fit, fold %d: vocab %d, %d codes -> %s", args.fold, len(fit.stats.tokens),
                 fit.code_names.size, args.out)  # fmt: skip
    elif args.step == "pack":
        prep.run_pack(args.ingested, splits, p, n, args.shard, args.fits, args.out, args.splits)
        log.info("preprocess pack, shard %d -> %s", args.shard, args.out)
    else:
        _log_report(prep.run_assemble(args.fits, args.packs, splits, p, n, args.out), args.out)


def _log_report(report: dict, out: Path) -> None:
    e = report["events"]
    log.info(
        "preprocess: %d events read, %d in window (%s outside), %d duplicate rows merged, %d kept in %d sets -> %s",
        e["read"], e["in_window"], sum(e["outside_window"].values()), e["duplicate_rows_merged"], e["kept"],
        e["sets"], out,
    )  # fmt: skip
