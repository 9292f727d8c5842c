"""The shards are jobs (issue 28 item 5): a changed shard reruns only its own jobs and what needs every shard.

A MEDS cohort of 40 subjects in two input files (subjects 1-20 and 21-40), ingested into data.shards [0, 1]
(shard 0: the first 20 subject ids, shard 1: the last 20), run with `dvc repro preprocess` in a copy of the
project: one ingest job per shard (ingest_shard@<k>), the merge (ingest), then the preprocess jobs. A value of
one subject of shard 1 is then changed in its input file and the ingest shard jobs rerun (the input folder is
a params path, which DVC does not hash). Shard 0's job writes the same bytes, so DVC skips shard 0's scan,
and reruns shard 1's scan and pack, the fit (which sees every shard's train values) and the assembly.
Rerunning shard 1's job alone does the same.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.bad_inputs.meds import builders as b
from tests.pipeline_project import Project

pytestmark = pytest.mark.slow


def _input_rows(first: int, last: int, value_of_30: float) -> list[tuple]:
    rows = []
    for sid in range(first, last + 1):
        for hours in (1.0, 5.0, 10.0, 30.0):
            rows.append((sid, hours, "HR", 60.0 + sid + hours))
            rows.append((sid, hours, "Temp", 36.0 + (sid % 5) / 10))
    return [(s, h, c, value_of_30 if (s, h, c) == (30, 5.0, "HR") else v) for s, h, c, v in rows]


def _write_meds(proj: Project, value_of_30: float) -> None:
    root = proj.root / "meds"
    labels = b.labels_table([(s, 48.0, s % 3 == 0) for s in range(1, 41)])
    b.write(root, {"data/0.parquet": b.data_table(_input_rows(1, 20, value_of_30)),
                   "data/1.parquet": b.data_table(_input_rows(21, 40, value_of_30))}, labels)  # fmt: skip


def _changed_up_to_preprocess(proj: Project) -> list[str]:
    """Stages `dvc status preprocess --with-deps` reports as changed (preprocess and the stages before it)."""
    out = proj.dvc("status", "--json", "--with-deps", "preprocess").stdout
    return sorted(k.split(":")[0] for k in json.loads(out or "{}"))


def test_one_changed_shard_reruns_its_own_jobs_only(tmp_path):
    proj = Project.create(tmp_path / "proj", overrides={
        "data": {"source": "meds", "shards": [0, 1], "meds": {"dir": "meds", "labels": "meds/labels.parquet"}},
        "split": {"fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
    })  # fmt: skip
    _write_meds(proj, 77.0)
    first = proj.dvc_repro_ran("preprocess")
    assert first == sorted(["ingest_shard@0", "ingest_shard@1", "ingest", "split", "preprocess_scan@0",
                            "preprocess_scan@1", "preprocess_fit@0", "preprocess_pack@0", "preprocess_pack@1",
                            "preprocess"]), first  # fmt: skip
    shard = proj.root / "data" / "ingested" / "data"
    assert sorted(pq.read_table(shard / "0.parquet").column("subject_id").unique().to_pylist()) == list(range(1, 21))
    before = {p.name: p.read_bytes() for p in shard.glob("*.parquet")}
    report_before = (proj.root / "data" / "ingested" / "ingest_report.json").read_bytes()
    assert _changed_up_to_preprocess(proj) == []

    _write_meds(proj, 99.0)  # subject 30, in shard 1
    # The MEDS folder is a params path, not a DVC dep: the shard jobs are rerun by hand after the input changed.
    assert proj.dvc_repro_ran("--force", "--single-item", "--glob", "ingest_shard@*") == ["ingest_shard@0",
                                                                                          "ingest_shard@1"]
    after = {p.name: p.read_bytes() for p in shard.glob("*.parquet")}
    assert after["0.parquet"] == before["0.parquet"] and after["1.parquet"] != before["1.parquet"]
    # DVC hashes each shard's file on its own: shard 1's jobs are changed, shard 0's are not; the merge reads
    # every shard's part. (split reads the whole ingest folder.)
    assert _changed_up_to_preprocess(proj) == ["ingest", "preprocess_pack@1", "preprocess_scan@1", "split"]
    again = proj.dvc_repro_ran("preprocess")
    # Shard 0's scan did not rerun; shard 1's jobs did, and the assembly. The fit reruns when shard 1's scan
    # changed: when subject 30 is in train (its value is a train value); else the scan gives the same bytes.
    splits = pq.read_table(proj.root / "data" / "splits.parquet").to_pylist()
    in_train = {"subject_id": 30, "fold": 0, "split": "train"} in splits
    assert "preprocess_scan@0" not in again, again
    assert {"preprocess_scan@1", "preprocess_pack@1", "preprocess"} <= set(again), again
    assert ("preprocess_fit@0" in again) == in_train, (again, in_train)
    # (preprocess_pack@0 reruns only when the fit's output changed.)
    assert set(again) - {"ingest", "split", "preprocess_scan@1", "preprocess_fit@0", "preprocess_pack@0",
                         "preprocess_pack@1", "preprocess"} == set(), again  # fmt: skip
    assert _changed_up_to_preprocess(proj) == []
    # The merge wrote the same report: the value is not counted anywhere.
    assert (proj.root / "data" / "ingested" / "ingest_report.json").read_bytes() == report_before

    # Rerunning one shard's job alone: its own downstream jobs only (the same bytes again: nothing changes).
    _write_meds(proj, 55.0)
    assert proj.dvc_repro_ran("--force", "--single-item", "ingest_shard@1") == ["ingest_shard@1"]
    assert _changed_up_to_preprocess(proj) == ["ingest", "preprocess_pack@1", "preprocess_scan@1", "split"]
    third = proj.dvc_repro_ran("preprocess")
    assert "ingest_shard@0" not in third and "preprocess_scan@0" not in third, third
    assert {"ingest", "preprocess_scan@1", "preprocess_pack@1", "preprocess"} <= set(third), third
