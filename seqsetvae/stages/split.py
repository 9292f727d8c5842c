"""Assign labelled subjects to train / val / test, per fold, by the protocol in params `split`.

Reads the ingest folder (subjects + labels), writes one parquet table `subject_id, fold, split`.
A relative `split.predefined_csv` is resolved against the folder of the params file. The log gives each
fold's counts and every subject not assigned, by reason (a labelled subject that `split.unlisted: exclude`
leaves out of a predefined fold included, per fold).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from seqsetvae.config import Params
from seqsetvae.data.canonical import read_subjects_labels
from seqsetvae.data.splits import SPLITS, make_splits
from seqsetvae.io import write_parquet

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingested", required=True, type=Path, help="folder written by the ingest stage")
    parser.add_argument("--out", required=True, type=Path, help="split table to write (parquet)")


def run(params: Params, args: argparse.Namespace) -> None:
    # Only subjects and labels: the events table (the bulk of the ingest folder) is not needed here.
    subjects, labels = read_subjects_labels(args.ingested)
    table, summary = make_splits(subjects, labels, params.split, root=params.root)
    write_parquet(args.out, table)

    folds = table.column("fold").to_numpy()
    names = np.asarray(table.column("split").to_pylist(), dtype=object)
    for k in np.unique(folds):
        counts = {s: int(np.sum(names[folds == k] == s)) for s in SPLITS}
        log.info("fold %d: %s", k, ", ".join(f"{s} {n}" for s, n in counts.items()))
    for k, n in sorted(summary.unlisted_excluded.items()):
        log.warning(
            "fold %d: %d labelled subject(s) excluded: the predefined CSV does not list them in this fold "
            "(split.unlisted: exclude; first: %s)",
            k, n, summary.unlisted_examples[k],
        )
    log.info(
        "split (%s): %d labelled subjects; not assigned: %d subjects without a label, "
        "%d labels without a subject, %d predefined-CSV ids not in the labelled cohort, "
        "%d labelled subject-fold pairs excluded as unlisted in the predefined CSV -> %s",
        params.split.protocol,
        summary.labelled,
        summary.subjects_without_label,
        summary.labels_without_subject,
        summary.csv_ids_not_labelled,
        sum(summary.unlisted_excluded.values()),
        args.out,
    )
