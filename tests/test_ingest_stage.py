"""The ingest stage: dispatch on data.source, and `python -m seqsetvae ingest` end to end (atomic output)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from seqsetvae import runlock
from seqsetvae.config import PROJECT_ROOT, params_from_dict
from seqsetvae.data.canonical import EVENTS_DIR, LABELS_FILE, REPORT_FILE, SUBJECTS_FILE, event_shards, read_ingested
from seqsetvae.io import OUTPUT_MARKER
from seqsetvae.stages import ingest as stage

CORPUS = Path(__file__).parent / "bad_inputs" / "physionet2012"


def _params_file(tmp_path: Path, params_dict: dict, data_dir: Path) -> Path:
    params_dict["data"]["source"] = "physionet2012"
    params_dict["data"]["physionet2012"].update(dir=str(data_dir), sets=["a"], download=False)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict))
    return path


def _cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "seqsetvae", "ingest", *map(str, args)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_cli_ingest_writes_all_outputs(tmp_path, params_dict):
    params_dict["data"]["shards"] = [0]
    out = tmp_path / "out" / "ingested"
    proc = _cli("--params", _params_file(tmp_path, params_dict, CORPUS / "valid"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([EVENTS_DIR, SUBJECTS_FILE, LABELS_FILE, REPORT_FILE, OUTPUT_MARKER])
    assert [p.name for p in event_shards(out)] == ["0.parquet"]  # 3 subjects: one shard
    events, subjects, labels = read_ingested(out)
    report = json.loads((out / REPORT_FILE).read_text())
    assert (events.num_rows, subjects.num_rows, labels.num_rows) == (9, 3, 3)
    assert report["source"] == "physionet2012" and report["rows_read"] == 27 == report["rows_kept"]
    assert report["subjects_without_measurements"] == [1002]
    # The summary paragraph is logged, with the numbers of the report.
    assert "27 rows read, 27 kept, 0 skipped (none); 3 subjects, 1 positive labels" in proc.stderr
    assert pq.read_schema(out / EVENTS_DIR / "0.parquet").field("time").type.unit == "us"


def test_cli_ingest_writes_subject_shards(tmp_path, params_dict):
    """data.shards [0, 1]: the 3 stays go to two shards in RecordID order by the rule k*N//n (1001 | 1002, 1003;
    1002 has no measurement, so it is in the subjects table only), and the report is that of one pass."""
    params_dict["data"]["shards"] = [0, 1]
    out = tmp_path / "ingested"
    proc = _cli("--params", _params_file(tmp_path, params_dict, CORPUS / "valid"), "--out", out)
    assert proc.returncode == 0, proc.stderr
    shards = event_shards(out)
    assert [p.name for p in shards] == ["0.parquet", "1.parquet"]
    assert [sorted(set(pq.read_table(p).column("subject_id").to_pylist())) for p in shards] == [[1001], [1003]]
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["rows_read"] == 27 == report["rows_kept"] and report["subjects"] == 3
    assert report["subjects_without_measurements"] == [1002] and report["files_read"] == 3


def test_cli_failing_ingest_leaves_no_output(tmp_path, params_dict):
    out = tmp_path / "out" / "ingested"
    proc = _cli("--params", _params_file(tmp_path, params_dict, CORPUS / "no_header"), "--out", out)
    assert proc.returncode == 3
    assert f"{CORPUS / 'no_header' / 'set-a' / '1001.txt'}:1: expected the header" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_failing_ingest_keeps_previous_output(tmp_path, params_dict):
    out = tmp_path / "ingested"
    good = _params_file(tmp_path, params_dict, CORPUS / "valid")
    assert _cli("--params", good, "--out", out).returncode == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = _params_file(tmp_path, params_dict, CORPUS / "malformed_row")
    assert _cli("--params", bad, "--out", out).returncode == 3
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != runlock.LOCK_NAME)
    assert leftovers == ["ingested", "params.yaml"]  # no temp folders


def test_out_defaults_to_data_ingested():
    parser = argparse.ArgumentParser()
    stage.add_arguments(parser)
    assert parser.parse_args([]).out == Path("data/ingested")


@pytest.mark.parametrize(
    "source, module, function",
    [
        ("synthetic", "seqsetvae.data.synthetic", "ingest_synthetic"),
        ("physionet2012", "seqsetvae.data.physionet2012", "ingest_physionet2012"),
        ("meds", "seqsetvae.data.meds_source", "ingest_meds"),
    ],
)
def test_dispatch_on_source(params_dict, monkeypatch, source, module, function):
    """Each source calls its reader with its own params section (and params.root where it takes one)."""
    calls = []
    fake = types.ModuleType(module)
    setattr(fake, function, lambda *a: calls.append(a) or "result")
    monkeypatch.setitem(sys.modules, module, fake)
    params_dict["data"]["source"] = source
    params = params_from_dict(params_dict)
    assert stage.ingest(params) == "result"
    section = getattr(params.data, source)
    expected_args = (section,) if source == "synthetic" else (section, params.root)
    if source == "meds":  # a MEDS cohort mostly after its prediction times stops at ingest (docs/data_meds.md)
        expected_args += (params.preprocess.max_outside_window_share,)
    assert calls == [expected_args]


def test_subject_batches_keep_every_subject_up_to_int64_max():
    """The last batch has no upper bound: a subject id of int64 max is kept, not cut off by an exclusive bound."""
    import datetime as dt

    import numpy as np
    import pyarrow as pa

    from seqsetvae.data.canonical import EVENTS_SCHEMA, LABELS_SCHEMA, IngestReport, IngestResult, subject_batches

    ids = [1, 2, np.iinfo(np.int64).max]
    t = dt.datetime(2000, 1, 1)
    events = pa.Table.from_pylist(
        [{"subject_id": s, "time": t, "code": "HR", "numeric_value": 80.0} for s in ids], schema=EVENTS_SCHEMA
    )
    labels = pa.Table.from_pylist(
        [{"subject_id": s, "prediction_time": t, "boolean_value": False} for s in ids], schema=LABELS_SCHEMA
    )
    subjects = pa.table({"subject_id": pa.array(ids, pa.int64())})
    batches = list(subject_batches(IngestResult(events, subjects, labels, IngestReport(source="test")), 3))
    assert [b.events.column("subject_id").to_pylist() for b in batches] == [[s] for s in ids]
    assert [b.subjects.column("subject_id").to_pylist() for b in batches] == [[s] for s in ids]
    assert [b.labels.column("subject_id").to_pylist() for b in batches] == [[s] for s in ids]
