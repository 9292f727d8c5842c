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


# --------------------------------------------------------------------------------------------------
# Ingest as one job per shard (issue 28 item 5): each job its own process, as DVC and Snakemake run them.


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != OUTPUT_MARKER}  # fmt: skip


def _run_jobs(params_path: Path, n: int, out: Path, parts: Path) -> None:
    for k in range(n):
        proc = _cli("shard", "--params", params_path, "--shard", k, "--out", out, "--parts", parts)
        assert proc.returncode == 0, proc.stderr
    proc = _cli("merge", "--params", params_path, "--out", out, "--parts", parts)
    assert proc.returncode == 0, proc.stderr


def _assert_jobs_write_the_single_process_bytes(tmp_path: Path, params_dict: dict, n: int) -> dict:
    """The shard jobs and the merge, each a process of its own, write byte for byte what the whole cohort read
    in one process (stage.ingest) cut into the shards (canonical.subject_batches) wrote; returns the report."""
    from seqsetvae.config import load_params
    from seqsetvae.data.canonical import subject_batches, write_ingested

    params_dict["data"]["shards"] = list(range(n))
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params_dict))
    params = load_params(params_path)
    write_ingested(tmp_path / "single", subject_batches(stage.ingest(params), n))
    _run_jobs(params_path, n, tmp_path / "jobs", tmp_path / "parts")
    single, jobs = _files(tmp_path / "single"), _files(tmp_path / "jobs")
    assert sorted(jobs) == sorted(single)
    for name in single:
        assert jobs[name] == single[name], f"{name} differs"
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [f"shard_{k}" for k in range(n)]
    return json.loads(single[REPORT_FILE])


def test_jobs_write_the_single_process_bytes_demo(tmp_path, params_dict):
    """The demo's cohort (params.yaml: synthetic, 2 shards)."""
    report = _assert_jobs_write_the_single_process_bytes(tmp_path, params_dict, len(params_dict["data"]["shards"]))
    assert report["source"] == "synthetic" and report["subjects"] == params_dict["data"]["synthetic"]["n_subjects"]


@pytest.mark.parametrize("case, n", [("valid", 2), ("valid", 5), ("descriptor_rules", 2), ("non_finite_value", 2)])
def test_jobs_write_the_single_process_bytes_physionet2012_corpus(tmp_path, params_dict, case, n):
    """The PhysioNet 2012 test corpus (5 shards: more than its 3 stays, some empty)."""
    _params_file(tmp_path, params_dict, CORPUS / case)  # sets the source in params_dict
    report = _assert_jobs_write_the_single_process_bytes(tmp_path, params_dict, n)
    assert report["rows_read"] > 0


def test_jobs_write_the_single_process_bytes_physionet2012_set_a(tmp_path, params_dict, p12_dir):
    """PhysioNet 2012 set a (4,000 stays) in 6 shards, as recorded."""
    _params_file(tmp_path, params_dict, p12_dir)
    report = _assert_jobs_write_the_single_process_bytes(tmp_path, params_dict, 6)
    assert report["subjects"] == 4000 and report["rows_read"] > 1_000_000


def test_merge_refuses_a_missing_or_foreign_part_and_removes_stale_shards(tmp_path, params_dict):
    params_dict["data"]["shards"] = [0, 1]
    params_path = _params_file(tmp_path, params_dict, CORPUS / "valid")
    out, parts = tmp_path / "ingested", tmp_path / "parts"
    assert _cli("shard", "--params", params_path, "--shard", 0, "--out", out, "--parts", parts).returncode == 0
    proc = _cli("merge", "--params", params_path, "--out", out, "--parts", parts)
    assert proc.returncode == 3 and "shard_1/part.json: missing: run the shard job of shard 1" in proc.stderr
    assert not (out / SUBJECTS_FILE).exists() and not (out / REPORT_FILE).exists()
    # A part written with other data.shards (3) is refused by name; and an events shard 2 left by that run is
    # removed by a merge of 2 shards.
    params_dict["data"]["shards"] = [0, 1, 2]
    three = _params_file(tmp_path, params_dict, CORPUS / "valid")
    assert _cli("shard", "--params", three, "--shard", 2, "--out", out, "--parts", parts).returncode == 0
    assert _cli("shard", "--params", three, "--shard", 1, "--out", out, "--parts", parts).returncode == 0
    params_dict["data"]["shards"] = [0, 1]
    two = _params_file(tmp_path, params_dict, CORPUS / "valid")
    proc = _cli("merge", "--params", two, "--out", out, "--parts", parts)
    assert proc.returncode == 3 and "is the part of shard 1 of 3, not of shard 1 of 2" in proc.stderr
    assert _cli("shard", "--params", two, "--shard", 1, "--out", out, "--parts", parts).returncode == 0
    assert (out / EVENTS_DIR / "2.parquet").exists()
    proc = _cli("merge", "--params", two, "--out", out, "--parts", parts)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in event_shards(out)] == ["0.parquet", "1.parquet"]
    assert json.loads((out / REPORT_FILE).read_text())["subjects"] == 3
