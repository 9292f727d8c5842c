"""Classical baselines for one fold: logistic regression and gradient boosting on per-variable summaries.

Reads the ingest folder and the split table; for fold K builds summaries over `preprocess.window_hours`
(code list from the training split only), fits each model of params `baseline` on train, chooses its
hyperparameters on val by AUPRC and evaluates the chosen fit on test with the evaluate section's bootstrap
settings. Writes `<predictions-dir>/{logreg,gbm}.parquet` (subject_id, label, probability: what the
evaluate stage reads), a metrics JSON per model `<metrics-dir>/<model>/fold_<K>.json` (the four test point
estimates, the same keys as the evaluate stage's) and one details JSON {fold, subjects, features,
logreg: {...}, gbm: {...}} with intervals, hyperparameters and the validation grid.
See seqsetvae/baselines.py for the rules and docs/baselines.md for the numbers. The fold runs in bounded
memory (seqsetvae/baseline_stream.py): two passes over the events in chunks of whole subjects
(`iter_event_chunks`), never every sample's summaries at once.

Label efficiency (params `label_efficiency`): `--label-fraction F` fits on a nested, label-stratified
subsample of F of the train split (seqsetvae.data.splits.label_subsample, seeded by label_efficiency.seed,
ranked by subject id); val and test stay whole. `--models` fits only the models named.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqsetvae.config import Params
from seqsetvae.data.canonical import event_shards, read_subjects_labels
from seqsetvae.data.readers import read_parquet
from seqsetvae.data.splits import label_subsample, read_splits
from seqsetvae.evaluation.metrics import headline
from seqsetvae.io import atomic_path, write_json, write_parquet
from seqsetvae.baseline_stream import TrainSubsample, run_fold
from seqsetvae.baselines import MODELS, FoldSamples
from seqsetvae.data.splits import TRAIN
from seqsetvae.errors import DataError
from seqsetvae.report.summary import baseline_file
from seqsetvae.stages.options import label_fraction_arg

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ingested", required=True, type=Path, help="folder written by the ingest stage")
    parser.add_argument("--splits", required=True, type=Path, help="split table written by the split stage")
    parser.add_argument("--fold", required=True, type=int, help="fold of the split table to run")
    parser.add_argument("--predictions-dir", required=True, type=Path,
                        help="folder for <model>.parquet test predictions (replaced whole)")
    parser.add_argument("--metrics-dir", required=True, type=Path,
                        help="metrics root: writes <dir>/<model>/fold_<fold>.json for each model")
    parser.add_argument("--details", required=True, type=Path, help="details JSON to write")
    parser.add_argument("--labels", default=None, type=Path,
                        help="another task's label table (task-labels stage; default: the ingest folder's labels)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help=f"models to fit (default: {' '.join(MODELS)})")
    parser.add_argument("--label-fraction", default=None, type=label_fraction_arg,
                        help="label efficiency: fit on this share (0, 1] of the train split's labels, a nested "
                             "subsample seeded by params label_efficiency.seed (default: every label)")


def iter_event_shards(ingested: Path) -> Iterator[pa.Table]:
    """The ingest folder's events, one shard at a time, in shard (= subject) order."""
    for path in event_shards(ingested):
        yield read_parquet(path, what="events shard")


# Events rows read at a time: a chunk holds about this many rows (whole subjects), so memory holds one chunk's
# events and its samples' windows, not a shard's (50 M rows at 50,000 subjects x 1,000 events).
CHUNK_ROWS = 1 << 21


def iter_event_chunks(ingested: Path, rows: int = CHUNK_ROWS) -> Iterator[pa.Table]:
    """The ingest folder's events in subject order, in tables of whole subjects of about `rows` rows: each shard
    read by row batches (pyarrow `iter_batches`), the last subject of a batch carried into the next table.
    Shards are sorted by subject (the canonical order); one that is not is a DataError naming it."""
    for path in event_shards(ingested):
        carry: pa.Table | None = None
        previous = None
        try:
            with pq.ParquetFile(path) as f:
                for batch in f.iter_batches(batch_size=rows):
                    table = pa.Table.from_batches([batch])
                    sid = table.column("subject_id").to_numpy()
                    if sid.size == 0:
                        continue
                    if np.any(sid[1:] < sid[:-1]) or (previous is not None and sid[0] < previous):
                        raise DataError(path, "events are not sorted by subject_id: rerun the ingest stage")
                    cut = int(np.searchsorted(sid, sid[-1], "left"))  # the last subject's first row
                    if carry is not None:
                        # The carried rows are one subject's, before this batch's, or the last subject's own.
                        cut = 0 if cut == 0 and sid[0] == previous else cut + carry.num_rows
                        table = pa.concat_tables([carry, table])
                    previous = int(sid[-1])
                    if cut:
                        yield table.slice(0, cut)
                    carry = table.slice(cut)
        except (OSError, pa.ArrowException) as e:
            raise DataError(path, f"not a readable parquet file (events shard): {e}") from None
        if carry is not None and carry.num_rows:
            yield carry


def train_subsamples(plan: FoldSamples, params: Params, args: argparse.Namespace) -> list[TrainSubsample]:
    """The nested train subsamples the models fit on, drawn from the train labels and subject ids alone
    (before any event is read): `--label-fraction`, then `baseline.max_train_samples` within it."""
    train = plan.split == TRAIN
    y_train, ids = plan.y[train], plan.subject_id[train]
    rows = np.arange(y_train.size)
    out = []
    if args.label_fraction is not None:
        seed = params.label_efficiency.seed
        where = f"{args.splits} fold {args.fold} train split (--label-fraction {args.label_fraction:g})"
        rows = label_subsample(y_train, args.label_fraction, seed, ids=ids, what=where)
        out.append(TrainSubsample("label_subsample", args.label_fraction, seed, rows))
    cap, n_train = params.baseline.max_train_samples, int(rows.size)
    if cap is not None and n_train > cap:
        # baseline.max_train_samples: the models densify their training rows, so fit on a seeded, label-stratified
        # sample of that many (by subject hash, nested in any larger one, as label subsamples are); val and test
        # stay whole.
        where = f"{args.splits} fold {args.fold} train split (baseline.max_train_samples {cap})"
        keep = label_subsample(y_train[rows], cap / n_train, params.baseline.seed, ids=ids[rows], what=where)
        out.append(TrainSubsample("train_sample", cap / n_train, params.baseline.seed, rows[keep]))
    return out


def run(params: Params, args: argparse.Namespace) -> None:
    subjects, labels = read_subjects_labels(args.ingested)
    samples = labels  # ingest's labels.parquet: one row per sample (canonical.SAMPLES_SCHEMA)
    if args.labels is not None:  # an extra task's samples (params tasks), in the same form
        samples = read_parquet(args.labels, what="task label table", hint=": run the task-labels stage first")
    splits = read_splits(args.splits)
    plan = FoldSamples.of(subjects, samples, splits, args.fold, splits_path=str(args.splits))
    models = tuple(dict.fromkeys(args.models))  # in the order given, once each
    result = run_fold(lambda: iter_event_chunks(args.ingested), subjects, plan, params.preprocess.window_hours,
                      params.baseline.categorical_descriptors, params.baseline.max_codes,
                      train_subsamples(plan, params, args), params.baseline, params.evaluate, models, args.fold)
    with atomic_path(args.predictions_dir, is_dir=True) as tmp:
        for name in models:
            write_parquet(tmp / f"{name}.parquet", result.predictions[name])
    write_json(args.details, result.metrics)
    for name in models:
        write_json(baseline_file(args.metrics_dir, name, args.fold), headline(result.metrics[name]))
    n = result.metrics["subjects"]
    for name in models:
        m = result.metrics[name]
        log.info("fold %d %s %s: test AUROC %.4f [%.4f, %.4f]  AUPRC %.4f [%.4f, %.4f]",
                 args.fold, name, m["hyperparameters"], m["auroc"]["value"], m["auroc"]["ci_low"],
                 m["auroc"]["ci_high"], m["auprc"]["value"], m["auprc"]["ci_low"], m["auprc"]["ci_high"])
    log.info("baseline fold %d: train %d, val %d, test %d samples (%d, %d, %d without events in the window, "
             "kept and imputed) -> %s, %s", args.fold, n["train"]["n"], n["val"]["n"], n["test"]["n"],
             n["train"]["without_events_in_window"], n["val"]["without_events_in_window"],
             n["test"]["without_events_in_window"], args.predictions_dir, args.details)
