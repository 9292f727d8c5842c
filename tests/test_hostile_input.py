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

import datetime as dt
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

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
good_time = st.builds(lambda h, m, w: f"{h:0{w}d}:{m:02d}", st.integers(0, 999), st.integers(0, 59), st.sampled_from([1, 2]))
bad_time = st.one_of(
    st.sampled_from(["", "00:60", "-1:00", "1:2", "0000:00", "ab:cd", " 00:30", "00:30 ", "00.30", "１２:００", "00:3"]),
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
# as a row or inside one field, a second RecordID row. An example uses at most one of them, so that one
# structural error does not always hide the others (the first found stops ingest).
HAZARDS = ("fields", "bytes", "field_bytes", "record_id")


@st.composite
def _row(draw: st.DrawFn, hazard: str | None) -> bytes:
    """One record row (no line end): row content problems of every kind, and the example's `hazard`."""
    kinds = ["good", "good", "good", "descriptor", "bad_time", "odd_value", "odd_name", "blank"]
    kind = draw(st.sampled_from(kinds if hazard is None else [*kinds, hazard]))
    if kind == "good":
        return f"{draw(good_time)},{draw(st.sampled_from(NAMES))},{draw(numeric_text)}".encode()
    if kind == "descriptor":  # descriptors at 00:00 (first is kept as such, repeats skipped or events)
        return f"{draw(st.sampled_from(['00:00', '00:00', '01:00']))},{draw(st.sampled_from(DESCRIPTORS))},{draw(numeric_text)}".encode()
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
    hazard = draw(st.sampled_from([None, None, None, *HAZARDS]))
    structural = hazard is not None
    ids = draw(st.lists(st.integers(1, 99_999), min_size=1, max_size=3, unique=True))
    files: dict[str, bytes] = {}
    for rid in ids:
        eol = draw(st.sampled_from([b"\n", b"\r\n"]))
        first = f"00:00,{RECORD_ID},{rid}".encode()
        if structural and draw(st.integers(0, 9)) == 0:
            first = draw(st.sampled_from([f"00:00,{RECORD_ID},{rid + 1}".encode(), b"00:00,RecordID,x", b""]))
        lines = [b"Time,Parameter,Value", first, *draw(st.lists(_row(hazard), max_size=14))]
        bom = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"]))
        trailing = draw(st.sampled_from([eol, b""]))  # a missing final line end
        files[f"set-a/{rid}.txt"] = bom + eol.join(lines) + trailing
    outcome_rows = [f"{rid},1,2,3,-1,{draw(st.sampled_from([0, 1]))}" for rid in ids]
    if structural and draw(st.integers(0, 4)) == 0:
        outcome_rows.append(draw(st.sampled_from(["", "1,2", "x,1,2,3,-1,0", f"{ids[0]},1,2,3,-1,0", "7,1,2,3,-1,2"])))
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
