"""The MEDS scale benchmark's cohort writer (benchmarks/bench_meds_scale.py) writes what MEDS ETLs write."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from seqsetvae.config import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "benchmarks"))
from bench_meds_scale import DATA_SCHEMA, LABEL_SCHEMA, write_cohort  # noqa: E402


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_meds") / "cohort"
    shape = write_cohort(root, subjects=250, events=40, codes=200, seed=3, shard_subjects=100)
    assert shape["subjects"] == 250 and shape["shards"] == 3
    return root


def _tables(root: Path) -> tuple[pa.Table, pa.Table]:
    data = [pq.read_table(p) for p in sorted((root / "data").glob("*.parquet"))]
    labels = [pq.read_table(p) for p in sorted((root / "labels").glob("*.parquet"))]
    assert all(t.schema.equals(DATA_SCHEMA) for t in data) and all(t.schema.equals(LABEL_SCHEMA) for t in labels)
    return pa.concat_tables(data), pa.concat_tables(labels)


def test_shards_and_meds_schemas(cohort):
    from meds import DataSchema, LabelSchema

    assert [p.name for p in sorted((cohort / "data").glob("*.parquet"))] == ["0.parquet", "1.parquet", "2.parquet"]
    for p in sorted((cohort / "data").glob("*.parquet")):
        DataSchema.validate(pq.read_table(p))
    for p in sorted((cohort / "labels").glob("*.parquet")):
        LabelSchema.validate(pq.read_table(p))
    data, labels = _tables(cohort)
    assert pc.count_distinct(data.column("subject_id")).as_py() == 250
    # each subject in one shard only
    per_shard = [set(pq.read_table(p, columns=["subject_id"]).column(0).to_pylist())
                 for p in sorted((cohort / "data").glob("*.parquet"))]  # fmt: skip
    assert sum(len(s) for s in per_shard) == 250 and len(set().union(*per_shard)) == 250


def test_each_subject_static_birth_history_stay_and_several_prediction_times(cohort):
    data, labels = _tables(cohort)
    rows = data.to_pydict()
    by_subject: dict[int, list[tuple]] = {}
    for s, t, c, v in zip(rows["subject_id"], rows["time"], rows["code"], rows["numeric_value"]):
        by_subject.setdefault(s, []).append((t, c, v))
    preds: dict[int, list] = {}
    for s, t in zip(labels.column("subject_id").to_pylist(), labels.column("prediction_time").to_pylist()):
        preds.setdefault(s, []).append(t)
    assert set(preds) == set(by_subject)
    lab_values = presence_only = 0
    for s, ev in by_subject.items():
        # rows of a subject are contiguous: static (null time) rows first, as MEDS sorts them
        static = [c for t, c, v in ev if t is None]
        assert [t for t, _, _ in ev[: len(static)]] == [None] * len(static)
        assert sorted(c.split("//")[0] for c in static) == ["GENDER", "RACE"]
        assert all(v is None for t, c, v in ev if t is None)  # static rows carry no value
        timed = ev[len(static) :]
        assert timed[0][1] == "MEDS_BIRTH"  # the first timed row is the birth
        assert [c for _, c, _ in timed].count("MEDS_BIRTH") == 1
        assert [t for t, _, _ in timed] == sorted(t for t, _, _ in timed)
        p = sorted(preds[s])
        assert 2 <= len(p) <= 5 and len(set(p)) == len(p)  # several prediction times per subject
        # history: an earlier admission (and its events) at least 30 days before the first prediction time
        admissions = [t for t, c, _ in timed if c == "HOSPITAL_ADMISSION"]
        assert len(admissions) >= 2 and admissions[0] < p[0] - np.timedelta64(30, "D").item()
        assert any(c.startswith(("LAB//", "DIAGNOSIS//")) and t < admissions[-1] for t, c, _ in timed)
        lab_values += sum(v is not None for _, c, v in timed if c.startswith("LAB//"))
        presence_only += sum(v is None for _, c, v in timed if c.startswith("DIAGNOSIS//"))
        assert all(v is None for _, c, v in timed if c.startswith("DIAGNOSIS//"))
    assert lab_values > 0 and presence_only > 0
    assert pc.count_distinct(labels.column("boolean_value")).as_py() == 2


def test_deterministic_from_the_seed(cohort, tmp_path):
    again = tmp_path / "again"
    write_cohort(again, subjects=250, events=40, codes=200, seed=3, shard_subjects=100)

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip

    assert digest(again) == digest(cohort)
    other = tmp_path / "other"
    write_cohort(other, subjects=250, events=40, codes=200, seed=4, shard_subjects=100)
    assert digest(other)["data/0.parquet"] != digest(cohort)["data/0.parquet"]
