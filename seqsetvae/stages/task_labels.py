"""Write the label table of one extra task (params `tasks.definitions.<task>`), in the sample form.

Reads the ingest folder's subjects and main-task labels (one sample per stay), the PhysioNet 2012 Outcomes
files when the rule needs length of stay or death times (data.physionet2012.dir, the files ingest read), and
the split table; writes `--out` (subject_id, prediction_time, boolean_value, window_start: what preprocess
and the baseline read) and `--report`: the stays in, samples kept and positive, the stays left out by
reason (with the first ids), and per fold and split the samples and positive rate. Rules:
seqsetvae/data/tasks.py and docs/preprocess.md "Tasks".
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from seqsetvae.config import Params, resolve_path
from seqsetvae.data.canonical import read_subjects_labels
from seqsetvae.data.splits import read_splits
from seqsetvae.data.tasks import needs_outcomes, split_counts, task_samples
from seqsetvae.io import write_json, write_parquet

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task name: a key of params tasks.definitions")
    parser.add_argument("--ingested", required=True, type=Path, help="folder written by the ingest stage")
    parser.add_argument("--splits", required=True, type=Path, help="split table written by the split stage")
    parser.add_argument("--out", required=True, type=Path, help="label table to write (parquet)")
    parser.add_argument("--report", required=True, type=Path, help="report JSON to write")


def run(params: Params, args: argparse.Namespace) -> None:
    d = params.tasks.task(args.task)
    subjects, labels = read_subjects_labels(args.ingested)
    outcomes = None
    if needs_outcomes(d) and params.data.source == "physionet2012":
        from seqsetvae.data.physionet2012 import read_outcome_times

        p = params.data.physionet2012
        outcomes = read_outcome_times(resolve_path(p.dir, "data.physionet2012.dir", params.root), p.sets)
    table, report = task_samples(args.task, d, subjects, labels, outcomes)
    report["splits"] = split_counts(table, read_splits(args.splits))
    write_parquet(args.out, table)
    write_json(args.report, report)
    why = ", ".join(f"{n} {r}" for r, n in report["excluded_by_reason"].items() if n) or "none"
    log.info("task %s: %d stays, %d samples (%d positive), %d left out (%s) -> %s", args.task, report["stays"],
             report["samples"], report["positives"], report["excluded"], why, args.out)
    for fold, by_split in report["splits"].items():
        log.info("task %s fold %s: %s", args.task, fold, "; ".join(
            f"{s} {c['samples']} samples, positive rate {c['positive_rate']}" for s, c in by_split.items()
            if isinstance(c, dict)))
