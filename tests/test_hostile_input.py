"""Hostile input, property-based: on any input, ingest either stops with a DataError or returns a result
that accounts for every row and holds only events present in the input. Never another exception, never an
invented event.

The generators mix valid rows with every kind of malformed one (random bytes, wrong field counts, bad
times, non-numeric / NaN / inf / huge values, unknown and empty parameters, blank lines, unicode, CRLF,
BOM; for MEDS: column types valid and invalid, nulls, NaN/inf, duplicate labels, events after prediction
time). The oracles re-read the input independently of the sources' vectorised parsers: a plain per-line
split for PhysioNet, the generated Python values for MEDS.

Minimal failing cases found here become regression tests in the corpus tests (test_physionet2012.py,
test_meds_source.py).
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from seqsetvae.config import MedsParams, params_from_dict
from seqsetvae.data.canonical import ADMISSION_EPOCH, IngestResult
from seqsetvae.data.meds_source import ingest_meds
from seqsetvae.data.physionet2012 import OUTCOMES_HEADER, ingest_physionet2012
from seqsetvae.data.variables import DESCRIPTORS, RECORD_ID, TIME_SERIES
from seqsetvae.errors import DataError

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_accounted(result: IngestResult) -> None:
    r = result.report.to_dict()
    assert r["rows_read"] == r["rows_kept"] + r["rows_skipped"]
    assert r["rows_skipped"] == sum(r["skipped_by_reason"].values())
    assert r["rows_kept"] == r["event_rows"] + r["descriptor_rows"]
    assert r["event_rows"] == result.events.num_rows


# --------------------------------------------------------------------------------------------------
# PhysioNet 2012 layout

NAMES = sorted(set(TIME_SERIES) | set(DESCRIPTORS))
# Rows of one kind each; `_row` picks among them. Times and values are text, so any spelling can appear.
good_time = st.builds(
    lambda h, m, width: f"{h:0{width}d}:{m:02d}", st.integers(0, 999), st.integers(0, 59), st.sampled_from([1, 2])
)
bad_time = st.one_of(
    st.sampled_from(["", "00:60", "-1:00", "1:2", "0000:00", "ab:cd", " 00:30", "00:30 ", "00.30", "１２:００"]),
    st.text(max_size=6).filter(lambda s: "," not in s and "\n" not in s),
)
numeric_text = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["0", "-0", "1.", ".5", "+3", "1e3", "1E-3", "-1"]),
)
odd_value = st.one_of(
    st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e39", "-1e39", "1e400", "9" * 60, "", " ",
                     "1.2.3", "0x10", "1_000", "١٢", "１２", "12\r", "NA", "None"]),
    st.text(max_size=8).filter(lambda s: "," not in s and "\n" not in s),
)  # fmt: skip
odd_name = st.one_of(
    st.sampled_from(["", "hr", "HR ", " HR", "Hr", "HR\r", "Héart", "RecordID2", "ICU Type"]),
    st.text(max_size=8).filter(lambda s: "," not in s and "\n" not in s),
)


# Rows that may break a file's structure: a wrong field count, raw bytes (commas, newlines, invalid UTF-8)
# as a row or inside one field, a second RecordID row, a RecordID beyond int64. An example uses at most one
# of them, so that one structural error does not always hide the others (the first found stops ingest).
P12_HAZARDS = ("fields", "bytes", "field_bytes", "record_id", "record_id_range")


@st.composite
def _row(draw: st.DrawFn, hazard: str | None) -> bytes:
    """One record row (no line end): row content problems of every kind, and the example's `hazard`."""
    kinds = ["good", "good", "good", "descriptor", "bad_time", "odd_value", "odd_name", "blank"]
    kind = draw(st.sampled_from(kinds if hazard in (None, "record_id_range") else [*kinds, hazard]))
    if kind == "good":
        return f"{draw(good_time)},{draw(st.sampled_from(NAMES))},{draw(numeric_text)}".encode()
    if kind == "descriptor":  # descriptors at 00:00 (first is kept as such, repeats skipped or events)
        when = draw(st.sampled_from(["00:00", "00:00", "01:00"]))
        return f"{when},{draw(st.sampled_from(DESCRIPTORS))},{draw(numeric_text)}".encode()
    if kind == "bad_time":
        return f"{draw(bad_time)},{draw(st.sampled_from(NAMES))},{draw(numeric_text)}".encode()
    if kind == "odd_value":
        return f"{draw(good_time)},{draw(st.sampled_from(NAMES))},{draw(odd_value)}".encode()
    if kind == "odd_name":
        return f"{draw(good_time)},{draw(odd_name)},{draw(numeric_text)}".encode()
    if kind == "blank":
        return b""
    if kind == "fields":
        return ",".join(draw(st.lists(st.sampled_from(["00:30", "HR", "80"]), max_size=5))).encode()
    if kind == "field_bytes":  # raw bytes (invalid UTF-8, control bytes) inside one field of a 3-field row
        fields = [draw(good_time).encode(), draw(st.sampled_from(NAMES)).encode(), draw(numeric_text).encode()]
        i = draw(st.integers(0, 2))
        fields[i] += draw(st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80", b"\x00", b"\x7f", b"\xc3\xa9"]))
        return b",".join(fields)
    if kind == "record_id":
        return f"{draw(good_time)},{RECORD_ID},{draw(st.integers(0, 9999))}".encode()
    return draw(st.binary(max_size=16))


@st.composite
def physionet_folder(draw: st.DrawFn) -> dict[str, bytes]:
    """A set-a folder (relative path -> file bytes): 1-3 record files and Outcomes-a.txt, mostly in shape,
    sometimes not (broken header / RecordID row / outcomes rows)."""
    hazard = draw(st.sampled_from([None] * len(P12_HAZARDS) + list(P12_HAZARDS)))
    structural = hazard is not None
    record_ids = st.one_of(st.integers(1, 99_999), st.sampled_from([0, 2**63 - 1]))  # odd but valid ids
    ids = draw(st.lists(record_ids, min_size=1, max_size=3, unique=True))
    if hazard == "record_id_range":  # beyond int64, the type of subject_id
        ids[0] = draw(st.sampled_from([2**63, -(2**63) - 1, 10**20]))
    files: dict[str, bytes] = {}
    for rid in ids:
        eol = draw(st.sampled_from([b"\n", b"\r\n"]))
        first = f"00:00,{RECORD_ID},{rid}".encode()
        if structural and draw(st.integers(0, 9)) == 0:
            first = draw(
                st.sampled_from(
                    [f"00:00,{RECORD_ID},{rid + 1}".encode(), b"00:00,RecordID,x", b"",
                     f"00:00,{RECORD_ID},+{rid}".encode(), f"00:00,{RECORD_ID},{rid} ".encode()]
                )
            )  # fmt: skip
        lines = [b"Time,Parameter,Value", first, *draw(st.lists(_row(hazard), max_size=14))]
        bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
        trailing = draw(st.sampled_from([eol, b""]))  # a missing final line end
        files[f"set-a/{rid}.txt"] = bom + eol.join(lines) + trailing
    outcome_rows = [f"{rid},1,2,3,-1,{draw(st.sampled_from([0, 1]))}" for rid in ids]
    if structural and draw(st.integers(0, 4)) == 0:
        outcome_rows.append(
            draw(st.sampled_from(["", "1,2", "x,1,2,3,-1,0", f"{ids[0]},1,2,3,-1,0", "7,1,2,3,-1,2", " 7,1,2,3,-1,0"]))
        )
    files["Outcomes-a.txt"] = ("\n".join([",".join(OUTCOMES_HEADER), *outcome_rows]) + "\n").encode()
    return files


_TIME = re.compile(rb"(\d{1,3}):([0-5]\d)")


def input_measurements(files: dict[str, bytes]) -> tuple[Counter, dict[int, int]]:
    """Independent reading of the record files: a multiset of every (subject, minute, code, float32 value)
    that some line states, and the number of rows (lines after the header) per record id. Lenient on
    purpose (Python's float() accepts more spellings than the source): it only says what the input holds."""
    found: Counter = Counter()
    rows: dict[int, int] = {}
    for rel, data in files.items():
        if not rel.startswith("set-a/"):
            continue
        rid = int(Path(rel).stem)
        data = data.removeprefix(b"\xef\xbb\xbf").replace(b"\r\n", b"\n")
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()  # the final line end closes the last row, it does not start a row
        rows[rid] = len(lines) - 1
        for line in lines[1:]:
            fields = line.split(b",")
            if len(fields) != 3 or not (m := _TIME.fullmatch(fields[0])):
                continue
            try:
                with np.errstate(over="ignore"):  # beyond float32: inf, which no event can equal
                    code, value = fields[1].decode(), np.float32(float(fields[2].decode()))
            except (UnicodeDecodeError, ValueError, OverflowError):
                continue
            found[(rid, int(m[1]) * 60 + int(m[2]), code, float(value))] += 1
    return found, rows


@SETTINGS
@given(files=physionet_folder())
def test_physionet2012_ingest_accounts_for_every_row_and_invents_nothing(base_params_dict, files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "set-a").mkdir()
        for rel, data in files.items():
            (root / rel).write_bytes(data)
        raw = {**base_params_dict, "data": {**base_params_dict["data"]}}
        raw["data"]["physionet2012"] = {**raw["data"]["physionet2012"], "dir": tmp, "sets": ["a"], "download": False}
        try:
            result = ingest_physionet2012(params_from_dict(raw).data.physionet2012, root)
        except DataError as e:
            assert e.path is not None and str(e.path).startswith(tmp)  # it names a file of the input
            event("DataError")
            return
    event("ingested")

    assert_accounted(result)
    found, rows = input_measurements(files)
    assert result.report.rows_read == sum(rows.values())
    assert sorted(result.labels["subject_id"].to_pylist()) == sorted(rows)

    minutes = (result.events["time"].to_numpy() - np.datetime64(ADMISSION_EPOCH, "us")) // np.timedelta64(1, "m")
    events = Counter(
        zip(
            result.events["subject_id"].to_pylist(),
            minutes.tolist(),
            result.events["code"].to_pylist(),
            result.events["numeric_value"].to_pylist(),
            strict=True,
        )
    )
    invented = events - found  # multiset difference: an event more often than the input states it
    assert not invented, f"events not in the input: {sorted(invented)[:5]}"
    values = result.events["numeric_value"].to_numpy()
    assert np.isfinite(values).all()
    assert set(result.events["code"].to_pylist()) <= set(TIME_SERIES)
    # Every recorded descriptor is a 00:00 row of its file too (-1, "not recorded", is NaN, not checked).
    for subject in result.subjects.to_pylist():
        for name in DESCRIPTORS:
            if not np.isnan(subject[name]):
                assert found[(subject["subject_id"], 0, name, subject[name])], (subject["subject_id"], name)


# --------------------------------------------------------------------------------------------------
# MEDS
#
# Each column gets a type and values drawn for that type. Times are whole seconds, so every unit holds them
# exactly; the oracle keeps the generated Python values: (subject, time in microseconds or None, code,
# float32 value or None) per input row. Row-level hostility (null ids, codes and times, NaN / inf /
# beyond-float32 values, unlabelled subjects, events after the prediction time, static rows, odd codes) is
# in every example; at most one input-level hazard (a type that cannot be cast, a label problem, a corrupt
# shard) per example, so that the ingested path is exercised about as often as the DataError one.

I64 = 2**63 - 1
# name -> can the source cast it to the MEDS type without changing meaning
SID_TYPES = {"int64": True, "int32": True, "uint64": True, "dictionary": True, "null": True,
             "float64": False, "string": False}  # fmt: skip
TIME_TYPES = {"s": True, "ms": True, "us": True, "ns": True, "us_utc": True, "us_plus5": True, "null": True,
              "int64": False, "string": False, "date32": False}  # fmt: skip
CODE_TYPES = {"string": True, "large_string": True, "dictionary": True, "null": True, "int64": False}
VALUE_TYPES = {"float32": True, "float64": True, "int64": True, "null": True, "absent": True, "string": False}
MEDS_HAZARDS = ("data_type", "uint64_overflow", "label_type", "label_duplicate", "label_null",
                "label_extra_column", "no_labels", "corrupt_shard", "empty_shards", "bad_code")  # fmt: skip

small_sid = st.one_of(st.integers(0, 5), st.none())
seconds = st.one_of(st.integers(-2 * 10**9, 2 * 10**9), st.sampled_from([0, 3600, 7200]), st.none())
codes = st.one_of(  # valid codes; an empty one or one with a control character is the "bad_code" hazard
    st.sampled_from(["HR", "HR", "Age", "Temp", "DX//I50", "é", "subject_id", "group"]),
    st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=4),
    st.none(),
)
bad_codes = st.sampled_from(["", "Age\x00", "H\tR", "\x85", "\x7f"])
float_values = st.one_of(st.floats(width=32), st.sampled_from([0.0, -1.0, 1e39, -1e39]), st.none())


def _time_array(secs: list[int | None], kind: str) -> pa.Array:
    as_int = pa.array(secs, pa.int64())
    if kind == "int64":
        return as_int
    if kind == "string":
        return pa.array([None if s is None else str(s) for s in secs], pa.string())
    if kind == "date32":
        return pa.array([None if s is None else s // 86_400 for s in secs], pa.int32()).cast(pa.date32())
    if kind == "null":
        return pa.nulls(len(secs))
    unit, tz = {"us_utc": ("us", "UTC"), "us_plus5": ("us", "+05:00")}.get(kind, (kind, None))
    scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    return pc.multiply(as_int, scale).cast(pa.timestamp(unit, tz=tz))


def _sid_array(sids: list[int | None], kind: str) -> pa.Array:
    if kind == "null":
        return pa.nulls(len(sids))
    if kind == "string":
        return pa.array([None if s is None else str(s) for s in sids], pa.string())
    if kind == "dictionary":
        return pa.array(sids, pa.int64()).dictionary_encode()
    types = {"int64": pa.int64(), "int32": pa.int32(), "uint64": pa.uint64(), "float64": pa.float64()}
    return pa.array(sids, types[kind])


def _kind(draw: st.DrawFn, kinds: dict[str, bool], castable: bool) -> str:
    return draw(st.sampled_from([k for k, ok in kinds.items() if ok == castable]))


@st.composite
def meds_shard(draw: st.DrawFn, hazard: str | None, tz: bool) -> tuple[pa.Table, list[tuple]]:
    """One data shard and its rows as the oracle sees them (sid, time_us, code, float32 value)."""
    n = 0 if hazard == "empty_shards" else draw(st.integers(0, 10))
    bad = draw(st.sampled_from(["sid", "time", "code", "value"])) if hazard == "data_type" else None
    sid_kind = _kind(draw, SID_TYPES, bad != "sid") if hazard != "uint64_overflow" else "uint64"
    if bad == "time":
        time_kind = _kind(draw, TIME_TYPES, castable=False)
    else:  # castable, and aware or naive as the labels are (a mix is an error of its own, tested elsewhere)
        time_kind = draw(st.sampled_from(["us_utc", "us_plus5", "null"] if tz else ["s", "ms", "us", "ns", "null"]))
    code_kind, value_kind = _kind(draw, CODE_TYPES, bad != "code"), _kind(draw, VALUE_TYPES, bad != "value")

    sid_values = st.one_of(small_sid, st.sampled_from([2**40, -3, I64]))
    if sid_kind in ("int32", "float64"):  # values the type holds exactly
        sid_values = small_sid
    elif sid_kind == "uint64":
        sid_values = st.one_of(small_sid, st.just(2**63 + 5) if hazard == "uint64_overflow" else st.just(2**40))
    sids = [None if sid_kind == "null" else draw(sid_values) for _ in range(n)]
    secs = [None if time_kind == "null" else draw(seconds) for _ in range(n)]
    code = [None if code_kind == "null" else draw(codes) for _ in range(n)]
    if hazard == "bad_code" and n and code_kind != "null":
        code[draw(st.integers(0, n - 1))] = draw(bad_codes)
    if value_kind == "int64":
        ints = st.one_of(st.integers(-(2**63), I64), st.integers(-(2**25), 2**25), st.none())
        values = [draw(ints) for _ in range(n)]
    elif value_kind in ("null", "absent"):
        values = [None] * n
    else:
        values = [draw(float_values) for _ in range(n)]

    columns = {"subject_id": _sid_array(sids, sid_kind), "time": _time_array(secs, time_kind)}
    columns["code"] = {
        "string": lambda: pa.array(code, pa.string()),
        "large_string": lambda: pa.array(code, pa.large_string()),
        "dictionary": lambda: pa.array(code, pa.string()).dictionary_encode(),
        "int64": lambda: pa.array([None if c is None else len(c) for c in code], pa.int64()),
        "null": lambda: pa.nulls(n),
    }[code_kind]()
    if value_kind == "string":
        columns["numeric_value"] = pa.array([None if v is None else str(v) for v in values], pa.string())
    elif value_kind != "absent":  # absent: MEDS allows omitting numeric_value
        vtype = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(), "null": pa.null()}
        columns["numeric_value"] = pa.array(values, vtype[value_kind])
    # float32 as the source casts: 1e39 -> inf; int64 -> float32 in one C cast, as Arrow does (through a
    # Python float it could round twice)
    source_type = np.int64 if value_kind == "int64" else np.float64
    with np.errstate(over="ignore"):
        as_f32 = [None if v is None else float(np.array(v, source_type).astype(np.float32)) for v in values]
    times_us = [None if t is None else t * 1_000_000 for t in secs]
    return pa.table(columns), list(zip(sids, times_us, code, as_f32, strict=True))


@st.composite
def meds_labels(draw: st.DrawFn, hazard: str | None, tz: bool) -> pa.Table:
    """Labels for some of the subjects 0..5 (those without data, and data without labels, included)."""
    sids = draw(st.lists(st.integers(0, 5), min_size=1, max_size=6, unique=True))
    if hazard == "no_labels":
        sids = []
    if hazard == "label_duplicate":
        sids.append(draw(st.sampled_from(sids)))
    n = len(sids)
    pred: list[int | None] = [draw(st.integers(-2 * 10**9, 2 * 10**9)) for _ in range(n)]
    value: list[bool | None] = [draw(st.booleans()) for _ in range(n)]
    if hazard == "label_null":
        i = draw(st.integers(0, n - 1))
        if draw(st.booleans()):
            pred[i] = None
        else:
            value[i] = None
    bad = draw(st.sampled_from(["sid", "time", "value"])) if hazard == "label_type" else None
    sid_type = draw(st.sampled_from(["string", "float64"] if bad == "sid" else ["int64", "int32"]))
    time_kind = draw(st.sampled_from(["us_utc", "us_plus5"] if tz else ["us", "ns", "s"]))
    columns = {
        "subject_id": _sid_array(sids, sid_type),
        "prediction_time": _time_array(pred, "string" if bad == "time" else time_kind),
        "boolean_value": pa.array(value, pa.bool_()).cast(pa.int64() if bad == "value" else pa.bool_()),
    }
    if hazard == "label_extra_column":
        columns["comment"] = pa.array(["x"] * n)
    elif draw(st.booleans()):  # allowed by the MEDS label schema, ignored
        columns["float_value"] = pa.array([0.5] * n, pa.float32())
    return pa.table(columns)


@st.composite
def meds_case(draw: st.DrawFn) -> tuple[list[tuple[pa.Table, list[tuple]]], pa.Table, str | None]:
    hazard = draw(st.sampled_from([None] * len(MEDS_HAZARDS) + list(MEDS_HAZARDS)))
    tz = draw(st.booleans())  # timezone-aware data and labels (both, or neither)
    shards = draw(st.lists(meds_shard(hazard, tz), min_size=1, max_size=3))
    return shards, draw(meds_labels(hazard, tz)), hazard


@SETTINGS
@given(case=meds_case())
def test_meds_ingest_accounts_for_every_row_and_invents_nothing(case):
    shards, labels, hazard = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        for i, (table, _) in enumerate(shards):
            pq.write_table(table, root / "data" / f"{i}.parquet")
        if hazard == "corrupt_shard":
            (root / "data" / "z.parquet").write_bytes(b"PAR1 not really parquet")
        pq.write_table(labels, root / "labels.parquet")
        try:
            result = ingest_meds(MedsParams(dir=tmp, labels=str(root / "labels.parquet"), window_start_column=None), root)
        except DataError as e:
            assert e.path is not None and str(e.path).startswith(tmp)  # it names a file of the input
            event(f"DataError ({hazard or 'row content'})")
            return
    event(f"ingested ({'no hazard' if hazard is None else 'hazard ' + hazard})")

    assert_accounted(result)
    rows = [row for _, shard_rows in shards for row in shard_rows]
    assert result.report.rows_read == len(rows)

    ev = result.events
    time_us = ev["time"].cast(pa.int64()).to_pylist()
    sids = ev["subject_id"].to_pylist()
    events = Counter(zip(sids, time_us, ev["code"].to_pylist(), ev["numeric_value"].to_pylist(), strict=True))
    invented = events - Counter(rows)
    assert not invented, f"events not in the input: {sorted(invented, key=repr)[:5]}"
    assert None not in time_us
    values = ev["numeric_value"].to_numpy(zero_copy_only=False)
    assert np.isfinite(values[~np.isnan(values)]).all()  # nulls (NaN here) are presence-only events

    # Kept events belong to a labelled subject and are not after that subject's prediction time.
    labelled = result.labels["subject_id"].to_pylist()
    prediction = dict(zip(labelled, result.labels["prediction_time"].cast(pa.int64()).to_pylist(), strict=True))
    assert all(s in prediction and t <= prediction[s] for s, t in zip(sids, time_us, strict=True))
    assert result.subjects["subject_id"].to_pylist() == sorted(prediction)


# --------------------------------------------------------------------------------------------------
# Issue 30: hostile inputs to the stages, each a clean refusal (a DataError / ParamsError naming the file,
# and the line where there is one; through the CLI, exit 2 or 3 and no traceback). One case per defect.

import errno  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from seqsetvae.cli import main as cli_main  # noqa: E402
from seqsetvae.config import PROJECT_ROOT, ParamsError, load_params  # noqa: E402
from seqsetvae.data.canonical import EVENTS_DIR, LABELS_FILE, SUBJECTS_FILE, IngestReport, write_ingested  # noqa: E402
from seqsetvae.data.readers import csv_rows  # noqa: E402
from seqsetvae.data.splits import SPLITS_SCHEMA, read_predefined_csv  # noqa: E402
from tests.bad_inputs.meds import builders as meds_builders  # noqa: E402

HEADER = "subject_id,split\n"

# name -> (file bytes, or a path to read instead; the line the DataError names, None for none, ... for any
# line; its message)
PREDEFINED_CSV_CASES = {
    "dev_zero": (Path("/dev/zero"), None, r"not a regular file"),
    "no_newline": (b"x" * (8 << 20), 1, r"a line longer than 4096 bytes"),
    "cell_of_1_MiB": (HEADER.encode() + b"1000," + b"t" * (1 << 20) + b"\n", 2, r"a line longer than 4096 bytes"),
    "quoted_cell_over_lines": (HEADER.encode() + b'1000,"' + (b"t" * 4000 + b"\n") * 40 + b'"\n', ...,
                               r"not a valid predefined split CSV: field larger than field limit"),
    "id_2_pow_64": (HEADER.encode() + b"18446744073709551616,train\n", 2,
                    r"subject_id '18446744073709551616' is not an integer"),
    "id_2_pow_63": (HEADER.encode() + b"9223372036854775808,train\n", 2, r"is not an integer from 0 to 2\*\*63 - 1"),
    "latin1_byte": (HEADER.encode() + b"1000,tr\xe9in\n", 2, r"not UTF-8 text \(byte 0xe9 at column 8\)"),
    "id_underscore": (HEADER.encode() + b"1_0,train\n", 2, r"subject_id '1_0' is not an integer .*plainly"),
    "id_plus_sign": (HEADER.encode() + b"+7,train\n", 2, r"subject_id '\+7' is not an integer"),
    "id_arabic_digit": (HEADER.encode() + "٣,train\n".encode(), 2, r"subject_id '٣' is not an integer"),
    "id_leading_zeros": (HEADER.encode() + b"0012,train\n", 2, r"subject_id '0012' is not an integer"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(PREDEFINED_CSV_CASES))
def test_predefined_split_csv_hostile_input_is_a_data_error_naming_file_and_line(tmp_path, case):
    """Item 4 (/dev/zero, no newline: refused without reading them whole), 8 (a 1 MiB cell, 2**64, a Latin-1
    byte) and 13 (ids other than plain ASCII digits)."""
    content, line, message = PREDEFINED_CSV_CASES[case]
    path = content if isinstance(content, Path) else tmp_path / "split.csv"
    if not isinstance(content, Path):
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_predefined_csv(path)
    assert info.value.path == str(path) and (info.value.line == line or line is ...), str(info.value)
    assert re.search(message, info.value.message), str(info.value)
    assert len(str(info.value)) < 400


def test_predefined_split_csv_accepts_a_utf8_bom_as_the_physionet_reader_does(tmp_path):
    """Item 8: a UTF-8 byte order mark (Excel's "CSV UTF-8") is accepted, not refused as a bad header."""
    path = tmp_path / "split.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"subject_id,fold,split\r\n1000,0,train\r\n1001,0,test\r\n")
    table = read_predefined_csv(path)
    assert table.subject_id.tolist() == [1000, 1001] and table.has_fold_column


def test_csv_reader_bounds_the_file_size(tmp_path):
    """Item 4: a file larger than the bound is refused before it is read."""
    path = tmp_path / "split.csv"
    path.write_bytes(HEADER.encode() + b"1000,train\n" * 100)
    with pytest.raises(DataError, match=r"more than 100: too large"):
        list(csv_rows(path, max_bytes=100))


def _ingest_folder(path: Path, n: int = 40) -> Path:
    """A small valid ingest folder: n subjects with a few events, a quarter positive."""
    from tests.test_preprocess import make_tables

    ids = list(range(1000, 1000 + n))
    rows = [(s, h, code, float(s % 7 + h)) for s in ids for h in (0.5, 3.0) for code in ("HR", "Temp")]
    events, subjects, labels = make_tables(rows, ids, {s: s % 4 == 0 for s in ids})
    write_ingested(path, IngestResult(events, subjects, labels, IngestReport(source="test")))
    return path


def _spoil(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("subject_id,label,probability\n1,0,0.5\n")


def _run_cli(argv: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seqsetvae"):
        code = cli_main(argv)
    return code, caplog.text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncated", "text"])
@pytest.mark.parametrize("stage", ["split", "preprocess", "baseline", "evaluate"])
def test_a_parquet_input_that_is_not_parquet_is_refused_by_every_stage(tmp_path, caplog, stage, how):
    """Item 9: subjects.parquet to split, splits.parquet to preprocess, an events shard to baseline, a text
    file as predictions to evaluate: exit 3 naming the file, never an ArrowInvalid traceback."""
    params = str(PROJECT_ROOT / "params.yaml")
    ing = _ingest_folder(tmp_path / "ingested")
    splits = tmp_path / "splits.parquet"
    assert cli_main(["split", "--params", params, "--ingested", str(ing), "--out", str(splits)]) == 0
    if stage == "split":
        bad, argv = ing / SUBJECTS_FILE, ["--ingested", str(ing), "--out", str(tmp_path / "s2.parquet")]
    elif stage == "preprocess":
        bad, argv = splits, ["scan", "--ingested", str(ing), "--splits", str(splits), "--shard", "0", "--out",
                             str(tmp_path / "scan")]  # fmt: skip
    elif stage == "baseline":
        bad = ing / EVENTS_DIR / "0.parquet"
        argv = ["--ingested", str(ing), "--splits", str(splits), "--fold", "0", "--predictions-dir",
                str(tmp_path / "pred"), "--metrics-dir", str(tmp_path / "m"), "--details", str(tmp_path / "d.json")]
    else:
        bad = tmp_path / "fold_0.parquet"
        pq.write_table(pa.table({"subject_id": [1, 2], "label": [0, 1], "probability": [0.2, 0.7]}), bad)
        argv = ["--predictions", str(bad), "--metrics", str(tmp_path / "m.json"), "--details", str(tmp_path / "d.json")]
    _spoil(bad, how)
    code, text = _run_cli([stage, "--params", params, *argv], caplog)
    assert code == 3, text
    assert f"{bad}: " in text and "Traceback" not in text


def _fail_with(exc: OSError):
    def fail(*args, **kwargs):
        raise exc
    return fail


# name -> (stage, what to break: (module attribute to replace, the OSError it raises), or what to put at the
# output's path: "folder" / "fifo"; the message expected)
OS_ERROR_CASES = {
    "split_read_only_folder": ("split", ("tempfile.mkstemp", OSError(errno.EROFS, "Read-only file system")),
                               r"cannot write this output file: Read-only file system \(the file system is read-only"),
    "split_no_permission": ("split", ("tempfile.mkstemp", PermissionError(errno.EACCES, "Permission denied")),
                            r"cannot write this output file: Permission denied \(no permission"),
    "split_disk_full": ("split", ("seqsetvae.io._fsync_file", OSError(errno.ENOSPC, "No space left on device")),
                        r"No space left on device \(the disk is full; no partial output was left"),
    "split_out_is_a_folder": ("split", "folder", r"is a folder: cannot write a file over it"),
    "split_out_is_a_fifo": ("split", "fifo", r"is a device, FIFO or socket, not a file: cannot write an output"),
    "ingest_read_only_folder": ("ingest", ("tempfile.mkdtemp", OSError(errno.EROFS, "Read-only file system")),
                                r"cannot write this output folder: Read-only file system"),
    "ingest_disk_full": ("ingest", ("pyarrow.parquet.write_table", OSError(  # as pyarrow raises it
        errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")),
                         r"cannot write this output folder: .*No space left on device \(the disk is full"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(OS_ERROR_CASES))
def test_os_errors_on_an_output_are_refusals_naming_it(tmp_path, caplog, monkeypatch, case):
    """Item 10: a read-only output folder (Errno 30), no permission (EACCES), a full disk (Errno 28) and
    `split --out <an existing folder>`, and `--out` a FIFO or device (found by probing: `--out /dev/full`
    replaced the device node with the split table): exit 3 naming the output, no traceback, no temporary
    left."""
    stage, breakage, message = OS_ERROR_CASES[case]
    params_dict = read_yaml_dict()
    params_dict["data"]["synthetic"]["n_subjects"] = 40
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(params_dict))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if stage == "split":
        ing = _ingest_folder(tmp_path / "ingested")
        out = out_dir / "splits.parquet"
        if breakage == "folder":
            out.mkdir()
        elif breakage == "fifo":  # as a device such as /dev/full, whose node the write used to replace
            os.mkfifo(out)
        argv = ["split", "--params", str(params), "--ingested", str(ing), "--out", str(out)]
    else:
        out = out_dir / "ingested"
        argv = ["ingest", "--params", str(params), "--out", str(out)]
    if isinstance(breakage, tuple):
        target, exc = breakage
        monkeypatch.setattr(target, _fail_with(exc))
    code, text = _run_cli(argv, caplog)
    assert code == 3, text
    assert f"{out}: " in text and re.search(message, text), text
    assert "Traceback" not in text
    assert [p.name for p in out_dir.iterdir()] == ([] if isinstance(breakage, tuple) else [out.name])  # no temporary
    assert breakage != "fifo" or stat.S_ISFIFO(os.lstat(out).st_mode)  # left as it was


def read_yaml_dict() -> dict:
    from seqsetvae.config import read_yaml

    return read_yaml(PROJECT_ROOT / "params.yaml")


def test_an_os_error_outside_any_output_is_exit_3_naming_the_path(tmp_path, caplog, monkeypatch):
    """Item 10, the CLI's one place: any OSError a stage did not turn into a DataError (here: the run lock
    in a read-only project) is exit 3 with the path and the reason, no traceback."""
    import seqsetvae.runlock

    monkeypatch.setattr(seqsetvae.runlock.os, "open", _fail_with(OSError(errno.EROFS, "Read-only file system",
                                                                        str(PROJECT_ROOT / ".seqsetvae-run.lock"))))
    code, text = _run_cli(["split", "--params", str(PROJECT_ROOT / "params.yaml"), "--ingested", str(tmp_path),
                           "--out", str(tmp_path / "s.parquet")], caplog)
    assert code == 3, text
    assert ".seqsetvae-run.lock: Read-only file system" in text and "Traceback" not in text


@pytest.mark.timeout(120)
def test_meds_export_cli_refuses_zero_shards_at_argparse(tmp_path, capsys):
    """Item 12: `python -m seqsetvae.data.meds_source ING OUT --shards 0` is a usage error (exit 2), not a
    ValueError traceback."""
    from seqsetvae.data.meds_source import main as meds_main

    ing = _ingest_folder(tmp_path / "ingested")
    with pytest.raises(SystemExit) as info:
        meds_main([str(ing), str(tmp_path / "meds"), "--shards", "0"])
    assert info.value.code == 2
    assert "argument --shards: 0 is not a positive number of shards" in capsys.readouterr().err
    assert not (tmp_path / "meds").exists()


@pytest.mark.parametrize("kind", ["broken_link", "fifo"])
def test_meds_data_shard_that_is_a_broken_link_is_refused(tmp_path, kind):
    """Item 2: a data shard that is a broken symbolic link is refused, naming it (it was skipped, and its
    subjects ingested without events); so is one that is a FIFO (found probing: skipped the same way)."""
    p = meds_builders.write(tmp_path)
    shard = tmp_path / "data" / "train" / "1.parquet"
    if kind == "fifo":
        os.mkfifo(shard)
    else:
        shard.symlink_to(tmp_path / "gone.parquet")
    with pytest.raises(DataError) as info:
        ingest_meds(p, tmp_path)
    assert info.value.path == str(shard)
    assert ("broken symbolic link" if kind == "broken_link" else "not a regular file") in info.value.message


def test_meds_timed_code_in_the_descriptor_namespace_is_refused(tmp_path, params_dict):
    """Item 14: with descriptors: admission_set, a timed MEDS code `static/Age` beside the static code
    `Age` would become the descriptor's token; it is refused, naming the code. With descriptors: none
    there is no descriptor token, and the code is an ordinary one."""
    from seqsetvae.data.preprocess import preprocess
    from seqsetvae.data.descriptors import STATIC_PREFIX

    p = meds_builders.with_rows(tmp_path / "meds", [(1, 1.0, "static/Age", 30.0), (2, 2.0, "static/Age", 31.0)])
    result = ingest_meds(p, tmp_path)
    assert "Age" in result.subjects.column_names and STATIC_PREFIX == "static/"
    splits = pa.table({"subject_id": [1, 2], "fold": [0, 0], "split": ["train", "test"]}, schema=SPLITS_SCHEMA)
    params_dict["preprocess"]["descriptors"] = "admission_set"
    params = params_from_dict(params_dict).preprocess
    with pytest.raises(DataError, match=r"1 data code\(s\) start with 'static/' \(first: 'static/Age'\).*"
                                        r"preprocess\.descriptors: none"):
        preprocess(result.events, result.subjects, result.labels, splits, params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


LONG = 1 << 20  # a 1 MiB value: the message must not quote it


@pytest.mark.parametrize("content", ["text", "list", "nested", "unknown_key"])
def test_params_file_errors_quote_bounded_excerpts(tmp_path, content):
    """Item 17: params that are not a YAML mapping, or hold a huge value, give a short message."""
    path = tmp_path / "params.yaml"
    if content == "text":
        path.write_text("x" * LONG)
    elif content == "list":
        path.write_text("- " + "y" * LONG + "\n")
    elif content == "nested":
        raw = read_yaml_dict()
        raw["split"]["protocol"] = "z" * LONG
        path.write_text(yaml.safe_dump(raw, width=2 * LONG))
    else:
        raw = read_yaml_dict()
        raw["k" * LONG] = 1
        path.write_text(yaml.safe_dump(raw, width=2 * LONG))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert len(str(info.value)) < 400, str(info.value)[:400]


def test_physionet_record_reached_through_a_symlink_is_not_quoted(tmp_path, base_params_dict):
    """Item 17: a record file that is a symbolic link to a file elsewhere is refused without quoting what
    that file holds."""
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("root:SECRET-CONTENT-NOT-TO-BE-SHOWN\n")
    data = tmp_path / "p12"
    (data / "set-a").mkdir(parents=True)
    (data / "set-a" / "1.txt").symlink_to(secret)
    (data / "Outcomes-a.txt").write_text(",".join(OUTCOMES_HEADER) + "\n1,1,2,3,-1,0\n")
    raw = {**base_params_dict, "data": {**base_params_dict["data"]}}
    raw["data"]["physionet2012"] = {**raw["data"]["physionet2012"], "dir": str(data), "sets": ["a"], "download": False}
    with pytest.raises(DataError) as info:
        ingest_physionet2012(params_from_dict(raw).data.physionet2012, tmp_path)
    assert info.value.path == str(data / "set-a" / "1.txt") and info.value.line == 1
    assert "SECRET" not in str(info.value) and "symbolic link" in info.value.message
