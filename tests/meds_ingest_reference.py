"""FROZEN REFERENCE: the MEDS source's ingest path as it was before it streamed (issue 13 part 2, commit
dc556a4): every data shard read into one in-memory table, the rows decided on it, and the result cut into
output shards by `canonical.subject_batches`. tests/test_meds_streaming.py checks that the streaming
ingest (`meds_source.iter_meds`) writes byte for byte what this wrote. Do not edit it to follow later
changes: a deliberate change of the MEDS ingest output updates the test instead (and says why).

The helpers it imports from seqsetvae.data.meds_source (type checks, casts, code checks, label reading)
were not changed by the streaming rewrite; only the row reading and deciding below were.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import MedsParams, Params
from seqsetvae.data.canonical import (
    EVENTS_SCHEMA,
    MAX_EXAMPLES,
    SUBJECT_KEY_COLUMNS,
    IngestReport,
    IngestResult,
    subject_batches,
    write_ingested,
)
from seqsetvae.data.meds_source import (
    _DATA_COLUMNS,
    DATA_SUBDIR,
    GROUP_WITHOUT_DATA,
    SKIP_AFTER_PREDICTION,
    SKIP_DUPLICATE_STATIC,
    SKIP_NO_LABEL,
    SKIP_NON_FINITE,
    SKIP_NULL_CODE,
    SKIP_NULL_SUBJECT,
    SKIP_STATIC_NO_VALUE,
    SOURCE,
    _cast,
    _check_codes,
    _check_columns,
    _meds_types,
    _read_labels,
    _read_parquet,
    _read_schema,
    _required_path,
)
from seqsetvae.errors import DataError


def write_reference(params: Params, out_dir: Path) -> None:
    """What `seqsetvae ingest` wrote for data.source meds before streaming."""
    result = ingest_meds(params.data.meds, params.root)
    write_ingested(out_dir, subject_batches(result, len(params.data.shards)))


@dataclass
class _Rows:
    """All data rows of all shards, in read order (shard by shard, row by row), with their provenance."""

    table: pa.Table  # subject_id int64, time timestamp[us], code string, numeric_value float32 (all nullable)
    shard: np.ndarray  # int32 index into `shard_names`, per row
    row: np.ndarray  # int64 row number inside its shard (0-based), per row
    root: Path  # the MEDS root
    shard_names: list[str]  # shard path relative to the MEDS root, e.g. "data/train/0.parquet"
    tz_aware: bool  # whether any shard's time column was timezone-aware


def _data_files(root: Path) -> list[Path]:
    data_dir = root / DATA_SUBDIR
    if not root.is_dir():
        raise DataError(root, "MEDS root not found (params key data.meds.dir)")
    if not data_dir.is_dir():
        raise DataError(data_dir, "missing: a MEDS root holds its shards under data/ (params key data.meds.dir)")
    entries = [p for p in data_dir.rglob("*") if p.is_file()]
    if not entries:
        raise DataError(data_dir, "empty: no data shards (expected data/**/*.parquet)")
    files = sorted(p for p in entries if p.suffix == ".parquet")
    if not files:
        raise DataError(data_dir, f"no parquet files among its {len(entries)} file(s) (expected data/**/*.parquet)")
    return files


def _read_data(root: Path) -> _Rows:
    want, _ = _meds_types()
    required = tuple(c for c in _DATA_COLUMNS if c != "numeric_value")  # MEDS: numeric_value may be omitted
    tables, shards, rows, names = [], [], [], []
    tz_aware = False
    for i, path in enumerate(_data_files(root)):
        schema = _read_schema(path)
        _check_columns(path, schema, want, required, _DATA_COLUMNS, "MEDS data")
        present = [c for c in _DATA_COLUMNS if c in schema.names]
        t = _read_parquet(path, present)
        tz_aware |= getattr(schema.field("time").type, "tz", None) is not None
        cols = {c: _cast(t.column(c), want.field(c).type, path, c) for c in present}
        _check_codes(path, cols["code"])
        if "numeric_value" not in cols:  # omitted wholesale: every event is presence-only
            cols["numeric_value"] = pa.chunked_array([pa.nulls(t.num_rows, want.field("numeric_value").type)])
        tables.append(pa.table({c: cols[c] for c in _DATA_COLUMNS}))
        shards.append(np.full(t.num_rows, i, dtype=np.int32))
        rows.append(np.arange(t.num_rows, dtype=np.int64))
        names.append(path.relative_to(root).as_posix())
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        raise DataError(root / DATA_SUBDIR, f"empty cohort: its {len(names)} parquet shard(s) hold no rows")
    return _Rows(table, np.concatenate(shards), np.concatenate(rows), root, names, tz_aware)



def ingest_meds(p: MedsParams, root: Path) -> IngestResult:
    """Read a MEDS dataset and its labels into the canonical tables (mapping in docs/data_meds.md).
    Relative params paths resolve against `root` (Params.root: the params file's folder)."""
    meds_root = _required_path(p.dir, "data.meds.dir", root)
    labels_path = _required_path(p.labels, "data.meds.labels", root)
    data = _read_data(meds_root)
    labels, labels_tz = _read_labels(labels_path)
    if labels_tz != data.tz_aware:
        aware, naive = ("labels", "data") if labels_tz else ("data", "labels")
        raise DataError(
            labels_path,
            f"column 'prediction_time': the {aware} times are timezone-aware but the {naive} times are naive; "
            "comparing them would shift every event by the UTC offset",
        )
    report = IngestReport(source=SOURCE)
    t = data.table
    n = t.num_rows
    report.rows_read = n

    sid_col, time_col, code_col, value_col = (t.column(c) for c in _DATA_COLUMNS)
    sid_null = _null_mask(sid_col)
    sid = sid_col.fill_null(0).to_numpy()
    time_null = _null_mask(time_col)
    time_us = time_col.cast(pa.int64()).fill_null(0).to_numpy()
    value_null = _null_mask(value_col)
    value = value_col.fill_null(0.0).to_numpy()

    label_sid = labels.column("subject_id").to_numpy()
    label_pred_us = labels.column("prediction_time").cast(pa.int64()).to_numpy()
    # Each row's label index (valid where has_label): a vectorised join on the sorted label subject ids.
    label_idx = np.minimum(np.searchsorted(label_sid, sid), len(label_sid) - 1)
    has_label = ~sid_null & (label_sid[label_idx] == sid)

    def where(i: int) -> str:  # provenance for the report: shard path and 1-based row number
        return f"{data.shard_names[data.shard[i]]}:{data.row[i] + 1}"

    undecided = np.ones(n, dtype=bool)

    def decide(reason: str, mask: np.ndarray) -> None:
        hit = undecided & mask
        idx = np.flatnonzero(hit)
        if idx.size:
            report.skip(reason, n=int(idx.size))
            report.examples[reason] = [where(i) for i in idx[:MAX_EXAMPLES]]
        undecided[hit] = False

    decide(SKIP_NULL_SUBJECT, sid_null)
    decide(SKIP_NULL_CODE, _null_mask(code_col))
    decide(SKIP_NO_LABEL, ~has_label)
    decide(SKIP_NON_FINITE, ~value_null & ~np.isfinite(value))
    decide(SKIP_STATIC_NO_VALUE, time_null & value_null)
    static_candidates = np.flatnonzero(undecided & time_null)
    codes = code_col.take(pa.array(static_candidates)).to_numpy(zero_copy_only=False)
    repeated = pd.DataFrame({"s": sid[static_candidates], "c": codes}).duplicated(keep="first").to_numpy()
    duplicate_static = np.zeros(n, dtype=bool)
    duplicate_static[static_candidates[repeated]] = True
    decide(SKIP_DUPLICATE_STATIC, duplicate_static)
    decide(SKIP_AFTER_PREDICTION, ~time_null & (time_us > label_pred_us[label_idx]))
    is_static = undecided & time_null
    is_event = undecided & ~time_null

    events = t.filter(pa.array(is_event)).sort_by(
        [("subject_id", "ascending"), ("time", "ascending"), ("code", "ascending")]
    )
    events = pa.Table.from_arrays([events.column(c) for c in EVENTS_SCHEMA.names], schema=EVENTS_SCHEMA)
    # Same accounting as the other sources: rows_read = rows_kept + rows_skipped, and a kept row is either
    # a timed event or a static descriptor value (the PhysioNet 2012 source uses the same extra keys).
    report.extra["event_rows"] = events.num_rows
    report.extra["descriptor_rows"] = int(is_static.sum())
    report.rows_kept = events.num_rows + report.extra["descriptor_rows"]
    # Every row was decided exactly once; if this ever fails the report would lie, so stop loudly.
    assert n == report.rows_kept + sum(report.skipped.values())

    subjects = _subjects_table(data, labels, sid, has_label, is_static, value, code_col, events, report)
    report.subjects = labels.num_rows
    report.positives = int(pc.sum(labels.column("boolean_value").cast(pa.int64())).as_py() or 0)
    unlabelled = np.unique(sid[~sid_null & ~has_label])
    report.extra["subjects_without_label"] = int(unlabelled.size)
    # What the sample-aware ingest (issue 28) adds to the report; these cohorts have no MEDS_BIRTH row, no
    # categorical static code and one sample per subject, which is where the two must agree.
    report.extra["birth_rows"] = 0
    report.extra["categorical_codes"] = []
    report.extra["samples"] = labels.num_rows
    return IngestResult(events=events, subjects=subjects, labels=labels, report=report)


def _null_mask(col: pa.ChunkedArray) -> np.ndarray:
    return pc.is_null(col).to_numpy(zero_copy_only=False)


def _subjects_table(
    data: _Rows,
    labels: pa.Table,
    sid: np.ndarray,
    has_label: np.ndarray,
    is_static: np.ndarray,
    value: np.ndarray,
    code_col: pa.ChunkedArray,
    events: pa.Table,
    report: IngestReport,
) -> pa.Table:
    """One row per labelled subject: admission_time, group, then one float32 column per static code."""
    subject_ids = labels.column("subject_id").to_numpy()
    n_subj = len(subject_ids)

    # admission_time = the first kept timed event (events are sorted, so each subject's first row).
    ev_sid = events.column("subject_id").to_numpy()
    first_rows = np.flatnonzero(np.r_[True, ev_sid[1:] != ev_sid[:-1]]) if len(ev_sid) else np.array([], int)
    admission = np.zeros(n_subj, dtype=np.int64)  # masked (null) where the subject has no event
    has_events = np.zeros(n_subj, dtype=bool)
    pos = np.searchsorted(subject_ids, ev_sid[first_rows])
    admission[pos] = events.column("time").cast(pa.int64()).to_numpy()[first_rows]
    has_events[pos] = True
    admission_col = pa.array(admission, mask=~has_events).cast(pa.timestamp("us"))
    report.subjects_without_measurements = [int(s) for s in subject_ids[~has_events]]

    # group = the shard holding the subject's first row in read order. MEDS puts a subject in one shard
    # only; a subject found in several is kept whole and counted in the report.
    labelled = np.flatnonzero(has_label)
    groups = np.full(n_subj, GROUP_WITHOUT_DATA, dtype=object)
    seen, first, inverse = np.unique(sid[labelled], return_index=True, return_inverse=True)
    first_shard = data.shard[labelled[first]]
    groups[np.searchsorted(subject_ids, seen)] = np.asarray(data.shard_names, dtype=object)[first_shard]
    elsewhere = data.shard[labelled] != first_shard[inverse]  # a row outside its subject's first shard
    report.extra["subjects_in_several_shards"] = int(np.unique(inverse[elsewhere]).size)

    columns: dict[str, pa.Array] = {
        "subject_id": pa.array(subject_ids, pa.int64()),
        "admission_time": admission_col,
        "group": pa.array(groups.tolist(), pa.string()),
    }
    # One column per distinct static code, named by the code exactly as written (Arrow strings compared
    # bytewise; codes were checked to be non-empty and free of control characters when read), in code order.
    static = np.flatnonzero(is_static)
    static_codes = code_col.take(pa.array(static)).combine_chunks()
    distinct = pc.unique(static_codes)
    distinct = distinct.take(pc.array_sort_indices(distinct))
    names = distinct.to_pylist()
    code_idx = pc.index_in(static_codes, value_set=distinct).to_numpy(zero_copy_only=False)
    clash = [j for j, c in enumerate(names) if c in SUBJECT_KEY_COLUMNS]
    if clash:
        i = static[np.flatnonzero(code_idx == clash[0])[0]]
        raise DataError(
            data.root / data.shard_names[data.shard[i]],
            f"column 'code': static code '{names[clash[0]]}' (row {data.row[i] + 1}) clashes with the subjects "
            f"key column of that name ({', '.join(SUBJECT_KEY_COLUMNS)}); rename the code",
        )
    matrix = np.full((n_subj, len(names)), np.nan, dtype=np.float32)
    matrix[np.searchsorted(subject_ids, sid[static]), code_idx] = value[static]
    for j, name in enumerate(names):
        columns[name] = pa.array(matrix[:, j], pa.float32())
    if len(columns) != 3 + len(names):  # subject_id, admission_time, group  # two codes, one column: never silently
        raise AssertionError(f"static codes {names} do not map one to one onto columns")
    report.extra["static_codes"] = names
    return pa.table(columns)
