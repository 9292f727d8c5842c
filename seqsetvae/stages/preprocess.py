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

An extra task (params `tasks`, stage preprocess_task@<task>, step `all`): `--labels` gives its label table and
`--stats` the main task's output, whose fold vocabulary and statistics it is packed with
(seqsetvae/data/fixed_stats.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import pyarrow as pa

from seqsetvae.config import Params, PreprocessParams
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
    parser.add_argument("--labels", default=None, type=Path,
                        help="all: another task's label table (task-labels stage; default: the ingest folder's labels)")
    parser.add_argument("--stats", default=None, type=Path,
                        help="all: pack with the fold vocabulary and statistics of this earlier preprocess output "
                             "(the main task's) instead of fitting them")


_NEEDS = {"all": ("ingested",), "scan": ("ingested", "shard"), "fit": ("scans", "fold"), "pack": ("ingested", "shard", "fits"),
          "assemble": ("fits", "packs")}  # fmt: skip


def run(params: Params, args: argparse.Namespace) -> None:
    missing = [f"--{a}" for a in _NEEDS[args.step] if getattr(args, a) is None]
    if missing:
        raise SystemExit(f"seqsetvae preprocess {args.step}: {', '.join(missing)} required")
    p, n = params.preprocess, len(params.data.shards)
    splits = read_splits(args.splits)
    if (args.labels is not None or args.stats is not None) and args.step != "all":
        raise SystemExit(f"seqsetvae preprocess {args.step}: --labels / --stats go with the step all (a task's preprocess)")
    if args.step == "all":
        report = _preprocess_all(args, splits, p)
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


def _preprocess_all(args: argparse.Namespace, splits: pa.Table, p: PreprocessParams) -> dict:
    """Every step in this process; for an extra task, with its labels and the main task's statistics."""
    labels = fixed = None
    if args.labels is not None:
        from seqsetvae.data.readers import read_parquet

        labels = read_parquet(args.labels, what="task label table", hint=": run the task-labels stage first")
    if args.stats is not None:
        from seqsetvae.data.fixed_stats import FixedStats

        fixed = FixedStats(args.stats)
    if labels is not None and p.max_outside_window_share < 1:
        # A task predicted before the end of the stay (e.g. at 24 h) leaves the rest of the stay outside its
        # windows by design. The share check guards the cohort (history or a birth row before the stay); the
        # main task's preprocess ran it on the same events and window starts. The report still counts them.
        log.info("preprocess (task labels %s): events after the prediction times are expected; the outside-window "
                 "share check (preprocess.max_outside_window_share) is the main task's and is not repeated",
                 args.labels)
        p = dataclasses.replace(p, max_outside_window_share=1.0)
    return prep.preprocess_ingested(args.ingested, splits, p, args.out, splits_path=args.splits,
                                    labels=labels, fixed_stats=fixed)


def _log_report(report: dict, out: Path) -> None:
    e = report["events"]
    log.info(
        "preprocess: %d events read, %d in window (%s outside), %d duplicate rows merged, %d kept in %d sets -> %s",
        e["read"], e["in_window"], sum(e["outside_window"].values()), e["duplicate_rows_merged"], e["kept"],
        e["sets"], out,
    )  # fmt: skip
