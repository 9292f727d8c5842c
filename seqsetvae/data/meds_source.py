"""The MEDS source: ingest a MEDS cohort into the canonical tables, and export canonical tables as MEDS.

`ingest_meds` reads `data.meds.dir/data/**/*.parquet` (MEDS data schema) and the labels parquet
`data.meds.labels` (MEDS label schema, one binary label per subject) and maps them onto the canonical
tables of `seqsetvae.data.canonical`. `write_meds_dataset` goes the other way, so any cohort (synthetic,
PhysioNet 2012) can be exported, inspected with MEDS tools and ingested again. The mapping, and every
counted skip, is documented in `docs/data_meds.md`.

`iter_meds` is the same ingest streamed, for the ingest stage: it reads the data shards one at a time and
yields the cohort in batches of subjects (the output shards), so memory holds about one input shard plus
one output batch whatever the cohort size; `ingest_meds` runs the same code with one batch.

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
from typing import Iterator

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
from seqsetvae.io import scratch_folder

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
# every reason a MEDS row can be skipped for (each is counted in the ingest report, docs/data_meds.md)
SKIP_REASONS = frozenset({
    SKIP_NULL_SUBJECT, SKIP_NULL_CODE, SKIP_NO_LABEL, SKIP_NON_FINITE, SKIP_STATIC_NO_VALUE,
    SKIP_DUPLICATE_STATIC, SKIP_AFTER_PREDICTION,
})

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


def _read_shard(shard: _Shard) -> pa.Table:
    """One data shard's used columns, cast to `_data_schema()` (an omitted numeric_value is all null: every
    event presence-only), its codes checked."""
    schema = _data_schema()
    present = [c for c in _DATA_COLUMNS if c in shard.schema.names]
    t = _read_parquet(shard.path, present)
    cols = {c: _cast(t.column(c), schema.field(c).type, shard.path, c) for c in present}
    _check_codes(shard.path, cols["code"])
    if "numeric_value" not in cols:
        cols["numeric_value"] = pa.chunked_array([pa.nulls(t.num_rows, schema.field("numeric_value").type)])
    return pa.Table.from_arrays([cols[c] for c in _DATA_COLUMNS], schema=schema)


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
#
# Two passes over the data shards, so that memory holds about one input shard or one output batch,
# whatever the cohort size. Pass 1 (_RowDecisions) reads the shards one at a time in read order (sorted
# path, then row) and decides every row's fate by the rules of docs/data_meds.md; the kept rows wait in
# _Pieces under their output batch. Pass 2 (_batch) builds the output batches one at a time from their
# kept rows. Two passes because MEDS ETLs often hash subjects into shards: any output batch (a run of
# subject ids) may draw rows from every input shard. The whole-cohort `ingest_meds` runs the same two
# passes with a single batch, so the two entry points cannot decide a row differently.


def ingest_meds(p: MedsParams, root: Path) -> IngestResult:
    """Read a MEDS dataset and its labels into the canonical tables (mapping in docs/data_meds.md), the
    whole cohort in one result held in memory. Relative params paths resolve against `root` (Params.root:
    the params file's folder). The ingest stage streams instead: see `iter_meds`."""
    (result,) = _ingest(p, root, None, None)
    return result


def iter_meds(
    p: MedsParams, root: Path, shard_subjects: int | None, scratch_dir: Path | None = None
) -> Iterator[IngestResult]:
    """The cohort as batches of `shard_subjects` labelled subjects in subject id order (all in one batch when
    None): the shards `write_ingested` writes, the same as `subject_batches(ingest_meds(...))` would cut.

    Peak memory is about one input shard (pass 1) plus one output batch (pass 2). Between the passes the
    kept rows wait in a temporary folder under `scratch_dir` (default: the system's temporary folder),
    removed when the iteration ends, fails or is abandoned; it needs about the compressed size of the
    kept rows. The report goes whole with the first batch, as `subject_batches` gives it."""
    # scratch_folder names it after this process and first removes the ones killed runs left behind.
    with scratch_folder("seqsetvae-meds", scratch_dir) as tmp:
        yield from _ingest(p, root, shard_subjects, tmp)


def _ingest(p: MedsParams, root: Path, shard_subjects: int | None, folder: Path | None) -> Iterator[IngestResult]:
    meds_root = _required_path(p.dir, "data.meds.dir", root)
    labels_path = _required_path(p.labels, "data.meds.labels", root)
    shards, data_tz = _data_shards(meds_root)
    # The labels first: one row per subject, they give each row its label and each subject its batch.
    labels, labels_tz = _read_labels(labels_path)
    if labels_tz != data_tz:
        aware, naive = ("labels", "data") if labels_tz else ("data", "labels")
        raise DataError(
            labels_path,
            f"column 'prediction_time': the {aware} times are timezone-aware but the {naive} times are naive; "
            "comparing them would shift every event by the UTC offset",
        )
    # Batch k = the labelled subjects k * per_batch ... (k + 1) * per_batch - 1 in id order (labels are
    # sorted and unique), exactly the cut of canonical.subject_batches; a kept row has a label, so its
    # batch is its label index // per_batch.
    per_batch = shard_subjects or labels.num_rows
    rules = _RowDecisions(labels, shards)
    pieces = _Pieces(folder)
    for i, shard in enumerate(shards):  # pass 1
        kept, label_idx = rules.decide(i, _read_shard(shard))
        pieces.add(i, kept, label_idx // per_batch)
    report = rules.finish()
    groups = rules.groups()
    for k, start in enumerate(range(0, labels.num_rows, per_batch)):  # pass 2
        yield _batch(
            pieces.take(k),
            labels.slice(start, per_batch),
            groups[start : start + per_batch],
            report.extra["static_codes"],
            report if k == 0 else IngestReport(source=SOURCE),
        )


class _RowDecisions:
    """Pass 1: decide each data row's fate, shard after shard in read order, and count it in the report.

    A row gets the first rule that applies (the SKIP_* order). Most rules look at the row alone; the
    others need what earlier shards held, kept here per subject or per static pair, never as rows: the
    static (subject, code) pairs already kept (a repeat is a duplicate_static skip), each labelled
    subject's first shard (its group; a subject seen again in a later shard is in several shards),
    whether it has a kept timed event, and the unlabelled subject ids seen."""

    def __init__(self, labels: pa.Table, shards: list[_Shard]):
        self.shards = shards
        self.report = IngestReport(source=SOURCE)
        self.labels = labels
        self.label_sid = labels.column("subject_id").to_numpy()
        self.label_pred_us = labels.column("prediction_time").cast(pa.int64()).to_numpy()
        n = len(self.label_sid)
        self.first_shard = np.full(n, -1, dtype=np.int64)  # per label row: the shard of its first data row
        self.several = np.zeros(n, dtype=bool)  # per label row: rows in more than one shard
        self.has_event = np.zeros(n, dtype=bool)  # per label row: at least one kept timed event
        self.static_kept: dict[str, np.ndarray] = {}  # static code -> sorted ids of the subjects it is kept for
        self.unlabelled = np.empty(0, dtype=np.int64)  # subject ids with rows but no label
        self.clash: dict[str, tuple[Path, int]] = {}  # kept static code named like a subjects key -> first row
        self.event_rows = 0
        self.descriptor_rows = 0

    def decide(self, shard_index: int, t: pa.Table) -> tuple[pa.Table, np.ndarray]:
        """The kept rows of shard `t` (a `_read_shard` table), in row order, and each one's label index."""
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
        # Each row's label index (valid where has_label): a vectorised join on the sorted label subject ids.
        label_idx = np.minimum(np.searchsorted(self.label_sid, sid), len(self.label_sid) - 1)
        has_label = ~sid_null & (self.label_sid[label_idx] == sid)

        undecided = np.ones(n, dtype=bool)

        def decide(reason: str, mask: np.ndarray) -> None:
            hit = undecided & mask
            idx = np.flatnonzero(hit)
            if idx.size:
                report.skip(reason, n=int(idx.size))
                # the first MAX_EXAMPLES in read order: earlier shards filled the list first
                examples = report.examples.setdefault(reason, [])
                examples.extend(f"{name}:{i + 1}" for i in idx[: MAX_EXAMPLES - len(examples)])
            undecided[hit] = False

        decide(SKIP_NULL_SUBJECT, sid_null)
        decide(SKIP_NULL_CODE, _null_mask(code_col))
        decide(SKIP_NO_LABEL, ~has_label)
        decide(SKIP_NON_FINITE, ~value_null & ~np.isfinite(value))
        decide(SKIP_STATIC_NO_VALUE, time_null & value_null)
        candidates = np.flatnonzero(undecided & time_null)
        codes = code_col.take(pa.array(candidates, pa.int64())).to_numpy(zero_copy_only=False)
        repeated = self._repeated_statics(sid[candidates], codes)
        duplicate_static = np.zeros(n, dtype=bool)
        duplicate_static[candidates[repeated]] = True
        decide(SKIP_DUPLICATE_STATIC, duplicate_static)
        decide(SKIP_AFTER_PREDICTION, ~time_null & (time_us > self.label_pred_us[label_idx]))
        is_event = undecided & ~time_null
        self.event_rows += int(is_event.sum())
        self.descriptor_rows += int((undecided & time_null).sum())
        self.has_event[label_idx[is_event]] = True
        self._note_clashes(shard_index, candidates[~repeated], codes[~repeated])

        # Provenance per labelled subject, from all its rows (skipped ones too): MEDS puts a subject in one
        # shard only; a subject found in several is kept whole and counted in the report.
        present = np.unique(label_idx[has_label])
        first_seen = self.first_shard[present] < 0
        self.first_shard[present[first_seen]] = shard_index
        self.several[present[~first_seen]] = True
        self.unlabelled = np.union1d(self.unlabelled, sid[~sid_null & ~has_label])
        return t.filter(pa.array(undecided)), label_idx[undecided]

    def _repeated_statics(self, sid: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Which of a shard's static candidates (subject ids and codes, in row order) repeat a (subject,
        code) pair kept earlier, in this shard or an earlier one, so the first in read order is kept; and
        note the others as kept."""
        pairs = pd.DataFrame({"s": sid, "c": codes})
        repeated = pairs.duplicated(keep="first").to_numpy().copy()  # (pandas may hand out a read-only view)
        for code, at in pairs.groupby("c", sort=False).indices.items():
            before = self.static_kept.get(code)
            if before is not None:
                repeated[at] |= np.isin(sid[at], before)
                self.static_kept[code] = np.union1d(before, sid[at[~repeated[at]]])
            else:
                self.static_kept[code] = np.unique(sid[at[~repeated[at]]])
        return repeated

    def _note_clashes(self, shard_index: int, rows: np.ndarray, codes: np.ndarray) -> None:
        """Remember the first kept static row of a code named like a subjects key column (reported in
        `finish`, after every shard is read, so the error is the one the sorted codes meet first)."""
        for key in SUBJECT_KEY_COLUMNS:
            if key not in self.clash:
                hit = np.flatnonzero(codes == key)
                if hit.size:
                    self.clash[key] = (self.shards[shard_index].path, int(rows[hit[0]]) + 1)

    def finish(self) -> IngestReport:
        """The cohort's report, once every shard is decided; a static code clashing with a subjects key
        column is a DataError here."""
        report = self.report
        distinct = pa.array(list(self.static_kept), pa.string())
        # In code order, Arrow strings compared bytewise; codes were checked to be non-empty and free of
        # control characters when read, and are used exactly as written.
        names = distinct.take(pc.array_sort_indices(distinct)).to_pylist()
        clashes = [c for c in names if c in self.clash]
        if clashes:
            path, row = self.clash[clashes[0]]
            raise DataError(
                path,
                f"column 'code': static code '{clashes[0]}' (row {row}) clashes with the subjects "
                f"key column of that name ({', '.join(SUBJECT_KEY_COLUMNS)}); rename the code",
            )
        # Same accounting as the other sources: rows_read = rows_kept + rows_skipped, and a kept row is either
        # a timed event or a static descriptor value (the PhysioNet 2012 source uses the same extra keys).
        report.extra["event_rows"] = self.event_rows
        report.extra["descriptor_rows"] = self.descriptor_rows
        report.rows_kept = self.event_rows + self.descriptor_rows
        # Every row was decided exactly once; if this ever fails the report would lie, so stop loudly.
        assert report.rows_read == report.rows_kept + sum(report.skipped.values())
        report.extra["static_codes"] = names
        report.extra["subjects_in_several_shards"] = int(self.several.sum())
        report.extra["subjects_without_label"] = int(self.unlabelled.size)
        report.subjects = len(self.label_sid)
        report.positives = int(pc.sum(self.labels.column("boolean_value").cast(pa.int64())).as_py() or 0)
        report.subjects_without_measurements = [int(s) for s in self.label_sid[~self.has_event]]
        return report

    def groups(self) -> np.ndarray:
        """Per label row, subjects.group: the shard holding the subject's first row in read order, or
        GROUP_WITHOUT_DATA for a labelled subject without data rows."""
        names = np.asarray([s.name for s in self.shards] + [GROUP_WITHOUT_DATA], dtype=object)
        return names[np.where(self.first_shard >= 0, self.first_shard, len(self.shards))]


class _Pieces:
    """Pass 1's kept rows, set aside by output batch until pass 2 takes them, one batch at a time.

    With a folder, each input shard's kept rows go to one parquet file there, one row group run per output
    batch, so pass 2 reads a batch's rows from every shard without reading the rest; without one (the
    whole-cohort `ingest_meds`) they stay in memory. Either way `take` gives a batch's rows in read order:
    shard order, then row order within a shard, which the stable event sort and the report rely on."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.parts: dict[int, list[pa.Table | tuple[Path, list[int]]]] = {}

    def add(self, shard_index: int, rows: pa.Table, batch: np.ndarray) -> None:
        if rows.num_rows == 0:
            return
        if np.any(batch[1:] < batch[:-1]):  # subjects hashed into shards: group by batch, keeping row order
            order = np.argsort(batch, kind="stable")
            rows, batch = rows.take(pa.array(order)), batch[order]
        starts = np.flatnonzero(np.r_[True, batch[1:] != batch[:-1]])
        runs = [(int(batch[lo]), int(lo), int(hi)) for lo, hi in zip(starts, np.r_[starts[1:], len(batch)])]
        if self.folder is None:
            for k, lo, hi in runs:
                self.parts.setdefault(k, []).append(rows.slice(lo, hi - lo))
            return
        path = self.folder / f"{shard_index}.parquet"
        with pq.ParquetWriter(path, rows.schema) as writer:
            for _, lo, hi in runs:
                writer.write_table(rows.slice(lo, hi - lo), row_group_size=hi - lo)
        # The writer may split a large run into several row groups (a cap on rows per group): map runs to
        # the row groups that lie inside them.
        meta = pq.read_metadata(path)
        ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        begins = ends - np.diff(np.r_[0, ends])
        for k, lo, hi in runs:
            self.parts.setdefault(k, []).append((path, np.flatnonzero((begins >= lo) & (ends <= hi)).tolist()))

    def take(self, batch: int) -> pa.Table:
        tables = [
            p if isinstance(p, pa.Table) else pq.ParquetFile(p[0]).read_row_groups(p[1])
            for p in self.parts.pop(batch, [])
        ]
        return pa.concat_tables(tables) if tables else _data_schema().empty_table()


def _null_mask(col: pa.ChunkedArray) -> np.ndarray:
    return pc.is_null(col).to_numpy(zero_copy_only=False)


def _batch(
    rows: pa.Table, labels: pa.Table, groups: np.ndarray, static_codes: list[str], report: IngestReport
) -> IngestResult:
    """Pass 2: one output batch from its kept rows in read order and its labelled subjects (sorted by id)."""
    timed = pc.is_valid(rows.column("time"))
    # A stable sort: rows equal in (subject, time, code) stay in read order.
    events = rows.filter(timed).sort_by([("subject_id", "ascending"), ("time", "ascending"), ("code", "ascending")])
    events = pa.Table.from_arrays([events.column(c) for c in EVENTS_SCHEMA.names], schema=EVENTS_SCHEMA)
    subjects = _subjects_table(labels, groups, events, rows.filter(pc.invert(timed)), static_codes)
    return IngestResult(events=events, subjects=subjects, labels=labels, report=report)


def _subjects_table(
    labels: pa.Table, groups: np.ndarray, events: pa.Table, static: pa.Table, static_codes: list[str]
) -> pa.Table:
    """One row per labelled subject: admission_time, group, then one float32 column per static code of the
    cohort (NaN where not recorded: a batch may hold no row of some code, and still has its column)."""
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
    columns: dict[str, pa.Array] = {
        "subject_id": pa.array(subject_ids, pa.int64()),
        "admission_time": pa.array(admission, mask=~has_events).cast(pa.timestamp("us")),
        "group": pa.array(groups.tolist(), pa.string()),
    }
    # Static rows: at most one per (subject, code) was kept, each with a finite value.
    matrix = np.full((n_subj, len(static_codes)), np.nan, dtype=np.float32)
    if static.num_rows:
        code_idx = pc.index_in(static.column("code"), value_set=pa.array(static_codes, pa.string()))
        rows = np.searchsorted(subject_ids, static.column("subject_id").to_numpy())
        matrix[rows, code_idx.to_numpy(zero_copy_only=False)] = static.column("numeric_value").to_numpy()
    for j, name in enumerate(static_codes):
        columns[name] = pa.array(matrix[:, j], pa.float32())
    if len(columns) != len(SUBJECT_KEY_COLUMNS) + len(static_codes):  # two codes, one column: never silently
        raise AssertionError(f"static codes {static_codes} do not map one to one onto columns")
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
