"""The baselines of one fold in bounded memory: two passes over the events, never every sample's summaries.

`seqsetvae.baselines.fold_features` builds the summaries (CSR) of every sample of the fold, then fits and
predicts: its memory grows with samples x codes in their windows, which neither `baseline.max_codes` nor
`baseline.max_train_samples` bounds (over 8 GiB at 300,000 subjects x 1,000 events, docs/scaling.md).
`run_fold` gives the same fits and predictions, bit for bit (tests/test_baseline_stream.py), in two passes
over the events, read in chunks of whole subjects (`stages.baseline.iter_event_chunks`):

1. Train samples only. Each chunk's train summaries are reduced at once to the stored entries per column of
   the whole train split and of each train subsample (label fraction, max_train_samples), which decide the
   columns exactly as `fold_features` does (`choose_columns`, `subsample_columns`); only the rows the models
   fit on (the subsample, chosen from labels and subject ids before any event is read) are kept. Every grid
   candidate of every model is then fitted on them.
2. Val and test samples: each chunk's summaries are put in the fitted columns and predicted by every
   candidate in the row chunks of `baselines.predict_proba` (PREDICT_CHUNK rows from the split's start, so
   the same BLAS blocks as one in-memory call); only the probabilities are kept. Train samples get the one
   figure pass 1 could not know before the columns: whether a kept code has an event in their window.

Memory: one chunk's events and summaries, the fit rows (bounded by max_train_samples), the fitted candidates
and one probability per (val / test sample, candidate). Work: each sample's summaries are built once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from seqsetvae import baselines
from seqsetvae.baselines import (
    Candidate, ColumnLayout, DescriptorColumns, FoldResult, FoldSamples, ModelName,
    check_selectable, choose_columns, features_report, fit_candidates, log_features, score_test, select,
    select_columns, subsample_columns, subsample_report,
)
from seqsetvae.config import BaselineParams, EvaluateParams
from seqsetvae.data.canonical import lex_searchsorted
from seqsetvae.data.splits import TEST, TRAIN, VAL
from seqsetvae.data.summaries import (
    STATS, descriptor_block, feature_name, sample_summary_block, sample_window_lower_us, timestamps_us, zero_fill_of,
)
from seqsetvae.errors import DataError
from seqsetvae.threads import resolve_num_threads

log = logging.getLogger(__name__)

N_STATS = len(STATS)
COUNT_STAT = STATS.index("count")


@dataclass
class TrainSubsample:
    """A nested train subsample the models fit on: `rows` are positions in the whole train split (sorted);
    `report_key` names its entry in the details JSON (label_subsample, train_sample)."""

    report_key: str
    fraction: float
    seed: int
    rows: np.ndarray


class _Blocks:
    """Summaries of chosen samples, chunk by chunk, as COO triples in code-id space (`sample_summary_block`):
    column `code_id * len(STATS) + stat`, code ids shared by every chunk and both passes (`code_ids`)."""

    def __init__(self, sid: np.ndarray, pt_us: np.ndarray, lower_us: np.ndarray, window_hours: float):
        self.sid, self.pt_us, self.lower_us, self.window_hours = sid, pt_us, lower_us, window_hours
        self.code_ids: dict[str, int] = {}

    def of(self, chunks: Iterable[pa.Table], which: np.ndarray
           ) -> Iterator[tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]]:
        """Per non-empty chunk: (events, positions of the samples of `which` in it, their local row, column,
        value, counts); a chunk without such samples gives empty arrays (its events are still yielded)."""
        sid = self.sid[which]
        done = 0  # samples of `which` before this one belong to earlier chunks
        for k, events in enumerate(chunks):
            if events.num_rows == 0:
                continue
            ev_sid = events.column("subject_id")
            lo_sid, hi_sid = pc.min(ev_sid).as_py(), pc.max(ev_sid).as_py()
            s0, s1 = int(np.searchsorted(sid, lo_sid, "left")), int(np.searchsorted(sid, hi_sid, "right"))
            if s0 < done:
                raise DataError(None, f"events chunk {k} holds subject {lo_sid}, whose samples an earlier chunk "
                                      "already covered: events must come in subject order, each subject in one")
            done = max(done, s1)
            pos = which[s0:s1]
            if pos.size == 0:
                empty = np.zeros(0, np.int64)
                yield events, pos, empty, empty, np.zeros(0), {"events_outside_window": 0}
                continue
            rows, cols, vals, counts = sample_summary_block(events, self.sid[pos], self.pt_us[pos], self.lower_us[pos],
                                                            self.window_hours, self.code_ids)
            yield events, pos, rows, cols, vals, counts


class _Counts:
    """Stored entries per code-id column, summed over chunks (the code ids grow as chunks come)."""

    def __init__(self) -> None:
        self.n = np.zeros(0, np.int64)

    def add(self, cols: np.ndarray, n_columns: int) -> None:
        if self.n.size < n_columns:
            self.n = np.r_[self.n, np.zeros(n_columns - self.n.size, np.int64)]
        self.n += np.bincount(cols, minlength=self.n.size)


@dataclass
class _Layout:
    """Where a code-id column and a descriptor land in the fitted columns (-1: not a fitted column)."""

    columns: list[str]
    of_code_column: np.ndarray  # code-id column -> fitted column
    of_descriptor: np.ndarray  # descriptor position -> fitted column
    kept_code: np.ndarray  # per code id: True for a code with a fitted count column

    def rows(self, n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, desc: sp.csr_matrix) -> sp.csr_matrix:
        """CSR rows in the fitted columns from COO code entries and the samples' descriptor rows."""
        m = self.of_code_column.size
        to = self.of_code_column[np.minimum(cols, m - 1)] if m else np.zeros(cols.size, np.int64)
        keep = (cols < m) & (to >= 0)
        d = desc.tocoo()
        d_to = self.of_descriptor[d.col]
        d_keep = d_to >= 0
        all_rows = np.r_[rows[keep], d.row[d_keep]]
        all_cols = np.r_[to[keep], d_to[d_keep]].astype(np.int32)
        all_vals = np.r_[vals[keep], d.data[d_keep]]
        order = np.lexsort((all_cols, all_rows))
        indptr = np.r_[0, np.cumsum(np.bincount(all_rows, minlength=n))]
        return sp.csr_matrix((all_vals[order], all_cols[order], indptr), shape=(n, len(self.columns)))


class _ChunkedPrediction:
    """Rows of one split arriving chunk by chunk, predicted by every candidate in PREDICT_CHUNK-row blocks
    counted from the split's first row (as `baselines.predict_proba` cuts a whole split)."""

    def __init__(self, candidates: dict[ModelName, list[Candidate]]):
        self.candidates = candidates
        self.chunk = baselines.PREDICT_CHUNK  # read at run time, as predict_proba reads it
        self.pending: list[sp.csr_matrix] = []
        self.n_pending = 0
        self.probs: dict[ModelName, list[list[np.ndarray]]] = {m: [[] for _ in c] for m, c in candidates.items()}

    def add(self, rows: sp.csr_matrix) -> None:
        if rows.shape[0] == 0:
            return
        self.pending.append(rows)
        self.n_pending += rows.shape[0]
        while self.n_pending > self.chunk:  # a full block, and more rows after it: predict the block
            block = sp.vstack(self.pending, format="csr")
            self._predict(block[:self.chunk])
            rest = block[self.chunk:]
            self.pending, self.n_pending = [rest], rest.shape[0]

    def finish(self) -> dict[ModelName, list[np.ndarray]]:
        if self.n_pending:
            self._predict(sp.vstack(self.pending, format="csr"))
            self.pending, self.n_pending = [], 0
        return {m: [np.concatenate(p) if p else np.zeros(0) for p in per] for m, per in self.probs.items()}

    def _predict(self, block: sp.csr_matrix) -> None:
        for name, cands in self.candidates.items():
            for k, cand in enumerate(cands):
                self.probs[name][k].append(cand.model.predict_proba(block)[:, 1])


def _layout(kept: np.ndarray, columns: list[str], code_ids: np.ndarray, n_ids: int, n_descriptors: int) -> _Layout:
    """The fitted columns `columns`, at positions `kept` among the candidate columns (the statistics of the
    codes `code_ids` in that order, then the descriptors), as positions of code-id columns and descriptors."""
    n_code_cols = code_ids.size * N_STATS
    of_candidate = np.r_[np.repeat(code_ids * N_STATS, N_STATS) + np.tile(np.arange(N_STATS), code_ids.size)]
    of_code_column = np.full(n_ids * N_STATS, -1, np.int64)
    of_descriptor = np.full(n_descriptors, -1, np.int64)
    codes_kept = kept[kept < n_code_cols]
    of_code_column[of_candidate[codes_kept]] = np.flatnonzero(kept < n_code_cols)
    of_descriptor[kept[kept >= n_code_cols] - n_code_cols] = np.flatnonzero(kept >= n_code_cols)
    kept_code = np.zeros(n_ids, bool)
    kept_code[of_candidate[codes_kept[codes_kept % N_STATS == COUNT_STAT]] // N_STATS] = True
    return _Layout(columns=columns, of_code_column=of_code_column, of_descriptor=of_descriptor, kept_code=kept_code)


def _stored_in_layout(layout: ColumnLayout, stored_train: np.ndarray, stored_other: np.ndarray,
                      desc_other: sp.csr_matrix, code_ids: np.ndarray, n_ids: int, n_descriptors: int) -> int:
    """Stored values of every sample of the fold in the columns of `layout` (before any subsample): the
    details' `stored_values`, as fold_features counts them. `stored_train`: per candidate column over train;
    `stored_other`: per code-id column over val and test."""
    where = _layout(layout.keep, layout.columns, code_ids, n_ids, n_descriptors)
    in_layout = np.flatnonzero(where.of_code_column[:stored_other.size] >= 0)
    desc_kept = np.flatnonzero(where.of_descriptor >= 0)
    desc_other_n = np.bincount(sp.csr_matrix(desc_other).indices, minlength=n_descriptors)
    return int(stored_train[layout.keep].sum() + stored_other[in_layout].sum() + desc_other_n[desc_kept].sum())


def _descriptor_rows(desc: sp.csr_matrix, desc_names: list[str], columns: list[str]) -> sp.csr_matrix:
    """Descriptor rows placed in `columns` (the other columns empty): what a categorical check reads."""
    where = np.array([columns.index(d) if d in columns else -1 for d in desc_names], np.int64)
    coo = desc.tocoo()
    keep = where[coo.col] >= 0 if coo.nnz else np.zeros(0, bool)
    return sp.csr_matrix((coo.data[keep], (coo.row[keep], where[coo.col[keep]])), shape=(desc.shape[0], len(columns)))


def _has_kept_event(events: pa.Table, sid: np.ndarray, pt_us: np.ndarray, lower_us: np.ndarray,
                    code_ids: dict[str, int], kept_code: np.ndarray) -> np.ndarray:
    """Per sample: whether an event of a kept code lies in its window (the window rule of
    `sample_summary_block`), without building its summaries."""
    encoded = pc.dictionary_encode(events.column("code")).combine_chunks()
    ids = np.array([code_ids.get(c, -1) for c in encoded.dictionary.to_pylist()], np.int64)
    kept = np.zeros(ids.size, bool)
    known = (ids >= 0) & (ids < kept_code.size)
    kept[known] = kept_code[ids[known]]
    t, has_time = timestamps_us(events.column("time"))
    idx = np.flatnonzero(kept[encoded.indices.to_numpy()] & has_time) if ids.size else np.zeros(0, np.int64)
    ev_sid = events.column("subject_id").to_numpy()[idx]
    order = np.lexsort((t[idx], ev_sid))
    keys = (ev_sid[order], t[idx][order])
    return lex_searchsorted(keys, (sid, pt_us), "right") > lex_searchsorted(keys, (sid, lower_us), "left")


def run_fold(
    chunks: Callable[[], Iterable[pa.Table]],
    subjects: pa.Table,
    plan: FoldSamples,
    window_hours: float,
    categorical_descriptors: list[str],
    max_codes: int | None,
    subsamples: list[TrainSubsample],
    p: BaselineParams,
    ev: EvaluateParams,
    models: tuple[ModelName, ...],
    fold: int,
) -> FoldResult:
    """The baselines `models` on one fold, as `fold_features` (+ `subsample_train` per subsample) and
    `run_baselines` give them, in two passes over `chunks()` (the canonical events in subject order, each
    subject's events in one table)."""
    samples = plan.samples
    sid = plan.subject_id
    pt_us, _ = timestamps_us(samples.column("prediction_time"))
    blocks = _Blocks(sid, pt_us, sample_window_lower_us(samples, window_hours), window_hours)
    train = np.flatnonzero(plan.split == TRAIN)
    # Nested train row sets: the whole train split, then each subsample (positions in the fold's samples).
    levels = [train] + [train[s.rows] for s in subsamples]
    fit_rows = levels[-1]
    y_fit, y_val = plan.y[fit_rows], plan.y[plan.split == VAL]
    for name in models:
        check_selectable(name, p, y_fit, y_val, fold)
    level_of = np.zeros(sid.size, np.int64)  # deepest level each sample belongs to (0: train; -1: not train)
    level_of[plan.split != TRAIN] = -1
    for k, rows in enumerate(levels[1:], start=1):
        level_of[rows] = k
    fit_index = np.full(sid.size, -1, np.int64)
    fit_index[fit_rows] = np.arange(fit_rows.size)

    # Pass 1: train summaries reduced to stored entries per column; the fit rows kept (code-id space).
    stored = [_Counts() for _ in levels]
    fit_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    outside = 0
    for _, pos, rows, cols, vals, counts in blocks.of(chunks(), train):
        n_columns = len(blocks.code_ids) * N_STATS
        level = level_of[pos][rows]
        for k, counter in enumerate(stored):
            counter.add(cols[level >= k], n_columns)
        at = fit_index[pos][rows]
        take = at >= 0
        fit_parts.append((at[take], cols[take].astype(np.int32), vals[take]))
        outside += counts["events_outside_window"]

    # The columns, from the whole train split's stored entries, as fold_features decides them.
    names = np.array(list(blocks.code_ids), dtype=object)
    n_ids = names.size
    counts_train = [np.r_[c.n, np.zeros(n_ids * N_STATS - c.n.size, np.int64)].reshape(n_ids, N_STATS) for c in stored]
    train_code_ids = np.flatnonzero(counts_train[0][:, COUNT_STAT] > 0)
    train_code_ids = train_code_ids[np.argsort(names[train_code_ids].astype(str), kind="stable")]
    codes = names[train_code_ids].tolist()
    desc, desc_names = descriptor_block(subjects, sid, pt_us)
    candidates_cols = [feature_name(c, s) for c in codes for s in STATS] + desc_names

    def stored_of(level: int) -> np.ndarray:  # stored entries per candidate column in a train level
        d = sp.csr_matrix(desc[levels[level]])
        return np.r_[counts_train[level][train_code_ids].ravel(), np.bincount(d.indices, minlength=len(desc_names))]

    layout = choose_columns(candidates_cols, stored_of(0), max_codes)
    descriptors = DescriptorColumns.of(subjects, categorical_descriptors, layout.columns)
    columns = layout.columns
    kept = layout.keep
    sub_reports = {}
    for k, s in enumerate(subsamples, start=1):
        n_of = levels[k - 1].size
        keep_k, empty = subsample_columns(columns, stored_of(k)[kept])
        sub_reports[s.report_key] = subsample_report(fold, s.report_key, s.fraction, s.seed, plan.y[levels[k]], n_of,
                                                     len(columns), int(keep_k.size), empty)
        kept, columns = kept[keep_k], [columns[j] for j in keep_k]
    to_layout = _layout(kept, columns, train_code_ids, n_ids, len(desc_names))

    # The fit rows, and every candidate fitted on them.
    at, cols, vals = (np.concatenate(x) for x in zip(*fit_parts)) if fit_parts else (np.zeros(0, np.int64),) * 3
    del fit_parts
    X_fit = to_layout.rows(fit_rows.size, at.astype(np.int64), cols.astype(np.int64), vals.astype(np.float64),
                           sp.csr_matrix(desc[fit_rows]))
    del at, cols, vals
    descriptors.check_categories(_descriptor_rows(sp.csr_matrix(desc[train]), desc_names, layout.columns),
                                 layout.columns)
    categorical = [c for c in descriptors.categorical if c in columns]
    candidates: dict[ModelName, list[Candidate]] = {}
    with threadpool_limits(limits=resolve_num_threads(p.num_threads)):
        for name in models:
            candidates[name] = fit_candidates(name, p, X_fit, y_fit, columns, categorical, fold)
    del X_fit

    # Pass 2: val and test summaries predicted by every candidate; train samples checked for kept events.
    no_events = np.zeros(sid.size, bool)
    other = np.flatnonzero(plan.split != TRAIN)
    seen_other = _Counts()
    prediction = {VAL: _ChunkedPrediction(candidates), TEST: _ChunkedPrediction(candidates)}
    train_sid = sid[train]
    with threadpool_limits(limits=resolve_num_threads(p.num_threads)):
        for events, pos, rows, cols, vals, counts in blocks.of(chunks(), other):
            seen_other.add(cols, len(blocks.code_ids) * N_STATS)
            outside += counts["events_outside_window"]
            X = to_layout.rows(pos.size, rows, cols, vals, sp.csr_matrix(desc[pos]))
            no_events[pos] = np.diff(select_columns(X, np.flatnonzero(zero_fill_of(columns))).indptr) == 0
            for split, pred in prediction.items():
                pred.add(X[np.flatnonzero(plan.split[pos] == split)])
            ev_sid = events.column("subject_id")
            t = train[np.searchsorted(train_sid, pc.min(ev_sid).as_py(), "left"):
                      np.searchsorted(train_sid, pc.max(ev_sid).as_py(), "right")]
            no_events[t] = ~_has_kept_event(events, sid[t], pt_us[t], blocks.lower_us[t], blocks.code_ids,
                                            to_layout.kept_code)
        probs = {split: pred.finish() for split, pred in prediction.items()}

    names = np.array(list(blocks.code_ids), dtype=object)  # pass 2 may have met codes that pass 1 did not
    seen = np.flatnonzero(seen_other.n[COUNT_STAT::N_STATS] > 0)
    not_in_train = sorted(set(names[seen].tolist()) - set(codes))
    features = features_report(layout, not_in_train, descriptors, max_codes, outside,
                               _stored_in_layout(layout, stored_of(0), seen_other.n, desc[other], train_code_ids,
                                                 n_ids, len(desc_names)))
    report: dict[str, Any] = {"subjects": plan.split_report(no_events), "features": features, **sub_reports}
    log_features(fold, sid.size, features)
    metrics: dict[str, Any] = {"fold": fold, **report}
    predictions: dict[str, pa.Table] = {}
    test_rows = np.flatnonzero(plan.split == TEST)
    for name in models:
        sel = select(name, candidates[name], y_val, probs[VAL][name], fold)
        k = next(i for i, c in enumerate(candidates[name]) if c.model is sel.model)
        prob = probs[TEST][name][k].astype(np.float64)
        metrics[name], predictions[name] = score_test(sel, plan.y[test_rows], prob, plan.keys(test_rows, pt_us),
                                                      ev, fold)
    return FoldResult(metrics=metrics, predictions=predictions)
