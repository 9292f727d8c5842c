"""Several tasks from one pretraining (issue 29 D): label rules, packing with the main task's statistics, the
finetune's refusal of other statistics, the per-task aggregate and report, and the stages under both runners."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from seqsetvae.config import ParamsError, TaskDefinition, params_from_dict
from seqsetvae.data.canonical import ADMISSION_EPOCH, SAMPLES_SCHEMA
from seqsetvae.data.tasks import split_counts, task_samples
from seqsetvae.errors import DataError

ADM = np.datetime64(ADMISSION_EPOCH, "us")
H = np.timedelta64(1, "h")

MORTALITY_24H = TaskDefinition(label="in_hospital_death", prediction_hours=24.0, length_of_stay_days=None,
                               in_unit_at_prediction=False)
LOS_3D = TaskDefinition(label="length_of_stay_over", prediction_hours=24.0, length_of_stay_days=3.0,
                        in_unit_at_prediction=True)


def _cohort(died: list[bool]) -> tuple[pa.Table, pa.Table]:
    """(subjects, main labels) as PhysioNet 2012 ingest writes them: one stay each, predicted at 48 h."""
    n = len(died)
    ids = np.arange(1, n + 1, dtype=np.int64) * 10
    adm = np.full(n, ADM)
    subjects = pa.table({"subject_id": ids, "admission_time": pa.array(adm, pa.timestamp("us")),
                         "group": ["set-a"] * n})
    labels = pa.Table.from_arrays([pa.array(ids), pa.array(adm + 48 * H, pa.timestamp("us")), pa.array(died),
                                   pa.array(adm, pa.timestamp("us"))], schema=SAMPLES_SCHEMA)
    return subjects, labels


def _outcomes(ids, los, surv, died) -> pa.Table:
    return pa.table({"subject_id": pa.array(ids, pa.int64()), "length_of_stay_days": pa.array(los, pa.int64()),
                     "survival_days": pa.array(surv, pa.int64()), "in_hospital_death": pa.array(died)})


# Hand-made Outcomes rows: (Length_of_stay, Survival, In-hospital_death) -> what los_3d makes of the stay.
ROWS = [
    (5, -1, False, "kept", True),   # 5 days > 3: positive
    (3, -1, False, "kept", False),  # 3 days is not > 3
    (2, 2, True, "kept", False),    # died on day 2: still there at 24 h
    (-1, -1, False, "length_of_stay_unknown", None),
    (1, -1, False, "left_unit_by_prediction_time", None),  # 1 day: gone by 24 h, or cannot tell
    (4, 1, True, "died_by_prediction_time", None),
    (4, 0, True, "died_by_prediction_time", None),
    (-1, 0, True, "length_of_stay_unknown", None),  # the first reason that applies
    (6, -23, False, "survival_invalid", None),
    (10, 30, False, "kept", True),  # died after discharge (out of hospital): a death time, beyond 24 h
]


def test_los_3d_labels_and_exclusions_from_outcomes_rows():
    subjects, labels = _cohort([r[2] for r in ROWS])
    ids = subjects.column("subject_id").to_numpy()
    out = _outcomes(ids, [r[0] for r in ROWS], [r[1] for r in ROWS], [r[2] for r in ROWS])
    table, report = task_samples("los_3d", LOS_3D, subjects, labels, out)
    kept = [i for i, r in enumerate(ROWS) if r[3] == "kept"]
    assert table.schema == SAMPLES_SCHEMA
    assert table.column("subject_id").to_pylist() == ids[kept].tolist()
    assert table.column("boolean_value").to_pylist() == [ROWS[i][4] for i in kept]
    pred = table.column("prediction_time").cast(pa.int64()).to_numpy()
    start = table.column("window_start").cast(pa.int64()).to_numpy()
    assert (pred - start == 24 * 3_600_000_000).all()
    assert report["stays"] == len(ROWS) and report["samples"] == len(kept) and report["positives"] == 2
    expected = {r: sum(row[3] == r for row in ROWS) for r in
                ("length_of_stay_unknown", "left_unit_by_prediction_time", "died_by_prediction_time", "survival_invalid")}
    assert report["excluded_by_reason"] == expected
    assert report["excluded"] == len(ROWS) - len(kept) == sum(expected.values())
    assert report["excluded_examples"]["died_by_prediction_time"] == ids[[5, 6]].tolist()


def test_length_of_stay_rule_without_the_in_unit_filter_still_needs_a_length():
    subjects, labels = _cohort([False, False, True])
    ids = subjects.column("subject_id").to_numpy()
    d = TaskDefinition(label="length_of_stay_over", prediction_hours=24.0, length_of_stay_days=3.0,
                       in_unit_at_prediction=False)
    table, report = task_samples("los", d, subjects, labels, _outcomes(ids, [1, -1, 7], [-1, -1, 0], [False, False, True]))
    assert table.column("subject_id").to_pylist() == [ids[0], ids[2]]  # day 1 and a death at day 0 kept
    assert table.column("boolean_value").to_pylist() == [False, True]
    assert report["excluded_by_reason"]["length_of_stay_unknown"] == 1 and report["excluded"] == 1


def test_mortality_24h_keeps_every_stay_and_the_main_label():
    died = [True, False, False, True]
    subjects, labels = _cohort(died)
    table, report = task_samples("mortality_24h", MORTALITY_24H, subjects, labels, None)
    assert table.column("boolean_value").to_pylist() == died
    assert table.column("subject_id").to_pylist() == labels.column("subject_id").to_pylist()
    pred = table.column("prediction_time").cast(pa.int64()).to_numpy()
    assert (pred == (np.full(4, ADM) + 24 * H).astype(np.int64)).all()
    assert report["excluded"] == 0 and report["positives"] == 2


def test_a_rule_that_needs_outcomes_refuses_a_source_without_them():
    subjects, labels = _cohort([True, False])
    with pytest.raises(DataError, match="needs length of stay and death times"):
        task_samples("los_3d", LOS_3D, subjects, labels, None)
    with pytest.raises(DataError, match="has no Outcomes row"):
        task_samples("los_3d", LOS_3D, subjects, labels, _outcomes([10], [4], [-1], [True]))


def test_split_counts_per_fold_and_split():
    subjects, labels = _cohort([True, False, False, True])
    splits = pa.table({"subject_id": pa.array([10, 20, 30, 40], pa.int64()), "fold": pa.array([0, 0, 0, 0], pa.int64()),
                       "split": ["train", "train", "val", "test"]})
    c = split_counts(labels.slice(0, 3), splits)  # subject 40 is not a sample of this task
    assert c["0"]["train"] == {"samples": 2, "positives": 1, "positive_rate": 0.5}
    assert c["0"]["val"]["samples"] == 1 and c["0"]["test"] == {"samples": 0, "positives": 0, "positive_rate": None}
    assert c["0"]["not_assigned"] == 0


def test_read_outcome_times_reads_every_column_and_names_bad_lines(tmp_path):
    from seqsetvae.data.physionet2012 import read_outcome_times

    (tmp_path / "Outcomes-a.txt").write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n20,6,1,5,-1,0\n10,16,8,2,1,1\n")
    t = read_outcome_times(tmp_path, ["a"])
    assert t.to_pydict() == {"subject_id": [10, 20], "length_of_stay_days": [2, 5], "survival_days": [1, -1],
                             "in_hospital_death": [True, False]}
    (tmp_path / "Outcomes-a.txt").write_text(
        "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n20,6,1,5.5,-1,0\n")
    with pytest.raises(DataError, match=r"Outcomes-a\.txt:2: Length_of_stay must be a whole number"):
        read_outcome_times(tmp_path, ["a"])


# --------------------------------------------------------------------------------------------------
# Params


def test_default_runs_no_extra_task(params_dict):
    p = params_from_dict(params_dict)
    assert p.tasks.run == [] and p.tasks.main == "mortality_48h"
    assert set(p.tasks.definitions) >= {"mortality_24h", "los_3d"}


@pytest.mark.parametrize("change, match", [
    ({"run": ["nope"]}, r"'tasks\.run': \['nope'\] not defined"),
    ({"run": ["mortality_48h"], "definitions": {"mortality_48h": {
        "label": "in_hospital_death", "prediction_hours": 48.0, "length_of_stay_days": None,
        "in_unit_at_prediction": False}}}, r"'tasks\.run': 'mortality_48h' is 'tasks\.main'"),
    ({"run": ["los_3d"]}, r"'tasks\.run': task 'los_3d' needs length of stay and death times.*'synthetic'"),
    ({"run": ["mortality_24h"], "definitions": {"mortality_24h": {"length_of_stay_days": 2.0}}},
     r"'tasks\.definitions\.mortality_24h\.length_of_stay_days'"),
])
def test_bad_task_params_name_the_key(params_dict, change, match):
    from seqsetvae.config import deep_merge

    params_dict["tasks"] = deep_merge(params_dict["tasks"], change)
    with pytest.raises(ParamsError, match=match):
        params_from_dict(params_dict)


# --------------------------------------------------------------------------------------------------
# Packing a task with the main task's statistics, and the finetune's check


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def packed(tmp_path_factory, base_params_dict):
    """A random cohort preprocessed for the main task (48 h), and for mortality_24h three ways: with the main
    task's statistics, refit on its own windows, and the main task again with its own statistics."""
    import copy
    import dataclasses

    from seqsetvae.data.fixed_stats import FixedStats
    from seqsetvae.data.preprocess import preprocess
    from tests.test_preprocess import random_cohort, split_table

    tmp = tmp_path_factory.mktemp("packed")
    events, subjects, labels = random_cohort(60, seed=3, n_codes=7)
    ids = subjects.column("subject_id").to_pylist()
    splits = split_table({s: "train" if s <= 40 else "val" if s <= 50 else "test" for s in ids})
    params = params_from_dict(copy.deepcopy(base_params_dict)).preprocess
    task_params = dataclasses.replace(params, max_outside_window_share=1.0)  # as the stage runs a task
    task, _ = task_samples("mortality_24h", MORTALITY_24H, subjects, labels, None)
    out = {name: tmp / name for name in ("main", "main_fixed", "task_fixed", "task_refit")}
    preprocess(events, subjects, labels, splits, params, out["main"])
    from seqsetvae.data.preprocess import preprocess_shards

    preprocess_shards([lambda columns=None: events], subjects, labels, splits, params, out["main_fixed"],
                      fixed_stats=FixedStats(out["main"]))
    preprocess_shards([lambda columns=None: events], subjects, task, splits, task_params, out["task_fixed"],
                      fixed_stats=FixedStats(out["main"]))
    preprocess(events, subjects, task, splits, task_params, out["task_refit"])
    return out, params


def test_the_main_task_packed_with_its_own_statistics_is_unchanged(packed):
    """Loading the statistics instead of fitting them gives the same bytes: the JSON round trip is exact."""
    out, _ = packed
    main, fixed = _files(out["main"] / "fold_0"), _files(out["main_fixed"] / "fold_0")
    assert main == fixed
    report = json.loads((out["main_fixed"] / "preprocess_report.json").read_text())
    assert report["statistics_from"] == str(out["main"])


def test_a_task_is_packed_with_the_main_tasks_vocabulary_and_statistics(packed):
    from seqsetvae.data.packed import PackedSplit

    out, _ = packed
    for name in ("vocab.json", "norm_stats.json"):
        assert (out["task_fixed"] / "fold_0" / name).read_bytes() == (out["main"] / "fold_0" / name).read_bytes()
    # Refit on the task's own (24 h) windows, the statistics differ: what the main task's copy prevents.
    assert (out["task_refit"] / "fold_0" / "norm_stats.json").read_bytes() != \
        (out["main"] / "fold_0" / "norm_stats.json").read_bytes()
    # Each 24 h sample is its stay's first 24 h of the 48 h sample, token for token and value for value.
    checked = 0
    for split in ("train", "val", "test"):
        a = PackedSplit.load(out["main"] / "fold_0" / split, mmap=False)
        b = PackedSplit.load(out["task_fixed"] / "fold_0" / split, mmap=False)
        pos = {int(s): i for i, s in enumerate(a.subject_ids)}
        for j, sid in enumerate(b.subject_ids.tolist()):
            i = pos[sid]
            sa = slice(int(a.patient_offsets[i]), int(a.patient_offsets[i + 1]))
            sb = slice(int(b.patient_offsets[j]), int(b.patient_offsets[j + 1]))
            n = sb.stop - sb.start
            assert n >= 1 and np.all(b.set_times[sb] <= 24.0)
            np.testing.assert_array_equal(b.set_times[sb], a.set_times[sa][:n])
            ea = slice(int(a.set_offsets[sa.start]), int(a.set_offsets[sa.start + n]))
            eb = slice(int(b.set_offsets[sb.start]), int(b.set_offsets[sb.stop]))
            np.testing.assert_array_equal(b.codes[eb], a.codes[ea])
            np.testing.assert_array_equal(b.values[eb], a.values[ea])
            checked += 1
    assert checked > 40


def test_the_finetune_check_refuses_a_task_packed_with_other_statistics(packed):
    from seqsetvae.data.fixed_stats import check_same_statistics

    out, _ = packed
    check_same_statistics(out["task_fixed"] / "fold_0", out["main"] / "fold_0")  # the same: accepted
    with pytest.raises(DataError, match=r"task_refit/fold_0/vocab\.json.*differs from .*main/fold_0/vocab\.json"
                                        r".*--stats"):
        check_same_statistics(out["task_refit"] / "fold_0", out["main"] / "fold_0")


def test_fixed_statistics_made_with_other_preprocess_params_are_refused(packed):
    import dataclasses

    from seqsetvae.data.fixed_stats import FixedStats

    out, params = packed
    with pytest.raises(DataError, match=r"norm_stats\.json.*preprocess\.clip is 5\.0 in params"):
        FixedStats(out["main"]).check([0], dataclasses.replace(params, clip=5.0))
    with pytest.raises(DataError, match=r"fold_1/vocab\.json: missing"):
        FixedStats(out["main"]).check([0, 1], params)
