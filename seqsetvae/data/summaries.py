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

from seqsetvae.data.canonical import SUBJECT_KEY_COLUMNS
from seqsetvae.errors import DataError

log = logging.getLogger(__name__)

STATS: tuple[str, ...] = ("last", "mean", "min", "max", "std", "count", "hours_since_last")
SEPARATOR = "__"
_HOUR_US = 3_600_000_000


def feature_name(code: str, stat: str) -> str:
    """Column name of one summary statistic of one code."""
    return f"{code}{SEPARATOR}{stat}"


def _to_pandas(table: pa.Table | pd.DataFrame, columns: Sequence[str], what: str) -> pd.DataFrame:
    cols = list(table.column_names if isinstance(table, pa.Table) else table.columns)
    missing = [c for c in columns if c not in cols]
    if missing:
        raise DataError(None, f"{what} table lacks column(s) {missing}; has {cols}")
    if isinstance(table, pa.Table):
        return table.to_pandas()
    return table.reset_index(drop=True)


def per_variable_summaries(
    events: pa.Table | pd.DataFrame,
    subjects: pa.Table | pd.DataFrame,
    window_hours: float,
    codes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Summary features, one row per subject of `subjects` (index `subject_id`, in that table's order).

    `events`: canonical events (subject_id, time, code, numeric_value). `subjects`: subject_id,
    admission_time and descriptor columns. `codes`: the codes to summarise (default: all in `events`);
    events of other codes are left out and counted in `result.attrs["events_other_codes"]`, events outside
    the window in `result.attrs["events_outside_window"]`.
    """
    if not window_hours > 0:
        raise DataError(None, f"window_hours must be > 0, got {window_hours}")
    ev = _to_pandas(events, ("subject_id", "time", "code", "numeric_value"), "events")
    subj = _to_pandas(subjects, ("subject_id", "admission_time"), "subjects")
    ids = subj["subject_id"].to_numpy(np.int64)
    if pd.Index(ids).has_duplicates:
        dup = pd.Index(ids)[pd.Index(ids).duplicated()].unique()[:5].tolist()
        raise DataError(None, f"subjects table has duplicate subject_id(s), e.g. {dup}")

    # Map every event to its subject's row; an event of an unknown subject has no admission time.
    row = pd.Index(ids).get_indexer(ev["subject_id"].to_numpy(np.int64))
    if (row < 0).any():
        unknown = pd.unique(ev["subject_id"].to_numpy()[row < 0])[:5].tolist()
        raise DataError(None, f"{int((row < 0).sum())} event(s) of subject(s) not in the subjects table, e.g. {unknown}")

    admission_us, has_admission = _as_us(subj["admission_time"])
    if not has_admission.all():
        bad = ids[~has_admission][:5].tolist()
        raise DataError(None, f"{int((~has_admission).sum())} subject(s) without admission_time, e.g. {bad}")
    time_us, has_time = _as_us(ev["time"])
    hours = (time_us - admission_us[row]) / _HOUR_US
    # Events without a time (MEDS static events) belong to no window; they are counted, not summarised.
    in_window = has_time & (hours >= 0) & (hours <= window_hours)

    code_values = ev["code"].astype("string").to_numpy()
    all_codes = np.array(sorted(pd.unique(code_values[in_window]))) if codes is None else np.asarray(list(codes))
    if pd.Index(all_codes).has_duplicates:
        raise DataError(None, "codes list has duplicates")
    col = pd.Index(all_codes).get_indexer(code_values)
    other = in_window & (col < 0)
    keep = in_window & (col >= 0)

    n_subj, n_codes = len(ids), len(all_codes)
    cell = row[keep].astype(np.int64) * n_codes + col[keep]
    df = pd.DataFrame(
        {"cell": cell, "hours": hours[keep], "value": ev["numeric_value"].to_numpy(np.float64, na_value=np.nan)[keep]}
    )
    # Time order within a (subject, code) cell; a stable sort keeps the input order of ties, so "last"
    # is the later row at the last time.
    df = df.sort_values(["cell", "hours"], kind="stable")
    g = df.groupby("cell", sort=True)
    agg = g["value"].agg(["last", "mean", "min", "max", "std"])  # NaN values are skipped by each
    agg["count"] = g.size()
    agg["hours_since_last"] = window_hours - g["hours"].max()

    out: dict[str, np.ndarray] = {}
    for stat in STATS:
        grid = np.full(n_subj * n_codes, 0.0 if stat == "count" else np.nan)
        grid[agg.index.to_numpy()] = agg[stat].to_numpy(np.float64)
        grid = grid.reshape(n_subj, n_codes)
        for j, code in enumerate(all_codes):
            out[feature_name(str(code), stat)] = grid[:, j]
    ordered = [feature_name(str(c), s) for c in all_codes for s in STATS]
    result = pd.DataFrame({k: out[k] for k in ordered}, index=pd.Index(ids, name="subject_id"))

    descriptors = [c for c in subj.columns if c not in SUBJECT_KEY_COLUMNS]
    clash = [d for d in descriptors if d in result.columns]
    if clash:
        raise DataError(None, f"descriptor column(s) {clash} clash with summary feature names")
    for d in descriptors:
        result[d] = pd.to_numeric(subj[d], errors="raise").to_numpy(np.float64)

    result.attrs["events_outside_window"] = int((~in_window).sum())  # includes events without a time
    result.attrs["events_other_codes"] = int(other.sum())
    log.debug(
        "summaries: %d subjects x %d codes; %d events outside the %g h window, %d of other codes",
        n_subj, n_codes, result.attrs["events_outside_window"], window_hours, result.attrs["events_other_codes"],
    )
    return result


def _as_us(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Naive timestamps as int64 microseconds, and a mask of the ones that are not missing."""
    s = pd.to_datetime(series)
    valid = s.notna().to_numpy()
    us = s.to_numpy("datetime64[us]").astype(np.int64)  # NaT becomes int64 min; masked by `valid`
    return us, valid
