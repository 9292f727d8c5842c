"""Fit vocabulary and normalisation on each fold's train split and pack every split into set tensors.

Reads the ingest folder (its events shard by shard, in bounded memory) and the split table; writes `out/fold_<k>/{vocab.json, norm_stats.json,
train/, val/, test/}` and `out/preprocess_report.json`, the whole folder atomically. See
seqsetvae/data/preprocess.py for the rules and docs/preprocess.md for the format.

An extra task (params `tasks`, stage preprocess_task@<task>): `--labels` gives its label table and `--stats`
the main task's output, whose fold vocabulary and statistics it is packed with (seqsetvae/data/fixed_stats.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from seqsetvae.config import Params
from seqsetvae.data.preprocess import preprocess_ingested
from seqsetvae.data.splits import read_splits

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingested", required=True, type=Path, help="folder written by the ingest stage")
    parser.add_argument("--splits", required=True, type=Path, help="split table written by the split stage")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced whole)")
    parser.add_argument("--labels", default=None, type=Path,
                        help="another task's label table (task-labels stage; default: the ingest folder's labels)")
    parser.add_argument("--stats", default=None, type=Path,
                        help="pack with the vocabulary and statistics of this preprocess output (the main task's, "
                             "which the backbone was pretrained with) instead of fitting them (docs/preprocess.md)")


def run(params: Params, args: argparse.Namespace) -> None:
    splits = read_splits(args.splits)
    labels = None
    if args.labels is not None:
        from seqsetvae.data.readers import read_parquet

        labels = read_parquet(args.labels, what="task label table", hint=": run the task-labels stage first")
    fixed = None
    if args.stats is not None:
        from seqsetvae.data.fixed_stats import FixedStats

        fixed = FixedStats(args.stats)
    pre = params.preprocess
    if labels is not None and pre.max_outside_window_share < 1:
        # A task predicted before the end of the stay (e.g. at 24 h) leaves the rest of the stay outside its
        # windows by design. The share check guards the cohort (history or a birth row before the stay); the
        # main task's preprocess ran it on the same events and window starts. The report still counts them.
        log.info("preprocess (task labels %s): events after the prediction times are expected; the outside-window "
                 "share check (preprocess.max_outside_window_share) is the main task's and is not repeated",
                 args.labels)
        pre = dataclasses.replace(pre, max_outside_window_share=1.0)
    report = preprocess_ingested(args.ingested, splits, pre, args.out, splits_path=args.splits,
                                 labels=labels, fixed_stats=fixed)
    e = report["events"]
    log.info(
        "preprocess: %d events read, %d in window (%s outside), %d duplicate rows merged, %d kept in %d sets -> %s",
        e["read"],
        e["in_window"],
        sum(e["outside_window"].values()),
        e["duplicate_rows_merged"],
        e["kept"],
        e["sets"],
        args.out,
    )
