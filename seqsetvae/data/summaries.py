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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.data.canonical import SUBJECT_KEY_COLUMNS
from seqsetvae.errors import DataError

log = logging.getLogger(__name__)

STATS: tuple[str, ...] = ("last", "mean", "min", "max", "std", "count", "hours_since_last")
SEPARATOR = "__"
_HOUR_US = 3_600_000_000


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


def _time_us(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
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
    admission_us, has_admission = _time_us(pa.array(subj["admission_time"]))
    if not has_admission.all():
        bad = ids[~has_admission][:5].tolist()
        raise DataError(None, f"{int((~has_admission).sum())} subject(s) without admission_time, e.g. {bad}")

    # Map every event to its subject's row; an event of an unknown subject has no admission time.
    row = id_index.get_indexer(ev["subject_id"].to_numpy())
    if (row < 0).any():
        unknown = pd.unique(ev["subject_id"].to_numpy()[row < 0])[:5].tolist()
        n_unknown = int((row < 0).sum())
        raise DataError(None, f"{n_unknown} event(s) of subject(s) not in the subjects table, e.g. {unknown}")
    time_us, has_time = _time_us(ev["time"])
    rel_us = time_us - admission_us[row]
    # Events without a time (MEDS static events) belong to no window; they are counted, not summarised.
    in_window = has_time & (rel_us >= 0) & (rel_us <= window_hours * _HOUR_US)

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
    stats["hours_since_last"] = window_hours - rel[stats.pop("_last_row")] / _HOUR_US

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
        result[d] = pd.to_numeric(subj[d], errors="raise").to_numpy(np.float64)

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
