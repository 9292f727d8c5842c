"""Samples (issue 28): a MEDS cohort as ETLs write it (a birth row first, static rows, history before the stay,
several prediction times per subject) goes through ingest -> split -> preprocess with every sample's input
being exactly its subject's events in [max(window_start, prediction_time - window_hours), prediction_time].

The expected packed arrays below are computed by hand from the rows, not by the code under test.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.bad_inputs.meds import builders as b

from seqsetvae.config import MedsParams, params_from_dict
from seqsetvae.data.canonical import SAMPLES_SCHEMA, samples_of
from seqsetvae.data.meds_source import ingest_meds
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import SPLITS_SCHEMA, make_splits
from seqsetvae.errors import DataError

US = 1_000_000
DAY = 24.0

# Subject 1: born 60 years before T0, history a year before the stay, a stay from T0 with two prediction times
# (24 h and 48 h); subject 2: one prediction at 48 h, a value after it; subject 3: a first_24h-style sample whose
# window starts at T0 + 10 h (window_start column). Hours are after T0 (builders.T0).
ROWS = [
    (1, -60 * 365 * DAY, "MEDS_BIRTH", None),
    (1, None, "GENDER//F", None),
    (1, None, "Height", 170.0),
    (1, -365 * DAY, "HR", 60.0),  # history before the stay: in no window
    (1, 0.0, "HR", 80.0),
    (1, 0.0, "Temp", 37.0),
    (1, 12.0, "HR", 90.0),
    (1, 24.0, "HR", 100.0),  # at the first prediction time: in both windows (both ends included)
    (1, 30.0, "Temp", 38.0),
    (1, 48.0, "HR", 110.0),
    (1, 50.0, "HR", 120.0),  # after the last prediction time: dropped at ingest
    (2, -30 * 365 * DAY, "MEDS_BIRTH", None),
    (2, None, "GENDER//M", None),
    (2, 5.0, "HR", 70.0),
    (2, 47.0, "Temp", 36.5),
    (3, 2.0, "HR", 75.0),  # before its window start (T0 + 10 h): in no window
    (3, 11.0, "HR", 76.0),
    (3, 20.0, "HR", 77.0),
]
SAMPLES = [(1, 24.0, False, None), (1, 48.0, True, None), (2, 48.0, False, None), (3, 24.0, True, 10.0)]


def _write_cohort(root, samples=SAMPLES, rows=ROWS) -> MedsParams:
    (root / "data").mkdir(parents=True)
    pq.write_table(b.data_table(rows), root / "data" / "0.parquet")
    labels = pa.table({
        "subject_id": pa.array([s for s, *_ in samples], pa.int64()),
        "prediction_time": pa.array([b.at(h) for _, h, *_ in samples], pa.timestamp("us")),
        "boolean_value": pa.array([y for _, _, y, _ in samples], pa.bool_()),
        "start": pa.array([b.at(w) for *_, w in samples], pa.timestamp("us")),
    })  # fmt: skip
    pq.write_table(labels, root / "labels.parquet")
    return MedsParams(dir=str(root), labels=str(root / "labels.parquet"), window_start_column="start")


def test_meds_ingest_keeps_every_sample_the_birth_and_the_categorical_descriptors(tmp_path):
    result = ingest_meds(_write_cohort(tmp_path / "meds"), tmp_path)
    assert result.labels.schema.equals(SAMPLES_SCHEMA)
    assert [(r["subject_id"], r["prediction_time"], r["window_start"]) for r in result.labels.to_pylist()] == [
        (1, b.at(24.0), None), (1, b.at(48.0), None), (2, b.at(48.0), None), (3, b.at(24.0), b.at(10.0))]
    report = result.report.to_dict()
    assert report["subjects"] == 3 and report["samples"] == 4 and report["positives"] == 2
    assert report["skipped_by_reason"] == {"after_prediction_time": 1}  # subject 1's 50 h row, past its LAST time
    assert report["birth_rows"] == 2
    subjects = result.subjects.to_pydict()
    assert subjects["birth_time"] == [b.at(-60 * 365 * DAY), b.at(-30 * 365 * DAY), None]
    assert subjects["GENDER"] == ["F", "M", None]  # GENDER//F -> categorical descriptor GENDER = "F"
    assert subjects["Height"][0] == 170.0 and np.isnan(subjects["Height"][1])
    assert "MEDS_BIRTH" not in result.events.column("code").to_pylist()  # birth is a descriptor, not an event
    assert result.events.num_rows == len([r for r in ROWS if r[1] is not None and r[2] != "MEDS_BIRTH"]) - 1


def _splits(ids, fold=0, split="train"):
    return pa.table({"subject_id": pa.array(ids, pa.int64()), "fold": pa.array([fold] * len(ids), pa.int32()),
                     "split": pa.array([split] * len(ids), pa.string())}, schema=SPLITS_SCHEMA)  # fmt: skip


def _preprocess(tmp_path, params_dict, **pre):
    tmp_path = tmp_path / str(pre)  # a folder per call
    result = ingest_meds(_write_cohort(tmp_path / "meds"), tmp_path)
    params_dict["preprocess"].update({"log_transform": "none", "normalisation": "standard", **pre})
    params = params_from_dict(params_dict).preprocess
    out = tmp_path / "processed"
    report = preprocess(result.events, result.subjects, result.labels, _splits([1, 2, 3]), params, out)
    return PackedSplit.load(out / "fold_0" / "train"), report, out


def test_each_sample_packs_exactly_the_events_of_its_window(tmp_path, params_dict):
    # window_hours 24: subject 1's samples see [0, 24] and [24, 48]; subject 2's [24, 48]; subject 3's [10, 24]
    # (its window start, later than 24 - 24 = 0). The history row and subject 3's 2 h row are in no window.
    train, report, out = _preprocess(tmp_path, params_dict, window_hours=24.0, max_outside_window_share=0.5)
    assert train.subject_ids.tolist() == [1, 1, 2, 3]
    assert train.labels.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert train.prediction_times.tolist() == [int(b.at(h).replace(tzinfo=dt.timezone.utc).timestamp()) * US
                                               for h in (24.0, 48.0, 48.0, 24.0)]  # fmt: skip
    # set times are hours since each sample's window start
    per_sample = [train.set_times[train.patient_offsets[i]:train.patient_offsets[i + 1]].tolist() for i in range(4)]
    assert per_sample == [[0.0, 12.0, 24.0], [0.0, 6.0, 24.0], [23.0], [1.0, 10.0]]
    tokens = __import__("json").loads((out / "fold_0" / "vocab.json").read_text())["tokens"]
    names = [tokens[c] for c in train.codes.tolist()]
    assert names == ["HR", "Temp", "HR", "HR",  # sample (1, 24 h): 0 h HR + Temp, 12 h HR, 24 h HR
                     "HR", "Temp", "HR",  # sample (1, 48 h): 24 h HR (again), 30 h Temp, 48 h HR
                     "Temp",  # sample (2, 48 h): 47 h Temp (its 5 h HR is before its window)
                     "HR", "HR"]  # sample (3, 24 h): 11 h and 20 h HR
    # statistics count each event once, however many windows hold it: HR values in some window of subjects 1-3
    hr = np.array([80.0, 90.0, 100.0, 110.0, 76.0, 77.0])
    stats = __import__("json").loads((out / "fold_0" / "norm_stats.json").read_text())["codes"]["HR"]
    assert stats["n_values"] == hr.size and stats["center"] == pytest.approx(hr.mean())
    events = report["events"]["outside_window"]
    assert (events["before_window"], events["after_prediction_time"]) == (3, 0)  # history, 2's 5 h, 3's 2 h
    split = report["folds"]["0"]["splits"]["train"]
    assert (split["samples_assigned"], split["samples"], split["subjects_assigned"]) == (4, 4, 3)
    assert (split["subject_events_in_windows"], split["subject_events_outside_windows"]) == (9, 3)


def test_most_events_outside_the_windows_stops_with_the_share_and_the_cause(tmp_path, params_dict):
    with pytest.raises(DataError, match=r"3 of 12 events \(25.0%\).*3 before the first window.*"
                                        r"max_outside_window_share: 1"):  # fmt: skip
        _preprocess(tmp_path, params_dict, window_hours=24.0, max_outside_window_share=0.2)
    assert not any(tmp_path.glob("*/processed"))
    _preprocess(tmp_path, params_dict, window_hours=24.0, max_outside_window_share=0.25)  # accepted knowingly


def test_prediction_times_at_birth_are_refused_at_ingest_not_trained(tmp_path):
    """The failure this issue measured: windows in the first days of life keep almost nothing."""
    samples = [(1, -60 * 365 * DAY + 48.0, False, None), (2, -30 * 365 * DAY + 48.0, True, None)]
    rows = [r for r in ROWS if r[0] in (1, 2)]
    p = _write_cohort(tmp_path / "meds", samples, rows)
    with pytest.raises(DataError, match=r"10 of 10 timed rows .*\(100.0%\) come after the subject's last prediction"):
        ingest_meds(p, tmp_path, max_after_share=0.5)
    assert ingest_meds(p, tmp_path, max_after_share=1.0).report.skipped["after_prediction_time"] == 10


def test_history_before_the_stay_stops_preprocess_with_the_cause(tmp_path, params_dict):
    """Most of a subject's events years before its samples' windows: refused, naming the cause."""
    history = [(1, -365 * DAY + h, "HR", 60.0) for h in range(20)]
    result = ingest_meds(_write_cohort(tmp_path / "meds", rows=ROWS + history), tmp_path)
    params_dict["preprocess"].update(log_transform="none", window_hours=24.0)
    params = params_from_dict(params_dict).preprocess
    with pytest.raises(DataError, match=r"23 of 32 events .* 23 before the first window of their subject "
                                        r"\(history before the stay"):  # fmt: skip
        preprocess(result.events, result.subjects, result.labels, _splits([1, 2, 3]), params, tmp_path / "out")


def test_splits_are_by_subject_so_no_subject_has_samples_in_two_splits(tmp_path, params_dict):
    rng = np.random.default_rng(0)
    n = 300
    sid = np.repeat(np.arange(1, n + 1), rng.integers(1, 6, n))  # 1-5 samples per subject
    pred = np.concatenate([np.arange((sid == s).sum()) for s in range(1, n + 1)]).astype(np.int64) * 3_600 * US
    labels = pa.table({
        "subject_id": pa.array(sid, pa.int64()),
        "prediction_time": pa.array(pred, pa.timestamp("us")),
        "boolean_value": pa.array(rng.random(sid.size) < 0.2, pa.bool_()),
        "window_start": pa.nulls(sid.size, pa.timestamp("us")),
    }, schema=SAMPLES_SCHEMA)  # fmt: skip
    subjects = pa.table({"subject_id": pa.array(np.arange(1, n + 1), pa.int64()),
                         "admission_time": pa.nulls(n, pa.timestamp("us")),
                         "group": pa.array(["g"] * n, pa.string())})  # fmt: skip
    params_dict["split"]["folds"] = [0, 1, 2]
    table, summary = make_splits(subjects, labels, params_from_dict(params_dict).split)
    assert summary.labelled == n
    for fold in (0, 1, 2):
        rows = table.filter(pa.compute.equal(table.column("fold"), fold))
        assert rows.num_rows == n  # one row per subject, never per sample
        assert len(set(rows.column("subject_id").to_pylist())) == n
    # every sample lands in its subject's split: the split table is keyed by subject alone
    smp = samples_of(labels)
    assert np.unique(smp.subject_id).size == n


def test_samples_out_of_order_or_twice_are_refused():
    labels = pa.table({"subject_id": pa.array([2, 1], pa.int64()),
                       "prediction_time": pa.array([b.at(0.0)] * 2, pa.timestamp("us")),
                       "boolean_value": [True, False]})  # fmt: skip
    with pytest.raises(DataError, match="sorted by"):
        samples_of(labels)
