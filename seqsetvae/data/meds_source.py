"""The MEDS source: ingest a MEDS cohort into the canonical tables, and export canonical tables as MEDS.

`ingest_meds` reads `data.meds.dir/data/**/*.parquet` (MEDS data schema) and the labels parquet
`data.meds.labels` (MEDS label schema, one binary label per sample, any number per subject) and maps them
onto the canonical tables of `seqsetvae.data.canonical`. `write_meds_dataset` goes the other way, so any
cohort (synthetic, PhysioNet 2012) can be exported, inspected with MEDS tools and ingested again. The
mapping, and every counted skip, is documented in `docs/data_meds.md`.

`meds_shard` is the same ingest for one output shard, the ingest stage's shard job: it reads only the row
groups of the data shards that may hold its subjects, in batches, so memory holds about one output shard
whatever the cohort size; `finish_meds` merges the shards' parts (the checks of the whole cohort);
`ingest_meds` runs the same code as one shard.

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
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.config import MedsParams, resolve_path
from seqsetvae.data.canonical import (
    BIRTH_TIME,
    CATEGORY_SEPARATOR,
    EVENTS_SCHEMA,
    LABELS_SCHEMA,
    MAX_EXAMPLES,
    SAMPLES_SCHEMA,
    SUBJECT_KEY_COLUMNS,
    WINDOW_START,
    IngestReport,
    IngestResult,
    shard_id_range,
    shard_starts,
)
from seqsetvae.data.ingest_parts import ShardPart
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
SKIP_DUPLICATE_BIRTH = "duplicate_birth"
SKIP_AFTER_PREDICTION = "after_prediction_time"
# every reason a MEDS row can be skipped for (each is counted in the ingest report, docs/data_meds.md)
SKIP_REASONS = frozenset({
    SKIP_NULL_SUBJECT, SKIP_NULL_CODE, SKIP_NO_LABEL, SKIP_NON_FINITE, SKIP_STATIC_NO_VALUE,
    SKIP_DUPLICATE_BIRTH, SKIP_DUPLICATE_STATIC, SKIP_AFTER_PREDICTION,
})

BIRTH_CODE = "MEDS_BIRTH"  # meds.birth_code: its time is the subject's birth, a descriptor, not an event

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


def _check_codes(path: Path, code: pa.ChunkedArray, offset: int = 0) -> None:
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
        f"column 'code': row {offset + row + 1}: code {text!r} {reason}; a code names a token and a column "
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
class _Shard:
    """A data shard as pass 0 found it: its footer read, its columns checked, no row read yet."""

    path: Path
    name: str  # path relative to the MEDS root, e.g. "data/train/0.parquet": the report's provenance, the group
    schema: pa.Schema
    num_rows: int


def _data_files(root: Path) -> list[Path]:
    data_dir = root / DATA_SUBDIR
    if not root.is_dir():
        raise DataError(root, "MEDS root not found (params key data.meds.dir)")
    if not data_dir.is_dir():
        raise DataError(data_dir, "missing: a MEDS root holds its shards under data/ (params key data.meds.dir)")
    # A shard that is a broken symbolic link (or a link loop), a FIFO or a device is refused, as the PhysioNet
    # reader refuses a broken record link: skipping it would ingest its subjects without their events.
    for p in sorted(data_dir.rglob("*.parquet")):
        if p.is_symlink() and not p.exists():
            raise DataError(p, "cannot read this data shard: a broken symbolic link (or a link loop)")
        if p.exists() and not (p.is_file() or p.is_dir()):
            raise DataError(p, "cannot read this data shard: not a regular file (a device, FIFO or socket)")
    entries = [p for p in data_dir.rglob("*") if p.is_file()]
    if not entries:
        raise DataError(data_dir, "empty: no data shards (expected data/**/*.parquet)")
    files = sorted(p for p in entries if p.suffix == ".parquet")
    if not files:
        raise DataError(data_dir, f"no parquet files among its {len(entries)} file(s) (expected data/**/*.parquet)")
    return files


def _read_footer(path: Path) -> tuple[pa.Schema, int]:
    """The arrow schema (as `pq.read_schema` gives it) and the row count of a parquet file, from its footer."""
    try:
        with pq.ParquetFile(path) as f:
            return f.schema_arrow, f.metadata.num_rows
    except (OSError, pa.ArrowException) as e:
        raise DataError(path, f"not a readable parquet file: {e}") from None


def _data_shards(root: Path) -> tuple[list[_Shard], bool]:
    """Pass 0, footers only: every data shard with its columns checked (a missing or uncastable column stops
    ingest here, before any row is read), and whether any shard's time column is timezone-aware."""
    want, _ = _meds_types()
    required = tuple(c for c in _DATA_COLUMNS if c != "numeric_value")  # MEDS: numeric_value may be omitted
    shards = []
    for path in _data_files(root):
        schema, num_rows = _read_footer(path)
        _check_columns(path, schema, want, required, _DATA_COLUMNS, "MEDS data")
        shards.append(_Shard(path, path.relative_to(root).as_posix(), schema, num_rows))
    if sum(s.num_rows for s in shards) == 0:
        raise DataError(root / DATA_SUBDIR, f"empty cohort: its {len(shards)} parquet shard(s) hold no rows")
    tz_aware = any(getattr(s.schema.field("time").type, "tz", None) is not None for s in shards)
    return shards, tz_aware


def _data_schema() -> pa.Schema:
    """The data rows as ingest holds them: the used columns, MEDS-typed, all nullable until decided."""
    want, _ = _meds_types()
    return pa.schema([pa.field(c, want.field(c).type) for c in _DATA_COLUMNS])


READ_BATCH_ROWS = 1 << 20  # rows of a data shard read at a time: memory holds one such batch, not the shard


IdRange = tuple[int | None, int | None]  # [lo, hi) of subject ids, None: unbounded (canonical.shard_id_range)


def _read_shard(shard: _Shard, ids: IdRange | None, with_null_ids: bool) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """The rows of a data shard whose subject_id lies in `ids` (none when None), and with `with_null_ids` those
    without one, in row order: only the row groups whose subject_id statistics meet the interval (or hold
    nulls, when wanted) are read, in batches of READ_BATCH_ROWS rows (pyarrow `iter_batches`: a shard of any
    size is never read whole), each cast to `_data_schema()` (an omitted numeric_value is all null: every event
    presence-only) with its codes checked; yields (each row's 0-based row number in the shard, rows)."""
    schema = _data_schema()
    present = [c for c in _DATA_COLUMNS if c in shard.schema.names]
    if ids is None and not with_null_ids:
        return
    lo, hi = ids if ids is not None else (None, None)
    try:
        with pq.ParquetFile(shard.path) as f:
            meta = f.metadata
            sid_column = [meta.schema.column(i).path for i in range(meta.num_columns)].index("subject_id")
            first_row = 0
            for g in range(meta.num_row_groups):
                group_rows = meta.row_group(g).num_rows
                if _row_group_needed(meta.row_group(g).column(sid_column).statistics, ids, with_null_ids):
                    offset = first_row
                    for batch in f.iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[g], columns=present):
                        t = pa.Table.from_batches([batch])
                        cols = {c: _cast(t.column(c), schema.field(c).type, shard.path, c) for c in present}
                        _check_codes(shard.path, cols["code"], offset)
                        if "numeric_value" not in cols:
                            cols["numeric_value"] = pa.chunked_array(
                                [pa.nulls(t.num_rows, schema.field("numeric_value").type)])
                        sid = cols["subject_id"]
                        keep = np.zeros(t.num_rows, dtype=bool)
                        if ids is not None:
                            valid = pc.is_valid(sid).to_numpy(zero_copy_only=False)
                            values = sid.fill_null(0).to_numpy()
                            keep = valid & (values >= lo if lo is not None else True) & (
                                values < hi if hi is not None else True)
                        if with_null_ids:
                            keep |= _null_mask(sid)
                        rows = np.flatnonzero(keep)
                        if rows.size:
                            table = pa.Table.from_arrays([cols[c] for c in _DATA_COLUMNS], schema=schema)
                            yield offset + rows, table if rows.size == t.num_rows else table.filter(pa.array(keep))
                        offset += t.num_rows
                first_row += group_rows
    except (OSError, pa.ArrowException) as e:
        raise DataError(shard.path, f"cannot read parquet: {e}") from None


def _row_group_needed(stats: pq.Statistics | None, ids: IdRange | None, with_null_ids: bool) -> bool:
    """Whether a row group may hold a row of `ids` (or a null subject id, when wanted), by its subject_id
    statistics; without statistics it may."""
    if stats is None:
        return True
    if with_null_ids and (not stats.has_null_count or stats.null_count > 0):
        return True
    if ids is None:
        return False
    if not stats.has_min_max:  # every value null, or no min / max written: read it unless all null
        return not (stats.has_null_count and stats.num_values == 0)
    lo, hi = ids
    return (lo is None or stats.max >= lo) and (hi is None or stats.min < hi)


def _label_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise DataError(path, "no parquet files in the labels folder (params key data.meds.labels)")
        return files
    if not path.is_file():
        raise DataError(path, "labels file not found (params key data.meds.labels)")
    return [path]


def _read_labels(path: Path, window_start_column: str | None = None) -> tuple[pa.Table, bool]:
    """The samples (SAMPLES_SCHEMA) sorted by (subject_id, prediction_time), and whether prediction_time
    was timezone-aware. Each label row is a sample: a subject may have any number of them (a task with
    several prediction times, as ACES and MEDS-DEV write them), each (subject, prediction time) once.

    `window_start_column` (params data.meds.window_start_column) names an extra timestamp column of the
    label files that gives each sample's window start (e.g. the ICU admission of a first_24h task); nulls
    there mean none. A label row with a null in a MEDS column, or a pair given twice, is a DataError.
    """
    _, want = _meds_types()
    allowed = set(_LABEL_COLUMNS + _OTHER_LABEL_VALUE_COLUMNS) | ({window_start_column} - {None})
    parts, tz_aware = [], False
    for f in _label_files(path):
        schema = _read_schema(f)
        _check_columns(f, schema, want, _LABEL_COLUMNS, _LABEL_COLUMNS, "a MEDS label file")
        extra = [c for c in schema.names if c not in allowed]
        if extra:
            raise DataError(f, f"column '{extra[0]}' is not in the MEDS label schema (it allows no extra columns; "
                               "a window start column is named by params data.meds.window_start_column)")
        tz_aware |= getattr(schema.field("prediction_time").type, "tz", None) is not None
        read = list(_LABEL_COLUMNS)
        if window_start_column is not None:
            if window_start_column not in schema.names:
                raise DataError(f, f"missing column '{window_start_column}' (params data.meds.window_start_column)")
            got = schema.field(window_start_column).type
            if not (pa.types.is_timestamp(got) or pa.types.is_null(got)):
                raise DataError(f, f"column '{window_start_column}' has type {got}, a window start needs a timestamp")
            read.append(window_start_column)
        t = _read_parquet(f, read)
        cols = [_cast(t.column(c), want.field(c).type, f, c) for c in _LABEL_COLUMNS]
        for name, col in zip(_LABEL_COLUMNS, cols):
            if col.null_count:
                first = int(np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))[0]) + 1
                raise DataError(f, f"column '{name}': {col.null_count} null value(s), first at row {first}")
        if window_start_column is not None:
            cols.append(_cast(t.column(window_start_column), pa.timestamp("us"), f, window_start_column))
        else:
            cols.append(pa.chunked_array([pa.nulls(t.num_rows, pa.timestamp("us"))]))
        parts.append(pa.Table.from_arrays(cols, schema=SAMPLES_SCHEMA))
    labels = pa.concat_tables(parts).sort_by([("subject_id", "ascending"), ("prediction_time", "ascending")])
    if labels.num_rows == 0:
        raise DataError(path, "no label rows: the cohort is empty")
    sid = labels.column("subject_id").to_numpy()
    pred = labels.column("prediction_time").cast(pa.int64()).to_numpy()
    twice = (sid[1:] == sid[:-1]) & (pred[1:] == pred[:-1])
    if twice.any():
        shown = ", ".join(str(s) for s in np.unique(sid[1:][twice])[:MAX_EXAMPLES])
        raise DataError(
            path,
            f"columns 'subject_id', 'prediction_time': {int(twice.sum())} sample(s) given twice (subjects {shown}); "
            "each (subject, prediction time) is one sample with one label",
        )
    return labels, tz_aware


# --------------------------------------------------------------------------------------------------
# Ingest
#
# One job per output shard (canonical.shard_starts over the labelled subject ids, fixed by the labels
# alone), each in two passes so that memory holds about one shard's rows. Pass 1 (_RowDecisions) reads the
# data shards in read order (sorted path, then row), only the row groups that may hold the job's subject
# ids, and decides each of its rows' fate by the rules of docs/data_meds.md. Pass 2 (_batch) builds the
# shard's tables from its kept rows. Every rule looks at one subject's rows (a subject's rows all belong to
# one job) except those of the whole cohort, made by `finish_meds` when the jobs' parts are merged: the
# static columns (the same in every shard's subjects table; a code used both with and without values), the
# share of rows after every prediction time, and the report's first examples in read order. The whole-cohort
# `ingest_meds` runs the same code as one shard, so the two cannot decide a row differently.


def ingest_meds(p: MedsParams, root: Path, max_after_share: float = 1.0) -> IngestResult:
    """Read a MEDS dataset and its labels into the canonical tables (mapping in docs/data_meds.md), the
    whole cohort in one result held in memory. Relative params paths resolve against `root` (Params.root:
    the params file's folder). The ingest stage runs `meds_shard` per shard instead."""
    result, notes = meds_shard(p, root, 1, 0)
    part = ShardPart(0, 1, result.events.num_rows, result.report, notes, result.subjects, result.labels)
    report, subjects = finish_meds([part], max_after_share)
    return IngestResult(events=result.events, subjects=subjects, labels=result.labels, report=report)


def meds_shard(p: MedsParams, root: Path, n_shards: int, k: int) -> tuple[IngestResult, dict]:
    """Shard k of `n_shards`: the labelled subjects at positions shard_starts(N, n)[k] .. [k + 1] - 1 in id
    order, with the rows of the subject ids of its interval (canonical.shard_id_range: unlabelled ones too,
    counted as skips) and, for shard 0, the rows without a subject id. Its report counts those rows; its
    subjects table has the static columns its own rows give (finish_meds gives every shard the cohort's).
    Also returns the notes `finish_meds` needs: the data shards read, and each static column's first row."""
    meds_root = _required_path(p.dir, "data.meds.dir", root)
    labels_path = _required_path(p.labels, "data.meds.labels", root)
    shards, data_tz = _data_shards(meds_root)
    # The labels first: one row per sample; they fix the shards' subjects.
    labels, labels_tz = _read_labels(labels_path, p.window_start_column)
    if labels_tz != data_tz:
        aware, naive = ("labels", "data") if labels_tz else ("data", "labels")
        raise DataError(
            labels_path,
            f"column 'prediction_time': the {aware} times are timezone-aware but the {naive} times are naive; "
            "comparing them would shift every event by the UTC offset",
        )
    label_sid = labels.column("subject_id").to_numpy()
    ids = np.unique(label_sid)
    id_range = shard_id_range(ids, n_shards, k)
    starts = shard_starts(ids.size, n_shards)
    first, stop = int(starts[k]), int(starts[k + 1])
    # its samples: the label rows of its subjects (labels are sorted by subject)
    lo_row = hi_row = 0
    if stop > first:
        lo_row = int(np.searchsorted(label_sid, ids[first], side="left"))
        hi_row = int(np.searchsorted(label_sid, ids[stop - 1], side="right"))
    shard_labels = labels.slice(lo_row, hi_row - lo_row)
    rules = _RowDecisions(shard_labels, shards)
    kept = []
    for i, shard in enumerate(shards):  # pass 1
        for rows_at, rows in _read_shard(shard, id_range, with_null_ids=k == 0):
            kept.append(rules.decide(i, rows, rows_at))
    report = rules.finish()
    result = _batch(  # pass 2
        pa.concat_tables(kept) if kept else _data_schema().empty_table(),
        shard_labels,
        rules.subject_ids,
        rules.groups(),
        report.extra["static_codes"],
        report.extra["categorical_codes"],
        report.extra["birth_rows"] > 0,
        report,
    )
    notes = {"meds_root": str(meds_root), "data_shards": [s.name for s in shards], "labels": str(labels_path),
             "static_columns": {"numeric": rules.numeric_columns, "categorical": rules.categorical_columns}}
    return result, notes


def finish_meds(parts: list[ShardPart], max_after_share: float) -> tuple[IngestReport, pa.Table]:
    """The cohort's report and subjects table from the shards' parts (ingest_parts.ShardPart, in shard order),
    after the checks of the whole cohort: a static column named like a subjects key column or used both with
    and without values (DataError naming the first row), and more than `max_after_share` (the stage passes
    preprocess.max_outside_window_share) of the labelled subjects' timed rows after their last prediction
    time (prediction times that do not match the data, e.g. set at birth, would otherwise train on almost
    nothing). Counts add up; each reason's examples are the first MAX_EXAMPLES in read order; every shard's
    subjects table gets the cohort's static columns (NaN / null where it holds no row of one)."""
    names = parts[0].notes["data_shards"]
    if any(part.notes["data_shards"] != names for part in parts):
        raise DataError(None, "the shard jobs read different MEDS data shards (the input changed while they "
                              "ran): rerun every ingest shard job")  # fmt: skip
    meds_root, labels_path = Path(parts[0].notes["meds_root"]), Path(parts[0].notes["labels"])
    numeric: dict[str, tuple[int, int]] = {}
    categorical: dict[str, tuple[int, int]] = {}
    for part in parts:
        for mine, theirs in ((numeric, part.notes["static_columns"]["numeric"]),
                             (categorical, part.notes["static_columns"]["categorical"])):  # fmt: skip
            for column, at in theirs.items():
                mine[column] = min(mine.get(column, tuple(at)), tuple(at))
    static_codes, categorical_codes = _static_columns(numeric, categorical, lambda i: meds_root / names[i])

    reports = [part.report for part in parts]
    examples = _first_examples([r.examples for r in reports], names)
    report = IngestReport(source=SOURCE)
    for r in reports:
        for key in ("static_codes", "categorical_codes"):
            r.extra.pop(key)
        report.merge(r)
    report.examples = examples
    report.extra["static_codes"] = static_codes
    report.extra["categorical_codes"] = categorical_codes
    _check_after_prediction(report, labels_path, max_after_share)
    with_birth = report.extra["birth_rows"] > 0
    subjects = pa.concat_tables(
        [_with_columns(part.subjects, static_codes, categorical_codes, with_birth) for part in parts])
    return report, subjects


def _first_examples(examples: list[dict[str, list[str]]], data_shards: list[str]) -> dict[str, list[str]]:
    """Per reason, the first MAX_EXAMPLES examples (`<data shard>:<row>`) in read order (data shard order, then
    row) of the shards' examples (each shard's own first ones, in read order)."""
    position = {name: i for i, name in enumerate(data_shards)}

    def key(example: str) -> tuple[int, int]:
        name, _, row = example.rpartition(":")
        return position[name], int(row)

    merged: dict[str, list[str]] = {}
    for shard in examples:
        for reason, ex in shard.items():
            merged.setdefault(reason, []).extend(ex)
    return {reason: sorted(ex, key=key)[:MAX_EXAMPLES] for reason, ex in merged.items()}


def _with_columns(subjects: pa.Table, static_codes: list[str], categorical_codes: list[str],
                  with_birth: bool) -> pa.Table:  # fmt: skip
    """A shard's subjects table with the cohort's columns, in `_subjects_table`'s order: a numeric static column
    the shard has no row of is NaN, a categorical one null, birth_time null."""
    n = subjects.num_rows
    have = set(subjects.column_names)
    columns = {name: subjects.column(name) for name in ("subject_id", "admission_time", "group")}
    if with_birth:
        columns[BIRTH_TIME] = subjects.column(BIRTH_TIME) if BIRTH_TIME in have else pa.nulls(n, pa.timestamp("us"))
    for name in static_codes:
        columns[name] = subjects.column(name) if name in have else pa.array(np.full(n, np.nan, np.float32))
    for name in categorical_codes:
        columns[name] = subjects.column(name) if name in have else pa.nulls(n, pa.string())
    return pa.table(columns)


def _static_columns(numeric: dict[str, tuple[int, int]], categorical: dict[str, tuple[int, int]],
                    shard_path: Callable[[int], Path]) -> tuple[list[str], list[str]]:  # fmt: skip
    """The numeric and the categorical static columns, each sorted bytewise (as Arrow sorts), from each one's
    first row (data shard index, 1-based row). A column named like a subjects key column, or used both with
    values (numeric) and without (categorical), is a DataError naming that first row's data shard."""
    names = sorted(numeric, key=lambda c: c.encode("utf-8")), sorted(categorical, key=lambda c: c.encode("utf-8"))
    keys = SUBJECT_KEY_COLUMNS
    for sorted_names, kinds in zip(names, (numeric, categorical)):
        clash = [c for c in sorted_names if c in keys]
        if clash:
            i, row = kinds[clash[0]]
            raise DataError(
                shard_path(i),
                f"column 'code': static code '{clash[0]}' (row {row}) clashes with the subjects "
                f"key column of that name ({', '.join(keys)}); rename the code",
            )
    both = [c for c in names[0] if c in categorical]
    if both:
        i, row = categorical[both[0]]
        raise DataError(
            shard_path(i),
            f"column 'code': static code '{both[0]}{CATEGORY_SEPARATOR}...' without a value (row {row}) names "
            f"the categorical descriptor '{both[0]}', which static rows with a value also use as a numeric "
            "one; rename one of them",
        )
    return names[0], names[1]


class _RowDecisions:
    """Pass 1: decide each data row's fate, shard after shard in read order, and count it in the report.

    A row gets the first rule that applies (the SKIP_* order). Most rules look at the row alone; the
    others need what earlier shards held, kept here per subject or per static pair, never as rows: the
    static (subject, column) pairs already kept (a repeat is a duplicate_static skip), each subject's birth
    row, each labelled subject's first shard (its group; a subject seen again in a later shard is in several
    shards), whether it has a kept timed event, and the unlabelled subject ids seen. Per subject, because a
    subject may have several samples (label rows): a row is kept when it is at or before the subject's LAST
    prediction time; each sample's window is cut from the kept rows by preprocess."""

    def __init__(self, labels: pa.Table, shards: list[_Shard]):
        self.shards = shards
        self.report = IngestReport(source=SOURCE)
        self.labels = labels
        label_sid = labels.column("subject_id").to_numpy()
        label_pred_us = labels.column("prediction_time").cast(pa.int64()).to_numpy()
        # sorted by (subject, time); a shard may have no subject (more shards than subjects)
        last_row = np.flatnonzero(np.r_[label_sid[1:] != label_sid[:-1], True]) if label_sid.size else label_sid
        self.subject_ids = label_sid[last_row]  # the labelled subjects, sorted, unique
        self.last_pred_us = label_pred_us[last_row]  # each one's last prediction time
        n = len(self.subject_ids)
        self.first_shard = np.full(n, -1, dtype=np.int64)  # per subject: the shard of its first data row
        self.several = np.zeros(n, dtype=bool)  # per subject: rows in more than one shard
        self.has_event = np.zeros(n, dtype=bool)  # per subject: at least one kept timed event
        self.has_birth = np.zeros(n, dtype=bool)  # per subject: its MEDS_BIRTH row is kept
        self.static_kept: dict[str, np.ndarray] = {}  # static column -> sorted ids of the subjects it is kept for
        # static column with values -> its first kept row (data shard index, 1-based row), and the same for the
        # categorical ones (static codes without a value)
        self.numeric_columns: dict[str, tuple[int, int]] = {}
        self.categorical_columns: dict[str, tuple[int, int]] = {}
        self.unlabelled = np.empty(0, dtype=np.int64)  # subject ids with rows but no label
        self.event_rows = 0
        self.descriptor_rows = 0
        self.birth_rows = 0

    def decide(self, shard_index: int, t: pa.Table, rows_at: np.ndarray) -> pa.Table:
        """The kept rows of `t` (a `_read_shard` batch of shard `shard_index`, `rows_at` each row's 0-based row
        number in the shard; batches come in row order), in row order."""
        report, name = self.report, self.shards[shard_index].name
        n = t.num_rows
        report.rows_read += n

        sid_col, time_col, code_col, value_col = (t.column(c) for c in _DATA_COLUMNS)
        sid_null = _null_mask(sid_col)
        sid = sid_col.fill_null(0).to_numpy()
        time_null = _null_mask(time_col)
        time_us = time_col.cast(pa.int64()).fill_null(0).to_numpy()
        value_null = _null_mask(value_col)
        value = value_col.fill_null(0.0).to_numpy()
        code_null = _null_mask(code_col)
        undecided = np.ones(n, dtype=bool)

        def decide(reason: str, mask: np.ndarray) -> None:
            hit = undecided & mask
            idx = np.flatnonzero(hit)
            if idx.size:
                report.skip(reason, n=int(idx.size))
                # the first MAX_EXAMPLES in read order: earlier shards filled the list first
                examples = report.examples.setdefault(reason, [])
                examples.extend(f"{name}:{rows_at[i] + 1}" for i in idx[: MAX_EXAMPLES - len(examples)])
            undecided[hit] = False

        if not len(self.subject_ids):  # an empty shard's job: shard 0 reads the rows without a subject id only
            decide(SKIP_NULL_SUBJECT, sid_null)
            if undecided.any():
                raise AssertionError("a row with a subject id was read for a shard without subjects")
            return t.slice(0, 0)
        # Each row's subject index (valid where has_label): a vectorised join on the sorted subject ids.
        subject_idx = np.minimum(np.searchsorted(self.subject_ids, sid), len(self.subject_ids) - 1)
        has_label = ~sid_null & (self.subject_ids[subject_idx] == sid)
        is_birth = ~time_null & ~code_null & pc.fill_null(pc.equal(code_col, BIRTH_CODE), False).to_numpy(
            zero_copy_only=False)

        decide(SKIP_NULL_SUBJECT, sid_null)
        decide(SKIP_NULL_CODE, code_null)
        decide(SKIP_NO_LABEL, ~has_label)
        decide(SKIP_NON_FINITE, ~value_null & ~np.isfinite(value))
        # A static row without a value is a categorical descriptor when its code reads NAME//CATEGORY (the MEDS
        # ETLs' GENDER//F, RACE//WHITE); without the separator it has nothing to store.
        has_separator = pc.fill_null(pc.match_substring(code_col, CATEGORY_SEPARATOR), False).to_numpy(
            zero_copy_only=False)
        decide(SKIP_STATIC_NO_VALUE, time_null & value_null & ~has_separator)
        # MEDS_BIRTH: the first birth row of a subject (in read order) gives its birth time; later ones repeat it.
        births = np.flatnonzero(undecided & is_birth)
        _, first = np.unique(subject_idx[births], return_index=True)
        repeat_birth = np.ones(births.size, dtype=bool)
        repeat_birth[first] = False
        repeat_birth |= self.has_birth[subject_idx[births]]
        duplicate_birth = np.zeros(n, dtype=bool)
        duplicate_birth[births[repeat_birth]] = True
        decide(SKIP_DUPLICATE_BIRTH, duplicate_birth)
        self.has_birth[subject_idx[births[~repeat_birth]]] = True
        # Static rows: a value makes a numeric descriptor named by the code; no value makes a categorical one,
        # GENDER//F -> GENDER = "F". One kept row per (subject, descriptor column), the first in read order.
        candidates = np.flatnonzero(undecided & time_null)
        codes = code_col.take(pa.array(candidates, pa.int64())).to_numpy(zero_copy_only=False)
        categorical = value_null[candidates]
        columns = np.array([c.split(CATEGORY_SEPARATOR, 1)[0] if cat else c for c, cat in zip(codes, categorical)],
                           dtype=object)
        repeated = self._repeated_statics(sid[candidates], columns)
        duplicate_static = np.zeros(n, dtype=bool)
        duplicate_static[candidates[repeated]] = True
        decide(SKIP_DUPLICATE_STATIC, duplicate_static)
        decide(SKIP_AFTER_PREDICTION, ~time_null & ~is_birth & (time_us > self.last_pred_us[subject_idx]))
        is_event = undecided & ~time_null & ~is_birth
        self.event_rows += int(is_event.sum())
        self.birth_rows += int(births.size - repeat_birth.sum())
        self.descriptor_rows += int((undecided & time_null).sum())
        self.has_event[subject_idx[is_event]] = True
        kept_static = ~repeated
        self._note_columns(shard_index, rows_at[candidates[kept_static]], columns[kept_static],
                           categorical[kept_static])

        # Provenance per labelled subject, from all its rows (skipped ones too): MEDS puts a subject in one
        # shard only; a subject found in several is kept whole and counted in the report.
        present = np.unique(subject_idx[has_label])
        first_seen = self.first_shard[present] < 0
        self.first_shard[present[first_seen]] = shard_index
        self.several[present[~first_seen & (self.first_shard[present] != shard_index)]] = True
        self.unlabelled = np.union1d(self.unlabelled, sid[~sid_null & ~has_label])
        return t.filter(pa.array(undecided))

    def _repeated_statics(self, sid: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Which of a shard's static candidates (subject ids and descriptor columns, in row order) repeat a
        (subject, column) pair kept earlier, in this shard or an earlier one, so the first in read order is
        kept; and note the others as kept."""
        pairs = pd.DataFrame({"s": sid, "c": columns})
        repeated = pairs.duplicated(keep="first").to_numpy().copy()  # (pandas may hand out a read-only view)
        for column, at in pairs.groupby("c", sort=False).indices.items():
            before = self.static_kept.get(column)
            if before is not None:
                repeated[at] |= np.isin(sid[at], before)
                self.static_kept[column] = np.union1d(before, sid[at[~repeated[at]]])
            else:
                self.static_kept[column] = np.unique(sid[at[~repeated[at]]])
        return repeated

    def _note_columns(self, shard_index: int, rows: np.ndarray, columns: np.ndarray, categorical: np.ndarray) -> None:
        """Remember each kept static column's kind (numeric or categorical) and its first row, for the clash
        checks in `finish` and `finish_meds` (after every shard is read, so the error is the one the sorted
        columns meet first)."""
        for row, column, cat in zip(rows.tolist(), columns.tolist(), categorical.tolist()):
            (self.categorical_columns if cat else self.numeric_columns).setdefault(column, (shard_index, row + 1))

    def finish(self) -> IngestReport:
        """This shard's report, once every data shard is read. A static column named like a subjects key column,
        or used both with values (numeric) and without (categorical), is a DataError here (and for the whole
        cohort in `finish_meds`)."""
        report = self.report
        numeric, categorical = _static_columns(self.numeric_columns, self.categorical_columns,
                                               lambda i: self.shards[i].path)  # fmt: skip
        # Same accounting as the other sources: rows_read = rows_kept + rows_skipped, and a kept row is a timed
        # event, a static descriptor value or a birth (the PhysioNet 2012 source uses the same extra keys).
        report.extra["event_rows"] = self.event_rows
        report.extra["descriptor_rows"] = self.descriptor_rows + self.birth_rows
        report.extra["birth_rows"] = self.birth_rows
        report.rows_kept = self.event_rows + self.descriptor_rows + self.birth_rows
        # Every row was decided exactly once; if this ever fails the report would lie, so stop loudly.
        assert report.rows_read == report.rows_kept + sum(report.skipped.values())
        report.extra["static_codes"] = numeric
        report.extra["categorical_codes"] = categorical
        report.extra["subjects_in_several_shards"] = int(self.several.sum())
        report.extra["subjects_without_label"] = int(self.unlabelled.size)
        report.extra["samples"] = self.labels.num_rows
        report.subjects = len(self.subject_ids)
        report.positives = int(pc.sum(self.labels.column("boolean_value").cast(pa.int64())).as_py() or 0)
        report.subjects_without_measurements = [int(s) for s in self.subject_ids[~self.has_event]]
        return report

    def groups(self) -> np.ndarray:
        """Per labelled subject, subjects.group: the shard holding the subject's first row in read order, or
        GROUP_WITHOUT_DATA for a labelled subject without data rows."""
        names = np.asarray([s.name for s in self.shards] + [GROUP_WITHOUT_DATA], dtype=object)
        return names[np.where(self.first_shard >= 0, self.first_shard, len(self.shards))]


def _check_after_prediction(report: IngestReport, labels_path: Path, max_share: float) -> None:
    """No silent empty windows: a cohort whose rows mostly come after every prediction time of their subject
    is refused, with the share and the likely cause (preprocess checks the windows themselves)."""
    after = report.skipped.get(SKIP_AFTER_PREDICTION, 0)
    timed = after + report.extra["event_rows"]
    if timed == 0 or after / timed <= max_share:
        return
    raise DataError(
        labels_path,
        f"column 'prediction_time': {after} of {timed} timed rows of labelled subjects ({after / timed:.1%}) come "
        "after the subject's last prediction time, so no window can hold them; are the prediction times those of "
        "this data (not a birth or an admission long before it)? Set preprocess.max_outside_window_share: 1 to "
        "accept it knowingly",
    )


def _null_mask(col: pa.ChunkedArray) -> np.ndarray:
    return pc.is_null(col).to_numpy(zero_copy_only=False)


def _batch(
    rows: pa.Table, labels: pa.Table, subject_ids: np.ndarray, groups: np.ndarray, static_codes: list[str],
    categorical_codes: list[str], with_birth: bool, report: IngestReport,
) -> IngestResult:
    """Pass 2: one output batch from its kept rows in read order, its labelled subjects (sorted by id) and
    their samples (label rows)."""
    timed = pc.is_valid(rows.column("time"))
    birth = pc.and_(timed, pc.equal(rows.column("code"), BIRTH_CODE))
    # A stable sort: rows equal in (subject, time, code) stay in read order.
    events = rows.filter(pc.and_not(timed, birth)).sort_by(
        [("subject_id", "ascending"), ("time", "ascending"), ("code", "ascending")])
    events = pa.Table.from_arrays([events.column(c) for c in EVENTS_SCHEMA.names], schema=EVENTS_SCHEMA)
    subjects = _subjects_table(subject_ids, groups, events, rows.filter(pc.invert(timed)), rows.filter(birth),
                               static_codes, categorical_codes, with_birth)
    return IngestResult(events=events, subjects=subjects, labels=labels, report=report)


def _subjects_table(
    subject_ids: np.ndarray, groups: np.ndarray, events: pa.Table, static: pa.Table, births: pa.Table,
    static_codes: list[str], categorical_codes: list[str], with_birth: bool,
) -> pa.Table:
    """One row per labelled subject: admission_time, group, birth_time (when the cohort has MEDS_BIRTH rows),
    then one float32 column per numeric static code and one string column per categorical descriptor of the
    cohort (NaN / null where not recorded: a batch may hold no row of some code, and still has its column)."""
    n_subj = len(subject_ids)

    # admission_time = the first kept timed event (events are sorted, so each subject's first row).
    ev_sid = events.column("subject_id").to_numpy()
    first_rows = np.flatnonzero(np.r_[True, ev_sid[1:] != ev_sid[:-1]]) if len(ev_sid) else np.array([], int)
    admission = np.zeros(n_subj, dtype=np.int64)  # masked (null) where the subject has no event
    has_events = np.zeros(n_subj, dtype=bool)
    pos = np.searchsorted(subject_ids, ev_sid[first_rows])
    admission[pos] = events.column("time").cast(pa.int64()).to_numpy()[first_rows]
    has_events[pos] = True
    columns: dict[str, pa.Array] = {
        "subject_id": pa.array(subject_ids, pa.int64()),
        "admission_time": pa.array(admission, mask=~has_events).cast(pa.timestamp("us")),
        "group": pa.array(groups.tolist(), pa.string()),
    }
    if with_birth:
        birth = np.zeros(n_subj, dtype=np.int64)
        has_birth = np.zeros(n_subj, dtype=bool)
        at = np.searchsorted(subject_ids, births.column("subject_id").to_numpy())
        birth[at] = births.column("time").cast(pa.int64()).to_numpy()
        has_birth[at] = True
        columns[BIRTH_TIME] = pa.array(birth, mask=~has_birth).cast(pa.timestamp("us"))
    numeric = pc.is_valid(static.column("numeric_value"))
    # Static rows: at most one per (subject, column) was kept; numeric ones with a finite value.
    values = static.filter(numeric)
    matrix = np.full((n_subj, len(static_codes)), np.nan, dtype=np.float32)
    if values.num_rows:
        code_idx = pc.index_in(values.column("code"), value_set=pa.array(static_codes, pa.string()))
        rows = np.searchsorted(subject_ids, values.column("subject_id").to_numpy())
        matrix[rows, code_idx.to_numpy(zero_copy_only=False)] = values.column("numeric_value").to_numpy()
    for j, name in enumerate(static_codes):
        columns[name] = pa.array(matrix[:, j], pa.float32())
    cats = static.filter(pc.invert(numeric))
    cat_codes = cats.column("code").to_pylist()
    cat_rows = np.searchsorted(subject_ids, cats.column("subject_id").to_numpy())
    cat_values = {name: [None] * n_subj for name in categorical_codes}
    for row, code in zip(cat_rows.tolist(), cat_codes):
        name, _, category = code.partition(CATEGORY_SEPARATOR)
        cat_values[name][row] = category
    for name in categorical_codes:
        columns[name] = pa.array(cat_values[name], pa.string())
    expected = 3 + bool(with_birth) + len(static_codes) + len(categorical_codes)  # subject_id, admission, group
    if len(columns) != expected:  # two codes, one column: never silently
        raise AssertionError(f"static codes {static_codes} / {categorical_codes} do not map one to one onto columns")
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
    `metadata/codes.parquet` (every code, no descriptions) and `labels.parquet`. Descriptors go back to MEDS
    rows (`_static_events`): numeric columns of `subjects` as null-time events of that code (NaN, not recorded,
    writes no row), categorical ones as null-time `NAME//CATEGORY` rows, `birth_time` as a `MEDS_BIRTH` row.
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
    """The descriptor columns of `subjects` as MEDS rows, the inverse of ingest's mapping: a numeric column
    as null-time events of that code with its value (NaN = not recorded = no row); a categorical (string)
    column NAME as null-time, value-less `NAME//CATEGORY` rows (null = no row); `birth_time` as a timed
    `MEDS_BIRTH` row (null = no row). Other key columns (admission_time, group) have no MEDS row."""
    sid = subjects.column("subject_id").to_numpy()
    parts = []

    def rows(keep: np.ndarray, times: pa.Array, codes: list[str], values: pa.Array) -> None:
        parts.append(pa.Table.from_arrays(
            [pa.array(sid[keep], pa.int64()), times, pa.array(codes, pa.string()), values], schema=EVENTS_SCHEMA))

    if BIRTH_TIME in subjects.column_names:
        birth = subjects.column(BIRTH_TIME).cast(pa.timestamp("us"))
        keep = pc.is_valid(birth).to_numpy(zero_copy_only=False)
        n = int(keep.sum())
        rows(keep, birth.filter(pa.array(keep)).combine_chunks(), [BIRTH_CODE] * n, pa.nulls(n, pa.float32()))
    for name in subjects.column_names:
        if name in SUBJECT_KEY_COLUMNS:
            continue
        column = subjects.column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            categories = column.to_pylist()
            keep = np.array([c is not None for c in categories], dtype=bool)
            codes = [f"{name}{CATEGORY_SEPARATOR}{c}" for c in categories if c is not None]
            rows(keep, pa.nulls(len(codes), pa.timestamp("us")), codes, pa.nulls(len(codes), pa.float32()))
            continue
        values = column.cast(pa.float32()).fill_null(np.nan).to_numpy()
        keep = ~np.isnan(values)
        n = int(keep.sum())
        rows(keep, pa.nulls(n, pa.timestamp("us")), [name] * n, pa.array(values[keep], pa.float32()))
    return pa.concat_tables(parts) if parts else EVENTS_SCHEMA.empty_table()


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (else argparse's own usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of shards (at least 1)")
    return value


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
    parser.add_argument("--shards", type=_positive_int, default=1, help="number of data shards (default 1)")
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
