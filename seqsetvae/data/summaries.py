"""Per-variable summary features of canonical events: the feature set of the classical baselines.

For every subject and every code, over the observation window `[admission, admission + window_hours]`
(both ends included: the MEDS convention lets a prediction at `prediction_time` use data stamped at it):

    <code>__last    value of the last measurement (ties at one time: the later row)
    <code>__mean    mean value
    <code>__min     minimum value
    <code>__max     maximum value
    <code>__std     sample standard deviation (ddof 1; NaN with a single value)
    <code>__count   number of events of the code (0 when never measured: a count is never missing)
    <code>__hours_since_last   window end minus the time of the last event, in hours

followed by the static descriptors of the subjects table (every column but subject_id, admission_time,
group), under their own names. Value statistics use events with a numeric value only; `count` and
`hours_since_last` count every event of the code. Absent values are NaN: imputation is the caller's choice.

Works for any canonical cohort: the codes are the ones found in the events (sorted), or a fixed list given
by the caller, e.g. the training split's codes, so that train and test share one column layout.

`per_variable_summaries` is dense (subjects x codes x 7 float64) and takes the whole cohort's events: for
small cohorts and as the reference. The baselines use `per_sample_summaries` (below): the same statistics
per SAMPLE (subject_id, prediction_time) over the sample's window, as a scipy CSR matrix, built from the
events one table (shard) at a time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from seqsetvae.data.canonical import (
    AGE_AT_PREDICTION,
    SAMPLES_SCHEMA,
    SUBJECT_KEY_COLUMNS,
    US_PER_HOUR,
    lex_searchsorted,
    refuse_age_column,
    samples_of,
    years_between,
)
from seqsetvae.errors import DataError

log = logging.getLogger(__name__)

STATS: tuple[str, ...] = ("last", "mean", "min", "max", "std", "count", "hours_since_last")
SEPARATOR = "__"


def feature_name(code: str, stat: str) -> str:
    """Column name of one summary statistic of one code."""
    return f"{code}{SEPARATOR}{stat}"


def _as_table(table: pa.Table | pd.DataFrame, columns: Sequence[str], what: str) -> pa.Table:
    cols = list(table.column_names if isinstance(table, pa.Table) else table.columns)
    missing = [c for c in columns if c not in cols]
    if missing:
        raise DataError(None, f"{what} table lacks column(s) {missing}; has {cols}")
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table[list(columns)], preserve_index=False)
    return table.select(list(columns)).combine_chunks()


def timestamps_us(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps as int64 microseconds, and a mask of the ones that are not missing."""
    ints = col.cast(pa.timestamp("us", getattr(col.type, "tz", None))).cast(pa.int64())
    valid = ints.is_valid().to_numpy(zero_copy_only=False)
    return pc.fill_null(ints, 0).to_numpy(), valid


def per_variable_summaries(
    events: pa.Table | pd.DataFrame,
    subjects: pa.Table | pd.DataFrame,
    window_hours: float,
    codes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Summary features, one row per subject of `subjects` (index `subject_id`, in that table's order).

    `events`: canonical events (subject_id, time, code, numeric_value). `subjects`: subject_id,
    admission_time and descriptor columns. `codes`: the codes to summarise (default: all in the window);
    events of other codes are left out and counted in `result.attrs["events_other_codes"]`, events outside
    the window (or without a time) in `result.attrs["events_outside_window"]`.
    """
    if not window_hours > 0:
        raise DataError(None, f"window_hours must be > 0, got {window_hours}")
    ev = _as_table(events, ("subject_id", "time", "code", "numeric_value"), "events")
    subj_cols = list(subjects.column_names if isinstance(subjects, pa.Table) else subjects.columns)
    subj = _as_table(subjects, ["subject_id", "admission_time"] + [c for c in subj_cols
                                                                   if c not in ("subject_id", "admission_time")],
                     "subjects").to_pandas()
    ids = subj["subject_id"].to_numpy(np.int64)
    id_index = pd.Index(ids)
    if id_index.has_duplicates:
        dup = id_index[id_index.duplicated()].unique()[:5].tolist()
        raise DataError(None, f"subjects table has duplicate subject_id(s), e.g. {dup}")
    admission_us, has_admission = timestamps_us(pa.array(subj["admission_time"]))
    if not has_admission.all():
        bad = ids[~has_admission][:5].tolist()
        raise DataError(None, f"{int((~has_admission).sum())} subject(s) without admission_time, e.g. {bad}")

    # Map every event to its subject's row; an event of an unknown subject has no admission time.
    row = id_index.get_indexer(ev["subject_id"].to_numpy())
    if (row < 0).any():
        unknown = pd.unique(ev["subject_id"].to_numpy()[row < 0])[:5].tolist()
        n_unknown = int((row < 0).sum())
        raise DataError(None, f"{n_unknown} event(s) of subject(s) not in the subjects table, e.g. {unknown}")
    time_us, has_time = timestamps_us(ev["time"])
    rel_us = time_us - admission_us[row]
    # Events without a time (MEDS static events) belong to no window; they are counted, not summarised.
    in_window = has_time & (rel_us >= 0) & (rel_us <= window_hours * US_PER_HOUR)

    if ev["code"].null_count:
        raise DataError(None, f"events table has {ev['code'].null_count} event(s) without a code")
    encoded = pc.dictionary_encode(ev["code"]).combine_chunks()
    code_of = encoded.indices.to_numpy()  # index into `dictionary` per event
    dictionary = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    if codes is None:
        all_codes = sorted(set(dictionary[np.unique(code_of[in_window])].tolist()))
    else:
        all_codes = [str(c) for c in codes]
        if len(set(all_codes)) != len(all_codes):
            raise DataError(None, "codes list has duplicates")
    col = pd.Index(all_codes).get_indexer(dictionary)[code_of]  # -1: a code not summarised
    other = in_window & (col < 0)
    keep = in_window & (col >= 0)

    n_subj, n_codes = len(ids), len(all_codes)
    cell = row[keep].astype(np.int64) * n_codes + col[keep]
    rel = rel_us[keep]
    value = ev["numeric_value"].cast(pa.float64()).to_numpy(zero_copy_only=False)[keep]  # null -> NaN
    # Time order within a (subject, code) cell; ties keep the input order (stable sorts), so "last" is the
    # later row. One packed int64 key sorts faster than a two-key lexsort (one pass, not two), when it cannot
    # overflow.
    span = int(rel.max()) + 1 if rel.size else 1
    if n_subj * n_codes * span < 2**62:
        order = np.argsort(cell * span + rel, kind="stable")
    else:
        order = np.lexsort((rel, cell))
    cell, rel, value = cell[order], rel[order], value[order]
    stats = _cell_stats(cell, value)
    stats["hours_since_last"] = window_hours - rel[stats.pop("_last_row")] / US_PER_HOUR

    grid = np.full((len(STATS), n_subj * n_codes), np.nan)
    grid[STATS.index("count")] = 0.0  # never measured: a count of 0, not a missing count
    for k, stat in enumerate(STATS):
        grid[k, stats["cell"]] = stats[stat]
    # [stat, subject, code] -> [subject, code, stat] -> one row per subject, code-major columns.
    block = grid.reshape(len(STATS), n_subj, n_codes).transpose(1, 2, 0).reshape(n_subj, n_codes * len(STATS))
    columns = [feature_name(c, s) for c in all_codes for s in STATS]
    result = pd.DataFrame(block, index=pd.Index(ids, name="subject_id"), columns=columns)

    descriptors = [c for c in subj.columns if c not in SUBJECT_KEY_COLUMNS]
    clash = [d for d in descriptors if d in result.columns]
    if clash:
        raise DataError(None, f"descriptor column(s) {clash} clash with summary feature names")
    for d in descriptors:
        result[d] = descriptor_values(subj[d])

    result.attrs["events_outside_window"] = int((~in_window).sum())
    result.attrs["events_other_codes"] = int(other.sum())
    log.debug(
        "summaries: %d subjects x %d codes; %d events outside the %g h window, %d of other codes",
        n_subj, n_codes, result.attrs["events_outside_window"], window_hours, result.attrs["events_other_codes"],
    )
    return result


def _cell_stats(cell: np.ndarray, value: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics per run of equal `cell` (sorted): segment reductions, NaN values skipped."""
    n = cell.size
    if n == 0:
        empty = np.zeros(0)
        return {"cell": np.zeros(0, np.int64), "_last_row": np.zeros(0, np.int64),
                **{s: empty for s in STATS if s != "hours_since_last"}}
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    ends = np.r_[starts[1:], n] - 1
    valid = ~np.isnan(value)
    n_valid = np.add.reduceat(valid.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.add.reduceat(np.where(valid, value, 0.0), starts) / n_valid  # 0/0 -> NaN
        group = np.repeat(np.arange(starts.size), ends - starts + 1)
        sq = np.add.reduceat(np.where(valid, (value - mean[group]) ** 2, 0.0), starts)
        std = np.where(n_valid > 1, np.sqrt(sq / (n_valid - 1)), np.nan)
    last_valid = np.maximum.reduceat(np.where(valid, np.arange(n), -1), starts)
    return {
        "cell": cell[starts],
        "_last_row": ends,  # rows are in time order: the last row of a cell is its last event
        "last": np.where(last_valid >= starts, value[np.maximum(last_valid, 0)], np.nan),
        "mean": mean,
        "min": np.fmin.reduceat(value, starts),  # fmin/fmax skip NaN (all NaN -> NaN)
        "max": np.fmax.reduceat(value, starts),
        "std": std,
        "count": (ends - starts + 1).astype(np.float64),
    }


# --------------------------------------------------------------------------------------------------
# Per-sample summaries as a sparse matrix (issue 28 item 4): bounded memory at MEDS scale.
#
# A sample is (subject_id, prediction_time) with an optional window_start. Its window holds the events
# with a time in [lower, prediction_time], both ends included, lower = max(window_start, prediction_time -
# window_hours) (window_start null: prediction_time - window_hours). Events without a time are in no window.
#
# The matrix is CSR, one row per sample, the columns of `per_variable_summaries` (code-major statistics,
# then the descriptors). Its missing-value rule: an entry that is NOT STORED is missing (NaN), except in a
# `count` column, where it is 0 (never measured). Every present value is stored, zeros included (explicit
# zeros: min 0, hours_since_last 0 at the window end, a descriptor 0), so a stored 0 and an absent entry
# differ; `densify` turns rows back into today's dense values. Do not call `eliminate_zeros()` on it.

def samples_from_labels(subjects: pa.Table, labels: pa.Table) -> pa.Table:
    """A samples table (canonical SAMPLES_SCHEMA, sorted by (subject_id, prediction_time)) from a label table
    without window starts (a plain MEDS label table, or hand-built test tables): each label row is one sample
    whose window starts at the subject's admission, as the PhysioNet 2012 and synthetic sources set it. The
    ingest stage's labels.parquet is already a samples table and needs none of this."""
    lab_ids = labels.column("subject_id").to_numpy()
    subj_ids = subjects.column("subject_id").to_numpy()
    pos = pd.Index(subj_ids).get_indexer(lab_ids)
    if (pos < 0).any():
        raise DataError(None, f"{int((pos < 0).sum())} label row(s) of subject(s) not in the subjects table, "
                              f"e.g. {lab_ids[pos < 0][:5].tolist()}")
    admission = subjects.column("admission_time").cast(pa.timestamp("us")).take(pa.array(pos))
    table = pa.Table.from_arrays(
        [pa.array(lab_ids, pa.int64()), labels.column("prediction_time").cast(pa.timestamp("us")),
         labels.column("boolean_value"), admission],
        schema=SAMPLES_SCHEMA,
    )
    return table.sort_by([("subject_id", "ascending"), ("prediction_time", "ascending")])


def check_samples(samples: pa.Table) -> None:
    """The sample contract: the columns of SAMPLES_SCHEMA, prediction_time present, sorted by (subject_id,
    prediction_time) with the pair unique (canonical.samples_of, the one home of the order check)."""
    missing = [c for c in SAMPLES_SCHEMA.names if c not in samples.column_names]
    if missing:
        raise DataError(None, f"samples table lacks column(s) {missing}; has {samples.column_names}")
    n_null = samples.column("prediction_time").null_count
    if n_null:
        raise DataError(None, f"{n_null} sample(s) without prediction_time")
    samples_of(samples)


@dataclass
class SparseSummaries:
    """Per-sample summaries: `matrix` (CSR float64, samples x columns; the missing-value rule above), its
    `columns` (names), `zero_fill` (per column: True where an absent entry means 0, i.e. `count` columns),
    the sample keys `subject_id` / `prediction_time` (int64 microseconds) per row, and counts in `attrs`."""

    matrix: sp.csr_matrix
    columns: list[str]
    zero_fill: np.ndarray
    subject_id: np.ndarray
    prediction_time_us: np.ndarray
    attrs: dict[str, int] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """Dense frame (index subject_id, prediction_time): for tests and small cohorts only."""
        index = pd.MultiIndex.from_arrays(
            [self.subject_id, self.prediction_time_us.astype("datetime64[us]")],
            names=["subject_id", "prediction_time"])
        return pd.DataFrame(densify(self.matrix, self.zero_fill), index=index, columns=self.columns)


def densify(matrix: sp.csr_matrix, zero_fill: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """Dense rows of a summaries CSR matrix under its missing-value rule: absent entries NaN, or 0 in the
    `zero_fill` columns; stored entries (explicit zeros included) as stored. Memory: rows x columns."""
    matrix = sp.csr_matrix(matrix)
    out = np.where(np.asarray(zero_fill, bool), 0.0, np.nan).astype(dtype)[None, :].repeat(matrix.shape[0], 0)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    out[rows, matrix.indices] = matrix.data
    return out


def zero_fill_of(columns: Sequence[str]) -> np.ndarray:
    """Per column name: True for a `count` column (absent = 0), False otherwise (absent = NaN)."""
    suffix = feature_name("", "count")
    return np.array([c.endswith(suffix) for c in columns], dtype=bool)


def sample_summary_block(
    events: pa.Table,
    sample_sid: np.ndarray,
    sample_pt_us: np.ndarray,
    sample_lower_us: np.ndarray,
    window_hours: float,
    code_ids: dict[str, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Summaries of the samples given (sorted by (subject, prediction_time)) over the canonical `events`
    (one shard or any part of the cohort holding these samples' subjects' events) as COO triples
    (row into the samples given, column, value), sorted by row then column, under the missing-value rule.
    Codes are columns `code_ids[code] * len(STATS) + stat`; a code not yet in `code_ids` is added (the
    caller maps the ids to the final column order). Also the counts: events of these subjects in no
    sample's window (or without a time), as `events_outside_window`."""
    ev = _as_table(events, ("subject_id", "time", "code", "numeric_value"), "events")
    if ev["code"].null_count:
        raise DataError(None, f"events table has {ev['code'].null_count} event(s) without a code")
    ev_sid = ev["subject_id"].to_numpy()
    time_us, has_time = timestamps_us(ev["time"])
    of_samples = np.isin(ev_sid, sample_sid)
    # Timed events of these subjects in (subject, time) order; ties keep the input order (stable), so the
    # later row of one time is "last", as in per_variable_summaries.
    idx = np.flatnonzero(has_time & of_samples)
    idx = idx[np.lexsort((time_us[idx], ev_sid[idx]))]
    k_sid, k_t = ev_sid[idx], time_us[idx]
    lo = lex_searchsorted((k_sid, k_t), (sample_sid, sample_lower_us), "left")
    hi = lex_searchsorted((k_sid, k_t), (sample_sid, sample_pt_us), "right")
    n_in = np.maximum(hi - lo, 0)
    total = int(n_in.sum())
    sample_of = np.repeat(np.arange(sample_sid.size, dtype=np.int64), n_in)
    starts = np.cumsum(n_in) - n_in
    pos = np.arange(total, dtype=np.int64) - np.repeat(starts, n_in) + np.repeat(lo, n_in)
    ev_of = idx[pos]  # the event of each (sample, event) pair, samples in order, events in time order
    covered = np.zeros(ev_sid.size, bool)
    covered[ev_of] = True

    encoded = pc.dictionary_encode(ev["code"]).combine_chunks()
    dictionary = encoded.dictionary.to_pylist()
    local_to_id = np.array([code_ids.setdefault(c, len(code_ids)) for c in dictionary], dtype=np.int64)
    code = local_to_id[encoded.indices.to_numpy()[ev_of]] if dictionary else np.zeros(0, np.int64)
    value = ev["numeric_value"].cast(pa.float64()).to_numpy(zero_copy_only=False)[ev_of]
    # hours_since_last = window_hours - (t - (prediction_time - window)) / 1 h: for a window that starts
    # exactly window_hours before prediction_time this is per_variable_summaries' expression, bit for bit.
    window_us = window_length_us(window_hours)
    rel = time_us[ev_of] - (sample_pt_us[sample_of] - window_us)

    n_codes = max(len(code_ids), 1)
    cell = sample_of * n_codes + code
    order = np.argsort(cell, kind="stable")  # within a cell the pairs stay in time order
    cell, rel, value = cell[order], rel[order], value[order]
    stats = _cell_stats(cell, value)
    stats["hours_since_last"] = window_hours - rel[stats.pop("_last_row")] / US_PER_HOUR
    cells = stats.pop("cell")
    n_stats = len(STATS)
    rows = np.repeat(cells // n_codes, n_stats)
    cols = (np.repeat((cells % n_codes) * n_stats, n_stats) + np.tile(np.arange(n_stats), cells.size))
    vals = np.stack([stats[s] for s in STATS], axis=1).ravel()  # [cell, stat], stat fastest
    keep = ~np.isnan(vals)  # absent = NaN: only present values are stored (count is always present, >= 1)
    counts = {"events_outside_window": int((of_samples & ~covered).sum()),
              "events_in_windows": total}
    return rows[keep], cols[keep], vals[keep], counts


def window_length_us(window_hours: float) -> int:
    """The window length in whole microseconds."""
    if not window_hours > 0:
        raise DataError(None, f"window_hours must be > 0, got {window_hours}")
    return int(round(window_hours * US_PER_HOUR))


def sample_window_lower_us(samples: pa.Table, window_hours: float) -> np.ndarray:
    """Each sample's window start, int64 microseconds (canonical.Samples.lower_us, the one home of the rule:
    max(window_start, prediction_time - window_hours))."""
    window_length_us(window_hours)  # refuses a window that is not > 0
    return samples_of(samples).lower_us(window_hours)


def per_sample_summaries(
    event_tables: Iterable[pa.Table],
    samples: pa.Table,
    subjects: pa.Table,
    window_hours: float,
) -> SparseSummaries:
    """Summaries of every sample of `samples` (SAMPLES_SCHEMA, sorted) as a CSR matrix, one row per sample in
    that order: the statistics of `per_variable_summaries` per (sample, code) over the sample's window
    (hours_since_last measured from prediction_time), for the codes with an event in some window (sorted),
    then the subjects' descriptor columns (every column of `subjects` but subject_id, admission_time,
    group, birth_time; string categories as category numbers, `string_descriptors`), per sample from its
    subject, and with a `birth_time` column the age at the prediction time (AGE_AT_PREDICTION).

    `event_tables`: the canonical events in subject order, one table at a time (e.g. the ingest shards,
    read one by one: only one shard's events and its samples' expanded windows are in memory), every
    subject's events in one table. Samples whose subject has no event get empty rows (counts 0).
    `attrs`: `events_outside_window` (events of these samples' subjects in no window, or without a time),
    `events_in_windows` ((sample, event) pairs summarised)."""
    check_samples(samples)
    sid = samples.column("subject_id").to_numpy()
    pt, _ = timestamps_us(samples.column("prediction_time"))
    lower = sample_window_lower_us(samples, window_hours)
    n = sid.size

    code_ids: dict[str, int] = {}
    parts: list[tuple[np.ndarray, np.ndarray]] = []  # per table: (indices in code-id space, data)
    row_counts = np.zeros(n, np.int64)
    attrs = {"events_outside_window": 0, "events_in_windows": 0}
    done = 0  # samples before this row belong to earlier tables
    for k, events in enumerate(event_tables):
        ev_sid = events.column("subject_id")
        if events.num_rows == 0:
            continue
        lo_sid, hi_sid = pc.min(ev_sid).as_py(), pc.max(ev_sid).as_py()
        s0, s1 = int(np.searchsorted(sid, lo_sid, "left")), int(np.searchsorted(sid, hi_sid, "right"))
        if s0 < done:
            raise DataError(None, f"events table {k} holds subject {lo_sid}, whose samples an earlier table "
                                  "already covered: tables must come in subject order, each subject in one")
        if s1 > s0:
            rows, cols, vals, counts = sample_summary_block(events, sid[s0:s1], pt[s0:s1], lower[s0:s1],
                                                            window_hours, code_ids)
            row_counts[s0:s1] = np.bincount(rows, minlength=s1 - s0)
            parts.append((cols.astype(np.int32), vals))
            for key in attrs:
                attrs[key] += counts[key]
        done = max(done, s1)

    # Final code order: the codes with an event in some window, sorted; columns code-major as in
    # per_variable_summaries. (A code seen only outside windows has no stored count and is not a column.)
    n_stats = len(STATS)
    names = np.array(list(code_ids), dtype=object)
    present = np.zeros(len(code_ids), bool)
    for cols, _ in parts:
        present[np.unique(cols // n_stats)] = True
    codes = sorted(names[present].tolist())
    new_id = np.full(len(code_ids), -1, np.int64)
    new_id[[code_ids[c] for c in codes]] = np.arange(len(codes))
    # Into one preallocated pair of arrays, each table's part freed once copied: one copy at a time.
    total = sum(v.size for _, v in parts)
    indices, data = np.empty(total, np.int32), np.empty(total, np.float64)
    at = 0
    parts.reverse()
    while parts:
        c, v = parts.pop()
        indices[at:at + v.size] = new_id[c // n_stats] * n_stats + c % n_stats
        data[at:at + v.size] = v
        at += v.size
        del c, v
    indptr = np.r_[0, np.cumsum(row_counts)]
    del new_id
    code_part = sp.csr_matrix((data, indices, indptr), shape=(n, len(codes) * n_stats))
    code_part.has_sorted_indices = False
    code_part.sort_indices()

    desc_part, descriptors = descriptor_block(subjects, sid, pt)
    columns = [feature_name(c, s) for c in codes for s in STATS]
    clash = [d for d in descriptors if d in set(columns)]
    if clash:
        raise DataError(None, f"descriptor column(s) {clash} clash with summary feature names")
    columns += descriptors
    del data, indices
    matrix = sp.hstack([code_part, desc_part], format="csr") if descriptors else code_part
    del code_part
    return SparseSummaries(matrix=matrix, columns=columns, zero_fill=zero_fill_of(columns), subject_id=sid,
                           prediction_time_us=pt, attrs=attrs)


def descriptor_levels(column: pd.Series) -> list[str] | None:
    """The categories of a text descriptor column, sorted (code point order); None for a numeric one."""
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return None
    return sorted({str(v) for v in column.dropna()}, key=lambda c: c.encode("utf-8"))


def descriptor_values(column: pd.Series) -> np.ndarray:
    """A descriptor column as float64: numbers as they are; a text column (a categorical descriptor: MEDS
    ingest makes the static code GENDER//F the descriptor GENDER = "F") as each category's position in
    `descriptor_levels` (NaN where missing), which the baselines treat as categories (one-hot / native
    categories: baselines.text_descriptors)."""
    levels = descriptor_levels(column)
    if levels is None:
        return pd.to_numeric(column, errors="raise").to_numpy(np.float64)
    code = {c: float(i) for i, c in enumerate(levels)}
    return np.array([np.nan if pd.isna(v) else code[str(v)] for v in column], dtype=np.float64)


def descriptor_block(subjects: pa.Table, sample_sid: np.ndarray,
                      sample_time_us: np.ndarray | None = None) -> tuple[sp.csr_matrix, list[str]]:
    """The subjects' descriptors per sample (CSR, NaN not stored) and their names; where the subjects table
    has `birth_time` (a MEDS cohort with MEDS_BIRTH rows) and the samples' prediction times are given, also
    the age at each sample's prediction time in years (AGE_AT_PREDICTION)."""

    descriptors = [c for c in subjects.column_names if c not in SUBJECT_KEY_COLUMNS]
    subj_ids = subjects.column("subject_id").to_numpy()
    index = pd.Index(subj_ids)
    if index.has_duplicates:
        raise DataError(None, f"subjects table has duplicate subject_id(s), e.g. "
                              f"{index[index.duplicated()].unique()[:5].tolist()}")
    pos = index.get_indexer(sample_sid)
    if (pos < 0).any():
        raise DataError(None, f"{int((pos < 0).sum())} sample(s) of subject(s) not in the subjects table, "
                              f"e.g. {pd.unique(sample_sid[pos < 0])[:5].tolist()}")
    columns = [descriptor_values(subjects.column(d).to_pandas())[pos] for d in descriptors]
    if "birth_time" in subjects.column_names and sample_time_us is not None:
        refuse_age_column(subjects.column_names, None)
        birth_us, has_birth = timestamps_us(subjects.column("birth_time"))
        age = years_between(birth_us[pos], sample_time_us)
        columns.append(np.where(has_birth[pos], age, np.nan))
        descriptors = descriptors + [AGE_AT_PREDICTION]
    values = np.column_stack(columns) if columns else np.zeros((sample_sid.size, 0))
    present = ~np.isnan(values)
    rows, cols = np.nonzero(present)  # row-major: sorted by row, then column
    block = sp.csr_matrix((values[rows, cols], cols.astype(np.int32), np.r_[0, np.cumsum(present.sum(1))]),
                          shape=values.shape)
    return block, descriptors
