"""The MEDS source: ingest a MEDS cohort into the canonical tables, and export canonical tables as MEDS.

`ingest_meds` reads `data.meds.dir/data/**/*.parquet` (MEDS data schema) and the labels parquet
`data.meds.labels` (MEDS label schema, one binary label per subject) and maps them onto the canonical
tables of `seqsetvae.data.canonical`. `write_meds_dataset` goes the other way, so any cohort (synthetic,
PhysioNet 2012) can be exported, inspected with MEDS tools and ingested again. The mapping, and every
counted skip, is documented in `docs/data_meds.md`.

Input types are checked against the official `meds` package's schemas. A column of a compatible kind
(int32 ids, timestamp[ns], float64 values, large_string codes) is cast; any other type (string ids, string
values, a missing column) stops ingest with a `DataError` naming the file and the column, because a cast
such as string -> int64 would quietly accept data that is not what the user thinks it is.

Run `python -m seqsetvae.data.meds_source INGESTED_DIR OUT_DIR [--shards N] [--splits SPLITS --fold K]` to
export an ingested cohort; with `--splits` (the split stage's table) the export also carries fold K as
`metadata/subject_splits.parquet`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.config import MedsParams, resolve_path
from seqsetvae.data.canonical import (
    EVENTS_SCHEMA,
    LABELS_SCHEMA,
    MAX_EXAMPLES,
    SUBJECT_KEY_COLUMNS,
    IngestReport,
    IngestResult,
)
from seqsetvae.errors import DataError

SOURCE = "meds"
DATA_SUBDIR = "data"  # MEDS: $MEDS_ROOT/data/**/*.parquet
LABELS_FILE = "labels.parquet"  # where write_meds_dataset puts the labels (MEDS fixes no path)
GROUP_WITHOUT_DATA = "meds"  # subjects.group of a labelled subject that has no rows in any data shard

# Skip reasons, in the order they are decided: a row gets the first that applies, so it is counted once.
SKIP_NULL_SUBJECT = "null_subject_id"
SKIP_NULL_CODE = "null_code"
SKIP_NO_LABEL = "subject_without_label"
SKIP_NON_FINITE = "non_finite_value"
SKIP_STATIC_NO_VALUE = "static_without_value"
SKIP_DUPLICATE_STATIC = "duplicate_static"
SKIP_AFTER_PREDICTION = "after_prediction_time"

# The columns this project uses, typed by the official schemas (one home for the MEDS types).
_DATA_COLUMNS = ("subject_id", "time", "code", "numeric_value")
_LABEL_COLUMNS = ("subject_id", "prediction_time", "boolean_value")
# A label row carries one label; MEDS allows these value columns, we use boolean_value and ignore the rest.
_OTHER_LABEL_VALUE_COLUMNS = ("integer_value", "float_value", "categorical_value")


def _meds_types() -> tuple[pa.Schema, pa.Schema]:
    from meds import DataSchema, LabelSchema

    return DataSchema.schema(), LabelSchema.schema()


# --------------------------------------------------------------------------------------------------
# Type checking and casting


def _castable(got: pa.DataType, want: pa.DataType) -> bool:
    """True where casting `got` to `want` cannot change what the data means (only width or unit)."""
    if got == want or pa.types.is_null(got):  # an all-null column written without a type
        return True
    if pa.types.is_dictionary(got):  # categorical codes, as pandas writes them
        return _castable(got.value_type, want)
    if pa.types.is_integer(want):
        return pa.types.is_integer(got)
    if pa.types.is_timestamp(want):
        return pa.types.is_timestamp(got)
    if pa.types.is_floating(want):
        return pa.types.is_floating(got) or pa.types.is_integer(got) or pa.types.is_decimal(got)
    if pa.types.is_string(want) or pa.types.is_large_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got) or pa.types.is_string_view(got)
    if pa.types.is_boolean(want):
        return pa.types.is_boolean(got)
    return False


def _check_columns(
    path: Path, schema: pa.Schema, want: pa.Schema, required: tuple[str, ...], used: tuple[str, ...], what: str
) -> None:
    """DataError naming `path` and the column for a missing required column or an incompatible type.

    Only the columns ingest reads (`used`) are type-checked; others (text_value, extension columns) are
    not read, so their types cannot matter here.
    """
    for name in required:
        if name not in schema.names:
            raise DataError(path, f"missing column '{name}' ({what} needs {', '.join(required)})")
    for name in used:
        if name in schema.names:
            got, target = schema.field(name).type, want.field(name).type
            if not _castable(got, target):
                raise DataError(path, f"column '{name}' has type {got}, {what} needs {target} (or castable to it)")


def _cast(column: pa.ChunkedArray, want: pa.DataType, path: Path, name: str) -> pa.ChunkedArray:
    """Cast a column checked by `_castable`; a value that does not fit (uint64 overflow) is a DataError."""
    got = column.type
    if got == want:
        return column
    if pa.types.is_dictionary(got):
        column = column.cast(got.value_type)
        got = column.type
    try:
        if pa.types.is_timestamp(got):
            # MEDS time is naive microseconds: a timezone-aware column is taken as UTC wall time, and finer
            # units (ns) are truncated to the microsecond, which no clinical event resolution depends on.
            return pc.cast(column, want, safe=got.unit != "ns")
        if pa.types.is_floating(want):
            # Values are float32 (MEDS): an integer or decimal is rounded to the nearest float32, as a
            # float64 is. Arrow's safe cast would instead refuse any integer above 2**24 that float32 cannot
            # hold exactly (a count of 16,777,217 stopped ingest), so the outcome depended on the data.
            return pc.cast(column, want, safe=False)
        return pc.cast(column, want)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataError(path, f"column '{name}': cannot cast {got} to {want}: {e}") from None


def _check_codes(path: Path, code: pa.ChunkedArray) -> None:
    """DataError naming the shard and the first bad row for a code that is empty or holds a control
    character (Unicode category Cc: NUL, tab, newline, DEL, C1 controls). A code names a token, a
    summary feature column and, for a static code, a column of subjects.parquet: a column named '' is
    no name, and text with control characters is a different string that looks (and, once NUL-stripped
    by a tool such as numpy, is) the same as another code, so 'Age\\x00' would overwrite 'Age'. Checked on
    the distinct codes (a hash pass), rows looked up only when one is bad."""
    unique = pc.unique(code).drop_null()
    bad = pc.or_(pc.equal(pc.utf8_length(unique), 0), pc.match_substring_regex(unique, r"\p{Cc}"))
    if not pc.any(bad).as_py():
        return
    row = int(np.flatnonzero(pc.is_in(code, value_set=unique.filter(bad)).to_numpy(zero_copy_only=False))[0])
    text = code[row].as_py()
    reason = "is empty" if text == "" else "holds a control character"
    raise DataError(
        path,
        f"column 'code': row {row + 1}: code {text!r} {reason}; a code names a token and a column "
        "(a static code becomes a column of subjects.parquet), so it must be non-empty text without "
        "control characters",
    )


def _read_parquet(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise DataError(path, f"cannot read parquet: {e}") from None


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(path, f"not a readable parquet file: {e}") from None


# --------------------------------------------------------------------------------------------------
# Reading the data shards and the labels


def _required_path(value: str | None, key: str, root: Path) -> Path:
    """The path of a MEDS params key: null is allowed in params.yaml (other sources) but not here."""
    if value is None:
        raise DataError(None, f"params key {key} is null: set it when data.source is meds (see docs/data_meds.md)")
    return resolve_path(value, key, root)


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


def _label_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise DataError(path, "no parquet files in the labels folder (params key data.meds.labels)")
        return files
    if not path.is_file():
        raise DataError(path, "labels file not found (params key data.meds.labels)")
    return [path]


def _read_labels(path: Path) -> tuple[pa.Table, bool]:
    """The labels as LABELS_SCHEMA sorted by subject_id, and whether prediction_time was timezone-aware.

    A label row with a null in a used column, or a subject with more than one label row, is a DataError:
    the pipeline learns one binary task per subject, and guessing which row was meant would be silent.
    """
    _, want = _meds_types()
    allowed = set(_LABEL_COLUMNS + _OTHER_LABEL_VALUE_COLUMNS)
    parts, tz_aware = [], False
    for f in _label_files(path):
        schema = _read_schema(f)
        _check_columns(f, schema, want, _LABEL_COLUMNS, _LABEL_COLUMNS, "a MEDS label file")
        extra = [c for c in schema.names if c not in allowed]
        if extra:
            raise DataError(f, f"column '{extra[0]}' is not in the MEDS label schema (it allows no extra columns)")
        tz_aware |= getattr(schema.field("prediction_time").type, "tz", None) is not None
        t = _read_parquet(f, list(_LABEL_COLUMNS))
        cols = [_cast(t.column(c), want.field(c).type, f, c) for c in _LABEL_COLUMNS]
        for name, col in zip(_LABEL_COLUMNS, cols):
            if col.null_count:
                first = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0]) + 1
                raise DataError(f, f"column '{name}': {col.null_count} null value(s), first at row {first}")
        parts.append(pa.Table.from_arrays(cols, schema=LABELS_SCHEMA))
    labels = pa.concat_tables(parts).sort_by("subject_id")
    if labels.num_rows == 0:
        raise DataError(path, "no label rows: the cohort is empty")
    sid = labels.column("subject_id").to_numpy()
    dup = np.unique(sid[1:][sid[1:] == sid[:-1]])
    if dup.size:
        shown = ", ".join(str(s) for s in dup[:MAX_EXAMPLES])
        raise DataError(
            path,
            f"column 'subject_id': {dup.size} subject(s) have more than one label row (e.g. {shown}); "
            "the pipeline needs exactly one binary label (boolean_value) per subject",
        )
    return labels, tz_aware


# --------------------------------------------------------------------------------------------------
# Ingest


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
    if len(columns) != len(SUBJECT_KEY_COLUMNS) + len(names):  # two codes, one column: never silently
        raise AssertionError(f"static codes {names} do not map one to one onto columns")
    report.extra["static_codes"] = names
    return pa.table(columns)


# --------------------------------------------------------------------------------------------------
# Export


# Our split names -> MEDS's (meds.train_split, meds.tuning_split, meds.held_out_split).
MEDS_SPLIT_NAMES = {"train": "train", "val": "tuning", "test": "held_out"}


def meds_subject_splits(splits: pa.Table, fold: int, source: str | Path | None = None) -> pa.Table:
    """One fold of the split stage's table (seqsetvae.data.splits) as a MEDS subject_splits table:
    subject_id, split in {train, tuning, held_out}, sorted by subject_id. A fold the table does not hold
    is a DataError naming `source` and the folds it holds."""
    from meds import SubjectSplitSchema

    from seqsetvae.data.splits import SPLITS, fold_assignment

    ids, codes = fold_assignment(splits, fold)
    if ids.size == 0:
        folds = sorted(set(splits.column("fold").to_pylist()))
        raise DataError(source, f"fold {fold} is not in the split table (folds present: {folds})")
    names = np.asarray([MEDS_SPLIT_NAMES[s] for s in SPLITS], dtype=object)[codes]
    return pa.Table.from_arrays(
        [pa.array(ids, pa.int64()), pa.array(names.tolist(), pa.string())], schema=SubjectSplitSchema.schema()
    )


def write_meds_dataset(
    result: IngestResult, out_dir: Path, shards: int = 1, subject_splits: pa.Table | None = None
) -> None:
    """Write canonical tables as a MEDS dataset in `out_dir`, atomically (all or nothing).

    Layout: `data/{i}.parquet` (each subject in exactly one shard, subjects contiguous and split into
    `shards` contiguous id ranges, rows sorted by time with static rows first), `metadata/dataset.json`,
    `metadata/codes.parquet` (every code, no descriptions) and `labels.parquet`. Static descriptors (the
    float32 columns of `subjects`) become null-time events of that code; NaN (not recorded) writes no row.
    With `subject_splits` (see meds_subject_splits) also `metadata/subject_splits.parquet`; without it,
    none is written (a cohort has no split of its own until the split stage gives it one). Every subject
    it lists must be a labelled subject of the cohort (a DataError otherwise); subjects it does not list
    (e.g. left out of a fold by split.unlisted: exclude) have no split in the export.
    """
    from meds import CodeMetadataSchema, DataSchema, DatasetMetadataSchema, LabelSchema, SubjectSplitSchema
    from meds import __version__ as meds_version

    from seqsetvae import __version__
    from seqsetvae.io import atomic_path

    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    rows = pa.concat_tables([_static_events(result.subjects), result.events.select(list(EVENTS_SCHEMA.names))])
    rows = pa.Table.from_arrays([rows.column(c) for c in EVENTS_SCHEMA.names], schema=EVENTS_SCHEMA).sort_by(
        [("subject_id", "ascending"), ("time", "ascending", "at_start"), ("code", "ascending")]
    )
    subject_ids = np.unique(rows.column("subject_id").to_numpy())
    chunks = np.array_split(subject_ids, max(1, min(shards, len(subject_ids))))
    row_sid = rows.column("subject_id").to_numpy()
    # Rows are sorted by subject, so each contiguous range of subject ids is one contiguous slice of rows.
    bounds = [0, *(int(np.searchsorted(row_sid, c[-1], side="right")) for c in chunks if len(c))]
    if len(bounds) == 1:  # no rows at all: still a valid dataset, with one empty shard
        bounds.append(0)
    labels = result.labels.select(list(LABELS_SCHEMA.names)).sort_by("subject_id")
    codes = pc.unique(rows.column("code")).sort()
    code_meta = pa.table(
        {
            "code": codes,
            "description": pa.nulls(len(codes), pa.string()),
            "parent_codes": pa.nulls(len(codes), pa.list_(pa.string())),
        }
    )
    metadata = {
        "dataset_name": f"seqsetvae-{result.report.source}",
        "etl_name": "seqsetvae",
        "etl_version": __version__,
        "meds_version": meds_version,
    }
    checks = [(DataSchema, rows), (LabelSchema, labels), (CodeMetadataSchema, code_meta)]
    if subject_splits is not None:
        subject_splits = subject_splits.sort_by("subject_id")
        unknown = pc.invert(pc.is_in(subject_splits.column("subject_id"), value_set=labels.column("subject_id")))
        if pc.any(unknown).as_py():
            extra = subject_splits.filter(unknown).column("subject_id").to_pylist()
            raise DataError(
                out_dir,
                f"subject_splits: {len(extra)} subject(s) are not labelled subjects of the cohort "
                f"(first: {extra[:MAX_EXAMPLES]}); export the split table made from this cohort",
            )
        checks.append((SubjectSplitSchema, subject_splits))
    try:
        for schema, table in checks:
            schema.validate(table)
        DatasetMetadataSchema.validate(metadata)
    except Exception as e:  # the meds package raises its own error types
        raise DataError(out_dir, f"export does not satisfy the MEDS schema: {e}") from e

    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / DATA_SUBDIR).mkdir()
        (tmp / "metadata").mkdir()
        for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            pq.write_table(rows.slice(lo, hi - lo), tmp / DATA_SUBDIR / f"{i}.parquet", compression="zstd")
        pq.write_table(labels, tmp / LABELS_FILE, compression="zstd")
        pq.write_table(code_meta, tmp / "metadata" / "codes.parquet", compression="zstd")
        if subject_splits is not None:
            pq.write_table(subject_splits, tmp / "metadata" / "subject_splits.parquet", compression="zstd")
        # No created_at: the same cohort exports to the same bytes, so DVC sees no change.
        (tmp / "metadata" / "dataset.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def _static_events(subjects: pa.Table) -> pa.Table:
    """The static descriptor columns of `subjects` as null-time events (NaN = not recorded = no row)."""
    sid = subjects.column("subject_id").to_numpy()
    parts = []
    for name in subjects.column_names:
        if name in SUBJECT_KEY_COLUMNS:
            continue
        values = subjects.column(name).cast(pa.float32()).fill_null(np.nan).to_numpy()
        keep = ~np.isnan(values)
        parts.append(
            pa.Table.from_arrays(
                [
                    pa.array(sid[keep], pa.int64()),
                    pa.nulls(int(keep.sum()), pa.timestamp("us")),
                    pa.array([name] * int(keep.sum()), pa.string()),
                    pa.array(values[keep], pa.float32()),
                ],
                schema=EVENTS_SCHEMA,
            )
        )
    return pa.concat_tables(parts) if parts else EVENTS_SCHEMA.empty_table()


def main(argv: list[str] | None = None) -> int:
    """`python -m seqsetvae.data.meds_source INGESTED_DIR OUT_DIR [--shards N] [--splits SPLITS --fold K]`:
    export an ingested cohort as MEDS; with --splits, fold K of that split table becomes
    metadata/subject_splits.parquet (train / val / test -> MEDS train / tuning / held_out); without it the
    export has no subject_splits file."""
    from seqsetvae.data.canonical import REPORT_FILE, read_ingested
    from seqsetvae.data.splits import read_splits

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("ingested", type=Path, help="an ingest output folder (events/subjects/labels.parquet)")
    parser.add_argument("out", type=Path, help="the MEDS root to write (replaced whole)")
    parser.add_argument("--shards", type=int, default=1, help="number of data shards (default 1)")
    parser.add_argument("--splits", type=Path, help="the split stage's table (data/splits.parquet) to export")
    parser.add_argument("--fold", type=int, help="the fold of --splits to export (required with --splits)")
    args = parser.parse_args(argv)
    if (args.splits is None) != (args.fold is None):
        parser.error("--splits and --fold go together: the split table holds one assignment per fold")
    try:
        events, subjects, labels = read_ingested(args.ingested)
        report_path = args.ingested / REPORT_FILE
        source = json.loads(report_path.read_text())["source"] if report_path.is_file() else "cohort"
        subject_splits = (
            meds_subject_splits(read_splits(args.splits), args.fold, args.splits) if args.splits is not None else None
        )
        write_meds_dataset(
            IngestResult(events, subjects, labels, IngestReport(source=source)), args.out, args.shards, subject_splits
        )
    except DataError as e:
        print(f"error: {e}")
        return 3
    splits_note = f", fold {args.fold} as subject_splits" if args.splits is not None else ""
    print(f"wrote MEDS dataset {args.out} ({subjects.num_rows} subjects, {events.num_rows} events{splits_note})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
