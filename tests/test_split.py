"""split: determinism, stratification, disjoint splits, the three protocols, predefined CSVs with and without
a fold column, the unlisted-subject policy, and predefined-CSV errors."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from seqsetvae.cli import main
from seqsetvae.config import PROJECT_ROOT, ParamsError, params_from_dict
from seqsetvae.data.canonical import LABELS_FILE, SUBJECTS_FILE
from seqsetvae.data.splits import make_splits, read_splits
from seqsetvae.errors import DataError
from tests.test_preprocess import make_tables

N = 400


def _cohort(n=N, seed=0, groups=None):
    rng = np.random.default_rng(seed)
    ids = list(range(1000, 1000 + n))
    labels = {s: bool(rng.random() < 0.2) for s in ids}
    _, subjects, label_table = make_tables([], ids, labels, groups)
    return subjects, label_table, labels


def _split_params(params_dict, **kw):
    params_dict["split"].update(kw)
    return params_from_dict(params_dict).split


def _assignment(table, fold=0):
    d = table.to_pandas()
    d = d[d["fold"] == fold]
    return dict(zip(d["subject_id"], d["split"]))


def test_random_is_deterministic_stratified_and_disjoint(params_dict):
    subjects, labels, y = _cohort()
    params = _split_params(params_dict, folds=list(range(3)), seed=7)
    a, _ = make_splits(subjects, labels, params)
    b, _ = make_splits(subjects, labels, params)
    assert a.equals(b)
    assert a.schema.field("fold").type == "int32" and a.num_rows == 3 * N
    pos_rate = np.mean(list(y.values()))
    folds = []
    for k in range(3):
        assign = _assignment(a, k)
        assert sorted(assign) == sorted(y)  # every subject exactly once per fold
        for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            members = [s for s, v in assign.items() if v == split]
            assert len(members) == pytest.approx(share * N, abs=2)
            assert np.mean([y[s] for s in members]) == pytest.approx(pos_rate, abs=0.03)  # stratified
        folds.append(assign)
    assert folds[0] != folds[1] != folds[2]  # independent permutations
    c, _ = make_splits(subjects, labels, _split_params(params_dict, folds=list(range(3)), seed=8))
    assert not a.equals(c)
    # adding a fold does not change the earlier ones
    d, _ = make_splits(subjects, labels, _split_params(params_dict, folds=list(range(4)), seed=7))
    assert _assignment(d, 1) == folds[1]


def test_unlabelled_subjects_are_not_assigned_but_counted(params_dict):
    subjects, labels, _ = _cohort(n=50)
    labels = labels.slice(0, 40)
    table, summary = make_splits(subjects, labels, _split_params(params_dict))
    assert table.num_rows == 40 and summary.subjects_without_label == 10


def test_physionet_set_a_protocol(params_dict):
    groups = {s: ("set-a" if s % 3 == 0 else "set-b") for s in range(1000, 1000 + N)}
    subjects, labels, y = _cohort(groups=groups)
    params = _split_params(params_dict, protocol="physionet2012_set_a_test", folds=list(range(2)))
    table, _ = make_splits(subjects, labels, params)
    for k in range(2):
        assign = _assignment(table, k)
        assert {s for s, v in assign.items() if v == "test"} == {s for s, g in groups.items() if g == "set-a"}
        rest = [s for s in assign if groups[s] != "set-a"]
        n_val = sum(assign[s] == "val" for s in rest)
        assert n_val == pytest.approx(len(rest) * 0.1 / 0.9, abs=2)
    assert _assignment(table, 0) != _assignment(table, 1)

    subjects, labels, _ = _cohort()  # no set-a at all
    with pytest.raises(DataError, match="no labelled subject has group 'set-a'"):
        make_splits(subjects, labels, params)


def test_predefined_protocol(tmp_path, params_dict):
    subjects, labels, y = _cohort(n=6)
    ids = sorted(y)
    csv = tmp_path / "split.csv"
    csv.write_text("subject_id,split\n" + "".join(f"{s},{['train', 'val', 'test'][i % 3]}\n" for i, s in enumerate(ids)) + "99,train\n")
    params = _split_params(params_dict, protocol="predefined", predefined_csv="split.csv")
    table, summary = make_splits(subjects, labels, params, root=tmp_path)
    assert _assignment(table) == {s: ["train", "val", "test"][i % 3] for i, s in enumerate(ids)}
    assert summary.csv_ids_not_labelled == 1

    with pytest.raises(ParamsError, match=r"split\.folds"):
        make_splits(subjects, labels, _split_params(params_dict, folds=list(range(2))), root=tmp_path)


@pytest.mark.parametrize(
    "body,match",
    [
        ("1000,train\n1001,holdout\n", r"split\.csv:3: split 'holdout' is not one of"),
        ("1000,train\nabc,val\n", r"split\.csv:3: subject_id 'abc' is not an integer"),
        ("1000,train\n1001\n", r"split\.csv:3: expected 2 fields"),
        ("1000,train\n1000,val\n", r"split\.csv:3: subject_id 1000 already assigned on line 2"),
        ("1000,train\n", r"split\.csv: 5 labelled subject\(s\) have no split in the CSV \(first: \[1001, 1002, 1003, 1004, 1005\]\)"),
    ],
)
def test_predefined_csv_errors(tmp_path, params_dict, body, match):
    subjects, labels, _ = _cohort(n=6)
    (tmp_path / "split.csv").write_text("subject_id,split\n" + body)
    params = _split_params(params_dict, protocol="predefined", predefined_csv="split.csv")
    with pytest.raises(DataError, match=match):
        make_splits(subjects, labels, params, root=tmp_path)


# --------------------------------------------------------------------------------------------------
# Predefined CSVs with a fold column (published multi-split protocols) and unlisted subjects

SPLIT_NAMES = ["train", "val", "test"]


def _fold_csv(path, ids, folds, omit=()):
    """subject_id,fold,split: subject i of fold k gets SPLIT_NAMES[(i + k) % 3]; (fold, id) pairs in
    `omit` are not listed."""
    rows = [f"{s},{k},{SPLIT_NAMES[(i + k) % 3]}\n" for k in folds for i, s in enumerate(ids) if (k, s) not in omit]
    path.write_text("subject_id,fold,split\n" + "".join(rows))
    return {k: {s: SPLIT_NAMES[(i + k) % 3] for i, s in enumerate(ids) if (k, s) not in omit} for k in folds}


def test_predefined_csv_with_a_fold_column_runs_the_chosen_folds(tmp_path, params_dict):
    subjects, labels, y = _cohort(n=9)
    ids = sorted(y)
    expected = _fold_csv(tmp_path / "split.csv", ids, folds=[1, 2, 3, 4, 5])
    params = _split_params(params_dict, protocol="predefined", predefined_csv="split.csv", folds=[2, 4])
    table, summary = make_splits(subjects, labels, params, root=tmp_path)
    assert sorted(set(table.column("fold").to_pylist())) == [2, 4]
    assert _assignment(table, 2) == expected[2] and _assignment(table, 4) == expected[4]
    assert _assignment(table, 2) != _assignment(table, 4)
    assert summary.unlisted_excluded == {} and summary.csv_ids_not_labelled == 0

    # folds must be ones the CSV holds; a CSV without a fold column is fold 0 only
    with pytest.raises(ParamsError, match=r"split\.folds.*fold\(s\) \[0, 6\] are not in the predefined CSV .*split\.csv, which holds folds \[1, 2, 3, 4, 5\]"):
        make_splits(subjects, labels, _split_params(params_dict, folds=[0, 1, 6]), root=tmp_path)
    (tmp_path / "one.csv").write_text("subject_id,split\n" + "".join(f"{s},train\n" for s in ids))
    with pytest.raises(ParamsError, match=r"split\.folds.*one\.csv has no fold column, so it is one fold, \[0\]; got \[1\]"):
        make_splits(subjects, labels, _split_params(params_dict, predefined_csv="one.csv", folds=[1]), root=tmp_path)


def test_unlisted_subjects_are_refused_by_default_naming_the_fold(tmp_path, params_dict):
    subjects, labels, y = _cohort(n=9)
    ids = sorted(y)
    _fold_csv(tmp_path / "split.csv", ids, folds=[0, 1], omit={(1, ids[3]), (1, ids[7])})
    params = _split_params(params_dict, protocol="predefined", predefined_csv="split.csv", folds=[0, 1])
    assert params.unlisted == "refuse"  # the default in params.yaml
    with pytest.raises(DataError, match=rf"split\.csv: fold 1: 2 labelled subject\(s\) have no split in the CSV \(first: \[{ids[3]}, {ids[7]}\]\).*split\.unlisted: exclude"):
        make_splits(subjects, labels, params, root=tmp_path)
    # fold 0 alone lists everyone
    table, _ = make_splits(subjects, labels, _split_params(params_dict, folds=[0]), root=tmp_path)
    assert table.num_rows == 9


def test_unlisted_subjects_are_excluded_per_fold_and_counted(tmp_path, params_dict):
    subjects, labels, y = _cohort(n=12)
    ids = sorted(y)
    omit = {(1, ids[0]), (1, ids[5]), (3, ids[11])}
    expected = _fold_csv(tmp_path / "split.csv", ids + [99], folds=[1, 2, 3], omit=omit)  # 99: not in the cohort
    params = _split_params(
        params_dict, protocol="predefined", predefined_csv="split.csv", folds=[1, 2, 3], unlisted="exclude"
    )
    table, summary = make_splits(subjects, labels, params, root=tmp_path)
    for k in (1, 2, 3):
        expected[k].pop(99)
        assert _assignment(table, k) == expected[k]
    assert table.num_rows == 3 * 12 - 3
    assert summary.unlisted_excluded == {1: 2, 3: 1}
    assert summary.unlisted_examples == {1: [ids[0], ids[5]], 3: [ids[11]]}
    assert summary.csv_ids_not_labelled == 1
    assert read_splits_roundtrip(tmp_path, table).equals(table)

    # a fold that lists no labelled subject at all is an error even when excluding
    (tmp_path / "none.csv").write_text("subject_id,fold,split\n99,0,train\n" + "".join(f"{s},1,train\n" for s in ids))
    with pytest.raises(DataError, match=r"none\.csv: fold 0: the CSV lists none of the 12 labelled subject"):
        make_splits(subjects, labels, _split_params(params_dict, predefined_csv="none.csv", folds=[0, 1]), root=tmp_path)


def read_splits_roundtrip(tmp_path, table):
    """The table as the split stage writes it and preprocess / baseline read it back."""
    from seqsetvae.io import write_parquet

    write_parquet(tmp_path / "splits.parquet", table)
    return read_splits(tmp_path / "splits.parquet")


@pytest.mark.parametrize(
    "body,match",
    [
        ("1000,x,train\n", r"split\.csv:2: fold 'x' is not an integer from 0 to 999"),
        ("1000,0,train\n1000,-1,val\n", r"split\.csv:3: fold '-1' is not an integer from 0 to 999"),
        ("1000,0,train\n1001,1000,val\n", r"split\.csv:3: fold '1000' is not an integer"),
        ("1000,0,train\n1001,²,val\n", r"split\.csv:3: fold .². is not an integer"),
        ("1000,0,train\n1001,0\n", r"split\.csv:3: expected 3 fields \(subject_id,fold,split\), found 2"),
        ("1000,0,train\n1000,1,test\n1000,0,val\n", r"split\.csv:4: subject_id 1000 already assigned in fold 0 on line 2"),
        ("1000,0,train\n1001,0,validation\n", r"split\.csv:3: split 'validation' is not one of train, val, test"),
    ],
)
def test_fold_column_csv_errors_name_file_and_line(tmp_path, params_dict, body, match):
    subjects, labels, _ = _cohort(n=6)
    (tmp_path / "split.csv").write_text("subject_id,fold,split\n" + body)
    params = _split_params(params_dict, protocol="predefined", predefined_csv="split.csv", unlisted="exclude")
    with pytest.raises(DataError, match=match):
        make_splits(subjects, labels, params, root=tmp_path)


def test_predefined_csv_header_must_be_one_of_the_two_layouts(tmp_path, params_dict):
    subjects, labels, _ = _cohort(n=6)
    (tmp_path / "split.csv").write_text("subject_id,split,fold\n1000,train,0\n")
    params = _split_params(params_dict, protocol="predefined", predefined_csv="split.csv")
    with pytest.raises(DataError, match=r"split\.csv:1: header must be 'subject_id,split' or 'subject_id,fold,split'"):
        make_splits(subjects, labels, params, root=tmp_path)


def test_split_stage_logs_excluded_subjects(tmp_path, params_dict, caplog):
    import yaml

    subjects, labels, y = _cohort(n=30)
    ids = sorted(y)
    ingested = tmp_path / "ingested"
    ingested.mkdir()
    pq.write_table(subjects, ingested / SUBJECTS_FILE)
    pq.write_table(labels, ingested / LABELS_FILE)
    _fold_csv(tmp_path / "split.csv", ids, folds=[0, 1], omit={(1, s) for s in ids[:4]})
    params_dict["split"].update(protocol="predefined", predefined_csv="split.csv", folds=[0, 1], unlisted="exclude")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    out = tmp_path / "splits.parquet"
    with caplog.at_level(logging.INFO, logger="seqsetvae"):
        assert main(["split", "--params", str(tmp_path / "params.yaml"), "--ingested", str(ingested), "--out", str(out)]) == 0
    assert f"fold 1: 4 labelled subject(s) excluded: the predefined CSV does not list them in this fold (split.unlisted: exclude; first: {ids[:4]})" in caplog.text
    assert "4 labelled subject-fold pairs excluded as unlisted in the predefined CSV" in caplog.text
    assert "fold 1: train 9, val 8, test 9" in caplog.text
    table = read_splits(out)
    assert table.num_rows == 30 + 26


def test_split_stage_cli(tmp_path):
    subjects, labels, _ = _cohort(n=30)
    ingested = tmp_path / "ingested"
    ingested.mkdir()
    pq.write_table(subjects, ingested / SUBJECTS_FILE)
    pq.write_table(labels, ingested / LABELS_FILE)
    out = tmp_path / "splits.parquet"
    params = str(PROJECT_ROOT / "params.yaml")
    assert main(["split", "--params", params, "--ingested", str(ingested), "--out", str(out)]) == 0
    table = read_splits(out)
    assert table.num_rows == 30 and set(table.column("split").to_pylist()) <= {"train", "val", "test"}
    assert main(["split", "--params", params, "--ingested", str(tmp_path / "nope"), "--out", str(out)]) == 3


def test_predefined_csv_outside_the_project_is_refused(params_dict, tmp_path):
    subjects, labels, _ = _cohort()
    params = _split_params(params_dict, protocol="predefined", predefined_csv="../elsewhere.csv", folds=[0])
    with pytest.raises(ParamsError, match=r"split\.predefined_csv.*escapes the project directory"):
        make_splits(subjects, labels, params, root=tmp_path)


@pytest.mark.slow
def test_pipeline_runs_the_folds_of_a_predefined_fold_csv(tmp_path):
    """Through the real Snakefile: a subject_id,fold,split CSV with unlisted subjects excluded gives the
    split table of the chosen folds, the per-fold exclusion counts in logs/split.log, and one pretrain /
    finetune / evaluate / baseline job per chosen fold."""
    from tests.pipeline_project import Project

    proj = Project.create(tmp_path / "proj")
    proj.snakemake("ingest")  # the rule: data/ingested holds the outputs of the shard jobs and the merge
    ids = sorted(pq.read_table(proj.root / "data" / "ingested" / LABELS_FILE).column("subject_id").to_pylist())
    omit = {(2, s) for s in ids[:3]}  # like Raindrop's P12 splits, which leave out stays without measurements
    (proj.root / "splits").mkdir()
    _fold_csv(proj.root / "splits" / "published.csv", ids, folds=[1, 2, 3], omit=omit)
    params = proj.params()
    params["split"].update(protocol="predefined", predefined_csv="splits/published.csv", folds=[1, 2], unlisted="exclude")
    proj.write_params(params)
    proj.snakemake("data/splits.parquet")

    table = read_splits(proj.root / "data" / "splits.parquet")
    assert sorted(set(table.column("fold").to_pylist())) == [1, 2]
    assert table.num_rows == 2 * len(ids) - 3
    log = (proj.root / "logs" / "split.log").read_text()
    assert f"fold 2: 3 labelled subject(s) excluded: the predefined CSV does not list them in this fold (split.unlisted: exclude; first: {ids[:3]})" in log
    planned = proj.snakemake_planned_rules()
    for stage in ("pretrain", "finetune", "evaluate", "baseline"):
        assert {f"{stage}_1", f"{stage}_2"} <= set(planned) and f"{stage}_0" not in planned, planned


def test_read_splits_refuses_a_subject_twice_in_one_fold_only(tmp_path):
    """One row per (fold, subject): a subject may be in several folds, never twice in one."""
    import pyarrow as pa

    from seqsetvae.data.splits import SPLITS_SCHEMA

    ok = pa.table({"subject_id": [3, 1, 3, 2], "fold": [0, 0, 1, 1], "split": ["train", "val", "test", "train"]},
                  schema=SPLITS_SCHEMA)  # fmt: skip
    pq.write_table(ok, tmp_path / "ok.parquet")
    assert read_splits(tmp_path / "ok.parquet").num_rows == 4
    twice = pa.table({"subject_id": [3, 1, 2, 3], "fold": [1, 0, 1, 1], "split": ["train", "val", "test", "test"]},
                     schema=SPLITS_SCHEMA)  # fmt: skip
    pq.write_table(twice, tmp_path / "twice.parquet")
    with pytest.raises(DataError, match="twice.parquet: a subject appears twice in one fold"):
        read_splits(tmp_path / "twice.parquet")
