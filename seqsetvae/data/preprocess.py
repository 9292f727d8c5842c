"""Canonical events + split table -> per fold: vocabulary, normalisation statistics, packed splits.

Everything here is vectorised over events (numpy on arrays pulled once out of pyarrow): events are sorted
once by (subject, time, code), and set / patient / duplicate boundaries are found with `np.diff` on that
order. There is no Python loop over events, sets or patients; the loops are over folds, splits and the
handful of statistics.

Pipeline (fold independent, done once):

1. Observation window: keep events with 0 <= time - admission_time <= window_hours. Events outside it,
   without a time, or of a subject missing from subjects.parquet are counted in the report by reason.
2. Duplicates: a variable recorded more than once at one timestamp of one stay is reduced per
   `duplicates`: `mean` (default) averages the recorded values (value-less rows do not count), `last` keeps
   the last row in input order, `keep` keeps every row. Mean is the default because in PhysioNet 2012 a
   repeat at one minute is a re-measurement or a charting correction of the same quantity, with no order
   that says which is right: the mean is the least noisy estimate, and it keeps a set a *set* (one token per
   variable), which is what the SetVAE's per-variable reconstruction assumes.
3. Sets: all events of a subject at one timestamp form one set; set time = hours since admission.

Per fold (statistics from TRAIN subjects only, applied to every split):

4. Vocabulary: `<pad>`=0, `<unk>`=1, then the codes with at least `min_code_count` train events, in
   lexical order. Other codes (rare, or unseen in train) become `<unk>` with value 0.
5. Log transform (`log1p`), decided per code: `auto` takes a code whose train values are all >= 0, whose
   skewness exceeds `log_auto_min_skew`, and whose skewness after log1p is smaller in magnitude (the
   transform must actually help); or an explicit list of codes; or `none`. Values below 0 of a
   log-transformed code (possible in val/test) are clamped to 0 first, and counted.
6. Normalisation per code: `robust` = (x - median) / (IQR / 1.349) (1.349 makes the scale the standard
   deviation for normal data); `standard` = (x - mean) / sd. The scale has a floor: a zero IQR (a variable
   that is nearly constant, e.g. FiO2 or MechVent) falls back to the sd, a zero sd to 1, so no constant
   variable divides by zero. Values are then clipped to [-clip, clip]. Value-less events (null
   `numeric_value`, e.g. presence-only MEDS codes) get value 0 and are not part of any statistic.
7. Packing per split (packed.py). Subjects assigned to a split with no event in the window are not packed;
   the report counts them per split, by reason (no events at all / none inside the window).

Shards (bounded memory): the ingest folder holds the events in subject shards (canonical.py), and
`preprocess_ingested` streams them, one in memory at a time, in two passes (`preprocess_shards`): steps 1-3
per shard and, per fold, the train code counts and the train values as exact (code, value) counts; then
steps 4-6 from those counts; then steps 1-3 again per shard, normalisation, and each split's piece appended
to its packed files. The statistics are exact (every quantile and every float64 sum is the one the sorted
train values in memory give, in the same order), so the output is byte for byte that of the whole cohort
in one piece (tests/test_preprocess_shards.py checks it against the pre-shard code). Memory: one shard's
events per worker (below), plus the train-value counts, which grow with the number of distinct (code, value)
pairs.

Workers: the per-shard work of both passes (`_pass1_shard`, `_pass2_shard`) runs in `preprocess.num_workers`
worker processes (`auto`: the cores the runner gave the job, seqsetvae/threads.py; a process pool forked
from a preloaded 'forkserver', one thread each), inside the one preprocess job. Each shard's work is a pure function of picklable inputs
cut to its subject id range (the shard's path, its subjects rows, fold assignment and labels; in pass 2 the
fitted statistics), and this process merges the results strictly in shard order (code ids in order of
first appearance, counts, packed pieces appended), so the output is byte for byte the same for any number
of workers. At most 2 x workers shards are in flight. One worker runs everything in this process, with no
pool. The shards are not separate Snakemake / SLURM jobs: their number is only known once ingest has run,
and DVC, which runs the same dvc.yaml, has no dynamic fan-out over a stage's outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import PreprocessParams
from seqsetvae.data.batch import PAD_CODE, UNK_CODE
from seqsetvae.data.canonical import (
    US_PER_HOUR,
    Samples,
    event_shards,
    lex_searchsorted,
    read_subjects_labels,
    samples_of,
)
from seqsetvae.data.packed import PackedSplit, PackedSplitWriter
from seqsetvae.data.readers import read_parquet
from seqsetvae.data.splits import SPLITS, fold_assignment
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.threads import resolve_num_threads

log = logging.getLogger(__name__)

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
IQR_TO_SD = 1.349  # IQR of a standard normal: makes the robust scale comparable to an sd
VOCAB_FILE = "vocab.json"
NORM_STATS_FILE = "norm_stats.json"
REPORT_FILE = "preprocess_report.json"


# --------------------------------------------------------------------------------------------------
# Fold-independent part: window, sort, duplicates, set boundaries


@dataclass(frozen=True)
class CohortEvents:
    """Events in at least one sample's window, deduplicated, sorted by (subject, time, code), with set and
    subject boundaries; and every sample with its window as a range of those sets."""

    code: np.ndarray  # int32 [N], index into code_names
    value: np.ndarray  # float32 [N], NaN = value-less
    code_names: np.ndarray  # str [C], lexical order
    set_offsets: np.ndarray  # int64 [T+1], event ranges of sets
    set_time_us: np.ndarray  # int64 [T], absolute time of each set (microseconds since the epoch)
    subject_set_offsets: np.ndarray  # int64 [U+1], set ranges of subjects
    subject_ids: np.ndarray  # int64 [U], sorted; subjects with at least one event in a window
    subjects_with_events: np.ndarray  # int64, sorted; subjects with any timed event in the input at all
    samples: Samples  # every sample of these subjects' range, in (subject, prediction time) order
    sample_lower_us: np.ndarray  # int64 [P]: where each sample's window starts (included)
    sample_sets: tuple[np.ndarray, np.ndarray]  # ([P], [P]): the sample's sets are lo:hi (lo == hi: none)
    outside_by_subject: tuple[np.ndarray, np.ndarray, np.ndarray]  # (subject ids, events in, events outside)

    @property
    def n_events(self) -> int:
        return int(self.code.shape[0])

    def events_per_subject(self) -> np.ndarray:
        return np.diff(self.set_offsets[self.subject_set_offsets])


def _int_us(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since epoch as int64, null mask) of a timestamp column of any unit."""
    col = col.cast(pa.timestamp("us"))
    null = pc.is_null(col).to_numpy(zero_copy_only=False)
    filled = pc.fill_null(col, pa.scalar(0, pa.timestamp("us"))).cast(pa.int64())
    return filled.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), null


def _is_sorted(*keys: np.ndarray) -> bool:
    """Whether rows are in lexicographic order of `keys` (most significant first)."""
    if keys[0].size < 2:
        return True
    later = np.zeros(keys[0].size - 1, dtype=bool)  # already strictly after the previous row
    for k in keys:
        d = np.diff(k) if k.dtype.kind != "u" else np.diff(k.astype(np.int64))
        if np.any(~later & (d < 0)):
            return False
        later |= d > 0
    return True


def _lookup(keys: np.ndarray, query: np.ndarray, sorter: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(position in `keys`, found) of each query; `keys` sorted, or unsorted with its argsort `sorter`."""
    if keys.size == 0:
        return np.zeros(query.size, dtype=np.int64), np.zeros(query.size, dtype=bool)
    pos = np.clip(np.searchsorted(keys, query, sorter=sorter), 0, keys.size - 1)
    if sorter is not None:
        pos = sorter[pos]
    return pos, keys[pos] == query


def _starts_of_runs(*keys: np.ndarray) -> np.ndarray:
    """True where a row differs from the previous one in any of `keys` (and at row 0)."""
    new = np.zeros(keys[0].size, dtype=bool)
    new[:1] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def prepare_events(
    events: pa.Table, samples: Samples, params: PreprocessParams, report: dict[str, Any]
) -> CohortEvents:
    """Cut every sample's window, reduce duplicates and find set boundaries; counts go into
    `report["events"]`. An event is kept when it lies in at least one window of its subject's samples."""
    n_read = events.num_rows
    subject = events.column("subject_id").to_numpy().astype(np.int64, copy=False)
    time_us, time_null = _int_us(events.column("time"))
    enc = events.column("code").combine_chunks().dictionary_encode()
    raw_names = enc.dictionary.to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(raw_names, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    code = rank[enc.indices.to_numpy(zero_copy_only=False)].astype(np.int32)
    code_names = raw_names[order]
    value = events.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float32)
    nonfinite = np.isinf(value)  # NaN already means value-less; +-inf would poison every statistic
    value[nonfinite] = np.nan

    sample_ids = np.unique(samples.subject_id)
    _, known = _lookup(sample_ids, subject)
    timed_known = ~time_null & known
    subjects_with_events = np.unique(subject[timed_known])
    unknown = ~known & ~time_null

    k = np.flatnonzero(timed_known)
    subject, time_us, code, value = subject[k], time_us[k], code[k], value[k]
    if not _is_sorted(subject, time_us, code):
        # Stable, so rows equal in (subject, time, code) stay in input order: `last` depends on it.
        o = np.lexsort((code, time_us, subject))
        subject, time_us, code, value = subject[o], time_us[o], code[o], value[o]

    # Sets over every timed event, then each sample's window as a range of them: [lower, prediction], both in.
    new_time = _starts_of_runs(subject, time_us)
    set_starts = np.flatnonzero(new_time)
    set_subject, set_time = subject[set_starts], time_us[set_starts]
    lower = samples.lower_us(params.window_hours)
    lo = lex_searchsorted((set_subject, set_time), (samples.subject_id, lower), "left")
    hi = lex_searchsorted((set_subject, set_time), (samples.subject_id, samples.upper_us), "right")
    hi = np.maximum(hi, lo)
    cover = np.zeros(set_starts.size + 1, dtype=np.int64)
    np.add.at(cover, lo, 1)
    np.add.at(cover, hi, -1)
    covered = np.cumsum(cover)[:-1] > 0
    event_set = np.cumsum(new_time) - 1
    in_window = covered[event_set] if subject.size else np.zeros(0, dtype=bool)

    # Why an event is in no window: before its subject's first window, after its last prediction time, or in a
    # gap between windows (several samples whose windows do not touch).
    first_lower = np.full(sample_ids.size, np.iinfo(np.int64).max)
    last_upper = np.full(sample_ids.size, np.iinfo(np.int64).min)
    s_pos = np.searchsorted(sample_ids, samples.subject_id)
    np.minimum.at(first_lower, s_pos, lower)
    np.maximum.at(last_upper, s_pos, samples.upper_us)
    e_pos = np.searchsorted(sample_ids, subject)
    before = ~in_window & (time_us < first_lower[e_pos])
    after = ~in_window & (time_us > last_upper[e_pos])
    between = ~in_window & ~before & ~after
    n_in = np.bincount(e_pos, weights=in_window, minlength=sample_ids.size).astype(np.int64)
    n_out = np.bincount(e_pos, weights=~in_window, minlength=sample_ids.size).astype(np.int64)

    if not in_window.all():
        k = np.flatnonzero(in_window)
        subject, time_us, code, value = subject[k], time_us[k], code[k], value[k]
    n_kept_rows = int(subject.size)

    # Duplicate groups: rows equal in (subject, time, code).
    n = subject.size
    new_group = _starts_of_runs(subject, time_us, code)
    n_groups = int(new_group.sum())
    if params.duplicates != "keep" and n_groups < n:
        starts = np.flatnonzero(new_group)
        if params.duplicates == "mean":
            gid = np.cumsum(new_group) - 1
            has = ~np.isnan(value)
            sums = np.bincount(gid, weights=np.where(has, value, 0.0), minlength=n_groups)
            cnt = np.bincount(gid, weights=has, minlength=n_groups)
            with np.errstate(invalid="ignore", divide="ignore"):
                merged = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan).astype(np.float32)
            take = starts
        else:  # last
            take = np.append(starts[1:], n) - 1
            merged = value[take]
        subject, time_us, code, value = subject[take], time_us[take], code[take], merged

    kept_sets = np.flatnonzero(_starts_of_runs(subject, time_us))
    new_subject = _starts_of_runs(subject)
    subject_starts = np.flatnonzero(new_subject)
    before_set = np.r_[0, np.cumsum(covered)]  # kept sets before each set: renumbers the sample ranges
    lo_kept, hi_kept = before_set[lo], before_set[hi]

    report["events"] = {
        "read": n_read,
        "outside_window": {
            "before_window": int(before.sum()),
            "after_prediction_time": int(after.sum()),
            "between_windows": int(between.sum()),
            "without_time": int(time_null.sum()),
            "subject_without_sample": int(unknown.sum()),
        },
        "in_window": n_kept_rows,
        "duplicates_policy": params.duplicates,
        "duplicate_rows_merged": n_kept_rows - int(subject.size),
        "non_finite_values_made_value_less": int(nonfinite.sum()),
        "kept": int(subject.size),
        "value_less": int(np.isnan(value).sum()),
        "sets": int(kept_sets.size),
        "subjects_with_events_in_window": int(subject_starts.size),
    }
    return CohortEvents(
        code=code,
        value=value,
        code_names=code_names,
        set_offsets=np.append(kept_sets, subject.size).astype(np.int64),
        set_time_us=time_us[kept_sets],
        subject_set_offsets=np.append(np.flatnonzero(new_subject[kept_sets]), kept_sets.size).astype(np.int64),
        subject_ids=subject[subject_starts],
        subjects_with_events=subjects_with_events,
        samples=samples,
        sample_lower_us=lower,
        sample_sets=(lo_kept, hi_kept),
        outside_by_subject=(sample_ids, n_in, n_out),
    )


# --------------------------------------------------------------------------------------------------
# Per-fold statistics (train only)


@dataclass(frozen=True)
class FoldStats:
    """Vocabulary and normalisation of one fold, indexed by code (position in CohortEvents.code_names)."""

    token_of_code: np.ndarray  # int32 [C]: vocabulary index, UNK_CODE for codes not in the vocabulary
    tokens: list[str]  # vocabulary, index = token id
    train_counts: np.ndarray  # int64 [C]
    log1p: np.ndarray  # bool [C]
    center: np.ndarray  # float64 [C]
    scale: np.ndarray  # float64 [C], > 0
    n_values: np.ndarray  # int64 [C]: train values the statistics come from
    log_codes_absent: list[str]  # codes named in an explicit log_transform list but not in train


class TrainValueCounts:
    """The train values of one fold as exact counts: how often each distinct (code, float32 value) occurs.

    Mergeable shard by shard, and exact: every order statistic and every sum over the sorted values is
    recovered from it (`fit_fold`), so the statistics equal those of all train values held in memory at
    once. Its size grows with the number of distinct (code, value) pairs, not with the number of events:
    clinical values are recorded at a fixed precision (PhysioNet 2012: under 100,000 distinct pairs in
    5 M events, the same for any number of copies of the cohort). `code` ids are the caller's (they may
    be provisional, remapped in `fit_fold`); value-less events are not counted here.
    """

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)  # code << 32 | order-preserving bits of the value, sorted
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, code: np.ndarray, value: np.ndarray) -> None:
        keys, counts = np.unique((code.astype(np.int64) << 32) | _sortable_bits(value), return_counts=True)
        self._add_keys(keys, counts)

    def merge(self, other: "TrainValueCounts", code_map: np.ndarray) -> None:
        """Add `other`'s counts, its code ids turned into this one's by `code_map` (distinct ids)."""
        keys = (code_map[other.keys >> 32].astype(np.int64) << 32) | (other.keys & 0xFFFFFFFF)
        o = np.argsort(keys, kind="stable")  # (code_map need not keep the order)
        self._add_keys(keys[o], other.counts[o])

    def _add_keys(self, keys: np.ndarray, counts: np.ndarray) -> None:
        """Add counts of distinct, sorted keys."""
        if self.keys.size:
            keys, inv = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
            counts = np.bincount(inv, weights=np.concatenate([self.counts, counts]), minlength=keys.size)
        self.keys, self.counts = keys, counts.astype(np.int64)

    def entries(self, code_map: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(code, value float64, count) per distinct pair, sorted by (code_map[code], value)."""
        code = code_map[self.keys >> 32].astype(np.int64)
        bits = (self.keys & 0xFFFFFFFF).astype(np.uint32)
        o = np.argsort((code << 32) | bits, kind="stable")
        return code[o], _from_sortable_bits(bits[o]).astype(np.float64), self.counts[o]


def _sortable_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> int64 in [0, 2^32) whose order is the numeric order of the values (NaN excluded)."""
    u = np.ascontiguousarray(v, dtype=np.float32).view(np.uint32)
    return np.where(u & 0x80000000, ~u, u | 0x80000000).astype(np.int64)


def _from_sortable_bits(bits: np.ndarray) -> np.ndarray:
    return np.where(bits & 0x80000000, bits & 0x7FFFFFFF, ~bits).astype(np.uint32).view(np.float32)


class _SortedTrainValues:
    """The train values of every code in ascending order, expanded from (value, count) entries on demand:
    order statistics by position, and sums in the exact order of a sequential sum over the sorted values
    (what np.bincount(code, weights=...) over sorted values computed when the values were held in memory),
    so float64 results are bit for bit the same. Expansion goes in chunks: memory stays bounded."""

    CHUNK = 1 << 22

    def __init__(self, code: np.ndarray, value: np.ndarray, count: np.ndarray, n_codes: int):
        self.value, self.count, self.n_codes = value, count, n_codes
        self.bounds = np.searchsorted(code, np.arange(n_codes + 1))  # entries of code c: bounds[c]:bounds[c+1]
        self.cum = np.cumsum(count)  # expanded position just after each entry
        self.n = np.bincount(code, weights=count, minlength=n_codes).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.n)[:-1]]).astype(np.int64)  # expanded start per code

    def at(self, pos: np.ndarray) -> np.ndarray:
        """Values at expanded positions `pos` (all codes together, code-major)."""
        if self.value.size == 0:
            return np.full(pos.shape, np.nan)
        return self.value[np.minimum(np.searchsorted(self.cum, pos, side="right"), self.value.size - 1)]

    def runs(self):
        """(code, ascending values) chunks, code by code."""
        for c in np.flatnonzero(self.n).tolist():
            a, b = int(self.bounds[c]), int(self.bounds[c + 1])
            if self.n[c] <= self.CHUNK:
                yield c, np.repeat(self.value[a:b], self.count[a:b])
                continue
            for lo in range(0, int(self.n[c]), self.CHUNK):
                pos = self.starts[c] + np.arange(lo, min(lo + self.CHUNK, int(self.n[c])))
                yield c, self.at(pos)

    def sums(self, *terms) -> list[np.ndarray]:
        """Per code, for each `term(code, x) -> array`, the sequential float64 sum of term over the sorted x."""
        out = [np.zeros(self.n_codes) for _ in terms]
        for c, x in self.runs():
            for acc, term in zip(out, terms):
                # cumsum is a sequential sum; starting from the carried total continues it exactly
                acc[c] = np.cumsum(np.concatenate([[acc[c]], term(c, x)]))[-1]
        return out


def _quantiles(vals: _SortedTrainValues, transform, q: float) -> np.ndarray:
    """Quantile q of each code's (transformed) train values, numpy's 'linear' rule, exactly."""
    n = vals.n
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = pos - lo
    codes = np.arange(n.size)
    x_lo = transform(codes, vals.at(vals.starts + lo))
    x_hi = transform(codes, vals.at(vals.starts + hi))
    return np.where(n > 0, x_lo + frac * (x_hi - x_lo), np.nan)


def _skewness(vals: _SortedTrainValues, f) -> np.ndarray:
    """Population skewness g1 per code of f(x) (0 where the variance is 0 or there are no values)."""
    safe_n = np.maximum(vals.n, 1)
    (s1,) = vals.sums(lambda c, x: f(x))
    mean = s1 / safe_n

    def centred(c, x):
        return f(x) - mean[c]

    s2, s3 = vals.sums(lambda c, x: centred(c, x) * centred(c, x), lambda c, x: centred(c, x) * centred(c, x) * centred(c, x))
    m2, m3 = s2 / safe_n, s3 / safe_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m2 > 0, m3 / np.power(np.where(m2 > 0, m2, 1.0), 1.5), 0.0)


def _log1p0(x: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0))


def fit_fold(
    code_names: np.ndarray, train_counts: np.ndarray, values: TrainValueCounts, code_map: np.ndarray,
    params: PreprocessParams,
) -> FoldStats:  # fmt: skip
    """Vocabulary, log decision and normalisation from one fold's train events: `train_counts` [C] events
    per code (value-less ones too), `values` the train values, whose code ids `code_map` turns into
    positions in `code_names` (sorted). Exact: the same numbers as from all train values in memory."""
    n_codes = code_names.size
    in_vocab = train_counts >= params.min_code_count
    token_of_code = np.where(in_vocab, 2 + np.cumsum(in_vocab) - 1, UNK_CODE).astype(np.int32)
    tokens = [PAD_TOKEN, UNK_TOKEN, *code_names[in_vocab].tolist()]
    assert tokens[PAD_CODE] == PAD_TOKEN and tokens[UNK_CODE] == UNK_TOKEN

    vals = _SortedTrainValues(*values.entries(code_map), n_codes)
    n_values = vals.n
    minimum = np.full(n_codes, np.nan)
    minimum[n_values > 0] = vals.at(vals.starts[n_values > 0])  # first of each sorted group

    log_codes_absent: list[str] = []
    lt = params.log_transform
    if lt == "none":
        log1p = np.zeros(n_codes, dtype=bool)
    elif lt == "auto":
        nonneg = (n_values > 0) & (minimum >= 0)
        skew = _skewness(vals, lambda x: x)
        skew_log = _skewness(vals, _log1p0)
        log1p = nonneg & (skew > params.log_auto_min_skew) & (np.abs(skew_log) < np.abs(skew))
    else:
        wanted = set(lt)
        log1p = np.isin(code_names, list(wanted)) & in_vocab
        log_codes_absent = sorted(wanted - set(code_names[in_vocab].tolist()))

    # log1p is monotone: the order within each code is unchanged by the transform.
    def xt(c, x):
        return _log1p0(x) if log1p[c] else x

    def xt_vec(codes, x):
        return np.where(log1p[codes], _log1p0(x), x)

    safe_n = np.maximum(n_values, 1)
    (s1,) = vals.sums(xt)
    mean = s1 / safe_n
    (ss,) = vals.sums(lambda c, x: (xt(c, x) - mean[c]) ** 2)
    sd = np.sqrt(ss / safe_n)
    if params.normalisation == "robust":
        center = _quantiles(vals, xt_vec, 0.5)
        iqr = _quantiles(vals, xt_vec, 0.75) - _quantiles(vals, xt_vec, 0.25)
        scale = iqr / IQR_TO_SD
    else:
        center, scale = mean, sd
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))  # the floor: IQR -> sd -> 1
    center = np.where(n_values > 0, center, 0.0)
    return FoldStats(token_of_code, tokens, train_counts, log1p, center, scale, n_values, log_codes_absent)


def normalise(ev: CohortEvents, stats: FoldStats, clip: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens int32 [N], values float32 [N], values clamped to 0 before log1p) for every event."""
    tok = stats.token_of_code[ev.code]
    v = ev.value.copy()
    is_log = stats.log1p[ev.code]
    lv = v[is_log]
    clamped = int(np.sum(lv < 0))
    v[is_log] = np.log1p(np.maximum(lv, 0.0))
    # float32 arithmetic: the output is float32 and the statistics are already fixed
    z = (v - stats.center.astype(np.float32)[ev.code]) / stats.scale.astype(np.float32)[ev.code]
    np.clip(z, -clip, clip, out=z)
    # value-less events and <unk> (no statistics of its own) carry value 0
    z[np.isnan(z) | (tok == UNK_CODE)] = 0.0
    return tok, z, clamped


def stats_to_json(code_names: np.ndarray, stats: FoldStats, params: PreprocessParams) -> tuple[dict, dict]:
    """(vocab.json, norm_stats.json) contents; statistics keyed by code name, for vocabulary codes."""
    in_vocab = stats.token_of_code != UNK_CODE
    vocab = {
        "tokens": stats.tokens,
        "pad": PAD_CODE,
        "unk": UNK_CODE,
        "min_code_count": params.min_code_count,
        "train_counts": {name: int(n) for name, n in zip(code_names.tolist(), stats.train_counts.tolist())},
        "unk_codes": code_names[~in_vocab].tolist(),
    }
    norm = {
        "normalisation": params.normalisation,
        "clip": params.clip,
        "log_transform": params.log_transform,
        "log_auto_min_skew": params.log_auto_min_skew,
        "log_transform_codes_absent": stats.log_codes_absent,
        "codes": {
            str(code_names[i]): {
                "center": float(stats.center[i]),
                "scale": float(stats.scale[i]),
                "log1p": bool(stats.log1p[i]),
                "n_values": int(stats.n_values[i]),
            }
            for i in np.flatnonzero(in_vocab)
        },
    }
    return vocab, norm


# --------------------------------------------------------------------------------------------------
# The stage: all folds, atomically


STATIC_PREFIX = "static/"  # code of a descriptor event: static/<subjects column>, e.g. static/Age


def _refuse_reserved_codes(events: pa.Table, source: Any) -> None:
    """With descriptors: admission_set, STATIC_PREFIX is the descriptor tokens' namespace: a data code in it
    (a MEDS timed code literally named `static/Age`) would become the same token as the descriptor and its
    values would be normalised together. Such a code is a DataError naming the shard (checked on the
    distinct codes); PhysioNet 2012 and synthetic codes never start with it."""
    codes = pc.unique(events.column("code").combine_chunks().cast(pa.string())).drop_null()
    reserved = codes.filter(pc.starts_with(codes, STATIC_PREFIX))
    if len(reserved):
        first = sorted(reserved.to_pylist())[0]
        where = source if isinstance(source, (str, Path)) else None
        raise DataError(
            where,
            f"{len(reserved)} data code(s) start with {STATIC_PREFIX!r} (first: {first[:80]!r}), the namespace of "
            "the descriptor tokens (preprocess.descriptors: admission_set makes subjects.parquet's column Age the "
            f"token {STATIC_PREFIX}Age), so one would be taken for a descriptor. Rename the code(s) in the "
            "source, or set preprocess.descriptors: none",
        )


def descriptor_events(subjects: pa.Table) -> pa.Table:
    """The subjects' numeric descriptors (Age, Gender, Height, ICUType, admission Weight on PhysioNet 2012) as
    events at admission, coded static/<column> (preprocess.descriptors: admission_set). They then go through
    the same windowing, train-only normalisation and vocabulary as every measurement, and form (part of) the
    set at time 0, as SeFT feeds static data in as extra set elements. Missing descriptors give no event."""
    numeric = [f.name for f in subjects.schema
               if f.name not in ("subject_id", "admission_time") and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    parts = []
    for name in numeric:
        col = subjects.column(name).cast(pa.float32())
        keep = pc.and_(pc.is_valid(col), pc.is_valid(subjects.column("admission_time")))
        sub = subjects.filter(keep)
        parts.append(pa.table({
            "subject_id": sub.column("subject_id").cast(pa.int64()),
            "time": sub.column("admission_time").cast(pa.timestamp("us")),
            "code": pa.array([STATIC_PREFIX + name] * sub.num_rows, pa.string()),
            "numeric_value": col.filter(keep),
        }))
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                        ("numeric_value", pa.float32())])
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()


def preprocess(
    events: pa.Table,
    subjects: pa.Table,
    labels: pa.Table,
    splits: pa.Table,
    params: PreprocessParams,
    out_dir: str | Path,
    splits_path: str | Path = "splits.parquet",
) -> dict[str, Any]:
    """Preprocess a cohort held in memory (one shard): see `preprocess_shards`."""
    return preprocess_shards([lambda columns=None: events], subjects, labels, splits, params, out_dir, splits_path)


def preprocess_ingested(ingested: str | Path, splits: pa.Table, params: PreprocessParams, out_dir: str | Path,
                        splits_path: str | Path = "splits.parquet", labels: pa.Table | None = None,
                        fixed_stats: Any = None) -> dict[str, Any]:  # fmt: skip
    """Preprocess an ingest folder shard by shard (canonical.event_shards), in bounded memory, the shards'
    work spread over `params.num_workers` worker processes. `labels`: another task's samples (default: the
    ingest folder's labels.parquet); `fixed_stats`: see preprocess_shards."""
    subjects, ingested_labels = read_subjects_labels(ingested)
    paths = event_shards(ingested)
    return preprocess_shards(paths, subjects, ingested_labels if labels is None else labels, splits, params, out_dir,
                             splits_path, fixed_stats=fixed_stats)


def _read_shard(path: Path, columns: list[str] | None = None) -> pa.Table:
    return read_parquet(path, columns, what="events shard")


def _read(shard: Any, columns: list[str] | None = None) -> pa.Table:
    """A shard's events: a shard is the path of an events parquet file, or a reader
    `read(columns=None) -> pa.Table` (tests, the in-memory entry point), which only this process can run."""
    return _read_shard(Path(shard), columns) if isinstance(shard, (str, Path)) else shard(columns=columns)


def shard_workers(params: PreprocessParams, shards: Sequence[Any]) -> int:
    """How many worker processes run the shards: `preprocess.num_workers` (`auto`: the cores the runner gave
    this job, seqsetvae/threads.py), at most one per shard; 1 (this process, no pool) when there is a
    single shard or a shard is a reader rather than a path (a reader cannot go to another process)."""
    if len(shards) < 2 or not all(isinstance(s, (str, Path)) for s in shards):
        return 1
    return max(1, min(resolve_num_threads(params.num_workers), len(shards)))


@dataclass(frozen=True)
class _ShardInput:
    """Everything one shard's work needs, picklable, cut to the shard's subject id range: the work of both
    passes is a pure function of it (and, in pass 2, of the fitted statistics), so the results cannot
    depend on which process runs it or on how many run."""

    source: Any  # path (or, in this process only, a reader)
    static: pa.Table | None  # descriptor events of the range's subjects (descriptors: admission_set)
    params: PreprocessParams
    assignment: dict[int, tuple[np.ndarray, np.ndarray]]  # fold -> (subject ids sorted, split code), in range
    samples: Samples  # the samples of the range's subjects

    def prepare(self, report: dict[str, Any]) -> CohortEvents:
        events = _read(self.source)
        if self.static is not None:
            _refuse_reserved_codes(events, self.source)
            s = self.static
            events = pa.concat_tables([events.select(s.column_names).cast(s.schema), s])
        return prepare_events(events, self.samples, self.params, report)


@dataclass
class _Pass1Fold:
    """One shard's pass-1 figures for one fold; code ids are the shard's own (positions in its code_names)."""

    train_counts: np.ndarray  # int64 [shard codes]
    values: TrainValueCounts
    not_in_fold: int
    events_not_in_fold: int
    counts: dict[str, np.ndarray]  # split -> int64 [n_samples, n_sets, n_events] packed
    assigned: dict[str, np.ndarray]  # split -> int64 [subjects, samples, samples of subjects without events,
                                     # samples without events in their window, events in windows, outside]


@dataclass
class _Pass1Shard:
    events: dict[str, Any]  # report["events"] of the shard
    code_names: np.ndarray
    folds: dict[int, _Pass1Fold]


class _ShardLayout:
    """Per-subject / per-set sizes and owners of one shard's events, and each sample's packed extent."""

    def __init__(self, ev: CohortEvents):
        self.subject_ids = ev.subject_ids
        self.sets_per_subject = np.diff(ev.subject_set_offsets)
        self.events_per_subject = ev.events_per_subject()
        self.events_per_set = np.diff(ev.set_offsets)
        self.event_subject = np.repeat(np.arange(ev.subject_ids.size), self.events_per_subject)
        lo, hi = ev.sample_sets
        self.sample_sets = hi - lo
        self.sample_events = ev.set_offsets[hi] - ev.set_offsets[lo]

    @staticmethod
    def split_of(ids: np.ndarray, split_code: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split code per queried subject, -1 for one not in this fold; whether in the fold)."""
        pos, found = _lookup(ids, query)
        return np.where(found, split_code[pos], -1), found


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenated integer ranges lo[i]:hi[i] (vectorised; empty ranges give nothing)."""
    n = hi - lo
    total = int(n.sum())
    starts = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n)
    return starts + np.arange(total, dtype=np.int64)


def _pass1_shard(task: _ShardInput) -> _Pass1Shard:
    """Pass 1 of one shard: windows / deduplicate / sets, then per fold the train code counts, the train
    values as exact counts (each event once, however many windows hold it) and the size of every split."""
    shard_report: dict[str, Any] = {}
    ev = task.prepare(shard_report)
    layout = _ShardLayout(ev)
    smp = ev.samples
    packed = layout.sample_sets > 0
    with_events = _lookup(ev.subjects_with_events, smp.subject_id)[1]
    out_ids, n_in, n_out = ev.outside_by_subject
    folds = {}
    for fold, (ids, split_code) in task.assignment.items():
        subject_split, found = layout.split_of(ids, split_code, ev.subject_ids)
        event_split = subject_split[layout.event_subject]
        values = TrainValueCounts()
        has_value = (event_split == 0) & ~np.isnan(ev.value)
        values.add(ev.code[has_value], ev.value[has_value])
        sample_split, _ = layout.split_of(ids, split_code, smp.subject_id)
        io_split, _ = layout.split_of(ids, split_code, out_ids)
        counts, assigned = {}, {}
        for s_code, s_name in enumerate(SPLITS):
            sm = sample_split == s_code
            pm = sm & packed
            counts[s_name] = np.array([pm.sum(), layout.sample_sets[pm].sum(), layout.sample_events[pm].sum()],
                                      dtype=np.int64)  # fmt: skip
            io = io_split == s_code
            assigned[s_name] = np.array([
                np.sum(split_code == s_code), sm.sum(), np.sum(sm & ~with_events), np.sum(sm & with_events & ~packed),
                n_in[io].sum(), n_out[io].sum()], dtype=np.int64)  # fmt: skip
        folds[fold] = _Pass1Fold(
            train_counts=np.bincount(ev.code[event_split == 0], minlength=ev.code_names.size).astype(np.int64),
            values=values,
            not_in_fold=int(np.sum(~found)),
            events_not_in_fold=int(layout.events_per_subject[~found].sum()),
            counts=counts,
            assigned=assigned,
        )
    return _Pass1Shard(shard_report["events"], ev.code_names, folds)


def _pack(ev: CohortEvents, layout: _ShardLayout, which: np.ndarray, tokens: np.ndarray,
          values: np.ndarray) -> PackedSplit:  # fmt: skip
    """The packed piece of the samples `which` (positions, in order): each sample's sets (its window), times
    in hours since its window start, its events. A set in two samples' windows is packed in both."""
    lo, hi = ev.sample_sets
    sets = _ranges(lo[which], hi[which])
    events = _ranges(ev.set_offsets[sets], ev.set_offsets[sets + 1])
    start = np.repeat(ev.sample_lower_us[which], layout.sample_sets[which])
    return PackedSplit(
        codes=tokens[events],
        values=values[events],
        set_offsets=np.concatenate([[0], np.cumsum(layout.events_per_set[sets])]).astype(np.int64),
        set_times=((ev.set_time_us[sets] - start) / US_PER_HOUR).astype(np.float32),
        patient_offsets=np.concatenate([[0], np.cumsum(layout.sample_sets[which])]).astype(np.int64),
        subject_ids=ev.samples.subject_id[which],
        labels=ev.samples.label[which].astype(np.float32),
        prediction_times=ev.samples.prediction_us[which],
    )


def _pass2_shard(task: _ShardInput, code_names: np.ndarray, stats: dict[int, FoldStats]) -> dict[int, tuple]:
    """Pass 2 of one shard: per fold, (values clamped before log1p, {split: (packed piece, events <unk>,
    positives)}) for the splits the shard has samples of."""
    ev = task.prepare({})
    ev = dataclasses.replace(ev, code=np.searchsorted(code_names, ev.code_names)[ev.code].astype(np.int32),
                             code_names=code_names)  # fmt: skip
    layout = _ShardLayout(ev)
    packed = layout.sample_sets > 0
    out = {}
    for fold, (ids, split_code) in task.assignment.items():
        sample_split, _ = layout.split_of(ids, split_code, ev.samples.subject_id)
        tokens, values, clamped = normalise(ev, stats[fold], task.params.clip)
        pieces = {}
        for s_code, s_name in enumerate(SPLITS):
            which = np.flatnonzero((sample_split == s_code) & packed)
            if not which.size:
                continue
            piece = _pack(ev, layout, which, tokens, values)
            pieces[s_name] = (piece, int(np.sum(piece.codes == UNK_CODE)), int(piece.labels.sum()))
        out[fold] = (clamped, pieces)
    return out


def _init_worker() -> None:
    """A worker process computes with one thread: workers x threads = the cores the stage was given."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    pa.set_cpu_count(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # BLAS / OpenMP pools already loaded (numpy's)
    except ImportError:
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


# Imported once by the forkserver, so each worker starts warm: a cold 'spawn' worker spends most of its start
# and of its first shard importing these (figures: docs/preprocess.md).
_WORKER_MODULES = ["seqsetvae.data.preprocess", "pyarrow.parquet", "pyarrow.dataset"]


class _ShardRunner:
    """Runs a per-shard function over the shards and yields the results in shard order: in this process
    with one worker (no pool, no overhead), else in a pool of `workers` processes. Workers are forked from
    a 'forkserver' (a fresh interpreter that holds no threads or state of this process, torch included,
    and has imported _WORKER_MODULES once), or started with 'spawn' where there is no forkserver. At most
    2 x workers shards are in flight or done but not yet consumed, so at most that many shards' results
    are held in memory. (As with any such pool, a script that calls this must guard its top level with
    `if __name__ == "__main__":`; the CLI does.)"""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "_ShardRunner":
        if self.workers > 1:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(_WORKER_MODULES)
            else:
                ctx = multiprocessing.get_context("spawn")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[..., Any], tasks: Iterable[_ShardInput], *args: Any) -> Iterator[Any]:
        if self.pool is None:
            for task in tasks:
                yield fn(task, *args)
            return
        window: deque = deque()
        for task in tasks:
            window.append((task, self.pool.submit(fn, task, *args)))
            if len(window) >= 2 * self.workers:
                yield _worker_result(*window.popleft())
        while window:
            yield _worker_result(*window.popleft())


def _worker_result(task: _ShardInput, future: Future) -> Any:
    """The result of a shard's work in a pool worker; a worker that died (a signal, the kernel's
    out-of-memory killer) is a DataError naming the shard and saying that a rerun is safe: the output is
    written atomically at the end, and the work is a pure function of the inputs."""
    try:
        return future.result()
    except BrokenProcessPool:
        where = task.source if isinstance(task.source, (str, Path)) else None
        raise DataError(
            where,
            "a preprocess worker process died (killed by a signal, or by the kernel for lack of memory) before "
            "this shard's work came back; no output was written, and rerunning the stage is safe (it gives the "
            "same output). If it happens again for lack of memory, lower preprocess.num_workers",
        ) from None


@dataclass
class _FoldAccumulator:
    """What pass 1 gathers for one fold across shards."""

    train_counts: np.ndarray  # int64, by provisional code id
    values: TrainValueCounts
    not_in_fold: int = 0
    events_not_in_fold: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # split -> n_samples, n_sets, n_events packed
    assigned: dict = dataclasses.field(default_factory=dict)  # split -> _Pass1Fold.assigned, summed


# Params that change how the work is done, not what it gives: left out of the report, so the output is
# byte for byte the same for any value.
_EXECUTION_PARAMS = ("num_workers",)


def preprocess_shards(
    shards: Sequence[Any],
    subjects: pa.Table,
    labels: pa.Table,
    splits: pa.Table,
    params: PreprocessParams,
    out_dir: str | Path,
    splits_path: str | Path = "splits.parquet",
    shard_names: Sequence[str] | None = None,
    fixed_stats: Any = None,
) -> dict[str, Any]:
    """Write out_dir/fold_<k>/{vocab.json, norm_stats.json, train/, val/, test/} and the report, atomically.

    `fixed_stats` (seqsetvae.data.fixed_stats.FixedStats, None: fit them): another task's samples packed with
    the vocabulary and statistics of an earlier output (the main task's, which the backbone was pretrained
    with) instead of fitting them on this task's train windows; its vocab.json / norm_stats.json are copied.

    `shards` are the events, shard by shard: each a parquet path or a reader `read(columns=None)` (called
    more than once); subject-disjoint, in ascending subject id ranges (the canonical layout). Two passes:

    1. per shard, window / deduplicate / find sets (prepare_events) and gather, per fold, the train code
       counts, the train values as exact counts (TrainValueCounts) and the size of every packed split;
       then fit each fold's vocabulary and normalisation (fit_fold);
    2. per shard again, normalise with the fold's statistics and append each split's piece to its packed
       files (PackedSplitWriter).

    The per-shard work of both passes (`_pass1_shard`, `_pass2_shard`) runs in `shard_workers` processes;
    this process merges the results strictly in shard order. Events, sets and subjects come out in the
    order one pass over the whole cohort gives (by subject id), and the statistics are exact, so the output
    is byte for byte the output of the cohort as one shard, whatever the number of workers.
    """
    report: dict[str, Any] = {
        "params": {k: v for k, v in dataclasses.asdict(params).items() if k not in _EXECUTION_PARAMS}
    }
    names = list(shard_names) if shard_names is not None else [
        str(s) if isinstance(s, (str, Path)) else f"shard {k}" for k, s in enumerate(shards)]  # fmt: skip
    if subjects.num_rows == 0:
        raise DataError("subjects.parquet", "no subjects: the cohort is empty")
    static = None
    if params.descriptors == "admission_set":
        static = descriptor_events(subjects)
        report["descriptor_events"] = {"codes": sorted(set(static.column("code").to_pylist())), "events": static.num_rows}
    samples = samples_of(labels)
    folds = np.unique(splits.column("fold").to_numpy())
    if folds.size == 0:
        raise DataError(splits_path, "the split table is empty")
    if fixed_stats is not None:
        fixed_stats.check(folds.tolist(), params)
        report["statistics_from"] = fixed_stats.describe()
    assignment = {fold: fold_assignment(splits, fold) for fold in folds.tolist()}

    # Which subjects go with which shard (the subjects table, the descriptor events, the fold assignment
    # and the labels are cut by the shards' subject id ranges: shard k takes ids from its first up to the
    # next shard's first). Every event of shard k lies in its range, so the cut loses nothing it looks up.
    subj_ids = subjects.column("subject_id").to_numpy()
    first_ids = _shard_first_ids(shards, names)

    def shard_input(k: int) -> _ShardInput:
        s = None
        if static is not None:
            s = static.filter(pa.array(_range_of(k, first_ids, static.column("subject_id").to_numpy())))
        cut = {}
        for fold, (ids, split_code) in assignment.items():
            m = _range_of(k, first_ids, ids)
            cut[fold] = (ids[m], split_code[m])
        lm = _range_of(k, first_ids, samples.subject_id)
        part = Samples(*(a[lm] for a in (samples.subject_id, samples.prediction_us, samples.label,
                                          samples.window_start_us)))  # fmt: skip
        return _ShardInput(shards[k], s, params, cut, part)

    workers = shard_workers(params, shards)
    log.info("preprocess: %d shard(s), %d worker process(es)", len(shards), workers)
    with _ShardRunner(workers) as runner:
        # ---- pass 1: counts, code names, train values
        code_ids: dict[str, int] = {}  # code name -> provisional id (order of first appearance)
        acc = {fold: _FoldAccumulator(np.zeros(0, np.int64), TrainValueCounts()) for fold in assignment}
        event_counts: dict[str, Any] = {}
        for r in runner.map(_pass1_shard, (shard_input(k) for k in range(len(shards)))):
            event_counts = _add_counts(event_counts, r.events)
            prov = np.array([code_ids.setdefault(n, len(code_ids)) for n in r.code_names.tolist()], dtype=np.int64)
            for fold, f in r.folds.items():
                a = acc[fold]
                a.train_counts = _grow(a.train_counts, len(code_ids))
                a.train_counts[prov] += f.train_counts  # (prov: distinct ids)
                a.values.merge(f.values, prov)
                a.not_in_fold += f.not_in_fold
                a.events_not_in_fold += f.events_not_in_fold
                for s_name in SPLITS:
                    c = a.counts.setdefault(s_name, np.zeros(3, np.int64))
                    c += f.counts[s_name]
                    a.assigned[s_name] = a.assigned.get(s_name, 0) + f.assigned[s_name]
            del r
        report["events"] = event_counts
        for fold, a in acc.items():
            for s_name in SPLITS:
                _check_windows(a.assigned[s_name], event_counts, fold, s_name, params, splits_path)
                # A split without a sample trains, validates or tests on nothing: the training stages would fail
                # later on an empty array. (Its samples all lack events in their windows, or it had none.)
                if a.counts[s_name][0] == 0:
                    raise DataError(
                        splits_path,
                        f"fold {fold} {s_name}: no sample to pack: none of its {int(a.assigned[s_name][1])} sample(s) "
                        f"of {int(a.assigned[s_name][0])} subject(s) has an event in its window "
                        f"(preprocess.window_hours {params.window_hours:g}); widen the window or check the split",
                    )

        # Codes in lexical order, as one pass over the whole cohort numbers them.
        code_names = np.sort(np.array(list(code_ids), dtype=str))
        code_map = np.searchsorted(code_names, np.array(list(code_ids), dtype=str)).astype(np.int64)
        stats = {}
        for fold, a in acc.items():
            counts = np.zeros(code_names.size, np.int64)
            counts[code_map] = _grow(a.train_counts, len(code_ids))
            stats[fold] = (fit_fold(code_names, counts, a.values, code_map, params) if fixed_stats is None
                           else fixed_stats.fold_stats(fold, code_names))

        report["folds"] = {}
        with atomic_path(out_dir, is_dir=True) as tmp:
            writers, fold_reports = {}, {}
            for fold, a in acc.items():
                fold_dir = tmp / f"fold_{fold}"
                fold_dir.mkdir()
                if fixed_stats is None:
                    vocab_json, norm_json = stats_to_json(code_names, stats[fold], params)
                    write_json(fold_dir / VOCAB_FILE, vocab_json)
                    write_json(fold_dir / NORM_STATS_FILE, norm_json)
                else:
                    fixed_stats.copy_files(fold, fold_dir)
                for s_name in SPLITS:
                    writers[fold, s_name] = PackedSplitWriter(fold_dir / s_name, *a.counts[s_name].tolist())
                fold_reports[fold] = {
                    "vocab_size": len(stats[fold].tokens),
                    "log1p_codes": code_names[stats[fold].log1p].tolist(),
                    "values_clamped_to_0_before_log1p": 0,
                    "subjects_with_events_not_in_fold": a.not_in_fold,
                    "events_of_subjects_not_in_fold": a.events_not_in_fold,
                    "splits": {s: {"events_unk": 0, "positives": 0} for s in SPLITS},
                }

            # ---- pass 2: normalise and pack, shard by shard; pieces appended in shard order
            tasks = (shard_input(k) for k in range(len(shards)))
            for r in runner.map(_pass2_shard, tasks, code_names, stats):
                for fold, (clamped, pieces) in r.items():
                    fold_reports[fold]["values_clamped_to_0_before_log1p"] += clamped
                    for s_name, (piece, events_unk, positives) in pieces.items():
                        writers[fold, s_name].append(piece)
                        sr = fold_reports[fold]["splits"][s_name]
                        sr["events_unk"] += events_unk
                        sr["positives"] += positives
                del r

            for fold, a in acc.items():
                fold_report = fold_reports[fold]
                for s_name in SPLITS:
                    writers[fold, s_name].close()
                    n_samples, n_sets, n_events = a.counts[s_name].tolist()
                    n_subj, n_assigned, no_events, no_window, ev_in, ev_out = a.assigned[s_name].tolist()
                    sr = fold_report["splits"][s_name]
                    fold_report["splits"][s_name] = {
                        "subjects_assigned": n_subj,
                        "samples_assigned": n_assigned,
                        "samples": n_samples,
                        "sets": n_sets,
                        "events": n_events,
                        "events_unk": sr["events_unk"],
                        "positives": sr["positives"],
                        "dropped_samples": {"no_events": no_events, "no_events_in_window": no_window},
                        "subject_events_in_windows": ev_in,
                        "subject_events_outside_windows": ev_out,
                    }
                report["folds"][str(fold)] = fold_report
                log.info(
                    "fold %d: vocab %d, log1p %s; %s",
                    fold,
                    fold_report["vocab_size"],
                    fold_report["log1p_codes"],
                    "; ".join(
                        f"{s} {r['samples']} samples ({sum(r['dropped_samples'].values())} dropped) {r['sets']} sets {r['events']} events"
                        for s, r in fold_report["splits"].items()
                    ),
                )
            write_json(tmp / REPORT_FILE, report)
    return report


def _check_windows(assigned: np.ndarray, events: dict[str, Any], fold: int, split: str, params: PreprocessParams,
                   splits_path: str | Path) -> None:  # fmt: skip
    """No silent empty windows: stop when more than preprocess.max_outside_window_share of a split's events
    (of its subjects, timed) lies outside every sample's window, naming the share and the likely cause."""
    ev_in, ev_out = int(assigned[4]), int(assigned[5])
    total = ev_in + ev_out
    if total == 0 or ev_out / total <= params.max_outside_window_share:
        return
    why = events["outside_window"]
    causes = (f"{why['before_window']} before the first window of their subject (history before the stay, or a "
              f"birth row?), {why['after_prediction_time']} after the last prediction time, "
              f"{why['between_windows']} between windows (counts over every split)")
    raise DataError(
        splits_path,
        f"fold {fold} {split}: {ev_out} of {total} events ({ev_out / total:.1%}) lie outside every sample's window "
        f"[max(window_start, prediction_time - {params.window_hours:g} h), prediction_time]: {causes}. Check the "
        "prediction times and preprocess.window_hours (data.meds.window_start_column for windows from a start "
        "time), or set preprocess.max_outside_window_share: 1 to accept it knowingly",
    )


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros(n - a.size, a.dtype)]) if a.size < n else a


def _add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Sum two `report["events"]` dicts (numbers add, nested dicts merge, strings are the same)."""
    if not total:
        return part
    return {k: _add_counts(v, part[k]) if isinstance(v, dict) else v if isinstance(v, str) else v + part[k]
            for k, v in total.items()}  # fmt: skip


def _shard_first_ids(shards: Sequence[Any], names: Sequence[str]) -> np.ndarray:
    """First subject id of every shard (int64 max for an empty one), checked to be ascending and disjoint:
    the canonical layout, on which the output's subject order and the cut of the subjects table rely."""
    if len(shards) == 1:
        return np.array([np.iinfo(np.int64).min])
    firsts, prev_last, prev_name = [], None, None
    for shard, name in zip(shards, names):
        sid = _read(shard, ["subject_id"]).column("subject_id")
        if len(sid) == 0:
            firsts.append(np.iinfo(np.int64).max)
            continue
        lo, hi = pc.min(sid).as_py(), pc.max(sid).as_py()
        if prev_last is not None and lo <= prev_last:
            raise DataError(name, f"subject ids {lo}..{hi} overlap or precede those of {prev_name} (up to "
                            f"{prev_last}): shards must hold ascending, disjoint subject id ranges (rerun ingest)")  # fmt: skip
        firsts.append(lo)
        prev_last, prev_name = hi, name
    return np.array(firsts, dtype=np.int64)


def _range_of(k: int, first_ids: np.ndarray, sid: np.ndarray) -> np.ndarray:
    """Mask of the ids in shard k's range: from its first id (any id for shard 0) up to the next
    non-empty shard's first id. An empty shard's range is empty."""
    empty = np.iinfo(np.int64).max
    if first_ids[k] == empty and k > 0:
        return np.zeros(sid.size, dtype=bool)
    later = first_ids[k + 1 :]
    later = later[later != empty]
    lo = first_ids[k] if k > 0 else np.iinfo(np.int64).min
    mask = sid >= lo
    if later.size:
        mask &= sid < later[0]
    return mask
