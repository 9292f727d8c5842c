"""Windows: the events each sample sees, fold independent.

Per shard of events (or the whole cohort in one piece): keep the events inside at least one sample's
window [max(window_start, prediction_time - window_hours), prediction_time], counted by reason where not
(before the first window, after the last prediction time, between windows, without a time, of a subject
without a sample); reduce duplicates (`preprocess.duplicates`); find set (one timestamp) and subject
boundaries; and give every sample its window as a range of those sets. Vectorised over events: one sort by
(subject, time, code) and boundaries by `np.diff`, no Python loop over events, sets or subjects.

With descriptors (`preprocess.descriptors: admission_set`, descriptors.py), each sample's descriptor events
are placed at its window start: into its first set when that set lies exactly there, else as a set of their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import PreprocessParams
from seqsetvae.data.canonical import Samples, lex_searchsorted
from seqsetvae.data.descriptors import SampleDescriptors, SubjectDescriptors

# --------------------------------------------------------------------------------------------------
# Fold-independent part: window, sort, duplicates, set boundaries


@dataclass(frozen=True)
class DescriptorEvents:
    """Each sample's descriptor events, sorted by code within the sample, and where they go."""

    offsets: np.ndarray  # int64 [P+1], the event range of each sample
    code: np.ndarray  # int32 [D], index into CohortEvents.code_names
    value: np.ndarray  # float32 [D], NaN = value-less
    joins_first_set: np.ndarray  # bool [P]: the sample's first set lies at its window start and takes them
    report: dict[str, Any]  # SampleDescriptors.report, and how many joined a first set / had their own


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
    descriptors: DescriptorEvents | None = None  # preprocess.descriptors: admission_set

    @property
    def n_events(self) -> int:
        return int(self.code.shape[0])

    def events_per_subject(self) -> np.ndarray:
        return np.diff(self.set_offsets[self.subject_set_offsets])

    def with_code_names(self, code_names: np.ndarray) -> "CohortEvents":
        """The same events with code ids into `code_names` (sorted, a superset of this one's)."""
        to_new = np.searchsorted(code_names, self.code_names)
        d = self.descriptors
        if d is not None:
            d = dataclasses.replace(d, code=to_new[d.code].astype(np.int32))
        return dataclasses.replace(self, code=to_new[self.code].astype(np.int32), code_names=code_names,
                                   descriptors=d)  # fmt: skip


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


def lookup(keys: np.ndarray, query: np.ndarray, sorter: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    events: pa.Table, samples: Samples, params: PreprocessParams, report: dict[str, Any],
    descriptors: SubjectDescriptors | None = None,
) -> CohortEvents:
    """Cut every sample's window, reduce duplicates and find set boundaries; counts go into
    `report["events"]`. An event is kept when it lies in at least one window of its subject's samples.
    `descriptors` (the subjects' of `samples`): each sample's descriptor events, placed at its window start."""
    n_read = events.num_rows
    subject = events.column("subject_id").to_numpy().astype(np.int64, copy=False)
    time_us, time_null = _int_us(events.column("time"))
    enc = events.column("code").combine_chunks().dictionary_encode()
    raw_names = enc.dictionary.to_numpy(zero_copy_only=False).astype(str)
    if descriptors is not None:  # descriptor codes never equal data codes (descriptors.refuse_reserved_codes)
        raw_names = np.concatenate([raw_names, descriptors.code_names()]).astype(str)
    order = np.argsort(raw_names, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    code = rank[enc.indices.to_numpy(zero_copy_only=False)].astype(np.int32)
    code_names = raw_names[order]
    value = events.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float32)
    nonfinite = np.isinf(value)  # NaN already means value-less; +-inf would poison every statistic
    value[nonfinite] = np.nan

    sample_ids = np.unique(samples.subject_id)
    _, known = lookup(sample_ids, subject)
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

    kept_set_time = time_us[kept_sets]
    desc = None
    if descriptors is not None:
        desc = _place_descriptors(descriptors.for_samples(samples, lower), code_names, len(samples),
                                  (lo_kept, hi_kept), kept_set_time, lower)  # fmt: skip

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
        set_time_us=kept_set_time,
        subject_set_offsets=np.append(np.flatnonzero(new_subject[kept_sets]), kept_sets.size).astype(np.int64),
        subject_ids=subject[subject_starts],
        subjects_with_events=subjects_with_events,
        samples=samples,
        sample_lower_us=lower,
        sample_sets=(lo_kept, hi_kept),
        outside_by_subject=(sample_ids, n_in, n_out),
        descriptors=desc,
    )


def _place_descriptors(d: SampleDescriptors, code_names: np.ndarray, n_samples: int,
                       sample_sets: tuple[np.ndarray, np.ndarray], set_time_us: np.ndarray,
                       lower_us: np.ndarray) -> DescriptorEvents:  # fmt: skip
    """The samples' descriptor events as code ids, sorted by (sample, code), and whether each sample's first
    set lies at its window start (then they join it, else they are a set of their own at hour 0)."""
    code = np.searchsorted(code_names, d.code).astype(np.int32)
    o = np.lexsort((code, d.sample))
    counts = np.bincount(d.sample, minlength=n_samples)
    lo, hi = sample_sets
    first_at_start = np.zeros(n_samples, dtype=bool)
    nonempty = np.flatnonzero(hi > lo)
    first_at_start[nonempty] = set_time_us[lo[nonempty]] == lower_us[nonempty]
    joins = (counts > 0) & first_at_start
    report = dict(d.report, joined_the_first_set=int(joins.sum()),
                  in_a_set_of_their_own=int(np.sum((counts > 0) & ~joins)))  # fmt: skip
    return DescriptorEvents(np.r_[0, np.cumsum(counts)].astype(np.int64), code[o], d.value[o], joins, report)
