"""split: determinism, stratification, disjoint splits, the three protocols and predefined-CSV errors."""

from __future__ import annotations

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
