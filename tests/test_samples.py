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
# Two more subjects for preprocess, one in val and one in test (a split packs at least one sample).
OTHER_ROWS = [(4, 40.0, "HR", 71.0), (5, 40.0, "HR", 72.0)]
OTHER_SAMPLES = [(4, 48.0, True, None), (5, 48.0, False, None)]


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


def _splits(train, val=(4,), test=(5,), fold=0):
    ids = [*train, *val, *test]
    names = ["train"] * len(train) + ["val"] * len(val) + ["test"] * len(test)
    return pa.table({"subject_id": pa.array(ids, pa.int64()), "fold": pa.array([fold] * len(ids), pa.int32()),
                     "split": pa.array(names, pa.string())}, schema=SPLITS_SCHEMA).sort_by("subject_id")  # fmt: skip


def _preprocess(tmp_path, params_dict, **pre):
    tmp_path = tmp_path / str(pre)  # a folder per call
    result = ingest_meds(_write_cohort(tmp_path / "meds", SAMPLES + OTHER_SAMPLES, ROWS + OTHER_ROWS), tmp_path)
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
    result = ingest_meds(_write_cohort(tmp_path / "meds", SAMPLES + OTHER_SAMPLES, ROWS + OTHER_ROWS + history), tmp_path)
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


# ----------------------------------------------------------------------------------------------------------
# PhysioNet 2012 and the synthetic demo map onto samples with the same numbers as before samples existed: one
# sample per stay, predicted at admission + 48 h, its window from admission. The sha256 of every packed array,
# the vocabulary, the statistics and the split table, as the code before samples (commit 58467da) wrote them
# with the repository's params.yaml (the demo; P12: data.source physionet2012, the same split and fold).
# Re-pinned once (2026-12-08) for the values and statistics of log-transformed variables: log1p now goes through
# the C library (stats.log1p_portable) because numpy's own took Intel SVML on AVX-512 hosts, so these bytes
# differed from one CPU to another (the last bit of a value; metrics unchanged); every other file as before.

SYNTHETIC_DEMO_SHA256 = {
    "fold_0/norm_stats.json": "0373f22ef1289d163604a02178013cf3e8c68ff9961745752ed713b70748184b",
    "fold_0/test/codes.npy": "1df043635bb98de057ab123a42dddb50bfa417decd7384b966582cec96735c1b",
    "fold_0/test/labels.npy": "4f1396dd19cf25b5430f6724bd9e28eafa3293393b32150d463ab61b4b46139c",
    "fold_0/test/patient_offsets.npy": "96394ab4a34f5d450ffba50b3a777dbf64d847309be05c73d5be514bab11ba02",
    "fold_0/test/set_offsets.npy": "19404fda7c08a5520d0ed84c535253f4e66053d2524e0bcd9bbe9cb3d3aa2664",
    "fold_0/test/set_times.npy": "799c4463f1beba831bb51f92b5598b8e80d71c24c0e0c7c18a75f99775a382f8",
    "fold_0/test/subject_ids.npy": "eced6f503c06e788b71f8e1eea4f3e0fa4ce305d058f7afd1e0249321e8acd48",
    "fold_0/test/values.npy": "71f035d627babb95f69711e8661b6bd4cd33d89afd4f405fb2cefc679f13ba1b",
    "fold_0/train/codes.npy": "b89fa8b7000cde1e73a14a9e1664dc06f07cc576cf63700e35ccc72a090b54e7",
    "fold_0/train/labels.npy": "cf5fc8ce864e786a404187ad59eda1da27f8b1a1eb420ebce2dcba171f757b28",
    "fold_0/train/patient_offsets.npy": "f2849a6187b021286f4dc73c9a36f1de86c23349053c827598cd2860e7549a09",
    "fold_0/train/set_offsets.npy": "2be7f512a981703a33b490ab2a94ce19f838cc6f5b7e34e8ef8d59985ad3148a",
    "fold_0/train/set_times.npy": "ec073387dd74719b6add10f977a6da29d5c5f98fbd02e8ff2b1920484e25abca",
    "fold_0/train/subject_ids.npy": "e38994413a675ac58ce671cc63ae8bddc6fb8920dee87300acf917d0d8ee4b5a",
    "fold_0/train/values.npy": "ac9debed1fc9fdafde0a52cbfec0e765342a52629f6a9d14fe912417c75b0daf",
    "fold_0/val/codes.npy": "62adaec57e14c23311f1e5a613cbd04bc440c30e8e4c994d49110f461a66956a",
    "fold_0/val/labels.npy": "fdb2a5f38629e7a71a693bf82985e5fa56fb016a07f2afc71d9440ef1e30d5e4",
    "fold_0/val/patient_offsets.npy": "efae287e59ea01b7b35221a5974d4480cae570e3a60ff5573b5f4c775dacf2f0",
    "fold_0/val/set_offsets.npy": "ce6513724731e0c5e01f6780a378977dee8a153bf842bd62cf8353df33817cd3",
    "fold_0/val/set_times.npy": "2f42e75455df53825ed0e77b94619330012f7e75b79faca82358ffebf8c3feba",
    "fold_0/val/subject_ids.npy": "aeca54f54f00fd3f21a6ae6c8657056a836b1844fd546b8c850400dbd0b27caa",
    "fold_0/val/values.npy": "4debf494360fce0f42591ff2ef866d5a42874f220a73218af50afd8e9684b7f7",
    "fold_0/vocab.json": "059c655166f8e599b72279325d21ea5a48a37b1035083c4595d23b6c6d9b20b6",
    "splits.parquet": "25f572d3546fb31bd9f1fde47e85c3b66839f6b5c44bdcf19775e5052a81159c",
}

PHYSIONET2012_FOLD0_SHA256 = {
    "fold_0/norm_stats.json": "450ecf7ee45bec291f62bb597df13ccfe700bfc3ad03dec453439d2ce94361d3",
    "fold_0/test/codes.npy": "e8eab53f2d02769f284703e302feaebc08d32f1d2f422739e3e31db31d5f804d",
    "fold_0/test/labels.npy": "87fe8911326517250f91fead1ce874364bfb7513e4dd31953e32644c61f7cebb",
    "fold_0/test/patient_offsets.npy": "2550485251fc60b27e6a78c7199d5abe6ee6c97fa5751a7171dcfdebb4ef3cd1",
    "fold_0/test/set_offsets.npy": "0ca4c0865af6bd92276df55b5c7170d31366487f1fd09f87e89aaab5653f833c",
    "fold_0/test/set_times.npy": "1e92cd00bd5b50f50f29a3029e00aa9bbf8e9bae96558cb2484ee03d15af0ef6",
    "fold_0/test/subject_ids.npy": "6244485d8dbe83b7748494558cc2bc92ab33b02b2f740865c1fc2ef1dab9398b",
    "fold_0/test/values.npy": "d37593edc4963bfbc825a6be695169cbf100335b22b2d277193634ac84f13ae5",
    "fold_0/train/codes.npy": "3a932ae53a5734115a86a1a33f85ca3f98a01a660799e6a12a518ca87b90e439",
    "fold_0/train/labels.npy": "b951f94b80b809b685a83b4c55ac875f72999407017f73cee5da8531debccef2",
    "fold_0/train/patient_offsets.npy": "af218cb5c67de56de93e56f0e234f1f636f3ec8dff28de5422d3ddcf7b2eaf3c",
    "fold_0/train/set_offsets.npy": "e6d0a648448d31a46a572d3f8302cc5e7b87da451aff065d4446d4b3bfc06d39",
    "fold_0/train/set_times.npy": "1a98a8fe85d7f6ad6cf9416b9e2d9072f9dc0711c15789a0aa3b070111c53cb2",
    "fold_0/train/subject_ids.npy": "1f2c37513c6f72663a3eb9913290a8bbe0f4959d3453fe23b05886d9e7e8d2bb",
    "fold_0/train/values.npy": "658ec15529472f52b9ca1ffa9127ac5282ef0c0cc1a3b65d1dc02de1387e1f5e",
    "fold_0/val/codes.npy": "f2f99666a8bab3984ec99feb210bdb97e8a57f5dba52d30f6f38efabe6b47297",
    "fold_0/val/labels.npy": "e7e04e9767e2ca1b3568dd77f45316e8093afa27fca531f2d01258b5f7debeac",
    "fold_0/val/patient_offsets.npy": "5b5db0f0839771c1e7cef6ff3f9ff844c29adf1dd42f0bd6ce6c12a67bf661fb",
    "fold_0/val/set_offsets.npy": "d0aa959121b4d82c784b6b6ae4982ae7af5d32ad02281c3cc5718effdaf4c9a7",
    "fold_0/val/set_times.npy": "a26f75543f5aa1c8291aec7c1ce732efb356e06a33dc30e75d8df8c8cf0daac6",
    "fold_0/val/subject_ids.npy": "be883af8850ed43e5d0f4677370c1165dc79e87e235f26426fc2a2690bd85ef9",
    "fold_0/val/values.npy": "d6dfbb497a2c199ac0b5f971ff7dea5a0040e9653a5cf63a18b438feffcf09a1",
    "fold_0/vocab.json": "5dc8d6e8cad03006537d4c4615f3719db71a85a02d10ad8fe2fe32811ed8ff82",
    "splits.parquet": "7cb0a9cf5dd918d0e0c71aa63d364733e47e83fffd3a66b00f22e83956bdd653",
}


def _sha256_of_pipeline(tmp_path, raw: dict) -> dict[str, str]:
    import hashlib

    import argparse

    from seqsetvae.data import preprocess as prep
    from seqsetvae.io import write_parquet
    from seqsetvae.stages import ingest as ingest_stage

    params = params_from_dict(raw, root=tmp_path)
    # the ingest shard jobs and the merge (dvc.yaml: ingest_shard@k, ingest), in this process
    ingest_stage.run(params, argparse.Namespace(step="all", out=tmp_path / "ingested"))
    from seqsetvae.data.canonical import read_subjects_labels

    subjects, labels = read_subjects_labels(tmp_path / "ingested")
    table, _ = make_splits(subjects, labels, params.split, root=params.root)
    write_parquet(tmp_path / "splits.parquet", table)
    # The preprocess stages' jobs, each through its files (dvc.yaml: preprocess_scan@k, preprocess_fit@f,
    # preprocess_pack@k, preprocess), over the data.shards of the params.
    n, work = len(params.data.shards), tmp_path / "work"
    folds = sorted(set(table.column("fold").to_pylist()))
    for k in range(n):
        prep.run_scan(tmp_path / "ingested", table, params.preprocess, n, k, work / "scan" / f"shard_{k}")
    for fold in folds:
        prep.run_fit(work / "scan", n, params.preprocess, fold, work / "fit" / f"fold_{fold}")
    for k in range(n):
        prep.run_pack(tmp_path / "ingested", table, params.preprocess, n, k, work / "fit", work / "pack" / f"shard_{k}")
    prep.run_assemble(work / "fit", work / "pack", table, params.preprocess, n, tmp_path / "processed")
    files = {p.relative_to(tmp_path / "processed").as_posix(): p for p in (tmp_path / "processed").rglob("*")
             if p.is_file() and p.name not in ("meta.json", "preprocess_report.json", "prediction_times.npy",
                                               ".seqsetvae-output")}
    files["splits.parquet"] = tmp_path / "splits.parquet"
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}


def test_the_demo_cohort_packs_the_same_bytes_as_before_samples(tmp_path, base_params_dict):
    assert _sha256_of_pipeline(tmp_path, base_params_dict) == SYNTHETIC_DEMO_SHA256


@pytest.mark.slow
@pytest.mark.realdata
def test_physionet2012_fold0_packs_the_same_bytes_as_before_samples(tmp_path, p12_dir, base_params_dict):
    import copy

    raw = copy.deepcopy(base_params_dict)
    raw["data"]["source"] = "physionet2012"
    raw["data"]["shards"] = [0, 1, 2, 3, 4, 5]  # as the recorded runs: 6 shards of 2,000 stays
    raw["data"]["physionet2012"].update(dir=str(p12_dir), download=False)
    assert _sha256_of_pipeline(tmp_path, raw) == PHYSIONET2012_FOLD0_SHA256
