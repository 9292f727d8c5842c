"""PhysioNet 2012 source: the raw challenge files -> the canonical tables (seqsetvae.data.canonical).

Reads `set-<x>/*.txt` (one ICU stay per file, CSV `Time,Parameter,Value`) and `Outcomes-<x>.txt` for each
requested set. The rules for every quirk and every kind of bad input are written down in
docs/data_physionet2012.md; in short:

- a file's structure (readable, header, first row `00:00,RecordID,<id>` with a plain-digit id matching the
  file name, 3 fields per row),
  record ids unique across files, and records matching outcome rows one to one are required: a breach
  is a DataError naming the file and line;
- a row whose content is unusable (empty or unknown parameter, bad time, non-numeric or non-finite value,
  a descriptor repeated or recorded after admission, a blank line) is skipped and counted in the ingest
  report by reason, with `file:line` examples. rows_read == rows_kept + rows_skipped always holds;
- a descriptor outside its plausible range (DESCRIPTOR_RANGES) is set to missing, as -1 is, and a value
  that float32 can only hold as 0.0 (1e-50) is kept as 0.0; both are counted in the report.

Speed: the 12,000 files (83 MB, 5.3 M rows) are read as bytes, concatenated and parsed in one vectorised
pass (numpy on the raw bytes for line and field boundaries and times, pyarrow for parameter names and
values); there is no per-file or per-row Python parsing.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import PhysioNet2012Params, resolve_path
from seqsetvae.data.canonical import (
    ADMISSION_EPOCH,
    EVENTS_SCHEMA,
    SAMPLES_SCHEMA,
    MAX_EXAMPLES,
    IngestReport,
    IngestResult,
    shard_starts,
)
from seqsetvae.data.variables import DESCRIPTORS, NOT_RECORDED, RECORD_ID, TIME_SERIES
from seqsetvae.errors import DataError, excerpt

SOURCE = "physionet2012"
HEADER = b"Time,Parameter,Value"
OUTCOMES_HEADER = ("RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
LABEL_COLUMN = OUTCOMES_HEADER.index("In-hospital_death")
PREDICTION_HOURS = 48  # the challenge predicts in-hospital death from the first 48 h of the stay
AGE_CAP = 90.0  # the release records every age above 89 as 90
# Plausible descriptor values, inclusive (docs/data_physionet2012.md). A recorded value outside its range,
# or not a whole number where one is required, is set to missing (NaN) and counted in the report, as the
# challenge's -1 ("not recorded") is. Gender: 0 female, 1 male; ICUType: 1 coronary care, 2 cardiac
# surgery recovery, 3 medical, 4 surgical; Age in years (the release caps it at 90); Height in cm;
# Weight in kg.
DESCRIPTOR_RANGES: dict[str, tuple[float, float]] = {
    "Age": (0, 130), "Gender": (0, 1), "Height": (50, 300), "ICUType": (1, 4), "Weight": (1, 500),
}  # fmt: skip
WHOLE_NUMBER_DESCRIPTORS = ("Gender", "ICUType")
# A record id is written one way only: ASCII digits, no sign, spaces or leading zeros ("0" itself aside).
# int() alone would also take "+132539", " 132539 ", "132_539" or other scripts' digits as 132539.
_RECORD_ID_RE = re.compile(r"0|[1-9][0-9]*")

# Skip reasons (keys of the ingest report's skipped_by_reason), in the order they are checked: a row
# gets the first that applies.
BLANK_LINE = "blank_line"
EMPTY_PARAMETER = "empty_parameter"
UNKNOWN_PARAMETER = "unknown_parameter"
BAD_TIME = "bad_time"
NON_NUMERIC_VALUE = "non_numeric_value"
NON_FINITE_VALUE = "non_finite_value"
DESCRIPTOR_AFTER_ADMISSION = "descriptor_after_admission"
REPEATED_DESCRIPTOR = "repeated_descriptor"
SKIP_REASONS = (
    BLANK_LINE, EMPTY_PARAMETER, UNKNOWN_PARAMETER, BAD_TIME, NON_NUMERIC_VALUE, NON_FINITE_VALUE,
    DESCRIPTOR_AFTER_ADMISSION, REPEATED_DESCRIPTOR,
)  # fmt: skip

# Row status codes: 0 = kept as an event, 1 = kept as a descriptor, 2 + i = skipped for SKIP_REASONS[i].
_EVENT, _DESCRIPTOR, _PENDING = 0, 1, -1
_SKIP = {reason: 2 + i for i, reason in enumerate(SKIP_REASONS)}

# Every parameter name a row may carry. Descriptors-only names (Age, Gender, ...) are valid at 00:00 only;
# Weight is both a descriptor and a time series.
_NAMES: tuple[str, ...] = tuple(sorted(set(TIME_SERIES) | set(DESCRIPTORS) | {RECORD_ID}))
_NAME_ID = {name: i for i, name in enumerate(_NAMES)}
_EVENT_CODES = sorted(TIME_SERIES)  # code order in events, so sorting by id sorts by code string
_STATIC_ONLY = sorted(set(DESCRIPTORS) - set(TIME_SERIES))
_UNKNOWN_ID, _EMPTY_ID = -1, -2

# A number as written in the files: optional sign, digits with an optional fraction, optional exponent;
# or one of the non-finite spellings. Together the two are exactly what Arrow's string -> float cast
# accepts (checked by fuzzing against it: case-insensitive nan, nan(chars), inf, infinity, with a sign).
# Anything else (letters, spaces, "1.2.3", "", other scripts' digits) is non-numeric.
_NUMBER_RE = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_NON_FINITE_RE = r"(?i)^[+-]?(nan(\([0-9a-z_]*\))?|inf|infinity)$"
_NL, _COMMA, _COLON, _ZERO = ord("\n"), ord(","), ord(":"), ord("0")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class _RecordFile:
    path: Path  # for DataErrors (full path, so the user can open it)
    rel: str  # relative to the data dir, for report examples (machine-independent)
    set_id: str  # "a", "b" or "c"
    group: str  # "set-a", ...
    record_id: int
    body: memoryview  # the rows after the header, "\n"-terminated; its first row is the RecordID row
    n_lines: int


# --------------------------------------------------------------------------------------------------
# Layout and download


def required_items(sets: list[str]) -> list[str]:
    """The names (relative to the data dir) that the requested sets need: set dirs and outcome files."""
    return [f"set-{s}" for s in sets] + [f"Outcomes-{s}.txt" for s in sets]


def missing_items(data_dir: Path, sets: list[str]) -> list[str]:
    return [name for name in required_items(sets) if not (data_dir / name).exists()]


def _display(item: str) -> str:
    return item if item.endswith(".txt") else item + "/"


def ensure_data(p: PhysioNet2012Params, data_dir: Path) -> None:
    """Make sure every requested set and outcome file is in `data_dir`: download what is missing when
    `download` is on, else stop with a DataError saying how to fix it."""
    missing = missing_items(data_dir, p.sets)
    if not missing:
        return
    if not p.download:
        raise DataError(
            data_dir,
            f"PhysioNet 2012 data missing: {', '.join(_display(m) for m in missing)}. Put the challenge files there "
            "(set-a/ set-b/ set-c/ Outcomes-*.txt) or set data.physionet2012.download: true "
            "to fetch them from data.physionet2012.url",
        )
    from seqsetvae.data.download import download_physionet2012

    download_physionet2012(p.url, data_dir, missing)


# --------------------------------------------------------------------------------------------------
# Reading: files -> bytes (structure checked per file, cheaply, on the raw bytes)


def _read_bytes(path: Path, what: str) -> bytes:
    """The file's bytes; an OS error (a symlink loop, no permission, an I/O error) is a DataError naming
    the file, like every other record or outcome file that cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(path, f"cannot read this {what}: {e.strerror or e}") from None


def _record_id(text: str, path: Path, line: int) -> int:
    if not _RECORD_ID_RE.fullmatch(text):
        raise DataError(
            path, f"{RECORD_ID} {excerpt(text)} is not a plain number (ASCII digits only: no sign, spaces, "
            "separators or leading zeros)", line
        )  # fmt: skip
    return int(text)


def _read_record_file(path: Path, rel: str, group: str) -> _RecordFile:
    data = _read_bytes(path, "record file")
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if b"\r" in data:  # files saved on Windows: CRLF -> LF (a lone CR stays and makes a value invalid)
        data = data.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if not data.isascii():  # the release is ASCII; check the rare rest here, once per file
        _check_utf8(path, data)
    # What a file holds is quoted (60 bytes at most) only when it is a file of the data folder itself: a
    # record that is a symbolic link may point anywhere, and an error message must not show that file.
    quote = not path.is_symlink()
    if not data.startswith(HEADER + b"\n"):
        head = data.split(b"\n", 1)[0]
        found = _found(head, quote, "the file is empty")
        raise DataError(path, f"expected the header '{HEADER.decode()}', {found}", line=1)
    offset = len(HEADER) + 1
    first = data[offset : data.find(b"\n", offset)] if len(data) > offset else b""
    fields = first.split(b",")
    if len(fields) != 3 or fields[0] != b"00:00" or fields[1] != RECORD_ID.encode():
        found = _found(first, quote, "the file has no rows")
        raise DataError(path, f"the first row must be '00:00,{RECORD_ID},<id>', {found}", line=2)
    record_id = _record_id(fields[2].decode("utf-8", "replace"), path, 2)
    if record_id >= 2**63:  # it becomes subject_id, an int64 (MEDS)
        raise DataError(path, f"{RECORD_ID} {record_id} is out of range for a 64-bit subject id", 2)
    if path.stem != str(record_id):
        raise DataError(
            path, f"the file name disagrees with its {RECORD_ID} row ({record_id}): a renamed or duplicated record", 2
        )
    # A view, not a copy: the rows are copied once, when all files are joined.
    n_lines = data.count(b"\n", offset)
    return _RecordFile(path, rel, group.removeprefix("set-"), group, record_id, memoryview(data)[offset:], n_lines)


def _found(line: bytes, quote: bool, empty: str) -> str:
    if not line:
        return empty
    if not quote:
        return f"found another line of {len(line)} bytes (not quoted: the record file is a symbolic link)"
    return f"found {line[:60].decode('utf-8', 'replace')!r}"


def _check_utf8(path: Path, data: bytes) -> None:
    """DataError at the first line that is not UTF-8. The rows are parsed as Arrow strings, which must
    be valid UTF-8; bytes that are not are a file in another encoding or a corrupt one (a structure
    problem, like a missing header), not one unusable measurement."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            path, f"not UTF-8 text (byte 0x{data[e.start]:02x}): save the file as UTF-8 or ASCII", line
        ) from None


def _read_set(data_dir: Path, s: str, keep_body: bool = True) -> list[_RecordFile]:
    """Read and check every record file of set `s`; without `keep_body`, each file's rows are dropped once
    it is checked (the caller reads them again later, batch by batch)."""
    set_dir = data_dir / f"set-{s}"
    if not set_dir.is_dir():
        raise DataError(set_dir, "not a directory (requested by data.physionet2012.sets)")
    with os.scandir(set_dir) as it:
        names = sorted(e.name for e in it if e.name.endswith(".txt") and _is_record_file(e, set_dir))
    if not names:
        raise DataError(set_dir, "no record files (*.txt) in this set directory")
    files = []
    for n in names:
        f = _read_record_file(set_dir / n, f"set-{s}/{n}", f"set-{s}")
        files.append(f if keep_body else dataclasses.replace(f, body=memoryview(b"")))
    return files


def _is_record_file(entry: os.DirEntry, set_dir: Path) -> bool:
    """Whether a `*.txt` entry is a file to read (symlinks followed). A symlink loop or a broken link is a
    DataError naming it: the record it stands for cannot be read, and skipping it would be silent. Other
    entries (a folder named `x.txt`) are no record files and are not read."""
    try:
        if entry.is_file():
            return True
        if entry.is_symlink():
            raise DataError(set_dir / entry.name, "cannot read this record file: a broken symbolic link")
        return False
    except OSError as e:
        reason = "a symbolic link loop (too many levels of symbolic links)" if e.errno == errno.ELOOP else e.strerror
        raise DataError(set_dir / entry.name, f"cannot read this record file: {reason or e}") from None


def _read_outcomes(path: Path) -> dict[int, tuple[bool, int]]:
    """RecordID -> (in-hospital death, line). Only the label is read: SAPS-I, SOFA, length of stay and
    survival are outcome-time information and would leak into features."""
    if not path.is_file():
        raise DataError(path, "outcomes file missing")
    raw = _read_bytes(path, "outcomes file")
    _check_utf8(path, raw)
    text = raw.decode("utf-8-sig")
    # Split on "\n" only (a trailing "\r" is stripped with each field): str.splitlines() would also break
    # at \x85, \u2028 and others, shifting the line numbers that errors report.
    lines = text.split("\n") if text else []
    if not lines or tuple(f.strip() for f in lines[0].split(",")) != OUTCOMES_HEADER:
        found = excerpt(lines[0], 80) if lines else "the file is empty"
        raise DataError(path, f"expected the header '{','.join(OUTCOMES_HEADER)}', found {found}", line=1)
    out: dict[int, tuple[bool, int]] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # a trailing blank line is no outcome row
        raw_fields = line.split(",")
        fields = [f.strip() for f in raw_fields]
        if len(fields) != len(OUTCOMES_HEADER):
            raise DataError(path, f"expected {len(OUTCOMES_HEADER)} fields, found {len(fields)}", line_no)
        record_id = _record_id(raw_fields[0], path, line_no)  # unstripped: " 132539" is refused
        if fields[LABEL_COLUMN] not in ("0", "1"):
            raise DataError(path, f"In-hospital_death must be 0 or 1, found {excerpt(fields[LABEL_COLUMN])}", line_no)
        if record_id in out:
            raise DataError(path, f"RecordID {record_id} repeated (first at line {out[record_id][1]})", line_no)
        out[record_id] = (fields[LABEL_COLUMN] == "1", line_no)
    if not out:
        raise DataError(path, "no outcome rows")
    return out


LOS_COLUMN = OUTCOMES_HEADER.index("Length_of_stay")
SURVIVAL_COLUMN = OUTCOMES_HEADER.index("Survival")
_WHOLE_DAYS_RE = re.compile(r"-?[0-9]+")


def read_outcome_times(data_dir: Path, sets: list[str]) -> pa.Table:
    """Every requested set's `Length_of_stay` and `Survival` (whole days since ICU admission; -1 = not
    recorded) with `In-hospital_death`, one row per RecordID, sorted by it: `subject_id`, `length_of_stay_days`,
    `survival_days` (int64), `in_hospital_death` (bool). For task labels only (seqsetvae/data/tasks.py): these
    are outcome-time facts, never features. The files are checked as ingest checks them (header, fields, ids
    unique); a length of stay or survival that is not a whole number is a DataError naming the line."""
    ids, los, surv, died = [], [], [], []
    for s in sets:
        path = data_dir / f"Outcomes-{s}.txt"
        label = _read_outcomes(path)  # structure, ids and the label, as ingest reads them
        text = _read_bytes(path, "outcomes file").decode("utf-8-sig")
        for line_no, line in enumerate(text.split("\n")[1:], start=2):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split(",")]
            for col in (LOS_COLUMN, SURVIVAL_COLUMN):
                if not _WHOLE_DAYS_RE.fullmatch(fields[col]):
                    raise DataError(path, f"{OUTCOMES_HEADER[col]} must be a whole number of days (-1: not "
                                          f"recorded), found {excerpt(fields[col])}", line_no)
            record_id = int(fields[0])
            ids.append(record_id)
            los.append(int(fields[LOS_COLUMN]))
            surv.append(int(fields[SURVIVAL_COLUMN]))
            died.append(label[record_id][0])
    order = np.argsort(np.array(ids, dtype=np.int64), kind="stable")
    sid = np.array(ids, dtype=np.int64)[order]
    if sid.size > 1 and not (np.diff(sid) > 0).all():
        dup = int(sid[np.flatnonzero(np.diff(sid) == 0)[0]])
        raise DataError(data_dir, f"RecordID {dup} has rows in more than one Outcomes file")
    return pa.table({
        "subject_id": pa.array(sid, pa.int64()),
        "length_of_stay_days": pa.array(np.array(los, dtype=np.int64)[order]),
        "survival_days": pa.array(np.array(surv, dtype=np.int64)[order]),
        "in_hospital_death": pa.array(np.array(died, dtype=bool)[order]),
    })


# --------------------------------------------------------------------------------------------------
# Vectorised parsing of the concatenated rows


@dataclass(frozen=True)
class _Fields:
    """Byte offsets into the concatenated rows: line i is [starts[i], ends[i]) (ends[i] is its newline),
    its fields are [starts, c1), (c1, c2), (c2, ends). Blank lines have c1 == c2 == starts."""

    starts: np.ndarray
    c1: np.ndarray
    c2: np.ndarray
    ends: np.ndarray
    blank: np.ndarray
    n_commas: np.ndarray | None  # per line; None when every line has exactly two (the fast path)


def _split_fields(buf: np.ndarray) -> _Fields:
    delims = np.flatnonzero((buf == _NL) | (buf == _COMMA))
    kinds = buf[delims]
    n = len(delims) // 3
    # Fast path, the normal case: delimiters run comma, comma, newline, ... so every line has 3 fields
    # and the boundaries are plain strided views (no searching).
    if (
        len(delims) % 3 == 0
        and np.all(kinds[0::3] == _COMMA)
        and np.all(kinds[1::3] == _COMMA)
        and np.all(kinds[2::3] == _NL)
    ):
        ends = np.ascontiguousarray(delims[2::3])
        starts = np.empty_like(ends)
        starts[:1] = 0
        starts[1:] = ends[:-1] + 1
        c1, c2 = np.ascontiguousarray(delims[0::3]), np.ascontiguousarray(delims[1::3])
        return _Fields(starts, c1, c2, ends, np.zeros(n, dtype=bool), None)
    # General path (blank lines, or rows with the wrong number of fields, reported by the caller).
    ends = delims[kinds == _NL]
    commas = delims[kinds == _COMMA]
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    first = np.searchsorted(commas, starts)
    n_commas = np.searchsorted(commas, ends) - first
    three = n_commas == 2
    last = max(len(commas) - 1, 0)
    c1 = np.where(three, commas[np.minimum(first, last)] if len(commas) else 0, starts)
    c2 = np.where(three, commas[np.minimum(first + 1, last)] if len(commas) else 0, starts)
    return _Fields(starts, c1, c2, ends, starts == ends, n_commas)


def _gather_strings(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.LargeStringArray:
    """The byte ranges [starts, ends) of `buf` as one arrow string array (a single ragged gather)."""
    lengths = ends - starts
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    itype = np.int32 if len(buf) < 2**31 else np.int64  # half the memory traffic for the index
    index = np.repeat((starts - offsets[:-1]).astype(itype), lengths)
    index += np.arange(offsets[-1], dtype=itype)
    data = buf[index]
    return pa.LargeStringArray.from_buffers(len(starts), pa.py_buffer(offsets), pa.py_buffer(data))


def _parse_minutes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`h:mm`, `hh:mm` or `hhh:mm` -> minutes since admission, and a validity mask (minutes < 60;
    negative, letters or other shapes are invalid). Minutes fit in int32 (at most 999:59)."""
    length = ends - starts
    minutes = np.zeros(len(starts), dtype=np.int32)
    ok = np.zeros(len(starts), dtype=bool)
    last = len(buf) - 1
    for hour_digits in (2, 1, 3):  # hh:mm first: nearly every row
        rows = np.flatnonzero(length == hour_digits + 3)
        if not len(rows):
            continue
        s = starts[rows]
        digits = [buf[np.minimum(s + k, last)].astype(np.int32) - _ZERO for k in range(hour_digits + 3)]
        colon = digits.pop(hour_digits)
        *hour, m1, m2 = digits
        good = (colon == _COLON - _ZERO) & (m1 >= 0) & (m1 <= 5) & (m2 >= 0) & (m2 <= 9)
        hours = np.zeros(len(rows), dtype=np.int32)
        for d in hour:
            good &= (d >= 0) & (d <= 9)
            hours = hours * 10 + d
        ok[rows] = good
        minutes[rows] = np.where(good, hours * 60 + m1 * 10 + m2, 0)
    return minutes, ok


def _parse_values(values: pa.LargeStringArray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """-> (float32 values, numeric mask, non-finite mask, rounded-to-zero mask). A value is numeric when
    Arrow's decimal parser reads it (optional sign, digits, optional fraction and exponent; also nan/inf
    spelled out); non-finite covers nan, inf and numbers beyond float32 range: numeric text, but no
    measurement. Rounded to zero: a nonzero number below float32's smallest magnitude (about 1.4e-45,
    e.g. 1e-50), which float32 stores as 0.0."""
    try:  # the normal case: every value parses, one cast
        as_float = pc.cast(values, pa.float64()).to_numpy()
        numeric = np.ones(len(values), dtype=bool)
    except pa.ArrowInvalid:
        # Some do not: two regexes spell out the grammar Arrow's cast accepts (numbers, and the non-finite
        # words), so both paths accept exactly the same text; cast the rows they match, in one pass. No
        # per-row work, however many rows are bad.
        numeric = np.logical_or(
            pc.match_substring_regex(values, _NUMBER_RE).to_numpy(zero_copy_only=False),
            pc.match_substring_regex(values, _NON_FINITE_RE).to_numpy(zero_copy_only=False),
        )
        as_float = pc.cast(pc.if_else(pa.array(numeric), values, "0"), pa.float64()).to_numpy()
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        v32 = as_float.astype(np.float32)
    non_finite = numeric & ~np.isfinite(v32)
    rounded_to_zero = numeric & (v32 == 0) & (as_float != 0)
    return v32, numeric & ~non_finite, non_finite, rounded_to_zero


def _parameter_ids(params: pa.LargeStringArray) -> np.ndarray:
    """Parameter name -> index into _NAMES; _EMPTY_ID for an empty field, _UNKNOWN_ID for an unknown one."""
    encoded = pc.dictionary_encode(params)  # a hash pass: the names are few, the rows millions
    lookup = np.array(
        [_EMPTY_ID if s == "" else _NAME_ID.get(s, _UNKNOWN_ID) for s in encoded.dictionary.to_pylist()],
        dtype=np.int64,
    )
    return lookup[encoded.indices.to_numpy()] if len(lookup) else np.zeros(0, dtype=np.int64)


def _first_per_group(rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Boolean mask over `rows` (in row order): True at the first row of each key."""
    _, first = np.unique(keys, return_index=True)
    mask = np.zeros(len(rows), dtype=bool)
    mask[first] = True
    return mask


def ingest_physionet2012(p: PhysioNet2012Params, root: Path) -> IngestResult:
    """Ingest the requested sets into canonical events, subjects and labels, with the ingest report, in one
    batch (the whole cohort in memory). A relative `p.dir` resolves against `root` (Params.root: the params
    file's folder). The ingest stage runs `physionet2012_shard` per shard instead."""
    files, outcomes = _index(p, root, keep_body=True)
    return _ingest_batch(files, outcomes, p.sets)


def physionet2012_shard(p: PhysioNet2012Params, root: Path, n_shards: int, k: int) -> IngestResult:
    """Shard k of `n_shards`: the stays at positions shard_starts(N, n)[k] .. [k + 1] - 1 in RecordID order.

    Two passes over the files, so that memory is bounded by one shard: the first reads and checks every
    file's structure and record id (keeping only its name, id and line count), so every structural error
    stops every shard job, as when all files were read at once; the second reads and parses the shard's own
    files. The report counts this shard's rows only; the reports of the shards merged in order
    (IngestReport.merge) give the report of a single pass (the first MAX_EXAMPLES examples, in RecordID
    order, and every count)."""
    files, outcomes = _index(p, root, keep_body=False)
    starts = shard_starts(len(files), n_shards)
    batch = [_read_record_file(f.path, f.rel, f.group) for f in files[starts[k] : starts[k + 1]]]
    return _ingest_batch(batch, outcomes, p.sets)


def _index(p: PhysioNet2012Params, root: Path, keep_body: bool) -> tuple[list[_RecordFile], dict]:
    """Every record file of the requested sets, checked, in RecordID order (with its body when `keep_body`),
    and the outcomes per set. Record ids must be unique across all files and one to one with the outcome
    rows of their own set: checks of the whole cohort, made by every shard job."""
    data_dir = resolve_path(p.dir, "data.physionet2012.dir", root)
    ensure_data(p, data_dir)

    # Outcomes first: a cheap way to fail early on a wrong directory.
    outcomes = {s: _read_outcomes(data_dir / f"Outcomes-{s}.txt") for s in p.sets}
    files: list[_RecordFile] = []
    for s in p.sets:
        files.extend(_read_set(data_dir, s, keep_body=keep_body))

    owner: dict[int, _RecordFile] = {}
    for f in files:
        if f.record_id in owner:
            raise DataError(f.path, f"{RECORD_ID} {f.record_id} is also in {owner[f.record_id].path}", line=2)
        owner[f.record_id] = f
        if f.record_id not in outcomes[f.set_id]:
            raise DataError(f.path, f"{RECORD_ID} {f.record_id} has no row in Outcomes-{f.set_id}.txt", line=2)
    for s in p.sets:
        for record_id, (_, line) in outcomes[s].items():
            f = owner.get(record_id)
            if f is None or f.group != f"set-{s}":
                where = "no record file" if f is None else f"its record file is {f.path}"
                raise DataError(data_dir / f"Outcomes-{s}.txt", f"RecordID {record_id}: {where} in set-{s}/", line)
    del owner

    # Files in record id order: the subject order of every output table, and the event sort key can then
    # use the file index.
    files.sort(key=lambda f: f.record_id)
    return files, outcomes


def _ingest_batch(files: list[_RecordFile], outcomes: dict, sets: list[str]) -> IngestResult:
    n_files = len(files)
    report = IngestReport(source=SOURCE)
    events, subjects = _parse(files, report)

    record_ids = np.array([f.record_id for f in files], dtype=np.int64)
    died = np.array([outcomes[f.set_id][f.record_id][0] for f in files], dtype=bool)
    admission = pa.array(np.full(n_files, np.datetime64(ADMISSION_EPOCH, "us")), pa.timestamp("us"))
    prediction = np.datetime64(ADMISSION_EPOCH, "us") + np.timedelta64(PREDICTION_HOURS, "h")
    # One sample per stay: predicted at admission + 48 h from the events since admission.
    labels = pa.Table.from_arrays(
        [pa.array(record_ids), pa.array(np.full(n_files, prediction), pa.timestamp("us")), pa.array(died), admission],
        schema=SAMPLES_SCHEMA,
    )
    subjects_table = pa.Table.from_arrays(
        [pa.array(record_ids), admission, pa.array([f.group for f in files], pa.string())]
        + [pa.array(subjects[:, j], pa.float32()) for j in range(len(DESCRIPTORS))],
        names=["subject_id", "admission_time", "group", *DESCRIPTORS],
    )

    report.subjects = n_files
    report.positives = int(died.sum())
    report.extra["sets"] = {
        f"set-{s}": {
            "subjects": sum(f.group == f"set-{s}" for f in files),
            "positives": int(sum(d for f, d in zip(files, died, strict=True) if f.group == f"set-{s}")),
        }
        for s in sets
    }
    return IngestResult(events=events, subjects=subjects_table, labels=labels, report=report)


def _parse(files: list[_RecordFile], report: IngestReport) -> tuple[pa.Table, np.ndarray]:
    """Parse all record rows at once -> (events table, descriptor matrix [files, DESCRIPTORS]); fills the
    report's row counts and skips."""
    if not files:  # an empty shard (data.shards longer than the cohort)
        return EVENTS_SCHEMA.empty_table(), np.full((0, len(DESCRIPTORS)), np.nan, dtype=np.float32)
    lines_per_file = np.array([f.n_lines for f in files], dtype=np.int64)
    buf = np.frombuffer(b"".join(f.body for f in files), dtype=np.uint8)
    n_rows = int(lines_per_file.sum())
    file_of = np.repeat(np.arange(len(files), dtype=np.int64), lines_per_file)
    first_row = np.concatenate([[0], np.cumsum(lines_per_file)[:-1]])
    line_no = np.arange(n_rows, dtype=np.int64) - first_row[file_of] + 2  # line 1 is the header

    def where(row: int) -> str:
        return f"{files[file_of[row]].rel}:{line_no[row]}"

    def fail(rows: np.ndarray, message: str) -> DataError:
        more = f" (and {len(rows) - 1} more such row(s))" if len(rows) > 1 else ""
        r = int(rows[0])
        return DataError(files[file_of[r]].path, message + more, line=int(line_no[r]))

    fields = _split_fields(buf)
    blank = fields.blank
    if fields.n_commas is not None:
        bad_shape = np.flatnonzero(~blank & (fields.n_commas != 2))
        if len(bad_shape):
            found = fields.n_commas[bad_shape[0]] + 1
            raise fail(bad_shape, f"expected 3 fields (Time,Parameter,Value), found {found}")
    minutes, time_ok = _parse_minutes(buf, fields.starts, fields.c1)
    name_id = _parameter_ids(_gather_strings(buf, np.where(blank, fields.c2, fields.c1 + 1), fields.c2))
    values, value_ok, non_finite, rounded_to_zero = _parse_values(
        _gather_strings(buf, np.where(blank, fields.ends, fields.c2 + 1), fields.ends)
    )
    del buf, fields

    # Row status, first applicable reason wins.
    status = np.full(n_rows, _PENDING, dtype=np.int8)

    def assign(mask: np.ndarray, code: int) -> None:
        status[(status == _PENDING) & mask] = code

    assign(blank, _SKIP[BLANK_LINE])
    assign(name_id == _EMPTY_ID, _SKIP[EMPTY_PARAMETER])
    assign(name_id == _UNKNOWN_ID, _SKIP[UNKNOWN_PARAMETER])
    assign(~time_ok, _SKIP[BAD_TIME])
    assign(non_finite, _SKIP[NON_FINITE_VALUE])
    assign(~value_ok, _SKIP[NON_NUMERIC_VALUE])

    # The RecordID row is each file's first row (checked when reading); any other is an error.
    status[first_row] = _DESCRIPTOR
    extra_ids = np.flatnonzero((name_id == _NAME_ID[RECORD_ID]) & (status == _PENDING))
    if len(extra_ids):
        raise fail(extra_ids, f"{RECORD_ID} repeated inside the record")

    # Descriptors: the first 00:00 row of each descriptor in a file. A descriptor-only name at another
    # time, or repeated at 00:00, is skipped; a repeated 00:00 Weight is a Weight measurement (event).
    static_ids = np.array([_NAME_ID[n] for n in _STATIC_ONLY])
    weight_id = _NAME_ID["Weight"]
    is_static = np.isin(name_id, static_ids)
    assign(is_static & (minutes != 0), _SKIP[DESCRIPTOR_AFTER_ADMISSION])
    candidates = np.flatnonzero((status == _PENDING) & (is_static | (name_id == weight_id)) & (minutes == 0))
    first = _first_per_group(candidates, file_of[candidates] * len(_NAMES) + name_id[candidates])
    status[candidates[first]] = _DESCRIPTOR
    status[candidates[~first & is_static[candidates]]] = _SKIP[REPEATED_DESCRIPTOR]
    status[status == _PENDING] = _EVENT

    # Report: every row is read, then either kept (event or descriptor) or skipped for one reason.
    report.rows_read = n_rows
    for reason in SKIP_REASONS:
        rows = np.flatnonzero(status == _SKIP[reason])
        for r in rows[:MAX_EXAMPLES]:
            report.skip(reason, where(int(r)))
        if len(rows) > MAX_EXAMPLES:
            report.skip(reason, None, n=len(rows) - MAX_EXAMPLES)
    is_event = status == _EVENT
    report.rows_kept = int(np.count_nonzero(is_event) + np.count_nonzero(status == _DESCRIPTOR))
    report.extra["files_read"] = len(files)
    report.extra["event_rows"] = int(np.count_nonzero(is_event))
    report.extra["descriptor_rows"] = int(np.count_nonzero(status == _DESCRIPTOR))
    report.extra["weight_rows_at_00:00_kept_as_events"] = int(
        np.count_nonzero(is_event & (name_id == weight_id) & (minutes == 0))
    )
    # Kept rows whose value float32 cannot hold but as 0.0 (1e-50): kept as 0.0, the nearest float32, and
    # counted, so the change is visible.
    zeroed = np.flatnonzero(rounded_to_zero & ((status == _EVENT) | (status == _DESCRIPTOR)))
    report.extra["values_rounded_to_zero"] = {
        "note": "nonzero values below float32's smallest magnitude (~1.4e-45), kept as 0.0",
        "rows": int(len(zeroed)),
        "examples": [where(int(r)) for r in zeroed[:MAX_EXAMPLES]],
    }

    # Descriptor matrix; -1 means "not recorded" -> NaN; an implausible value (outside DESCRIPTOR_RANGES)
    # -> NaN too. Each cell is one of: no row (missing), -1 (not recorded), out of range, or a value.
    desc = np.full((len(files), len(DESCRIPTORS)), np.nan, dtype=np.float32)
    d_rows = np.flatnonzero((status == _DESCRIPTOR) & (name_id != _NAME_ID[RECORD_ID]))
    d_col = np.array([DESCRIPTORS.index(n) if n in DESCRIPTORS else -1 for n in _NAMES])[name_id[d_rows]]
    desc[file_of[d_rows], d_col] = values[d_rows]
    not_recorded = desc == NOT_RECORDED
    report.extra["descriptors_missing"] = {n: int(np.isnan(desc[:, j]).sum()) for j, n in enumerate(DESCRIPTORS)}
    report.extra["descriptors_not_recorded"] = {n: int(not_recorded[:, j].sum()) for j, n in enumerate(DESCRIPTORS)}
    desc[not_recorded] = np.nan
    lo = np.array([DESCRIPTOR_RANGES[n][0] for n in DESCRIPTORS], dtype=np.float32)
    hi = np.array([DESCRIPTOR_RANGES[n][1] for n in DESCRIPTORS], dtype=np.float32)
    whole = np.array([n in WHOLE_NUMBER_DESCRIPTORS for n in DESCRIPTORS])
    recorded = ~np.isnan(desc)
    with np.errstate(invalid="ignore"):
        implausible = recorded & ((desc < lo) | (desc > hi) | (whole & (desc != np.round(desc))))
    report.extra["descriptor_plausible_ranges"] = {n: list(DESCRIPTOR_RANGES[n]) for n in DESCRIPTORS}
    report.extra["descriptors_out_of_range"] = {n: int(implausible[:, j].sum()) for j, n in enumerate(DESCRIPTORS)}
    bad_rows = d_rows[implausible[file_of[d_rows], d_col]]  # in row order, like every example list
    report.extra["descriptors_out_of_range_examples"] = [where(int(r)) for r in bad_rows[:MAX_EXAMPLES]]
    desc[implausible] = np.nan
    age = desc[:, DESCRIPTORS.index("Age")]
    report.extra["age_capped_at_90"] = {
        "note": "the release records every age above 89 as 90",
        "subjects_with_age_90": int(np.count_nonzero(age == AGE_CAP)),
    }

    # Events, sorted by (subject, time, code); files are already in subject order, so one stable sort on
    # a combined key does it (file < 2^30, minutes < 60,000, code < 64: the key fits in int64).
    ev = np.flatnonzero(is_event)
    code_of_name = np.array([_EVENT_CODES.index(n) if n in _EVENT_CODES else -1 for n in _NAMES])
    ev_code = code_of_name[name_id[ev]]
    key = (file_of[ev] * 60_000 + minutes[ev]) * 64 + ev_code
    order = np.argsort(key, kind="stable")
    ev, ev_code = ev[order], ev_code[order]
    subject_ids = np.array([f.record_id for f in files], dtype=np.int64)
    micros = np.datetime64(ADMISSION_EPOCH, "us") + minutes[ev].astype("timedelta64[m]")
    code_col = pa.DictionaryArray.from_arrays(pa.array(ev_code.astype(np.int32)), pa.array(_EVENT_CODES))
    events = pa.Table.from_arrays(
        [
            pa.array(subject_ids[file_of[ev]]),
            pa.array(micros.astype("datetime64[us]"), pa.timestamp("us")),
            code_col.cast(pa.string()),
            pa.array(values[ev], pa.float32()),
        ],
        schema=EVENTS_SCHEMA,
    )
    has_events = np.bincount(file_of[ev], minlength=len(files)) > 0
    report.subjects_without_measurements = [int(i) for i in subject_ids[~has_events]]
    return events, desc
