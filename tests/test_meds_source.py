"""The MEDS source: ingest mapping, counted skips, bad inputs, and the canonical -> MEDS -> canonical round trip.

Bad MEDS inputs are built by tests/bad_inputs/meds/builders.py (parquet is binary): each case is the good
cohort with one thing broken.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tests.bad_inputs.meds import builders as b
import meds
from meds import CodeMetadataSchema, DataSchema, DatasetMetadataSchema, LabelSchema, SubjectSplitSchema

from seqsetvae.config import MedsParams
from seqsetvae.data import meds_source
from seqsetvae.data.canonical import (
    EVENTS_SCHEMA,
    LABELS_SCHEMA,
    MEDS_LABEL_COLUMNS,
    SAMPLES_SCHEMA,
    SUBJECT_KEY_COLUMNS,
    IngestReport,
    IngestResult,
)
from seqsetvae.data.meds_source import ingest_meds, write_meds_dataset
from seqsetvae.errors import DataError

# The params root only matters for relative params paths; the builders write absolute ones.
ROOT = Path("/nonexistent-project-root")


def ingest(p: MedsParams) -> IngestResult:
    return ingest_meds(p, ROOT)


def skips(result: IngestResult) -> dict[str, int]:
    return dict(result.report.skipped)


def assert_accounted(result: IngestResult) -> None:
    r = result.report.to_dict()
    assert r["rows_read"] == r["rows_kept"] + r["rows_skipped"]
    assert r["rows_kept"] == r["event_rows"] + r["descriptor_rows"]
    assert r["event_rows"] == result.events.num_rows
    # every descriptor row is exactly one recorded (non-NaN) cell of a static column in subjects
    statics = [c for c in result.subjects.column_names if c not in SUBJECT_KEY_COLUMNS]
    recorded = sum(int(result.subjects.column(c).drop_null().filter(pc.invert(pc.is_nan(result.subjects.column(c).drop_null()))).length())
                   if pa.types.is_floating(result.subjects.schema.field(c).type)
                   else int(result.subjects.column(c).drop_null().length()) for c in statics)
    births = int(result.subjects.column("birth_time").drop_null().length()) if "birth_time" in result.subjects.column_names else 0
    assert r["descriptor_rows"] == recorded + births


# --------------------------------------------------------------------------------------------------
# The mapping on a valid cohort


def meds_labels(labels: pa.Table) -> pa.Table:
    """The MEDS label columns of a samples table (a MEDS export carries no window start)."""
    return labels.select(list(MEDS_LABEL_COLUMNS))


def test_good_cohort_maps_to_canonical_tables(tmp_path):
    result = ingest(b.write(tmp_path))
    timed = sorted((s, b.at(h), c, v) for s, h, c, v in b.GOOD_ROWS if h is not None)

    assert result.events.schema.equals(EVENTS_SCHEMA)
    got = list(zip(*(result.events.column(c).to_pylist() for c in EVENTS_SCHEMA.names)))
    assert got == [(s, t, c, pytest.approx(v) if v is not None else None) for s, t, c, v in timed]
    assert result.labels.schema.equals(SAMPLES_SCHEMA)
    assert result.labels.to_pylist() == [
        {"subject_id": s, "prediction_time": b.at(h), "boolean_value": y, "window_start": None}
        for s, h, y in b.GOOD_LABELS
    ]
    subjects = result.subjects.to_pylist()
    assert [row["subject_id"] for row in subjects] == [1, 2]
    # admission = first timed event; static descriptors become float32 columns; group = the shard.
    assert [row["admission_time"] for row in subjects] == [b.at(0.0), b.at(1.0)]
    assert [row["Age"] for row in subjects] == [71.0, 45.0]
    assert result.subjects.schema.field("Age").type == pa.float32()
    assert [row["group"] for row in subjects] == [b.SHARD, b.SHARD]

    r = result.report.to_dict()
    assert (r["rows_read"], r["rows_kept"], r["rows_skipped"]) == (8, 8, 0)
    assert (r["event_rows"], r["descriptor_rows"]) == (6, 2)
    assert (r["subjects"], r["positives"], r["subjects_without_measurements"]) == (2, 1, [])
    assert_accounted(result)
    DataSchema.validate(result.events)
    LabelSchema.validate(meds_labels(result.labels))


def test_relative_params_paths_resolve_against_the_params_root(tmp_path):
    b.write(tmp_path / "cohort")
    result = ingest_meds(MedsParams(dir="cohort", labels="cohort/labels.parquet", window_start_column=None), tmp_path)
    assert result.report.subjects == 2


@pytest.mark.parametrize(
    "types",
    [
        {"subject_id": pa.int32()},
        {"time": pa.timestamp("ns")},
        {"time": pa.timestamp("s")},
        {"numeric_value": pa.float64()},
        {"code": pa.large_string()},
        {"code": pa.dictionary(pa.int32(), pa.string())},
    ],
    ids=lambda t: "-".join(f"{k}:{v}" for k, v in t.items()),
)
def test_castable_types_are_cast(tmp_path, types):
    expected = ingest(b.write(tmp_path / "ref"))
    result = ingest(b.write(tmp_path / "cast", {b.SHARD: b.data_table(b.GOOD_ROWS, **types)}))
    assert result.events.equals(expected.events)
    assert result.subjects.drop_columns(["group"]).equals(expected.subjects.drop_columns(["group"]))


@pytest.mark.parametrize("kind", [pa.int64(), pa.uint64(), pa.decimal128(30, 0)], ids=str)
def test_integer_values_beyond_float32_precision_are_rounded_not_refused(tmp_path, kind):
    """Found by tests/test_hostile_input.py: an int64 value above 2**24 stopped ingest (Arrow's safe cast),
    though integer values are documented as castable; now rounded to float32 as float64 values are."""
    big = 2**24 + 1  # the smallest positive integer float32 cannot hold
    rows = [(1, 0.0, "Count", big), (2, 1.0, "Count", 2**40 + 3)]
    result = ingest(b.write(tmp_path, {b.SHARD: b.data_table(rows, numeric_value=kind)}))
    assert result.events.column("numeric_value").to_pylist() == [float(np.float32(big)), float(np.float32(2**40 + 3))]
    assert_accounted(result)


def test_castable_label_types_are_cast(tmp_path):
    expected = ingest(b.write(tmp_path / "ref"))
    labels = b.labels_table(b.GOOD_LABELS, subject_id=pa.int16(), prediction_time=pa.timestamp("ms"))
    assert ingest(b.write(tmp_path / "cast", labels=labels)).labels.equals(expected.labels)


def test_timezone_aware_times_are_read_as_utc(tmp_path):
    utc = pa.timestamp("us", tz="UTC")
    data = b.data_table(b.GOOD_ROWS, time=utc)
    p = b.write(tmp_path, {b.SHARD: data}, b.labels_table(b.GOOD_LABELS, prediction_time=utc))
    assert ingest(p).events.equals(ingest(b.write(tmp_path / "ref")).events)


def test_omitted_numeric_value_column_means_presence_only_events(tmp_path):
    p = b.write(tmp_path, {b.SHARD: b.data_table(b.GOOD_ROWS).drop_columns(["numeric_value"])})
    result = ingest(p)
    # Static rows have no value now, so they are counted skips; every timed row is kept, value-less.
    assert result.events.num_rows == 6
    assert result.events.column("numeric_value").null_count == 6
    assert skips(result) == {meds_source.SKIP_STATIC_NO_VALUE: 2}
    assert_accounted(result)


def test_extra_data_columns_are_allowed_and_ignored(tmp_path):
    table = b.data_table(b.GOOD_ROWS).append_column("text_value", pa.array(["x"] * len(b.GOOD_ROWS), pa.large_string()))
    table = table.append_column("unit", pa.array(["bpm"] * len(b.GOOD_ROWS)))
    result = ingest(b.write(tmp_path, {b.SHARD: table}))
    assert result.events.column_names == EVENTS_SCHEMA.names
    assert result.report.extra["event_rows"] == 6


def test_shards_are_read_recursively_and_set_the_group(tmp_path):
    rows1 = [r for r in b.GOOD_ROWS if r[0] == 1]
    rows2 = [r for r in b.GOOD_ROWS if r[0] == 2]
    p = b.write(tmp_path, {"data/train/0.parquet": b.data_table(rows1), "data/held_out/0.parquet": b.data_table(rows2)})
    result = ingest(p)
    assert result.subjects.column("group").to_pylist() == ["data/train/0.parquet", "data/held_out/0.parquet"]
    assert result.report.extra["subjects_in_several_shards"] == 0


def test_subject_split_across_shards_is_kept_and_counted(tmp_path):
    shards = {"data/0.parquet": b.data_table(b.GOOD_ROWS[:3]), "data/1.parquet": b.data_table(b.GOOD_ROWS[3:])}
    p = b.write(tmp_path, shards)
    result = ingest(p)
    assert result.report.extra["subjects_in_several_shards"] == 1
    assert result.report.extra["event_rows"] == 6
    assert result.subjects.column("group").to_pylist() == ["data/0.parquet", "data/1.parquet"]


# --------------------------------------------------------------------------------------------------
# Counted skips: one test per case, each checks the count, an example's file:row and the accounting


def test_nan_and_inf_values_are_counted_skips(tmp_path):
    bad = [(1, 4.0, "HR", float("nan")), (2, 5.0, "HR", float("inf")), (2, None, "Height", float("-inf"))]
    result = ingest(b.with_rows(tmp_path, bad))
    assert skips(result) == {meds_source.SKIP_NON_FINITE: 3}
    n = len(b.GOOD_ROWS)
    assert result.report.examples[meds_source.SKIP_NON_FINITE] == [f"{b.SHARD}:{n + k}" for k in (1, 2, 3)]
    assert "Height" not in result.subjects.column_names
    assert np.isfinite(result.events.column("numeric_value").drop_null().to_numpy()).all()
    assert_accounted(result)


def test_float64_value_beyond_float32_range_is_a_non_finite_skip(tmp_path):
    rows = [*b.GOOD_ROWS, (1, 4.0, "Urine", 1e300)]
    result = ingest(b.write(tmp_path, {b.SHARD: b.data_table(rows, numeric_value=pa.float64())}))
    assert skips(result) == {meds_source.SKIP_NON_FINITE: 1}
    assert "Urine" not in result.events.column("code").to_pylist()


def test_events_after_prediction_time_are_counted_skips(tmp_path):
    # 48 h is the prediction time: an event exactly then is usable, one microsecond later is the future.
    late = [(1, 48.0, "HR", 99.0), (1, 48.0 + 1 / 3.6e9, "HR", 98.0), (2, 200.0, "HR", 97.0)]
    result = ingest(b.with_rows(tmp_path, late))
    assert skips(result) == {meds_source.SKIP_AFTER_PREDICTION: 2}
    assert result.report.extra["event_rows"] == 7
    last = result.events.filter(pa.compute.equal(result.events.column("subject_id"), 1)).column("time")[-1].as_py()
    assert last == b.at(48.0)
    assert_accounted(result)


def test_subjects_without_label_are_dropped_and_counted(tmp_path):
    result = ingest(b.with_rows(tmp_path, [(7, 1.0, "HR", 60.0), (7, None, "Age", 30.0), (8, 1.0, "HR", 61.0)]))
    assert skips(result) == {meds_source.SKIP_NO_LABEL: 3}
    assert result.report.extra["subjects_without_label"] == 2
    assert 7 not in result.subjects.column("subject_id").to_pylist()
    assert 7 not in result.events.column("subject_id").to_pylist()
    assert_accounted(result)


def test_labels_without_events_are_kept_as_subjects_without_measurements(tmp_path):
    # Subject 3 has no rows; subject 4 has only a static row (no time series measurement).
    p = b.write(
        tmp_path,
        {b.SHARD: b.data_table([*b.GOOD_ROWS, (4, None, "Age", 50.0)])},
        b.labels_table([*b.GOOD_LABELS, (3, 48.0, True), (4, 48.0, False)]),
    )
    result = ingest(p)
    assert result.report.subjects_without_measurements == [3, 4]
    subjects = {row["subject_id"]: row for row in result.subjects.to_pylist()}
    assert subjects[3]["admission_time"] is None and subjects[3]["group"] == meds_source.GROUP_WITHOUT_DATA
    assert np.isnan(subjects[3]["Age"])
    assert subjects[4]["admission_time"] is None and subjects[4]["Age"] == 50.0 and subjects[4]["group"] == b.SHARD
    assert (result.report.subjects, result.report.positives) == (4, 2)


def test_null_subject_id_and_null_code_are_counted_skips(tmp_path):
    result = ingest(b.with_rows(tmp_path, [(None, 1.0, "HR", 60.0), (1, 1.0, None, 60.0), (None, None, None, None)]))
    assert skips(result) == {meds_source.SKIP_NULL_SUBJECT: 2, meds_source.SKIP_NULL_CODE: 1}
    n = len(b.GOOD_ROWS)
    assert result.report.examples[meds_source.SKIP_NULL_CODE] == [f"{b.SHARD}:{n + 2}"]
    assert_accounted(result)


def test_static_rows_without_value_and_repeats_are_counted_skips(tmp_path):
    extra = [(1, None, "DX", None), (1, None, "Age", 72.0), (2, None, "Height", 180.0)]
    result = ingest(b.with_rows(tmp_path, extra))
    assert skips(result) == {meds_source.SKIP_STATIC_NO_VALUE: 1, meds_source.SKIP_DUPLICATE_STATIC: 1}
    assert result.subjects.column("Age").to_pylist() == [71.0, 45.0]  # the first value wins
    assert np.isnan(result.subjects.column("Height").to_pylist()[0])
    assert result.subjects.column("Height").to_pylist()[1] == 180.0
    assert result.report.extra["descriptor_rows"] == 3
    assert_accounted(result)


def test_every_skip_reason_at_once_is_accounted_once_per_row(tmp_path):
    extra = [
        (None, 1.0, "HR", 1.0),  # null id
        (1, 1.0, None, 1.0),  # null code
        (9, 1.0, "HR", float("nan")),  # no label wins over non-finite: each row is counted once
        (1, 1.0, "HR", float("nan")),
        (1, None, "DX", None),
        (2, None, "Age", 46.0),
        (2, 99.0, "HR", 1.0),
        (1, -30000.0, "MEDS_BIRTH", None),  # kept: subject 1's birth time
        (1, -20000.0, "MEDS_BIRTH", None),  # a second birth row
        (2, None, "RACE//A", None),  # kept: categorical descriptor RACE
        (2, None, "RACE//B", None),  # a second RACE for subject 2
    ]
    result = ingest(b.with_rows(tmp_path, extra))
    assert sum(skips(result).values()) == len(extra) - 2
    declared = {v for k, v in vars(meds_source).items() if k.startswith("SKIP_") and k != "SKIP_REASONS"}
    assert meds_source.SKIP_REASONS == declared  # a new reason must join the set the report is checked against
    assert set(skips(result)) == meds_source.SKIP_REASONS
    assert result.report.extra["event_rows"] == 6
    assert_accounted(result)


# --------------------------------------------------------------------------------------------------
# Bad inputs that stop ingest: the error names the file and the column (or the params key)


def _bad_shard(**types: pa.DataType) -> Callable[[Path], MedsParams]:
    return lambda root: b.write(root, {b.SHARD: b.data_table(b.GOOD_ROWS, **types)})


def _drop(column: str) -> Callable[[Path], MedsParams]:
    return lambda root: b.write(root, {b.SHARD: b.data_table(b.GOOD_ROWS).drop_columns([column])})


def _bad_labels(table: pa.Table) -> Callable[[Path], MedsParams]:
    return lambda root: b.write(root, labels=table)


def _corrupt_shard(root: Path) -> MedsParams:
    p = b.write(root)
    (root / b.SHARD).write_bytes(b"PAR1 this is not parquet")
    return p


def _only_csv(root: Path) -> MedsParams:
    p = b.write(root, shards={})
    (root / "data" / "0.csv").write_text("subject_id,time,code,numeric_value\n")
    return p


def _zero_row_shard(root: Path) -> MedsParams:
    return b.write(root, {b.SHARD: b.data_table([])})


def _tz_mismatch(root: Path) -> MedsParams:
    return b.write(root, {b.SHARD: b.data_table(b.GOOD_ROWS, time=pa.timestamp("us", tz="UTC"))})


def _uint64_overflow(root: Path) -> MedsParams:
    table = b.data_table(b.GOOD_ROWS)
    ids = pa.array([2**63 + 5] + [1] * (table.num_rows - 1), pa.uint64())
    return b.write(root, {b.SHARD: table.set_column(0, "subject_id", ids)})


def _integer_codes(root: Path) -> MedsParams:
    table = b.data_table(b.GOOD_ROWS)
    return b.write(root, {b.SHARD: table.set_column(2, "code", pa.array(range(table.num_rows), pa.int64()))})


def _static_code_clash(root: Path) -> MedsParams:
    return b.with_rows(root, [(1, None, "group", 3.0)])


def _labels_dir_without_parquet(root: Path) -> MedsParams:
    p = b.write(root)
    (root / "labels").mkdir()
    return MedsParams(dir=p.dir, labels=str(root / "labels"), window_start_column=None)


_labels = b.labels_table(b.GOOD_LABELS)
_labels_string_id = b.labels_table(b.GOOD_LABELS, subject_id=pa.string())
_labels_int_value = b.labels_table(b.GOOD_LABELS, boolean_value=pa.int64())
_labels_null_value = b.labels_table([(1, 48.0, True), (2, 48.0, None)])
_labels_duplicate = b.labels_table([*b.GOOD_LABELS, (1, b.GOOD_LABELS[0][1], False)])  # the same sample twice
_labels_no_time = _labels.drop_columns(["prediction_time"])
_labels_with_extra = _labels.append_column("note", pa.array(["a", "b"]))

ERROR_CASES = [
    # (builder, file the error must name, column the error must name)
    pytest.param(_bad_shard(subject_id=pa.string()), b.SHARD, "subject_id", id="string-subject-id"),
    pytest.param(_bad_shard(subject_id=pa.float64()), b.SHARD, "subject_id", id="float-subject-id"),
    pytest.param(_bad_shard(numeric_value=pa.string()), b.SHARD, "numeric_value", id="string-numeric-value"),
    pytest.param(_bad_shard(time=pa.string()), b.SHARD, "time", id="string-time"),
    pytest.param(_bad_shard(time=pa.date32()), b.SHARD, "time", id="date-time"),
    pytest.param(_integer_codes, b.SHARD, "code", id="integer-code"),
    pytest.param(_drop("code"), b.SHARD, "code", id="missing-code"),
    pytest.param(_drop("time"), b.SHARD, "time", id="missing-time"),
    pytest.param(_drop("subject_id"), b.SHARD, "subject_id", id="missing-subject-id"),
    pytest.param(_uint64_overflow, b.SHARD, "subject_id", id="uint64-id-overflow"),
    pytest.param(_corrupt_shard, b.SHARD, None, id="corrupt-parquet"),
    pytest.param(_static_code_clash, b.SHARD, "code", id="static-code-named-group"),
    pytest.param(_bad_labels(_labels_string_id), b.LABELS, "subject_id", id="labels-string-id"),
    pytest.param(_bad_labels(_labels_int_value), b.LABELS, "boolean_value", id="labels-int-value"),
    pytest.param(_bad_labels(_labels.drop_columns(["boolean_value"])), b.LABELS, "boolean_value", id="labels-no-value"),
    pytest.param(_bad_labels(_labels_no_time), b.LABELS, "prediction_time", id="labels-no-time"),
    pytest.param(_bad_labels(_labels_null_value), b.LABELS, "boolean_value", id="labels-null-value"),
    pytest.param(_bad_labels(_labels_duplicate), b.LABELS, "subject_id", id="duplicate-labels"),
    pytest.param(_bad_labels(_labels_with_extra), b.LABELS, "note", id="labels-extra-column"),
    pytest.param(_bad_labels(b.labels_table([])), b.LABELS, None, id="labels-empty"),
    pytest.param(_tz_mismatch, b.LABELS, "prediction_time", id="timezone-mismatch"),
    pytest.param(_only_csv, "data", None, id="no-parquet-files"),
    pytest.param(lambda root: b.write(root, shards={}), "data", None, id="empty-data-dir"),
    pytest.param(_zero_row_shard, "data", None, id="zero-row-shards"),
    pytest.param(_labels_dir_without_parquet, "labels", None, id="labels-dir-without-parquet"),
]


@pytest.mark.parametrize(("build", "file", "column"), ERROR_CASES)
def test_bad_input_stops_with_error_naming_file_and_column(tmp_path, build, file, column):
    p = build(tmp_path)
    with pytest.raises(DataError) as err:
        ingest(p)
    assert err.value.path == str(tmp_path / file)
    assert str(err.value).startswith(f"{tmp_path / file}: ")
    if column is not None:
        assert f"'{column}'" in str(err.value)


BAD_CODES = [
    # (the extra row, what the message says); found by hostile input (issue 15): "Age\x00" silently
    # overwrote the real Age (numpy strips a trailing NUL), "" made a column named ""
    pytest.param((1, None, "Age\x00", 99.0), "holds a control character", id="static-code-with-NUL"),
    pytest.param((1, None, "", 99.0), "is empty", id="empty-static-code"),
    pytest.param((1, None, "Ag\u0085e", 99.0), "holds a control character", id="static-code-with-C1-control"),
    pytest.param((1, 2.0, "", 1.0), "is empty", id="empty-event-code"),
    pytest.param((1, 2.0, "HR\x00", 1.0), "holds a control character", id="event-code-with-NUL"),
    pytest.param((2, 2.0, "H\tR", 1.0), "holds a control character", id="event-code-with-tab"),
    pytest.param((9, 2.0, "HR\n", 1.0), "holds a control character", id="unlabelled-subject-code-with-newline"),
]


@pytest.mark.parametrize(("row", "what"), BAD_CODES)
def test_bad_codes_stop_with_error_naming_file_and_row(tmp_path, row, what):
    with pytest.raises(DataError) as err:
        ingest(b.with_rows(tmp_path, [(2, None, "Height", 170.0), row]))
    assert err.value.path == str(tmp_path / b.SHARD)
    assert str(err.value).startswith(f"{tmp_path / b.SHARD}: column 'code': row {len(b.GOOD_ROWS) + 2}: ")
    assert what in str(err.value)


def test_static_codes_become_columns_named_exactly_as_written(tmp_path):
    # Distinct codes, distinct columns, no text transformation (once a NUL-stripping numpy cast)
    extra = [(1, None, "Age ", 5.0), (2, None, "age", 6.0), (2, None, "\u00e9", 7.0), (2, None, "e\u0301", 8.0)]
    result = ingest(b.with_rows(tmp_path, extra))
    assert result.report.extra["static_codes"] == ["Age", "Age ", "age", "e\u0301", "\u00e9"]
    assert result.subjects.column("Age").to_pylist() == [71.0, 45.0]
    assert result.subjects.column("Age ").to_pylist()[0] == 5.0
    assert result.subjects.column("\u00e9").to_pylist()[1] == 7.0
    assert result.subjects.column("e\u0301").to_pylist()[1] == 8.0
    assert_accounted(result)


def test_missing_data_folder_and_missing_root_are_errors(tmp_path):
    p = b.write(tmp_path / "cohort")
    os.rename(tmp_path / "cohort" / "data", tmp_path / "cohort" / "shards")
    with pytest.raises(DataError, match="data/"):
        ingest(p)
    with pytest.raises(DataError, match="data.meds.dir") as err:
        ingest(MedsParams(dir=str(tmp_path / "nowhere"), labels=p.labels, window_start_column=None))
    assert err.value.path == str(tmp_path / "nowhere")


def test_missing_labels_file_is_an_error(tmp_path):
    p = b.write(tmp_path)
    with pytest.raises(DataError, match="data.meds.labels") as err:
        ingest(MedsParams(dir=p.dir, labels=str(tmp_path / "absent.parquet"), window_start_column=None))
    assert err.value.path == str(tmp_path / "absent.parquet")


@pytest.mark.parametrize("key", ["dir", "labels"])
def test_null_params_name_the_params_key(tmp_path, params_dict, key):
    from seqsetvae.config import params_from_dict

    params_dict["data"]["source"] = "meds"
    params_dict["data"]["meds"] = {"dir": str(tmp_path), "labels": str(tmp_path / "l.parquet"),
                                  "window_start_column": None, key: None}
    params = params_from_dict(params_dict)
    with pytest.raises(DataError, match=f"data.meds.{key}"):
        ingest_meds(params.data.meds, tmp_path)


def test_labels_folder_of_shards_is_read(tmp_path):
    p = b.write(tmp_path)
    (tmp_path / "labels").mkdir()
    pq.write_table(b.labels_table(b.GOOD_LABELS[:1]), tmp_path / "labels" / "0.parquet")
    pq.write_table(b.labels_table(b.GOOD_LABELS[1:]), tmp_path / "labels" / "1.parquet")
    result = ingest(MedsParams(dir=p.dir, labels=str(tmp_path / "labels"), window_start_column=None))
    assert result.labels.equals(ingest(p).labels)
    pq.write_table(b.labels_table(b.GOOD_LABELS[1:]), tmp_path / "labels" / "2.parquet")
    with pytest.raises(DataError, match="given twice"):
        ingest(MedsParams(dir=p.dir, labels=str(tmp_path / "labels"), window_start_column=None))


# --------------------------------------------------------------------------------------------------
# Export and round trip


def _canonical_cohort() -> IngestResult:
    """A small canonical cohort built by hand: subjects 10-13 with events, 14 with a descriptor but no
    events, 15 with a label only; descriptor columns with NaN (not recorded)."""
    t0 = dt.datetime(2000, 1, 1)
    rng = np.random.default_rng(3)
    events = []
    for sid in (10, 11, 12, 13):
        for k in range(int(rng.integers(2, 6))):
            hours = float(np.round(rng.uniform(0, 47), 3)) if k else 0.0
            code = str(rng.choice(["HR", "Na", "GCS"]))
            events.append((sid, t0 + dt.timedelta(hours=hours), code, float(np.float32(rng.normal(10, 3)))))
    events.append((12, t0 + dt.timedelta(hours=5), "DX//I10", None))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    ev = pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, e)) for e in events], schema=EVENTS_SCHEMA)
    ids = [10, 11, 12, 13, 14, 15]
    first_time = {e[0]: min(x[1] for x in events if x[0] == e[0]) for e in events}
    subjects = pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "admission_time": pa.array([first_time.get(s) for s in ids], pa.timestamp("us")),
            "group": pa.array(["x"] * len(ids)),
            "Age": pa.array([70, 55, np.nan, 90, 40, np.nan], pa.float32()),
            "Gender": pa.array([0, 1, 1, np.nan, np.nan, np.nan], pa.float32()),
        }
    )
    labels = pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "prediction_time": pa.array([t0 + dt.timedelta(hours=48)] * len(ids), pa.timestamp("us")),
            "boolean_value": [True, False, False, True, False, True],
        },
        schema=LABELS_SCHEMA,
    )
    return IngestResult(ev, subjects, labels, IngestReport(source="handmade"))


def _assert_same_cohort(got: IngestResult, want: IngestResult) -> None:
    assert got.events.equals(want.events)
    assert meds_labels(got.labels).equals(meds_labels(want.labels))  # MEDS carries no window start
    key = ["subject_id", "admission_time"]
    statics = [c for c in want.subjects.column_names if c not in SUBJECT_KEY_COLUMNS]
    # NaN (not recorded) must stay NaN, so compare as arrays where NaN == NaN.
    assert got.subjects.select(key).equals(want.subjects.select(key))
    assert sorted(c for c in got.subjects.column_names if c not in SUBJECT_KEY_COLUMNS) == sorted(statics)
    for c in statics:
        np.testing.assert_array_equal(got.subjects.column(c).to_numpy(), want.subjects.column(c).to_numpy())


def test_export_writes_a_valid_meds_dataset_with_contiguous_subjects(tmp_path):
    cohort = _canonical_cohort()
    out = tmp_path / "meds"
    write_meds_dataset(cohort, out, shards=3)

    shard_files = sorted((out / "data").glob("*.parquet"))
    assert [f.name for f in shard_files] == ["0.parquet", "1.parquet", "2.parquet"]
    owner: dict[int, str] = {}
    for f in shard_files:
        table = pq.read_table(f)
        DataSchema.validate(table)
        sid = table.column("subject_id").to_numpy()
        starts = np.r_[True, sid[1:] != sid[:-1]]
        assert len(set(sid[starts])) == starts.sum(), f"{f.name}: a subject is not contiguous"
        for s in set(sid.tolist()):
            assert s not in owner, f"subject {s} in {owner.get(s)} and {f.name}"
            owner[s] = f.name
            times = table.filter(pa.compute.equal(table.column("subject_id"), s)).column("time")
            # static rows (null time) first, then time ascending
            n_null = times.null_count
            assert times.slice(0, n_null).null_count == n_null
            t = times.slice(n_null).cast(pa.int64()).to_numpy()
            assert (np.diff(t) >= 0).all()
    assert set(owner) == {10, 11, 12, 13, 14}  # 14 has only a static row, 15 no row at all

    labels = pq.read_table(out / meds_source.LABELS_FILE)
    LabelSchema.validate(labels)
    assert labels.num_rows == 6
    metadata = json.loads((out / meds.dataset_metadata_filepath).read_text())
    DatasetMetadataSchema.validate(metadata)
    assert metadata["etl_name"] == "seqsetvae"
    code_table = pq.read_table(out / meds.code_metadata_filepath)
    CodeMetadataSchema.validate(code_table)
    codes = set(code_table.column("code").to_pylist())
    assert codes == set(cohort.events.column("code").to_pylist()) | {"Age", "Gender"}
    # statics written as null-time rows, NaN written as no row
    all_rows = pa.concat_tables(pq.read_table(f) for f in shard_files)
    age = all_rows.filter(pa.compute.equal(all_rows.column("code"), "Age"))
    assert age.column("time").null_count == age.num_rows == 4
    assert not (out / meds.subject_splits_filepath).exists()  # no split given, none written


def test_round_trip_canonical_meds_canonical(tmp_path):
    cohort = _canonical_cohort()
    write_meds_dataset(cohort, tmp_path / "meds", shards=2)
    back = ingest_meds(MedsParams(dir="meds", labels=f"meds/{meds_source.LABELS_FILE}", window_start_column=None), tmp_path)
    _assert_same_cohort(back, cohort)
    assert back.report.subjects_without_measurements == [14, 15]
    assert back.subjects.column("group").to_pylist()[-1] == meds_source.GROUP_WITHOUT_DATA
    assert back.report.to_dict()["rows_skipped"] == 0
    assert_accounted(back)


def test_round_trip_is_byte_stable(tmp_path):
    cohort = _canonical_cohort()
    write_meds_dataset(cohort, tmp_path / "a", shards=2)
    write_meds_dataset(cohort, tmp_path / "b", shards=2)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_export_writes_birth_and_categorical_descriptors_and_reads_them_back(tmp_path):
    """A cohort ingested from MEDS has birth_time and categorical (string) descriptor columns. The export used to
    cast every descriptor column to float32, so any such cohort stopped it with an ArrowInvalid traceback
    ('BROWN' as float) and lost birth_time; now they go out as MEDS_BIRTH and NAME//CATEGORY rows."""
    cohort = _canonical_cohort()
    t0 = dt.datetime(1950, 6, 1)
    subjects = cohort.subjects.append_column(
        meds_source.BIRTH_TIME, pa.array([t0, None, t0, t0, None, t0], pa.timestamp("us"))
    ).append_column("GENDER", pa.array(["F", "M", None, "F", "X", None], pa.string()))
    cohort = IngestResult(cohort.events, subjects, cohort.labels, cohort.report)
    write_meds_dataset(cohort, tmp_path / "meds", shards=2)
    rows = pa.concat_tables(pq.read_table(f) for f in sorted((tmp_path / "meds" / "data").glob("*.parquet")))
    DataSchema.validate(rows)
    births = rows.filter(pc.equal(rows.column("code"), meds_source.BIRTH_CODE))
    assert births.column("subject_id").to_pylist() == [10, 12, 13, 15]  # 15: a birth row, no events
    gender = rows.filter(pc.starts_with(rows.column("code"), "GENDER//"))
    assert sorted(zip(gender.column("subject_id").to_pylist(), gender.column("code").to_pylist())) == [
        (10, "GENDER//F"), (11, "GENDER//M"), (13, "GENDER//F"), (14, "GENDER//X")]
    assert gender.column("time").null_count == gender.column("numeric_value").null_count == 4
    back = ingest_meds(MedsParams(dir="meds", labels=f"meds/{meds_source.LABELS_FILE}", window_start_column=None), tmp_path)
    assert back.events.equals(cohort.events)
    assert back.subjects.column("GENDER").to_pylist() == subjects.column("GENDER").to_pylist()
    assert back.subjects.column(meds_source.BIRTH_TIME).to_pylist() == subjects.column(
        meds_source.BIRTH_TIME).to_pylist()
    assert back.report.to_dict()["rows_skipped"] == 0


def test_round_trip_synthetic_cohort(tmp_path, params_dict):
    synthetic = pytest.importorskip("seqsetvae.data.synthetic")
    from seqsetvae.config import params_from_dict

    params_dict["data"]["synthetic"]["n_subjects"] = 40
    cohort = synthetic.ingest_synthetic(params_from_dict(params_dict).data.synthetic)
    write_meds_dataset(cohort, tmp_path / "meds", shards=3)
    back = ingest_meds(MedsParams(dir="meds", labels=f"meds/{meds_source.LABELS_FILE}", window_start_column=None), tmp_path)
    assert back.events.equals(cohort.events)
    assert meds_labels(back.labels).equals(meds_labels(cohort.labels))
    statics = [c for c in cohort.subjects.column_names if c not in SUBJECT_KEY_COLUMNS]
    for c in statics:
        if not np.isnan(cohort.subjects.column(c).to_numpy()).all():  # an all-NaN static has no rows to export
            np.testing.assert_array_equal(back.subjects.column(c).to_numpy(), cohort.subjects.column(c).to_numpy())


def test_export_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    out = tmp_path / "meds"
    write_meds_dataset(_canonical_cohort(), out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing_write(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(table, where, **kwargs)

    real_write = pq.write_table
    monkeypatch.setattr(meds_source.pq, "write_table", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_meds_dataset(_canonical_cohort(), out, shards=2)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old dataset is untouched, not half replaced
    assert [p.name for p in tmp_path.iterdir()] == ["meds"]  # no temporary folder left behind


def test_export_rejects_zero_shards(tmp_path):
    with pytest.raises(ValueError, match="shards"):
        write_meds_dataset(_canonical_cohort(), tmp_path / "meds", shards=0)


def test_export_command_line(tmp_path):
    from seqsetvae.data.canonical import write_ingested

    write_ingested(tmp_path / "ingested", _canonical_cohort())
    assert meds_source.main([str(tmp_path / "ingested"), str(tmp_path / "meds"), "--shards", "2"]) == 0
    back = ingest_meds(MedsParams(dir="meds", labels=f"meds/{meds_source.LABELS_FILE}", window_start_column=None), tmp_path)
    _assert_same_cohort(back, _canonical_cohort())


def _split_table(tmp_path: Path) -> Path:
    """The split stage's table for the handmade cohort (subjects 10-15): fold 0 and fold 1, where fold 1
    leaves subject 13 out (as split.unlisted: exclude would)."""
    from seqsetvae.data.splits import SPLITS_SCHEMA
    from seqsetvae.io import write_parquet

    rows = [(s, 0, split) for s, split in zip(range(10, 16), ["train", "train", "val", "test", "train", "test"])]
    rows += [(s, 1, split) for s, split in zip((10, 11, 12, 14, 15), ["test", "val", "train", "train", "train"])]
    table = pa.Table.from_pylist([dict(zip(SPLITS_SCHEMA.names, r)) for r in rows], schema=SPLITS_SCHEMA)
    write_parquet(tmp_path / "splits.parquet", table)
    return tmp_path / "splits.parquet"


def test_export_carries_one_fold_as_meds_subject_splits(tmp_path):
    from seqsetvae.data.splits import read_splits

    cohort = _canonical_cohort()
    splits = read_splits(_split_table(tmp_path))
    out = tmp_path / "meds"
    write_meds_dataset(cohort, out, shards=2, subject_splits=meds_source.meds_subject_splits(splits, 1))
    table = pq.read_table(out / meds.subject_splits_filepath)
    SubjectSplitSchema.validate(table)
    assert table.to_pylist() == [
        {"subject_id": s, "split": name}
        for s, name in [(10, meds.held_out_split), (11, meds.tuning_split), (12, meds.train_split),
                        (14, meds.train_split), (15, meds.train_split)]
    ]
    CodeMetadataSchema.validate(pq.read_table(out / meds.code_metadata_filepath))
    DatasetMetadataSchema.validate(json.loads((out / meds.dataset_metadata_filepath).read_text()))
    # the round trip is unchanged by the extra metadata file
    back = ingest_meds(MedsParams(dir="meds", labels=f"meds/{meds_source.LABELS_FILE}", window_start_column=None), tmp_path)
    _assert_same_cohort(back, cohort)

    with pytest.raises(DataError, match=r"splits\.parquet: fold 7 is not in the split table \(folds present: \[0, 1\]\)"):
        meds_source.meds_subject_splits(splits, 7, tmp_path / "splits.parquet")
    stranger = pa.table({"subject_id": pa.array([10, 99], pa.int64()), "split": ["train", "held_out"]})
    with pytest.raises(DataError, match=r"subject_splits: 1 subject\(s\) are not labelled subjects of the cohort \(first: \[99\]\)"):
        write_meds_dataset(cohort, tmp_path / "other", subject_splits=stranger)
    assert not (tmp_path / "other").exists()


def test_export_command_line_with_splits(tmp_path, capsys):
    from seqsetvae.data.canonical import write_ingested

    write_ingested(tmp_path / "ingested", _canonical_cohort())
    splits = _split_table(tmp_path)
    args = [str(tmp_path / "ingested"), str(tmp_path / "meds")]
    assert meds_source.main([*args, "--splits", str(splits), "--fold", "0"]) == 0
    table = pq.read_table(tmp_path / "meds" / meds.subject_splits_filepath)
    SubjectSplitSchema.validate(table)
    assert dict(zip(*table.to_pydict().values())) == {
        10: "train", 11: "train", 12: "tuning", 13: "held_out", 14: "train", 15: "held_out"
    }
    assert meds_source.main([*args, "--splits", str(splits), "--fold", "3"]) == 3
    assert "fold 3 is not in the split table" in capsys.readouterr().out
    for half in (["--splits", str(splits)], ["--fold", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            meds_source.main([*args, *half])
        assert exit_info.value.code == 2
    assert "--splits and --fold go together" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata
def test_round_trip_physionet2012_set_a(tmp_path, p12_dir, params_dict):
    """The real cohort survives canonical -> MEDS -> canonical: events, labels and descriptors unchanged."""
    physionet2012 = pytest.importorskip("seqsetvae.data.physionet2012")
    from seqsetvae.config import params_from_dict

    params_dict["data"]["physionet2012"].update(dir=str(p12_dir), sets=["a"], download=False)
    cohort = physionet2012.ingest_physionet2012(params_from_dict(params_dict).data.physionet2012, tmp_path)
    write_meds_dataset(cohort, tmp_path / "meds", shards=4)
    back = ingest_meds(MedsParams(dir="meds", labels=f"meds/{meds_source.LABELS_FILE}", window_start_column=None), tmp_path)
    assert back.events.equals(cohort.events)
    assert meds_labels(back.labels).equals(meds_labels(cohort.labels))
    assert back.report.to_dict()["rows_skipped"] == 0
    assert back.report.subjects_without_measurements == cohort.report.subjects_without_measurements
    assert_accounted(back)
    for c in cohort.subjects.column_names:
        if c not in SUBJECT_KEY_COLUMNS:
            np.testing.assert_array_equal(back.subjects.column(c).to_numpy(), cohort.subjects.column(c).to_numpy())


def test_ingest_stage_reads_meds_and_fails_cleanly_on_bad_params(tmp_path, params_dict):
    """`seqsetvae ingest` with data.source meds: the exported cohort comes back; a null key exits 3, writes nothing."""
    import yaml

    from seqsetvae.cli import main
    from seqsetvae.data.canonical import read_ingested

    cohort = _canonical_cohort()
    write_meds_dataset(cohort, tmp_path / "meds")
    params_dict["data"]["source"] = "meds"
    params_dict["data"]["meds"] = {"dir": str(tmp_path / "meds"), "labels": str(tmp_path / "meds" / "labels.parquet"),
                                  "window_start_column": None}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    assert main(["ingest", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "ingested")]) == 0
    events, _, labels = read_ingested(tmp_path / "ingested")
    assert events.equals(cohort.events) and meds_labels(labels).equals(meds_labels(cohort.labels))

    params_dict["data"]["meds"]["labels"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    assert main(["ingest", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "again")]) == 3
    assert not (tmp_path / "again").exists()
