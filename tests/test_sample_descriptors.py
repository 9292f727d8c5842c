"""Descriptors per sample (issue 28 item 2): with preprocess.descriptors admission_set, every sample of an
ETL-shaped MEDS cohort (a birth row, static rows, history before the stay, two prediction times of one
subject) opens with one set at its own window start holding its descriptor events: the numeric static codes,
the text ones as value-less tokens (GENDER//F -> static/GENDER//F) and its age at its prediction time.

The cohort is tests/test_samples.py's; every expected token, set time and age below is worked out by hand from
its rows, not by the code under test.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from seqsetvae.config import params_from_dict
from seqsetvae.data import preprocess as prep
from seqsetvae.data.canonical import Samples, subject_batches, write_ingested
from seqsetvae.data.descriptors import SubjectDescriptors
from seqsetvae.data.meds_source import ingest_meds
from seqsetvae.data.packed import PackedSplit
from seqsetvae.errors import DataError
from tests.test_samples import OTHER_ROWS, OTHER_SAMPLES, ROWS, SAMPLES, _preprocess, _splits, _write_cohort

WINDOW = {"window_hours": 24.0, "max_outside_window_share": 0.5}
# Subject 1 is born 60 * 365 days before T0, subject 2 30 * 365 days; subject 3 has no birth row. A sample's
# age is in years of 365.25 days from birth to its prediction time (T0 + 24 h or T0 + 48 h).
AGE_1_24H = (60 * 365 + 1) / 365.25
AGE_1_48H = (60 * 365 + 2) / 365.25
AGE_2_48H = (30 * 365 + 2) / 365.25


def _samples(train: PackedSplit, tokens: list[str]) -> list[list[tuple[float, list[str]]]]:
    """Per sample: its sets as (hours since its window start, token names)."""
    out = []
    for p in range(train.n_patients):
        sets = []
        for s in range(train.patient_offsets[p], train.patient_offsets[p + 1]):
            lo, hi = train.set_offsets[s], train.set_offsets[s + 1]
            sets.append((float(train.set_times[s]), [tokens[c] for c in train.codes[lo:hi].tolist()]))
        out.append(sets)
    return out


def _tokens(out) -> list[str]:
    return json.loads((out / "fold_0" / "vocab.json").read_text())["tokens"]


def test_each_sample_opens_with_its_descriptors_at_its_window_start(tmp_path, params_dict):
    # window_hours 24: windows [0, 24] and [24, 48] of subject 1, [24, 48] of subject 2, [10, 24] of subject 3.
    train, report, out = _preprocess(tmp_path, params_dict, descriptors="admission_set", min_code_count=1, **WINDOW)
    tokens = _tokens(out)
    # Codes sort by code point: data codes (upper case) before static/..., and G < H < a after the prefix.
    assert _samples(train, tokens) == [
        # (1, 24 h): its first set (0 h) lies at its window start: the descriptors join it
        [(0.0, ["HR", "Temp", "static/GENDER//F", "static/Height", "static/age_at_prediction"]),
         (12.0, ["HR"]), (24.0, ["HR"])],
        # (1, 48 h): window from 24 h, where its first set (HR 100) lies: joined there, with the age at 48 h
        [(0.0, ["HR", "static/GENDER//F", "static/Height", "static/age_at_prediction"]), (6.0, ["Temp"]),
         (24.0, ["HR"])],
        # (2, 48 h): no event at its window start (24 h): a set of their own at hour 0; Height is NaN in
        # subjects.parquet (no static row): a value-less token, as a NaN numeric descriptor always was
        [(0.0, ["static/GENDER//M", "static/Height", "static/age_at_prediction"]), (23.0, ["Temp"])],
        # (3, 24 h, window start 10 h): no birth row, no GENDER row: no age, no gender token
        [(0.0, ["static/Height"]), (1.0, ["HR"]), (10.0, ["HR"])],
    ]  # fmt: skip
    # The history row (a year before T0) is still in no window: the descriptors did not widen anything.
    assert report["events"]["outside_window"]["before_window"] == 3

    # Train statistics: each sample's descriptor events once per sample, train samples only (subjects 1-3).
    stats = json.loads((out / "fold_0" / "norm_stats.json").read_text())["codes"]
    ages = np.array([AGE_1_24H, AGE_1_48H, AGE_2_48H])
    age = stats["static/age_at_prediction"]
    assert age["n_values"] == 3 and age["center"] == pytest.approx(ages.mean()) and age["scale"] == pytest.approx(ages.std())
    assert stats["static/Height"]["n_values"] == 2  # 170 of subject 1's two samples; NaN ones carry no value
    assert stats["HR"]["n_values"] == 6  # the data codes' statistics are those without descriptors
    counts = json.loads((out / "fold_0" / "vocab.json").read_text())["train_counts"]
    assert (counts["static/GENDER//F"], counts["static/GENDER//M"], counts["static/Height"]) == (2, 1, 4)
    # The normalised ages in the packed values: (age - mean) / sd of the train samples' ages.
    age_token = tokens.index("static/age_at_prediction")
    packed_ages = train.values[train.codes == age_token]
    np.testing.assert_allclose(packed_ages, (ages - ages.mean()) / ages.std(), rtol=1e-5)
    text = np.isin(train.codes, [tokens.index("static/GENDER//F"), tokens.index("static/GENDER//M")])
    assert text.sum() == 3 and np.all(train.values[text] == 0.0)  # value-less

    # Counted: every sample (val and test ones too: subjects 4 and 5, no birth, no gender, NaN Height).
    assert report["descriptor_events"]["events"] == 3 + 3 + 3 + 1 + 1 + 1
    assert report["descriptor_samples"] == {
        "with_descriptor_events": 6,
        "without_descriptor_events": {"nothing_recorded": 0, "window_starts_after_prediction_time": 0},
        "non_finite_values_made_value_less": 0,
        "age_at_prediction": {"samples_with_age": 3, "samples_without_birth_time": 3},
        "numeric_not_recorded_value_less": 4,  # Height of subjects 2, 3, 4 and 5
        "joined_the_first_set": 2,
        "in_a_set_of_their_own": 4,
    }


def test_descriptors_go_through_the_vocabulary_rule_of_every_code(tmp_path, params_dict):
    # min_code_count 2: static/GENDER//M is seen once in train (subject 2's one sample) -> <unk>; GENDER//F
    # twice (subject 1's two samples) -> a token of its own.
    train, _, out = _preprocess(tmp_path, params_dict, descriptors="admission_set", min_code_count=2, **WINDOW)
    tokens = _tokens(out)
    assert "static/GENDER//F" in tokens and "static/GENDER//M" not in tokens
    assert _samples(train, tokens)[2][0] == (0.0, ["<unk>", "static/Height", "static/age_at_prediction"])


def test_a_sample_with_nothing_recorded_gets_no_descriptor_set_and_is_counted(tmp_path, params_dict):
    # Without the Height row no subject has a numeric column: subjects 3, 4 and 5 have no birth and no gender.
    rows = [r for r in ROWS if r[2] != "Height"]
    result = ingest_meds(_write_cohort(tmp_path / "meds", SAMPLES + OTHER_SAMPLES, rows + OTHER_ROWS), tmp_path)
    params_dict["preprocess"].update({"descriptors": "admission_set", **WINDOW})
    out = tmp_path / "processed"
    report = prep.preprocess(result.events, result.subjects, result.labels, _splits([1, 2, 3]),
                             params_from_dict(params_dict).preprocess, out)  # fmt: skip
    train = PackedSplit.load(out / "fold_0" / "train")
    assert _samples(train, _tokens(out))[3] == [(1.0, ["HR"]), (10.0, ["HR"])]  # subject 3: as without descriptors
    assert report["descriptor_samples"]["without_descriptor_events"]["nothing_recorded"] == 3
    assert report["descriptor_samples"]["age_at_prediction"] == {"samples_with_age": 3, "samples_without_birth_time": 3}


def test_causal_and_packing_invariants_hold_with_descriptors(tmp_path, params_dict):
    train, _, _ = _preprocess(tmp_path, params_dict, descriptors="admission_set", min_code_count=1, **WINDOW)
    window_hours = [24.0, 24.0, 24.0, 14.0]  # subject 3's window starts at 10 h, its prediction is at 24 h
    for p, hours in enumerate(window_hours):
        times = train.set_times[train.patient_offsets[p]:train.patient_offsets[p + 1]]
        assert times[0] == 0.0 and np.all(np.diff(times) > 0) and times[-1] <= hours  # in its window, in order
    sizes = np.diff(train.set_offsets)
    assert np.all(sizes > 0) and train.set_offsets[-1] == train.codes.size == train.values.size
    assert train.patient_offsets[-1] == train.set_times.size == sizes.size


def test_the_shard_jobs_write_what_one_process_writes(tmp_path, params_dict):
    """scan / fit / pack / assemble over 3 shards of the MEDS cohort (a shard per subject or two) give the
    bytes of the whole cohort in one process, descriptors included."""
    result = ingest_meds(_write_cohort(tmp_path / "meds", SAMPLES + OTHER_SAMPLES, ROWS + OTHER_ROWS), tmp_path)
    params_dict["preprocess"].update({"descriptors": "admission_set", **WINDOW})
    params = params_from_dict(params_dict).preprocess
    splits = _splits([1, 2, 3])
    write_ingested(tmp_path / "ingested", subject_batches(result, 3))
    work, n = tmp_path / "work", 3
    for k in range(n):
        prep.run_scan(tmp_path / "ingested", splits, params, n, k, work / "scan" / f"shard_{k}")
    prep.run_fit(work / "scan", n, params, 0, work / "fit" / "fold_0")
    for k in range(n):
        prep.run_pack(tmp_path / "ingested", splits, params, n, k, work / "fit", work / "pack" / f"shard_{k}")
    prep.run_assemble(work / "fit", work / "pack", splits, params, n, tmp_path / "jobs")
    prep.preprocess(result.events, result.subjects, result.labels, splits, params, tmp_path / "one")

    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    jobs, one = files(tmp_path / "jobs"), files(tmp_path / "one")
    assert json.loads(jobs.pop("preprocess_report.json")) == json.loads(one.pop("preprocess_report.json"))
    assert jobs == one
    assert 12 == json.loads((tmp_path / "one" / "preprocess_report.json").read_text())["descriptor_events"]["events"]


def _subjects(**columns) -> pa.Table:
    return pa.table({"subject_id": pa.array([1, 2], pa.int64()), "group": pa.array(["g", "g"]), **columns})


def test_a_window_that_starts_after_its_prediction_time_gets_no_descriptors():
    # An event at such a window's start would come after the prediction time: none, and counted.
    d = SubjectDescriptors.of(_subjects(Age=pa.array([70.0, 50.0], pa.float32())))
    samples = Samples(np.array([1, 2]), np.array([100, 100]), np.array([0, 1], np.int8), np.array([50, 150]))
    got = d.for_samples(samples, lower_us=samples.window_start_us)
    assert got.sample.tolist() == [0] and got.code.tolist() == ["static/Age"] and got.value.tolist() == [70.0]
    assert got.report["without_descriptor_events"] == {"nothing_recorded": 0, "window_starts_after_prediction_time": 1}


def test_descriptor_columns_that_would_share_a_token_or_cannot_be_one_are_refused():
    clash = _subjects(**{"GENDER//F": pa.array([1.0, None], pa.float32()), "GENDER": pa.array([None, "F"])})
    with pytest.raises(DataError, match="static/GENDER//F.*numeric descriptor column and of a text"):
        SubjectDescriptors.of(clash)
    with pytest.raises(DataError, match="'age_at_prediction' clashes with the age computed from birth_time"):
        SubjectDescriptors.of(_subjects(age_at_prediction=pa.array([1.0, 2.0]),
                                        birth_time=pa.array([0, 0], pa.timestamp("us"))))  # fmt: skip
    with pytest.raises(DataError, match="column 'Flag' has type bool: a descriptor column is numeric or text"):
        SubjectDescriptors.of(_subjects(Flag=pa.array([True, False])))
