"""PhysioNet 2012 source: the real release (once per session), the small valid corpus and the bad-input
corpus in tests/bad_inputs/physionet2012 (one case per rule in docs/data_physionet2012.md)."""

from __future__ import annotations

import csv
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from seqsetvae.config import params_from_dict
from seqsetvae.data.canonical import ADMISSION_EPOCH, IngestResult, validate_meds
from seqsetvae.data.physionet2012 import ingest_physionet2012
from seqsetvae.data.variables import DESCRIPTORS
from seqsetvae.errors import DataError

CORPUS = Path(__file__).parent / "bad_inputs" / "physionet2012"
NO_MEASUREMENTS = [  # from the data README
    140501, 140936, 141264, 142731, 142998, 143656, 145611, 147514, 150309, 150649, 155655, 156254,
]  # fmt: skip


def p12_params(params_dict: dict, data_dir: Path | str, sets=("a",), download=False):
    params_dict["data"]["source"] = "physionet2012"
    params_dict["data"]["physionet2012"].update(dir=str(data_dir), sets=list(sets), download=download)
    return params_from_dict(params_dict).data.physionet2012


def ingest_dir(params_dict: dict, data_dir: Path | str, sets=("a",)) -> IngestResult:
    return ingest_physionet2012(p12_params(params_dict, data_dir, sets), Path("/nonexistent-root"))


def subject_events(result: IngestResult, subject_id: int) -> list[tuple[int, str, float]]:
    """(minutes since admission, code, value) of one subject, in table order."""
    sid = result.events["subject_id"].to_numpy()  # events are sorted by subject: slice, not filter
    lo, hi = np.searchsorted(sid, subject_id, "left"), np.searchsorted(sid, subject_id, "right")
    ev = result.events.slice(lo, hi - lo)
    minutes = (ev["time"].to_numpy() - np.datetime64(ADMISSION_EPOCH, "us")) // np.timedelta64(1, "m")
    return list(zip(minutes.tolist(), ev["code"].to_pylist(), ev["numeric_value"].to_pylist(), strict=True))


def descriptors_of(result: IngestResult, subject_id: int) -> dict[str, float]:
    row = result.subjects.filter(pc.equal(result.subjects["subject_id"], subject_id)).to_pylist()
    assert len(row) == 1
    return {k: row[0][k] for k in DESCRIPTORS}


def assert_balanced(result: IngestResult) -> None:
    r = result.report.to_dict()
    assert r["rows_read"] == r["rows_kept"] + r["rows_skipped"]
    assert r["rows_kept"] == r["event_rows"] + r["descriptor_rows"] == result.events.num_rows + r["descriptor_rows"]


# --------------------------------------------------------------------------------------------------
# The real release, ingested once


@pytest.fixture(scope="session")
def p12(p12_dir, base_params_dict) -> IngestResult:
    import copy

    return ingest_dir(copy.deepcopy(base_params_dict), p12_dir, sets=("a", "b", "c"))


@pytest.mark.realdata
def test_real_counts_and_labels(p12):
    r = p12.report.to_dict()
    assert r["subjects"] == p12.subjects.num_rows == p12.labels.num_rows == 12_000
    assert r["positives"] == int(pc.sum(p12.labels["boolean_value"]).as_py()) == 1707
    # Per set, from the tables themselves (group joined to labels), and as reported.
    joined = p12.subjects.select(["subject_id", "group"]).join(p12.labels, "subject_id")
    for group, deaths in {"set-a": 554, "set-b": 568, "set-c": 585}.items():
        in_group = joined.filter(pc.equal(joined["group"], group))
        assert in_group.num_rows == 4000
        assert int(pc.sum(in_group["boolean_value"]).as_py()) == deaths
        assert r["sets"][group] == {"subjects": 4000, "positives": deaths}
    assert pc.all(pc.equal(p12.labels["prediction_time"], pa.scalar(np.datetime64("2000-01-03T00:00", "us")))).as_py()


@pytest.mark.realdata
def test_real_report_accounts_for_every_row(p12, p12_dir):
    # rows_read counted independently: every line of every record file but its header.
    lines = sum(len(f.read_bytes().splitlines()) - 1 for f in p12_dir.glob("set-?/*.txt"))
    r = p12.report.to_dict()
    assert r["rows_read"] == lines
    assert_balanced(p12)
    assert r["skipped_by_reason"] == {"empty_parameter": 2403}
    assert all(re.fullmatch(r"set-c/\d+\.txt:\d+", w) for w in r["skip_examples"]["empty_parameter"])
    assert r["subjects_without_measurements"] == NO_MEASUREMENTS
    ids_with_events = set(pc.unique(p12.events["subject_id"]).to_pylist())
    assert ids_with_events.isdisjoint(NO_MEASUREMENTS) and len(ids_with_events) == 12_000 - 12
    assert set(NO_MEASUREMENTS) <= set(p12.labels["subject_id"].to_pylist())  # kept, with labels


@pytest.mark.realdata
def test_real_tables_are_meds_and_sorted(p12):
    validate_meds(p12.events, p12.labels)
    sid = p12.events["subject_id"].to_numpy()
    t = p12.events["time"].to_numpy()
    encoded = pc.dictionary_encode(p12.events["code"]).combine_chunks()
    rank = np.argsort(np.argsort(encoded.dictionary.to_pylist()))  # dictionary index -> sorted rank
    code = rank[encoded.indices.to_numpy()]
    same_subject = sid[1:] == sid[:-1]
    assert np.all(sid[1:] >= sid[:-1])
    assert np.all(~same_subject | (t[1:] >= t[:-1]))
    same_time = same_subject & (t[1:] == t[:-1])
    assert np.all(~same_time | (code[1:] >= code[:-1]))


@pytest.mark.realdata
def test_real_descriptors(p12, p12_dir):
    for name in DESCRIPTORS:
        col = p12.subjects[name].to_numpy()
        assert not np.any(col == -1), f"{name}: -1 must become NaN"
    r = p12.report.to_dict()
    assert descriptors_of(p12, 132539)["Height"] != descriptors_of(p12, 132539)["Height"]  # -1 in the file
    age = p12.subjects["Age"].to_numpy()
    assert np.nanmax(age) == 90
    assert r["age_capped_at_90"]["subjects_with_age_90"] == int(np.sum(age == 90)) > 0
    # Weight at 00:00 after the descriptor Weight (set-b/149509.txt: 70.8 then 70.4): descriptor, then event.
    assert descriptors_of(p12, 149509)["Weight"] == pytest.approx(70.8)
    assert (0, "Weight", pytest.approx(70.4)) in subject_events(p12, 149509)
    assert r["weight_rows_at_00:00_kept_as_events"] == 2


# The documented plausible descriptor ranges (docs/data_physionet2012.md), written out again on purpose.
PLAUSIBLE = {"Age": (0, 130), "Gender": (0, 1), "Height": (50, 300), "ICUType": (1, 4), "Weight": (1, 500)}


@pytest.mark.realdata
def test_real_descriptor_ranges_flag_only_implausible_heights(p12):
    # The release's descriptors against the documented ranges: only 28 heights are flagged, all far off
    # (17 below 50 cm: 1.8, 5.1, 12.7 ... 17.8; 11 above 300 cm: 365.8 ... 462.3). Nothing else is.
    r = p12.report.to_dict()
    assert r["descriptors_out_of_range"] == {"Age": 0, "Gender": 0, "Height": 28, "ICUType": 0, "Weight": 0}
    assert r["descriptors_not_recorded"] == {"Age": 0, "Gender": 12, "Height": 5726, "ICUType": 0, "Weight": 1001}
    height = p12.subjects["Height"].to_numpy()
    assert np.nanmin(height) >= 50 and np.nanmax(height) <= 300
    assert np.isnan(height).sum() == 5726 + 28
    assert r["values_rounded_to_zero"]["rows"] == 0


def _reference(path: Path) -> tuple[dict[str, float], list[tuple[int, str, float]]]:
    """A plain, row-by-row reading of one clean record file under the documented rules."""
    desc: dict[str, float] = {}
    events = []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    for time, param, value in rows:
        if param in ("", "RecordID"):
            continue
        h, m = time.split(":")
        minutes = int(h) * 60 + int(m)
        if minutes == 0 and param in DESCRIPTORS and param not in desc:
            v = float(np.float32(value))
            lo, hi = PLAUSIBLE[param]
            plausible = lo <= v <= hi and (param not in ("Gender", "ICUType") or v == int(v))
            desc[param] = v if plausible else float("nan")  # -1 (not recorded) is out of every range
            continue
        events.append((minutes, param, float(np.float32(value))))
    events.sort(key=lambda e: (e[0], e[1]))  # stable: repeats at one time keep file order
    return desc, events


@pytest.mark.realdata
def test_real_matches_row_by_row_reference(p12, p12_dir):
    files = sorted(p12_dir.glob("set-?/*.txt"))
    for path in random.Random(0).sample(files, 150):
        desc, events = _reference(path)
        got = descriptors_of(p12, int(path.stem))
        for name in DESCRIPTORS:
            assert got[name] == pytest.approx(desc.get(name, float("nan")), nan_ok=True), (path, name)
        assert subject_events(p12, int(path.stem)) == events, path


# --------------------------------------------------------------------------------------------------
# The small valid corpus: every kept quirk, exactly


def test_valid_corpus_exact(params_dict):
    result = ingest_dir(params_dict, CORPUS / "valid")
    assert_balanced(result)
    r = result.report.to_dict()
    assert r["rows_read"] == 27 and r["rows_skipped"] == 0
    assert r["subjects_without_measurements"] == [1002]
    # Second 00:00 Weight is an event; a repeated parameter at one time is kept as is, in file order.
    assert subject_events(result, 1001) == [
        (0, "Weight", 81.0), (30, "HR", 80.0), (30, "HR", 82.0), (30, "Temp", pytest.approx(36.6)),
        (75, "Weight", 79.5), (47 * 60 + 59, "GCS", 15.0),
    ]  # fmt: skip
    # A measurement inside the 00:00 descriptor block is an event; events sort by time then code.
    assert subject_events(result, 1003) == [(0, "HR", 95.0), (60, "HR", 90.0), (60, "MAP", pytest.approx(75.33))]
    d = descriptors_of(result, 1001)
    assert d["Age"] == 90 and d["Gender"] == 1 and np.isnan(d["Height"]) and d["Weight"] == 80
    assert np.isnan(descriptors_of(result, 1002)["Weight"]) and np.isnan(descriptors_of(result, 1003)["Gender"])
    assert r["descriptors_not_recorded"] == {"Age": 0, "Gender": 1, "Height": 1, "ICUType": 0, "Weight": 1}
    assert r["age_capped_at_90"]["subjects_with_age_90"] == 1
    assert result.labels.to_pydict()["boolean_value"] == [True, False, False]
    assert result.subjects["group"].to_pylist() == ["set-a"] * 3
    validate_meds(result.events, result.labels)


def test_crlf_and_bom_files_read_the_same(params_dict, tmp_path):
    shutil.copytree(CORPUS / "valid", tmp_path / "valid")
    for f in (tmp_path / "valid" / "set-a").glob("*.txt"):
        f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes().replace(b"\n", b"\r\n"))
    a = ingest_dir(params_dict, CORPUS / "valid")
    b = ingest_dir(params_dict, tmp_path / "valid")
    assert a.events.equals(b.events) and a.labels.equals(b.labels)
    assert a.subjects.to_pandas().equals(b.subjects.to_pandas())  # NaN == NaN here


def test_relative_dir_resolves_against_the_params_root(params_dict):
    p = p12_params(params_dict, "physionet2012/valid")
    result = ingest_physionet2012(p, CORPUS.parent)
    assert result.report.subjects == 3


# --------------------------------------------------------------------------------------------------
# Bad inputs: counted skips

SKIP_CASES = {
    # case: (reason, examples as file:line) -- every skipped row is listed (fewer than the report keeps)
    "non_numeric_value": ("non_numeric_value", ["set-a/1001.txt:8", "set-a/1001.txt:10"]),
    "bad_time": ("bad_time", ["set-a/1001.txt:8", "set-a/1001.txt:9", "set-a/1001.txt:10"]),
    "unknown_parameter": ("unknown_parameter", ["set-a/1001.txt:8"]),
    "non_finite_value": ("non_finite_value", ["set-a/1001.txt:8", "set-a/1001.txt:9", "set-a/1001.txt:10"]),
    "empty_parameter": ("empty_parameter", ["set-a/1001.txt:8"]),
    "blank_line": ("blank_line", ["set-a/1001.txt:9"]),
}


@pytest.mark.parametrize("case", sorted(SKIP_CASES))
def test_bad_rows_are_counted_skips(params_dict, case):
    reason, examples = SKIP_CASES[case]
    result = ingest_dir(params_dict, CORPUS / case)
    r = result.report.to_dict()
    assert r["skipped_by_reason"] == {reason: len(examples)}
    assert r["skip_examples"] == {reason: examples}
    assert_balanced(result)
    assert result.events.num_rows >= 1  # the good rows around the bad ones are kept
    assert np.all(np.isfinite(result.events["numeric_value"].to_numpy()))


def test_descriptor_rules(params_dict):
    result = ingest_dir(params_dict, CORPUS / "descriptor_rules")
    r = result.report.to_dict()
    assert r["skipped_by_reason"] == {"repeated_descriptor": 1, "descriptor_after_admission": 1}
    assert r["skip_examples"] == {
        "repeated_descriptor": ["set-a/1001.txt:8"],
        "descriptor_after_admission": ["set-a/1001.txt:9"],
    }
    assert descriptors_of(result, 1001)["Age"] == 54  # the first 00:00 Age wins
    assert subject_events(result, 1001) == [(300, "HR", 80.0)]
    assert_balanced(result)


def test_report_keeps_at_most_five_examples_but_counts_all(params_dict, tmp_path):
    (tmp_path / "set-a").mkdir(parents=True)
    shutil.copy(CORPUS / "valid" / "Outcomes-a.txt", tmp_path)
    for f in ("1002.txt", "1003.txt"):
        shutil.copy(CORPUS / "valid" / "set-a" / f, tmp_path / "set-a")
    text = (CORPUS / "valid" / "set-a" / "1001.txt").read_text() + "".join(f"0{i}:00,Pulse,1\n" for i in range(8))
    (tmp_path / "set-a" / "1001.txt").write_text(text)
    r = ingest_dir(params_dict, tmp_path).report.to_dict()
    assert r["skipped_by_reason"] == {"unknown_parameter": 8}
    assert r["skip_examples"]["unknown_parameter"] == [f"set-a/1001.txt:{n}" for n in range(14, 19)]


# --------------------------------------------------------------------------------------------------
# Bad inputs: errors naming the file and line

ERROR_CASES = {
    # case: (sets, path of the named file relative to the case dir, line or None, message pattern)
    "malformed_row": ("a", "set-a/1001.txt", 8, r"expected 3 fields .*found 2 \(and 1 more such row"),
    "no_header": ("a", "set-a/1001.txt", 1, r"expected the header 'Time,Parameter,Value'"),
    "missing_record_id_row": ("a", "set-a/1001.txt", 2, r"first row must be '00:00,RecordID,<id>'"),
    "repeated_record_id_row": ("a", "set-a/1001.txt", 9, r"RecordID repeated"),
    "file_name_mismatch": ("a", "set-a/1002.txt", 2, r"file name disagrees with its RecordID row \(1001\)"),
    "duplicate_record_across_sets": ("ab", "set-b/1001.txt", 2, r"RecordID 1001 is also in .*set-a/1001\.txt"),
    "record_without_outcome": ("a", "set-a/1003.txt", 2, r"RecordID 1003 has no row in Outcomes-a\.txt"),
    "outcome_without_record": ("a", "Outcomes-a.txt", 3, r"RecordID 1004: no record file in set-a/"),
    "bad_label": ("a", "Outcomes-a.txt", 3, r"In-hospital_death must be 0 or 1, found '2'"),
    # found by tests/test_hostile_input.py (UnicodeDecodeError before): a Latin-1 byte in a row, in the outcomes
    "not_utf8": ("a", "set-a/1001.txt", 8, r"not UTF-8 text \(byte 0xb5\)"),
    "outcomes_not_utf8": ("a", "Outcomes-a.txt", 2, r"not UTF-8 text \(byte 0xe9\)"),
    # found by tests/test_hostile_input.py too (OverflowError before): 2**63 does not fit subject_id (int64)
    "record_id_out_of_range": ("a", "set-a/9223372036854775808.txt", 2, r"RecordID 9223372036854775808 is out of range"),
    "empty_set_dir": ("a", "set-a", None, r"no record files"),
    "missing_set_dir": ("a", "", None, r"missing: set-a/\. .*data\.physionet2012\.download"),
    "missing_outcomes": ("a", "", None, r"missing: Outcomes-a\.txt\. .*data\.physionet2012\.download"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_errors_name_file_and_line(params_dict, case):
    sets, rel, line, pattern = ERROR_CASES[case]
    with pytest.raises(DataError) as info:
        ingest_dir(params_dict, CORPUS / case, sets=tuple(sets))
    err = info.value
    assert Path(err.path) == CORPUS / case / rel if rel else Path(err.path) == CORPUS / case
    assert err.line == line
    where = f"{err.path}:{line}: " if line else f"{err.path}: "
    assert str(err).startswith(where)
    assert re.search(pattern, str(err)), str(err)


def test_empty_record_file_is_a_header_error(params_dict, tmp_path):
    shutil.copytree(CORPUS / "valid", tmp_path / "d")
    (tmp_path / "d" / "set-a" / "1002.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"1002\.txt:1: expected the header .*the file is empty"):
        ingest_dir(params_dict, tmp_path / "d")


@pytest.mark.parametrize("make", ["absent", "empty"])
def test_no_data_without_download_says_how_to_fix(params_dict, tmp_path, make):
    data_dir = tmp_path / "p12"
    if make == "empty":
        data_dir.mkdir()
    with pytest.raises(DataError, match=r"set data\.physionet2012\.download: true") as info:
        ingest_dir(params_dict, data_dir, sets=("a", "b"))
    assert "set-a/, set-b/, Outcomes-a.txt, Outcomes-b.txt" in str(info.value)
    assert not data_dir.exists() or not any(data_dir.iterdir())


# --------------------------------------------------------------------------------------------------
# The two field rules on their own: times and values (every shape, both code paths)


def test_time_rule():
    from seqsetvae.data.physionet2012 import _parse_minutes

    texts = ["00:00", "0:05", "48:00", "100:01", "12:60", "25:99", "ab:cd", "-01:00", "1:2:3", "1:5", "+1:00", ""]
    buf = np.frombuffer("".join(texts).encode(), dtype=np.uint8)
    lengths = np.array([len(t) for t in texts])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    minutes, ok = _parse_minutes(buf, starts, starts + lengths)
    assert ok.tolist() == [True, True, True, True] + [False] * 8
    assert minutes[:4].tolist() == [0, 5, 48 * 60, 100 * 60 + 1]


@pytest.mark.parametrize("with_garbage", [False, True], ids=["fast_path", "slow_path"])
def test_value_rule(with_garbage):
    from seqsetvae.data.physionet2012 import _parse_values

    texts = ["80", "-1", "+5", ".5", "1.", "1e-3", "-1e-50"]
    texts += ["nan", "-Infinity", "1e999", "3.5e38", "nan(abc_1)", "+INF"]  # non-finite
    garbage = ["abc", "", " 5", "1_000", "0x1A", "--1", "nan(", "infx", "\u0661\u0662", "\uff11"]
    garbage = garbage if with_garbage else []
    values, ok, non_finite, rounded_to_zero = _parse_values(pa.array(texts + garbage, pa.large_string()))
    n_good = 7
    assert ok.tolist() == [True] * n_good + [False] * (len(texts) - n_good + len(garbage))
    assert non_finite.tolist() == [False] * n_good + [True] * (len(texts) - n_good) + [False] * len(garbage)
    assert values[:n_good].tolist() == pytest.approx([80, -1, 5, 0.5, 1, 1e-3, 0])
    assert np.flatnonzero(rounded_to_zero).tolist() == [6]  # -1e-50: nonzero, but 0.0 in float32


# --------------------------------------------------------------------------------------------------
# Found by hostile input (issue 15, "Ingest holes"): each test failed before its fix


def test_symlink_loop_is_an_error_naming_the_file(params_dict, tmp_path):
    # OSError [Errno 40] traceback before; now a DataError, like any other unreadable record file.
    shutil.copytree(CORPUS / "valid", tmp_path / "d")
    os.symlink("loop.txt", tmp_path / "d" / "set-a" / "loop.txt")
    with pytest.raises(DataError, match=r"cannot read this record file: .*symbolic links") as info:
        ingest_dir(params_dict, tmp_path / "d")
    assert info.value.path == str(tmp_path / "d" / "set-a" / "loop.txt")


def test_dangling_symlink_is_an_error_naming_the_file(params_dict, tmp_path):
    # Was skipped without a word, as if the record did not exist.
    shutil.copytree(CORPUS / "valid", tmp_path / "d")
    os.symlink("gone.txt", tmp_path / "d" / "set-a" / "1004.txt")
    with pytest.raises(DataError, match=r"cannot read this record file: a broken symbolic link") as info:
        ingest_dir(params_dict, tmp_path / "d")
    assert info.value.path == str(tmp_path / "d" / "set-a" / "1004.txt")


@pytest.mark.parametrize("which", ["record", "outcomes"])
def test_unreadable_file_is_an_error_naming_it(params_dict, tmp_path, monkeypatch, which):
    # (chmod 000 cannot be tested as root: the read itself is made to fail)
    shutil.copytree(CORPUS / "valid", tmp_path / "d")
    victim = tmp_path / "d" / ("set-a/1002.txt" if which == "record" else "Outcomes-a.txt")
    read_bytes = Path.read_bytes

    def failing(self):
        if self == victim:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", failing)
    with pytest.raises(DataError, match=r"cannot read this .*file: Permission denied") as info:
        ingest_dir(params_dict, tmp_path / "d")
    assert info.value.path == str(victim)


RECORD_ID_SPELLINGS = ["1_001", "+1001", " 1001 ", "1001 ", "\u0661\u0660\u0660\u0661", "01001", "-1001", "1001.0"]


@pytest.mark.parametrize("spelling", RECORD_ID_SPELLINGS, ids=ascii)
def test_record_id_in_a_record_file_must_be_plain_ascii_digits(params_dict, tmp_path, spelling):
    shutil.copytree(CORPUS / "valid", tmp_path / "d")
    f = tmp_path / "d" / "set-a" / "1001.txt"
    f.write_text(f.read_text().replace("00:00,RecordID,1001\n", f"00:00,RecordID,{spelling}\n"))
    with pytest.raises(DataError, match=r"RecordID .* is not a plain number \(ASCII digits") as info:
        ingest_dir(params_dict, tmp_path / "d")
    assert (info.value.path, info.value.line) == (str(f), 2)


@pytest.mark.parametrize("spelling", RECORD_ID_SPELLINGS, ids=ascii)
def test_record_id_in_outcomes_must_be_plain_ascii_digits(params_dict, tmp_path, spelling):
    shutil.copytree(CORPUS / "valid", tmp_path / "d")
    f = tmp_path / "d" / "Outcomes-a.txt"
    f.write_text(f.read_text().replace("\n1002,", f"\n{spelling.replace('1001', '1002')},"))
    with pytest.raises(DataError, match=r"RecordID .* is not a plain number \(ASCII digits") as info:
        ingest_dir(params_dict, tmp_path / "d")
    assert (info.value.path, info.value.line) == (str(f), 3)


def test_value_rounded_to_zero_is_counted(params_dict):
    # 1e-50 is below float32's smallest magnitude (about 1.4e-45): it was stored as 0.0 without a count.
    result = ingest_dir(params_dict, CORPUS / "value_underflow")
    r = result.report.to_dict()
    assert r["rows_skipped"] == 0
    assert r["values_rounded_to_zero"]["rows"] == 2
    assert r["values_rounded_to_zero"]["examples"] == ["set-a/1001.txt:8", "set-a/1001.txt:10"]
    ev = subject_events(result, 1001)
    assert ev[0] == (30, "HR", 0.0) and ev[2] == (60, "Temp", 0.0)
    assert ev[3][2] == pytest.approx(1e-40, rel=1e-3)  # a float32 subnormal: kept, not rounded to zero
    assert_balanced(result)


def test_out_of_range_descriptors_become_missing_and_are_counted(params_dict):
    result = ingest_dir(params_dict, CORPUS / "descriptor_out_of_range")
    r = result.report.to_dict()
    assert r["rows_skipped"] == 0  # kept rows (like -1), the value set to missing
    assert r["descriptors_out_of_range"] == {"Age": 1, "Gender": 2, "Height": 2, "ICUType": 2, "Weight": 1}
    assert r["descriptors_out_of_range_examples"] == [f"set-a/1001.txt:{n}" for n in range(3, 8)]
    assert r["descriptor_plausible_ranges"] == {
        "Age": [0, 130], "Gender": [0, 1], "Height": [50, 300], "ICUType": [1, 4], "Weight": [1, 500],
    }  # fmt: skip
    assert r["descriptors_not_recorded"] == dict.fromkeys(DESCRIPTORS, 0)
    assert r["descriptors_missing"] == dict.fromkeys(DESCRIPTORS, 0)
    nan = float("nan")
    d = {sid: descriptors_of(result, sid) for sid in (1001, 1002, 1003)}
    assert d[1001] == pytest.approx(dict.fromkeys(DESCRIPTORS, nan), nan_ok=True)
    assert d[1002] == pytest.approx({"Age": 0, "Gender": nan, "Height": 50, "ICUType": nan, "Weight": 500}, nan_ok=True)
    assert d[1003] == pytest.approx({"Age": 130, "Gender": 1, "Height": nan, "ICUType": 1, "Weight": 1}, nan_ok=True)
    assert (0, "Weight", 70.0) in subject_events(result, 1001)  # the second 00:00 Weight is still an event
    assert_balanced(result)


def test_bad_value_path_has_no_per_row_python(monkeypatch):
    # Issue 15: each non-numeric value was cast alone through pa.scalar, far slower than the valid rows'
    # vectorised path (figures: docs/benchmark.md, "Speed figures behind code choices").
    from seqsetvae.data.physionet2012 import _parse_values

    calls = []
    scalar = pa.scalar
    monkeypatch.setattr(pa, "scalar", lambda *a, **k: calls.append(a) or scalar(*a, **k))
    texts = ["abc", "", "nan(x)", "-Inf", "1e-3", "x1"] * 500
    values, ok, non_finite, _ = _parse_values(pa.array(texts, pa.large_string()))
    assert len(calls) < 10
    assert ok.tolist() == [False, False, False, False, True, False] * 500
    assert non_finite.tolist() == [False, False, True, True, False, False] * 500
