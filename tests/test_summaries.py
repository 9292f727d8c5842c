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
