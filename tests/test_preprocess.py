"""preprocess: window, vocabulary, train-only statistics, log transform, duplicates, dropped subjects."""

from __future__ import annotations

import copy
import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pytest

from seqsetvae.config import params_from_dict
from seqsetvae.data.batch import UNK_CODE
from seqsetvae.data.canonical import ADMISSION_EPOCH, EVENTS_SCHEMA, SAMPLES_SCHEMA
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data import preprocess as prep
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import SPLITS_SCHEMA, read_splits

# ----------------------------------------------------------------------------------------------------
# Building small canonical tables by hand (imported by the split and datamodule tests too)


def make_tables(
    rows: list[tuple[int, float, str, float | None]],
    subject_ids: list[int],
    labels: dict[int, bool],
    groups: dict[int, str] | None = None,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(events, subjects, labels) from rows (subject, hours since admission, code, value or None)."""
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2]))  # canonical order (stable: keeps repeats' order)
    times = [ADMISSION_EPOCH + dt.timedelta(hours=h) for _, h, _, _ in rows]
    events = pa.table(
        {
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array(times, pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
        },
        schema=EVENTS_SCHEMA,
    )
    groups = groups or {}
    subjects = pa.table(
        {
            "subject_id": pa.array(subject_ids, pa.int64()),
            "admission_time": pa.array([ADMISSION_EPOCH] * len(subject_ids), pa.timestamp("us")),
            "group": pa.array([groups.get(s, "set-b") for s in subject_ids], pa.string()),
        }
    )
    lab_ids = sorted(labels)
    label_table = pa.table(
        {
            "subject_id": pa.array(lab_ids, pa.int64()),
            "prediction_time": pa.array([ADMISSION_EPOCH + dt.timedelta(hours=48)] * len(lab_ids), pa.timestamp("us")),
            "boolean_value": pa.array([labels[s] for s in lab_ids], pa.bool_()),
            "window_start": pa.array([ADMISSION_EPOCH] * len(lab_ids), pa.timestamp("us")),  # from admission
        },
        schema=SAMPLES_SCHEMA,
    )
    return events, subjects, label_table


def random_cohort(n_subjects: int, seed: int, n_codes: int = 6, max_sets: int = 40):
    """A cohort with varied stay lengths (1..max_sets sets), set sizes and labels; every subject labelled."""
    rng = np.random.default_rng(seed)
    n_sets = rng.integers(1, max_sets + 1, n_subjects)
    rows: list[tuple[int, float, str, float | None]] = []
    for sid, k in zip(range(1, n_subjects + 1), n_sets.tolist()):
        hours = np.sort(rng.choice(np.arange(0, 48 * 4), size=k, replace=False)) / 4.0
        for h in hours.tolist():
            codes = rng.choice(n_codes, size=rng.integers(1, n_codes + 1), replace=False)
            rows += [(sid, h, f"V{c}", float(rng.normal(10 * c, 1 + c))) for c in sorted(codes.tolist())]
    ids = list(range(1, n_subjects + 1))
    labels = {s: bool(rng.random() < 0.3) for s in ids}
    return make_tables(rows, ids, labels)


def split_table(assign: dict[int, str], fold: int = 0) -> pa.Table:
    ids = sorted(assign)
    return pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "fold": pa.array([fold] * len(ids), pa.int32()),
            "split": pa.array([assign[s] for s in ids], pa.string()),
        },
        schema=SPLITS_SCHEMA,
    )


# ----------------------------------------------------------------------------------------------------


def _params(params_dict, **pre):
    params_dict["preprocess"].update(pre)
    return params_from_dict(params_dict).preprocess


def _run(tmp_path, tables, assign, params, name="out"):
    events, subjects, labels = tables
    out = tmp_path / name
    report = preprocess(events, subjects, labels, split_table(assign), params, out)
    return out, report


def _stats(out):
    return json.loads((out / "fold_0" / "norm_stats.json").read_text())


# a small hand-made cohort: subjects 1-4 train, 5 val, 6 test
BASE_ROWS = [
    (1, 0.0, "HR", 80.0), (1, 0.0, "Temp", 37.0), (1, 1.5, "HR", 90.0),
    (2, 0.5, "HR", 70.0), (2, 2.0, "HR", 100.0), (2, 2.0, "Temp", 38.0),
    (3, 1.0, "HR", 60.0), (3, 1.0, "MechVent", None),
    (4, 3.0, "HR", 120.0), (4, 3.0, "Temp", 36.0),
    (5, 1.0, "HR", 500.0), (5, 1.0, "Temp", 20.0),
    (6, 1.0, "HR", 1.0), (6, 2.0, "Rare", 3.0),
]
BASE_ASSIGN = {1: "train", 2: "train", 3: "train", 4: "train", 5: "val", 6: "test"}
BASE_LABELS = {s: s % 2 == 0 for s in BASE_ASSIGN}


def _base(rows=None, subject_ids=None):
    ids = subject_ids or sorted(BASE_ASSIGN)
    return make_tables(rows or BASE_ROWS, ids, {s: BASE_LABELS.get(s, False) for s in ids})


def test_statistics_come_from_train_only(tmp_path, params_dict):
    params = _params(params_dict, log_transform="none")
    out, _ = _run(tmp_path, _base(), BASE_ASSIGN, params, "a")
    hr_train = [80.0, 90.0, 70.0, 100.0, 60.0, 120.0]
    s = _stats(out)["codes"]["HR"]
    q25, q50, q75 = np.percentile(hr_train, [25, 50, 75])
    assert s["center"] == pytest.approx(q50)
    assert s["scale"] == pytest.approx((q75 - q25) / 1.349)
    assert s["n_values"] == len(hr_train)

    # changing val/test values leaves the statistics unchanged ...
    moved = [(sid, h, c, (v * 7 + 3 if v is not None else v) if sid in (5, 6) else v) for sid, h, c, v in BASE_ROWS]
    out_b, _ = _run(tmp_path, _base(moved), BASE_ASSIGN, params, "b")
    assert _stats(out_b) == _stats(out)
    # ... changing train values changes them
    moved = [(sid, h, c, v + 5 if (sid == 1 and c == "HR") else v) for sid, h, c, v in BASE_ROWS]
    out_c, _ = _run(tmp_path, _base(moved), BASE_ASSIGN, params, "c")
    assert _stats(out_c)["codes"]["HR"]["center"] != s["center"]


def test_standard_normalisation_and_values(tmp_path, params_dict):
    params = _params(params_dict, log_transform="none", normalisation="standard", clip=3.0)
    out, _ = _run(tmp_path, _base(), BASE_ASSIGN, params)
    s = _stats(out)["codes"]["HR"]
    hr_train = np.array([80.0, 90.0, 70.0, 100.0, 60.0, 120.0])
    assert s["center"] == pytest.approx(hr_train.mean())
    assert s["scale"] == pytest.approx(hr_train.std())
    vocab = json.loads((out / "fold_0" / "vocab.json").read_text())["tokens"]
    val = PackedSplit.load(out / "fold_0" / "val")
    hr = val.values[val.codes == vocab.index("HR")]
    assert hr.tolist() == [3.0]  # (500 - mean) / sd is far above 3: clipped
    test = PackedSplit.load(out / "fold_0" / "test")
    hr = test.values[test.codes == vocab.index("HR")]
    assert hr[0] == pytest.approx(max((1.0 - hr_train.mean()) / hr_train.std(), -3.0))


def test_constant_variable_does_not_divide_by_zero(tmp_path, params_dict):
    rows = [(s, float(h), "FiO2", 0.5) for s in (1, 2, 3, 4) for h in range(3)] + [(5, 0.0, "FiO2", 1.0), (6, 0.0, "FiO2", 0.5)]
    params = _params(params_dict, log_transform="none")
    out, _ = _run(tmp_path, _base(rows), BASE_ASSIGN, params)
    s = _stats(out)["codes"]["FiO2"]
    assert s["scale"] == 1.0  # IQR 0, sd 0 -> floor 1
    val = PackedSplit.load(out / "fold_0" / "val")
    assert np.all(np.isfinite(val.values)) and val.values.tolist() == [0.5]


def test_vocabulary_and_unk(tmp_path, params_dict):
    rows = BASE_ROWS + [(1, 4.0, "Lactate", 2.0), (2, 4.0, "Lactate", 3.0), (3, 4.0, "Albumin", 3.0)]
    params = _params(params_dict, log_transform="none", min_code_count=2)
    out, report = _run(tmp_path, _base(rows), BASE_ASSIGN, params)
    vocab = json.loads((out / "fold_0" / "vocab.json").read_text())
    # Albumin (1 train event) and Rare (only in test) are below min_code_count -> <unk>
    assert vocab["tokens"] == ["<pad>", "<unk>", "HR", "Lactate", "Temp"]
    assert "MechVent" not in vocab["tokens"]  # 1 train event
    assert set(vocab["unk_codes"]) == {"Albumin", "MechVent", "Rare"}
    test = PackedSplit.load(out / "fold_0" / "test")
    assert test.codes.tolist() == [vocab["tokens"].index("HR"), UNK_CODE]
    assert test.values[1] == 0.0  # <unk> carries no value
    assert report["folds"]["0"]["splits"]["test"]["events_unk"] == 1
    assert 0 not in PackedSplit.load(out / "fold_0" / "train").codes  # never <pad> in the data


def test_value_less_events_are_value_zero_and_not_in_statistics(tmp_path, params_dict):
    params = _params(params_dict, log_transform="none")
    out, _ = _run(tmp_path, _base(), BASE_ASSIGN, params)
    s = _stats(out)["codes"]["MechVent"]
    assert s["n_values"] == 0 and s["scale"] == 1.0
    vocab = json.loads((out / "fold_0" / "vocab.json").read_text())["tokens"]
    train = PackedSplit.load(out / "fold_0" / "train")
    assert train.values[train.codes == vocab.index("MechVent")].tolist() == [0.0]


def test_observation_window_and_counts(tmp_path, params_dict):
    rows = BASE_ROWS + [(1, -2.0, "HR", 85.0), (1, 48.0, "HR", 86.0), (1, 48.5, "HR", 87.0), (7, 1.0, "HR", 80.0)]
    params = _params(params_dict, log_transform="none", window_hours=48.0)
    out, report = _run(tmp_path, _base(rows), BASE_ASSIGN, params)
    ow = report["events"]["outside_window"]
    assert ow == {"before_window": 1, "after_prediction_time": 1, "between_windows": 0, "without_time": 0,
                  "subject_without_sample": 1}
    train = PackedSplit.load(out / "fold_0" / "train")
    t1 = train.set_times[train.patient_offsets[0] : train.patient_offsets[1]]
    assert t1.tolist() == [0.0, 1.5, 48.0]  # 48 h itself is inside the window
    assert report["events"]["in_window"] == len(BASE_ROWS) + 1


@pytest.mark.parametrize("policy,expected", [("mean", [[85.0], 1]), ("last", [[90.0], 1]), ("keep", [[80.0, 90.0], 2])])
def test_duplicates_policy(tmp_path, params_dict, policy, expected):
    # HR twice at the same time for subject 1 (80 first, then 90)
    rows = [r for r in BASE_ROWS if r[0] != 1] + [(1, 0.0, "HR", 80.0), (1, 0.0, "HR", 90.0), (1, 0.0, "Temp", 37.0)]
    params = _params(params_dict, log_transform="none", duplicates=policy, normalisation="standard")
    out, report = _run(tmp_path, _base(rows), BASE_ASSIGN, params)
    s = _stats(out)["codes"]["HR"]
    vocab = json.loads((out / "fold_0" / "vocab.json").read_text())["tokens"]
    train = PackedSplit.load(out / "fold_0" / "train")
    first = slice(train.set_offsets[0], train.set_offsets[1])
    hr = train.values[first][train.codes[first] == vocab.index("HR")] * s["scale"] + s["center"]
    assert hr.tolist() == pytest.approx(expected[0])
    assert report["events"]["duplicate_rows_merged"] == 2 - expected[1]


def _predicted_at(tables: tuple[pa.Table, pa.Table, pa.Table], hours: float) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The same cohort with every sample predicted at admission + `hours` (its window from admission)."""
    events, subjects, labels = tables
    when = pa.array([ADMISSION_EPOCH + dt.timedelta(hours=hours)] * labels.num_rows, pa.timestamp("us"))
    return events, subjects, labels.set_column(labels.schema.get_field_index("prediction_time"),
                                               labels.schema.field("prediction_time"), when)


def test_log_transform_auto_and_list(tmp_path, params_dict):
    rng = np.random.default_rng(0)
    urine = np.exp(rng.normal(3, 1.5, 200))  # heavy right tail, positive
    hr = rng.normal(80, 10, 200)  # symmetric
    rows = [(1 + i % 4, float(i), "Urine", float(u)) for i, u in enumerate(urine)]
    rows += [(1 + i % 4, float(i), "HR", float(h)) for i, h in enumerate(hr)]
    rows += [(5, 0.0, "HR", 80.0), (6, 0.0, "Urine", -4.0)]
    params = _params(params_dict, log_transform="auto", window_hours=1000.0)
    out, report = _run(tmp_path, _predicted_at(_base(rows), 1000.0), BASE_ASSIGN, params, "auto")
    codes = _stats(out)["codes"]
    assert codes["Urine"]["log1p"] and not codes["HR"]["log1p"]
    assert codes["Urine"]["center"] == pytest.approx(np.median(np.log1p(urine.astype(np.float32))), rel=1e-5)
    assert report["folds"]["0"]["values_clamped_to_0_before_log1p"] == 1  # the test split's -4

    params = _params(params_dict, log_transform=["HR", "Nope"], window_hours=1000.0)
    out, _ = _run(tmp_path, _predicted_at(_base(rows), 1000.0), BASE_ASSIGN, params, "list")
    stats = _stats(out)
    assert stats["codes"]["HR"]["log1p"] and not stats["codes"]["Urine"]["log1p"]
    assert stats["log_transform_codes_absent"] == ["Nope"]


def test_sets_are_grouped_by_timestamp_in_time_order(tmp_path, params_dict):
    params = _params(params_dict, log_transform="none")
    out, report = _run(tmp_path, _base(), BASE_ASSIGN, params)
    train = PackedSplit.load(out / "fold_0" / "train")
    assert train.subject_ids.tolist() == [1, 2, 3, 4]
    assert train.labels.tolist() == [float(BASE_LABELS[s]) for s in (1, 2, 3, 4)]
    assert train.sets_per_patient().tolist() == [2, 2, 1, 1]
    assert train.events_per_set().tolist() == [2, 1, 1, 2, 2, 2]
    assert train.set_times.tolist() == [0.0, 1.5, 0.5, 2.0, 1.0, 3.0]
    r = report["folds"]["0"]["splits"]["train"]
    assert (r["samples"], r["sets"], r["events"]) == (4, 6, 10)


def test_subjects_without_events_are_dropped_and_counted(tmp_path, params_dict):
    # subject 7 (train) has no events at all, subject 8 (val) only outside the window
    rows = BASE_ROWS + [(8, 60.0, "HR", 80.0)]
    assign = {**BASE_ASSIGN, 7: "train", 8: "val"}
    ids = sorted(assign)
    tables = make_tables(rows, ids, {s: False for s in ids})
    params = _params(params_dict, log_transform="none")
    out, report = _run(tmp_path, tables, assign, params)
    splits = report["folds"]["0"]["splits"]
    assert splits["train"]["dropped_samples"] == {"no_events": 1, "no_events_in_window": 0}
    assert splits["val"]["dropped_samples"] == {"no_events": 0, "no_events_in_window": 1}
    assert (splits["train"]["subjects_assigned"], splits["train"]["samples"]) == (5, 4)
    assert 7 not in PackedSplit.load(out / "fold_0" / "train").subject_ids
    saved = json.loads((out / "preprocess_report.json").read_text())
    assert saved["folds"]["0"]["splits"]["val"]["dropped_samples"]["no_events_in_window"] == 1


def test_unsorted_input_gives_the_same_output(tmp_path, params_dict):
    events, subjects, labels = random_cohort(30, seed=1)
    assign = {s: "train" if s <= 20 else "val" if s <= 25 else "test" for s in range(1, 31)}
    params = _params(params_dict)
    out_a, _ = _run(tmp_path, (events, subjects, labels), assign, params, "sorted")
    perm = np.random.default_rng(0).permutation(events.num_rows)
    out_b, _ = _run(tmp_path, (events.take(perm), subjects, labels), assign, params, "shuffled")
    for split in ("train", "val", "test"):
        a, b = PackedSplit.load(out_a / "fold_0" / split), PackedSplit.load(out_b / "fold_0" / split)
        for name in ("codes", "values", "set_offsets", "set_times", "patient_offsets", "subject_ids", "labels"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_output_is_replaced_whole_and_multi_fold(tmp_path, params_dict):
    events, subjects, labels = random_cohort(20, seed=2)
    params = _params(params_dict)
    sp = pa.concat_tables(
        [split_table({s: ("train", "val", "test")[(s + k) % 3] for s in range(1, 21)}, fold=k) for k in range(2)]
    )
    out = tmp_path / "out"
    (out / "stale").mkdir(parents=True)
    (out / ".seqsetvae-output").write_text("")  # an earlier output of seqsetvae.io's writer: replaceable
    preprocess(events, subjects, labels, sp, params, out)
    assert sorted(p.name for p in out.iterdir()) == [".seqsetvae-output", "fold_0", "fold_1", "preprocess_report.json"]
    assert sorted(p.name for p in (out / "fold_1").iterdir()) == ["norm_stats.json", "test", "train", "val", "vocab.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


@pytest.mark.slow
@pytest.mark.realdata
def test_physionet2012_statistics_are_from_train_subjects_only(p12_dir, params_dict, tmp_path):
    """Ingest the real cohort, split, preprocess; recompute every code's statistics with pandas from the
    train subjects alone and compare with norm_stats.json."""
    import pandas as pd

    from seqsetvae.config import PROJECT_ROOT
    from seqsetvae.data.physionet2012 import ingest_physionet2012
    from seqsetvae.data.splits import make_splits

    params_dict["data"]["physionet2012"]["dir"] = str(p12_dir)
    params_dict["data"]["physionet2012"]["download"] = False
    params = params_from_dict(params_dict)
    ingested = ingest_physionet2012(params.data.physionet2012, PROJECT_ROOT)
    splits, _ = make_splits(ingested.subjects, ingested.labels, params.split)
    out = tmp_path / "processed"
    report = preprocess(ingested.events, ingested.subjects, ingested.labels, splits, params.preprocess, out)
    stats = json.loads((out / "fold_0" / "norm_stats.json").read_text())["codes"]

    ev = ingested.events.to_pandas()
    ev["hours"] = (ev["time"] - pd.Timestamp(ADMISSION_EPOCH)) / pd.Timedelta(hours=1)
    ev = ev[(ev["hours"] >= 0) & (ev["hours"] <= params.preprocess.window_hours)]
    ev = ev.groupby(["subject_id", "time", "code"], as_index=False)["numeric_value"].mean()  # duplicates: mean
    sp = splits.to_pandas()
    train_ids = set(sp.loc[sp["split"] == "train", "subject_id"])
    train = ev[ev["subject_id"].isin(train_ids)].dropna(subset=["numeric_value"])
    assert set(stats) == set(train["code"])
    for code, x in train.groupby("code")["numeric_value"]:
        x = x.to_numpy(np.float32)
        s = stats[code]
        if s["log1p"]:
            x = np.log1p(np.maximum(x, 0))
        x = x.astype(np.float64)
        q25, q50, q75 = np.percentile(x, [25, 50, 75])
        scale = (q75 - q25) / 1.349 if q75 > q25 else (x.std() if x.std() > 0 else 1.0)
        assert s["n_values"] == x.size, code
        assert s["center"] == pytest.approx(q50, rel=1e-5, abs=1e-6), code
        assert s["scale"] == pytest.approx(scale, rel=1e-5), code

    # the 12 stays without measurements are dropped and counted, nothing else
    splits_report = report["folds"]["0"]["splits"]
    assert sum(r["dropped_samples"]["no_events"] for r in splits_report.values()) == 12
    assert sum(r["samples"] for r in splits_report.values()) == 12000 - 12


def test_split_and_preprocess_stages_cli(tmp_path):
    """The split stage and the preprocess jobs through the CLI, as dvc.yaml runs them: scan each of the
    params' data.shards, fit each fold, pack each shard, assemble."""
    from seqsetvae.cli import main
    from seqsetvae.config import PROJECT_ROOT, load_params
    from seqsetvae.data.canonical import IngestReport, IngestResult, subject_batches, write_ingested

    params_file = str(PROJECT_ROOT / "params.yaml")
    n = len(load_params(params_file).data.shards)
    ingested = tmp_path / "ingested"
    events, subjects, labels = random_cohort(40, seed=4)
    write_ingested(ingested, subject_batches(IngestResult(events, subjects, labels, IngestReport(source="t")), n))
    splits = str(tmp_path / "splits.parquet")
    common = ["--params", params_file, "--splits", splits]
    assert main(["split", "--params", params_file, "--ingested", str(ingested), "--out", splits]) == 0
    work = tmp_path / "work"
    for k in range(n):
        assert main(["preprocess", "scan", *common, "--ingested", str(ingested), "--shard", str(k),
                     "--out", str(work / "scan" / f"shard_{k}")]) == 0  # fmt: skip
    assert main(["preprocess", "fit", *common, "--scans", str(work / "scan"), "--fold", "0",
                 "--out", str(work / "fit" / "fold_0")]) == 0  # fmt: skip
    for k in range(n):
        assert main(["preprocess", "pack", *common, "--ingested", str(ingested), "--shard", str(k),
                     "--fits", str(work / "fit"), "--out", str(work / "pack" / f"shard_{k}")]) == 0  # fmt: skip
    out = tmp_path / "processed"
    assert main(["preprocess", "assemble", *common, "--fits", str(work / "fit"), "--packs", str(work / "pack"),
                 "--out", str(out)]) == 0  # fmt: skip
    report = json.loads((out / "preprocess_report.json").read_text())
    assert sum(r["samples"] for r in report["folds"]["0"]["splits"].values()) == 40
    assert PackedSplit.load(out / "fold_0" / "train").n_patients == report["folds"]["0"]["splits"]["train"]["samples"]
    # the same bytes as the whole cohort in one process
    prep.preprocess(events, subjects, labels, read_splits(splits), load_params(params_file).preprocess,
                    tmp_path / "one")  # fmt: skip
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == {
        p.relative_to(tmp_path / "one"): p.read_bytes() for p in (tmp_path / "one").rglob("*") if p.is_file()}
    # a step without what it needs is a usage error naming the option
    with pytest.raises(SystemExit, match="--fold"):
        main(["preprocess", "fit", *common, "--scans", str(work / "scan"), "--out", str(work / "x")])


def test_descriptors_become_events_at_admission_only_when_asked(tmp_path, params_dict):
    """preprocess.descriptors admission_set: each non-missing numeric descriptor is one static/<name> event at
    time 0, normalised with train statistics like any variable; a missing one gives no event."""
    events, subjects, labels = make_tables(BASE_ROWS, list(BASE_ASSIGN), BASE_LABELS)
    ages = [70.0, None, 50.0, 60.0, 80.0, 40.0]
    subjects = subjects.append_column("Age", pa.array(ages, pa.float32()))
    tables = (events, subjects, labels)
    off, _ = _run(tmp_path, tables, BASE_ASSIGN, _params(copy.deepcopy(params_dict), descriptors="none"), "off")
    on, report = _run(tmp_path, tables, BASE_ASSIGN, _params(copy.deepcopy(params_dict), descriptors="admission_set"), "on")
    vocab_off = json.loads((off / "fold_0" / "vocab.json").read_text())["tokens"]
    vocab_on = json.loads((on / "fold_0" / "vocab.json").read_text())["tokens"]
    assert "static/Age" not in vocab_off and set(vocab_on) - set(vocab_off) == {"static/Age"}
    assert report["descriptor_events"] == {"codes": ["static/Age"], "events": 5}
    age = vocab_on.index("static/Age")
    train = PackedSplit.load(on / "fold_0" / "train")
    per_patient = {}
    for p, sid in enumerate(train.subject_ids.tolist()):
        first_set = train.patient_offsets[p]
        lo, hi = train.set_offsets[first_set], train.set_offsets[first_set + 1]
        per_patient[sid] = (float(train.set_times[first_set]), int((train.codes[lo:hi] == age).sum()))
    assert per_patient[1] == (0.0, 1) and per_patient[2][1] == 0  # subject 2 has no Age
    assert int((train.codes == age).sum()) == 3  # train subjects 1, 3, 4: one event each, all in the first set
    stats = json.loads((on / "fold_0" / "norm_stats.json").read_text())
    assert "static/Age" in json.dumps(stats)
