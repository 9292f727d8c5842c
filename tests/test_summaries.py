"""per_variable_summaries: a hand-computed example, window edges, fixed code lists, bad input."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from seqsetvae.data.canonical import EVENTS_SCHEMA
from seqsetvae.data.summaries import STATS, feature_name, per_variable_summaries
from seqsetvae.errors import DataError

T1 = dt.datetime(2000, 1, 1)
T2 = dt.datetime(2000, 1, 2)


def _h(base: dt.datetime, hours: float) -> dt.datetime:
    return base + dt.timedelta(hours=hours)


@pytest.fixture
def tiny() -> tuple[pa.Table, pa.Table]:
    rows = [
        # subject 1: HR three times, Temp twice at one time (tie), one HR after the 48 h window
        (1, _h(T1, 0), "HR", 80.0),
        (1, _h(T1, 1), "HR", 90.0),
        (1, _h(T1, 1), "Temp", 37.0),
        (1, _h(T1, 1), "Temp", 38.0),
        (1, _h(T1, 2), "HR", 100.0),
        (1, _h(T1, 50), "HR", 999.0),
        # subject 2: one HR before admission (outside), one inside; X without a value; Temp at the edge
        (2, _h(T2, -1), "HR", 70.0),
        (2, _h(T2, 24), "HR", 60.0),
        (2, _h(T2, 47), "X", None),
        (2, _h(T2, 48), "Temp", 36.5),
    ]
    events = pa.Table.from_pylist(
        [dict(zip(EVENTS_SCHEMA.names, r)) for r in rows], schema=EVENTS_SCHEMA
    )
    subjects = pa.table(
        {
            "subject_id": pa.array([1, 2, 3], pa.int64()),
            "admission_time": pa.array([T1, T2, T1], pa.timestamp("us")),
            "group": ["a", "a", "b"],
            "Age": pa.array([70.0, 50.0, None], pa.float32()),
        }
    )
    return events, subjects


def _row(df: pd.DataFrame, sid: int, code: str) -> dict[str, float]:
    return {s: df.loc[sid, feature_name(code, s)] for s in STATS}


def _check(got: dict[str, float], want: dict[str, float]) -> None:
    for stat in STATS:
        w, g = want[stat], got[stat]
        if isinstance(w, float) and math.isnan(w):
            assert math.isnan(g), (stat, g)
        else:
            assert g == pytest.approx(w), (stat, g, w)


def test_hand_computed_example(tiny):
    events, subjects = tiny
    df = per_variable_summaries(events, subjects, window_hours=48.0)
    nan = float("nan")
    assert list(df.index) == [1, 2, 3] and df.index.name == "subject_id"
    _check(_row(df, 1, "HR"), dict(last=100, mean=90, min=80, max=100, std=10, count=3, hours_since_last=46))
    # Tie at one time: the later row is "last".
    _check(_row(df, 1, "Temp"), dict(last=38, mean=37.5, min=37, max=38, std=math.sqrt(0.5), count=2,
                                     hours_since_last=47))
    _check(_row(df, 1, "X"), dict(last=nan, mean=nan, min=nan, max=nan, std=nan, count=0, hours_since_last=nan))
    # A single value has no sample std; the event before admission is outside the window.
    _check(_row(df, 2, "HR"), dict(last=60, mean=60, min=60, max=60, std=nan, count=1, hours_since_last=24))
    # An event without a value counts, but gives no value statistics.
    _check(_row(df, 2, "X"), dict(last=nan, mean=nan, min=nan, max=nan, std=nan, count=1, hours_since_last=1))
    # The window end is included.
    _check(_row(df, 2, "Temp"), dict(last=36.5, mean=36.5, min=36.5, max=36.5, std=nan, count=1,
                                     hours_since_last=0))
    for code in ("HR", "Temp", "X"):  # a subject without events: counts 0, everything else NaN
        _check(_row(df, 3, code), dict(last=nan, mean=nan, min=nan, max=nan, std=nan, count=0,
                                       hours_since_last=nan))
    assert df["Age"].tolist()[:2] == [70.0, 50.0] and math.isnan(df.loc[3, "Age"])
    assert df.attrs["events_outside_window"] == 2
    assert df.attrs["events_other_codes"] == 0
    # Column layout: codes sorted, the fixed statistics order, then the descriptors.
    assert list(df.columns) == [feature_name(c, s) for c in ("HR", "Temp", "X") for s in STATS] + ["Age"]


def test_shorter_window_and_pandas_input(tiny):
    events, subjects = tiny
    df = per_variable_summaries(events.to_pandas(), subjects.to_pandas(), window_hours=1.0)
    _check(_row(df, 1, "HR"), dict(last=90, mean=85, min=80, max=90, std=math.sqrt(50), count=2,
                                   hours_since_last=0))
    assert df.loc[2, feature_name("HR", "count")] == 0
    # Same result from arrow and pandas input.
    pd.testing.assert_frame_equal(df, per_variable_summaries(events, subjects, window_hours=1.0))


def test_fixed_code_list(tiny):
    events, subjects = tiny
    df = per_variable_summaries(events, subjects, window_hours=48.0, codes=["HR", "Y"])
    assert [c for c in df.columns if "__" in c] == [feature_name(c, s) for c in ("HR", "Y") for s in STATS]
    assert (df[feature_name("Y", "count")] == 0).all()
    assert df.attrs["events_other_codes"] == 4  # in the window: Temp x2 (subject 1), X and Temp (subject 2)
    assert df.loc[1, feature_name("HR", "last")] == 100


def test_matches_a_plain_loop_on_random_events():
    rng = np.random.default_rng(3)
    n = 400
    sid = rng.integers(1, 6, n)
    hours = rng.uniform(-5, 60, n).round(2)
    code = rng.choice(["a", "b", "c"], n)
    value = rng.normal(size=n).astype(np.float32)
    value[rng.random(n) < 0.1] = np.nan
    adm = np.datetime64("2001-03-04T05:06:00", "us")
    events = pd.DataFrame({
        "subject_id": sid, "time": adm + (hours * 3600e6).astype("timedelta64[us]"), "code": code,
        "numeric_value": value,
    })
    subjects = pd.DataFrame({"subject_id": np.arange(1, 7), "admission_time": adm})
    got = per_variable_summaries(events, subjects, window_hours=48.0)
    for s in range(1, 7):
        for c in ("a", "b", "c"):
            sel = events[(events.subject_id == s) & (events.code == c)].copy()
            sel["h"] = (sel.time - adm) / pd.Timedelta(hours=1)
            sel = sel[(sel.h >= 0) & (sel.h <= 48)].sort_values("h", kind="stable")
            vals = sel.numeric_value.dropna().astype(float)
            want = dict(
                last=vals.iloc[-1] if len(vals) else np.nan, mean=vals.mean(), min=vals.min(), max=vals.max(),
                std=vals.std(), count=len(sel), hours_since_last=48 - sel.h.max() if len(sel) else np.nan,
            )
            _check(_row(got, s, c), want)


def test_bad_input(tiny):
    events, subjects = tiny
    with pytest.raises(DataError, match="not in the subjects table"):
        per_variable_summaries(events, subjects.filter(pa.compute.not_equal(subjects["subject_id"], 2)), 48.0)
    with pytest.raises(DataError, match="lacks column"):
        per_variable_summaries(events.drop_columns(["code"]), subjects, 48.0)
    with pytest.raises(DataError, match="window_hours"):
        per_variable_summaries(events, subjects, 0.0)
    dup = pa.concat_tables([subjects, subjects.slice(0, 1)])
    with pytest.raises(DataError, match="duplicate subject_id"):
        per_variable_summaries(events, dup, 48.0)


# --------------------------------------------------------------------------------------------------
# Per-sample summaries (CSR): the same numbers as per_variable_summaries, several samples per subject,
# empty windows, shard by shard.

from seqsetvae.data.summaries import (  # noqa: E402
    SAMPLES_SCHEMA,
    densify,
    per_sample_summaries,
    samples_from_labels,
)


def _samples(rows) -> pa.Table:
    """rows: (subject_id, prediction_time, boolean_value, window_start or None)."""
    return pa.Table.from_pylist([dict(zip(SAMPLES_SCHEMA.names, r)) for r in rows], schema=SAMPLES_SCHEMA)


def _today_samples(subjects: pa.Table, window_hours: float = 48.0) -> pa.Table:
    """Today's sources: one sample per subject, window_start = admission, prediction_time = admission + 48 h."""
    adm = subjects.column("admission_time").to_pylist()
    labels = pa.table({"subject_id": subjects.column("subject_id"),
                       "prediction_time": pa.array([a + dt.timedelta(hours=window_hours) for a in adm],
                                                   pa.timestamp("us")),
                       "boolean_value": pa.array([False] * len(adm))})
    return samples_from_labels(subjects, labels)


def _dense_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got.index.get_level_values("subject_id").tolist() == want.index.tolist()
    np.testing.assert_array_equal(got.to_numpy(), want.to_numpy())  # bit for bit, NaN where NaN


def test_csr_equals_dense_summaries_on_the_hand_built_cohort(tiny):
    events, subjects = tiny
    # A zero value, a descriptor 0 and an event at the window end: stored zeros, not missing values.
    extra = pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, r)) for r in [
        (4, _h(T1, 3), "HR", 0.0), (4, _h(T1, 48), "X", 0.0), (4, None, "STATIC", None)]], schema=EVENTS_SCHEMA)
    events = pa.concat_tables([events, extra])
    subjects = pa.concat_tables([subjects, pa.table({
        "subject_id": pa.array([4], pa.int64()), "admission_time": pa.array([T1], pa.timestamp("us")),
        "group": ["b"], "Age": pa.array([0.0], pa.float32())})])
    want = per_variable_summaries(events, subjects, window_hours=48.0)
    got = per_sample_summaries([events], _today_samples(subjects), subjects, 48.0)
    _dense_equal(got.to_frame(), want)
    assert got.attrs["events_outside_window"] == want.attrs["events_outside_window"] == 3
    m = got.matrix
    assert m.format == "csr" and m.nnz < m.shape[0] * m.shape[1]
    # Subject 3 has no event: only its Age would be stored, and Age is missing, so its row is empty.
    assert m.indptr[3] - m.indptr[2] == 0
    # Stored zeros: subject 4's HR min / last 0 and X hours_since_last 0, Age 0.
    row4 = dict(zip(got.columns, densify(m[3], got.zero_fill)[0]))
    assert row4[feature_name("HR", "min")] == 0 and row4[feature_name("X", "hours_since_last")] == 0
    assert row4["Age"] == 0 and math.isnan(row4[feature_name("X", "std")])
    assert row4[feature_name("Temp", "count")] == 0  # absent count: 0, not missing


def test_csr_equals_dense_on_random_events_read_in_shards():
    rng = np.random.default_rng(7)
    n = 3000
    sid = np.sort(rng.integers(1, 60, n))
    hours = rng.uniform(-10, 60, n).round(3)
    value = rng.normal(size=n).astype(np.float32)
    value[rng.random(n) < 0.1] = np.nan
    value[rng.random(n) < 0.05] = 0.0
    adm = np.datetime64("2001-03-04T05:06:00", "us")
    events = pa.Table.from_pandas(pd.DataFrame({
        "subject_id": sid, "time": adm + (hours * 3600e6).astype("timedelta64[us]"),
        "code": rng.choice([f"c{i}" for i in range(15)], n), "numeric_value": value,
    }), preserve_index=False).cast(EVENTS_SCHEMA)
    subjects = pa.table({"subject_id": pa.array(np.arange(1, 63), pa.int64()),
                         "admission_time": pa.array(np.full(62, adm), pa.timestamp("us")),
                         "Age": pa.array(rng.normal(size=62).astype(np.float32))})
    want = per_variable_summaries(events, subjects, window_hours=48.0)
    cuts = [0, int(np.searchsorted(sid, 20)), int(np.searchsorted(sid, 41)), n]  # three shards by subject
    shards = (events.slice(a, b - a) for a, b in zip(cuts[:-1], cuts[1:]))
    got = per_sample_summaries(shards, _today_samples(subjects), subjects, 48.0)
    _dense_equal(got.to_frame(), want)
    assert got.attrs["events_outside_window"] == want.attrs["events_outside_window"]


def test_several_samples_per_subject_hand_computed(tiny):
    events, subjects = tiny
    static = pa.Table.from_pylist([dict(zip(EVENTS_SCHEMA.names, (1, None, "STATIC", 1.0)))], schema=EVENTS_SCHEMA)
    events = pa.concat_tables([static, events])  # an event without a time: in no window
    samples = _samples([
        (1, _h(T1, 2), False, None),           # a: no window_start: [T1 - 46 h, T1 + 2 h]
        (1, _h(T1, 50), True, _h(T1, 1)),      # b: start before pt - 48 h: [T1 + 2 h, T1 + 50 h]
        (1, _h(T1, 51), True, _h(T1, 49)),     # c: start after pt - 48 h: [T1 + 49 h, T1 + 51 h]
        (1, _h(T1, 60), False, _h(T1, 55)),    # d: no event in [T1 + 55 h, T1 + 60 h]: empty
        (2, _h(T2, 48), False, T2),            # today's window
        (3, _h(T1, 48), False, T1),            # a subject without events
    ])
    got = per_sample_summaries([events], samples, subjects, 48.0)
    assert got.columns == [feature_name(c, s) for c in ("HR", "Temp", "X") for s in STATS] + ["Age"]
    df = got.to_frame()
    assert df.index.get_level_values("subject_id").tolist() == [1, 1, 1, 1, 2, 3]
    rows = [df.iloc[k] for k in range(6)]
    nan = float("nan")
    missing = dict(last=nan, mean=nan, min=nan, max=nan, std=nan, count=0, hours_since_last=nan)

    def row(k, code):
        return {s: rows[k][feature_name(code, s)] for s in STATS}

    _check(row(0, "HR"), dict(last=100, mean=90, min=80, max=100, std=10, count=3, hours_since_last=0))
    _check(row(0, "Temp"), dict(last=38, mean=37.5, min=37, max=38, std=math.sqrt(0.5), count=2,
                                hours_since_last=1))
    _check(row(1, "HR"), dict(last=999, mean=549.5, min=100, max=999, std=899 / math.sqrt(2), count=2,
                              hours_since_last=0))
    _check(row(1, "Temp"), missing)
    _check(row(2, "HR"), dict(last=999, mean=999, min=999, max=999, std=nan, count=1, hours_since_last=1))
    for code in ("HR", "Temp", "X"):
        _check(row(3, code), missing)  # the empty window
        _check(row(5, code), missing)
    assert rows[3]["Age"] == 70  # descriptors come from the subject, window or not
    _check(row(4, "HR"), dict(last=60, mean=60, min=60, max=60, std=nan, count=1, hours_since_last=24))
    _check(row(4, "Temp"), dict(last=36.5, mean=36.5, min=36.5, max=36.5, std=nan, count=1, hours_since_last=0))
    # Outside every window: the static event and subject 2's HR before admission.
    assert got.attrs["events_outside_window"] == 2
    # The empty-window sample stores only its descriptor.
    assert got.matrix.indptr[4] - got.matrix.indptr[3] == 1


def test_samples_contract_is_checked(tiny):
    events, subjects = tiny
    unsorted = _samples([(2, _h(T2, 48), False, T2), (1, _h(T1, 48), False, T1)])
    with pytest.raises(DataError, match="row 2: samples must be sorted by"):
        per_sample_summaries([events], unsorted, subjects, 48.0)
    duplicate = _samples([(1, _h(T1, 48), False, T1), (1, _h(T1, 48), True, None)])
    with pytest.raises(DataError, match="each pair once"):
        per_sample_summaries([events], duplicate, subjects, 48.0)
    no_time = _samples([(1, None, False, T1)])
    with pytest.raises(DataError, match="1 sample.s. without prediction_time"):
        per_sample_summaries([events], no_time, subjects, 48.0)
    samples = _samples([(1, _h(T1, 48), False, T1), (2, _h(T2, 48), False, T2)])
    sid = events.column("subject_id").to_numpy()
    first, second = events.filter(pa.array(sid == 1)), events.filter(pa.array(sid == 2))
    with pytest.raises(DataError, match="subject order"):
        per_sample_summaries([second, first], samples, subjects, 48.0)
    with pytest.raises(DataError, match="not in the subjects table"):
        per_sample_summaries([events], _samples([(9, _h(T1, 48), False, T1)]), subjects, 48.0)


def test_meds_descriptors_string_categories_and_age_at_prediction(tiny):
    """A MEDS cohort's subjects: GENDER from a `GENDER//F` static row (a string), birth_time from MEDS_BIRTH.
    The string becomes its category number among the column's sorted categories (one numbering for all
    samples), and the age at each sample's prediction time is a descriptor in years."""
    events, subjects = tiny
    birth = [dt.datetime(1980, 1, 1), None, dt.datetime(2000, 1, 1)]
    subjects = subjects.append_column("birth_time", pa.array(birth, pa.timestamp("us")))
    subjects = subjects.append_column("GENDER", pa.array(["M", None, "F"], pa.string()))
    samples = _samples([
        (1, dt.datetime(2020, 1, 1), False, None),   # 40 years of 365.25 days after birth, to the day
        (1, dt.datetime(2020, 7, 2), True, None),    # 40.5 years
        (2, _h(T2, 48), False, None),                # no birth row: no age
        (3, dt.datetime(2010, 1, 1), False, None),
    ])
    got = per_sample_summaries([events], samples, subjects, 48.0)
    assert got.columns[-3:] == ["Age", "GENDER", "age_at_prediction"]
    df = got.to_frame()
    assert df["GENDER"].tolist()[0] == 1.0 and df["GENDER"].tolist()[3] == 0.0  # F -> 0, M -> 1
    assert math.isnan(df["GENDER"].tolist()[2])
    ages = df["age_at_prediction"].tolist()
    assert ages[0] == pytest.approx(40.0, abs=1e-9)
    assert ages[1] == pytest.approx(40.0 + 183 / 365.25, abs=1e-9)  # 2020-01-01 -> 2020-07-02: 183 days
    assert math.isnan(ages[2])
    assert ages[3] == pytest.approx(3653 / 365.25, abs=1e-9)
