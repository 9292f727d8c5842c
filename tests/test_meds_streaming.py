"""The MEDS source streams (issue 13, part 2) as one job per output shard (issue 28 item 5): `meds_shard` reads
only the row groups that may hold its shard's subjects and builds that shard, `finish_meds` merges the shards'
parts, and the ingest stage (its shard jobs, then the merge) writes byte for byte what the in-memory path wrote.

The oracle is tests/meds_ingest_reference.py, a frozen copy of the MEDS ingest before streaming (all data
shards concatenated in memory, then cut by canonical.subject_batches). The cohorts here hash subjects into
input shards, as MEDS ETLs do, so every output shard draws rows from several input shards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests import meds_ingest_reference as reference
from tests.bad_inputs.meds import builders as b

from seqsetvae.config import Params, params_from_dict
from seqsetvae.data import meds_source
from seqsetvae.data.canonical import MAX_EXAMPLES, REPORT_FILE, event_shards, read_ingested
from seqsetvae.data.ingest_parts import ShardPart
from seqsetvae.data.meds_source import SKIP_NO_LABEL, SKIP_NON_FINITE, finish_meds, ingest_meds, meds_shard
from seqsetvae.errors import DataError
from seqsetvae.stages import ingest as stage

N_INPUT_SHARDS = 3
# The frozen reference predates MEDS_BIRTH rows (tests/test_meds_source.py covers them), so these cohorts have none.
ALL_REASONS = meds_source.SKIP_REASONS - {meds_source.SKIP_DUPLICATE_BIRTH}


def hashed_cohort(root: Path, seed: int) -> None:
    """A MEDS root with subjects hashed into 3 shards (ids interleave across shards), rows shuffled within
    each shard, and every kind of row: static descriptors (one code held by a single subject, so most output
    batches lack it), presence-only events, rows equal in (subject, time, code) with different values, a
    subject with rows in two shards, a labelled subject without data, and each skip reason several times
    (more than MAX_EXAMPLES in all for some, spread over shards, so the examples' read order matters)."""
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in rng.choice(np.arange(1, 10**6), size=14, replace=False)]
    labelled, unlabelled, without_data = ids[:12], ids[12:], ids[11]
    shard_of = {s: s % N_INPUT_SHARDS for s in ids}
    wanderer = labelled[int(rng.integers(0, 11))]  # some of its rows land in another shard
    rows: list[tuple] = []  # (shard, (subject, hours or None, code, value))

    def add(sid, hours, code, value, shard=None):
        rows.append((shard_of.get(sid, 0) if shard is None else shard, (sid, hours, code, value)))

    for sid in labelled:
        if sid == without_data:
            continue
        add(sid, None, "Age", float(rng.integers(18, 90)))
        if rng.random() < 0.5:
            add(sid, None, "Height", float(rng.normal(170, 10)))
        for _ in range(int(rng.integers(3, 9))):
            hours = float(rng.choice([0.0, 1.5, 3.0, 24.0, 47.5, 48.0, 52.0]))  # 52 h: after prediction time
            code = str(rng.choice(["HR", "Temp", "DX//I50", "Lactate"]))
            value = None if code == "DX//I50" else float(rng.normal(80, 10))
            add(sid, hours, code, value)
    first, second = labelled[0], labelled[1]
    add(first, None, "Weight", 70.0)  # only one subject has it: a column of NaN in other batches
    add(first, 2.0, "HR", 91.0)
    add(first, 2.0, "HR", 93.0, shard=(shard_of[first] + 1) % N_INPUT_SHARDS)  # a tie across shards
    add(first, 2.0, "HR", 92.0)  # a tie within a shard
    for s in (first, second, wanderer):  # duplicate static, in its own shard and in another one
        add(s, None, "Age", 1.0)
        add(s, None, "Age", 2.0, shard=(shard_of[s] + 2) % N_INPUT_SHARDS)
    add(wanderer, 5.0, "Temp", 37.0, shard=(shard_of[wanderer] + 1) % N_INPUT_SHARDS)
    for k in range(N_INPUT_SHARDS * 3):  # spread over every shard: more than MAX_EXAMPLES per reason
        sid = labelled[k % 11]
        add(None, 1.0, "HR", 1.0, shard=k % N_INPUT_SHARDS)
        add(sid, 1.0, None, 1.0, shard=k % N_INPUT_SHARDS)
        add(unlabelled[k % 2], 1.0, "HR", 60.0, shard=k % N_INPUT_SHARDS)
        add(sid, 4.0, "HR", float(["nan", "inf", "-inf"][k % 3]), shard=k % N_INPUT_SHARDS)
        add(sid, None, "Height", None, shard=k % N_INPUT_SHARDS)
        add(sid, 60.0 + k, "Temp", 36.0, shard=k % N_INPUT_SHARDS)
    order = rng.permutation(len(rows))  # MEDS shards need not be sorted
    shards = {f"data/{i}.parquet": b.data_table([rows[j][1] for j in order if rows[j][0] == i]) for i in range(3)}
    labels = b.labels_table([(s, 48.0, bool(rng.random() < 0.4)) for s in sorted(labelled)])
    b.write(root, shards, labels)


def meds_params(params_dict: dict, meds_root: Path, n_shards: int) -> Params:
    params_dict["data"]["source"] = "meds"
    params_dict["data"]["shards"] = list(range(n_shards))
    params_dict["data"]["meds"] = {"dir": str(meds_root), "labels": str(meds_root / b.LABELS), "window_start_column": None}
    return params_from_dict(params_dict)


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_shards", [12, 6, 4, 3, 1, 20])  # 20: more shards than the 12 subjects, some empty
def test_stage_writes_the_bytes_the_in_memory_path_wrote(tmp_path, params_dict, seed, n_shards):
    hashed_cohort(tmp_path / "meds", seed)
    params = meds_params(params_dict, tmp_path / "meds", n_shards)
    reference.write_reference(params, tmp_path / "before")
    stage.run(params, argparse.Namespace(step="all", out=tmp_path / "after"))

    before, after = files(tmp_path / "before"), files(tmp_path / "after")
    assert sorted(after) == sorted(before)
    for name in before:
        assert after[name] == before[name], f"{name} differs"
    # The cohort covers what it is meant to (else the comparison proves less than it claims).
    report = json.loads(before[REPORT_FILE])
    assert set(report["skipped_by_reason"]) == ALL_REASONS
    assert max(len(ex) for ex in report["skip_examples"].values()) == MAX_EXAMPLES
    assert report["subjects_in_several_shards"] >= 1 and report["subjects_without_measurements"]
    assert len(event_shards(tmp_path / "after")) == n_shards
    # No scratch folder left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after", "before", "meds"]


@pytest.mark.parametrize("rows_per_read", [1, 7])
def test_reading_shards_in_row_batches_writes_the_same_bytes(tmp_path, params_dict, monkeypatch, rows_per_read):
    """Issue 28 item 4: each input shard is read in batches of rows (pyarrow iter_batches), never whole; batches
    of 1 or 7 rows (so every rule, example and static repeat straddles batches) give the bytes of whole shards."""
    hashed_cohort(tmp_path / "meds", 1)
    params = meds_params(params_dict, tmp_path / "meds", 5)
    stage.run(params, argparse.Namespace(step="all", out=tmp_path / "whole"))
    monkeypatch.setattr(meds_source, "READ_BATCH_ROWS", rows_per_read)
    stage.run(params, argparse.Namespace(step="all", out=tmp_path / "batched"))
    whole, batched = files(tmp_path / "whole"), files(tmp_path / "batched")
    assert sorted(batched) == sorted(whole)
    for name in whole:
        assert batched[name] == whole[name], f"{name} differs"


def _shards(p, root: Path, n: int) -> tuple[list[ShardPart], list[pa.Table]]:
    """The n shard jobs' parts and events tables, in shard order."""
    parts, events = [], []
    for k in range(n):
        result, notes = meds_shard(p, root, n, k)
        parts.append(ShardPart(k, n, result.events.num_rows, result.report, notes, result.subjects, result.labels))
        events.append(result.events)
    return parts, events


def test_ingest_meds_is_the_whole_cohort_of_the_shard_jobs(tmp_path):
    hashed_cohort(tmp_path, 3)
    p = b.MedsParams(dir=str(tmp_path), labels=str(tmp_path / b.LABELS), window_start_column=None)
    whole = ingest_meds(p, tmp_path)
    parts, events = _shards(p, tmp_path, 3)  # 3 shards of the 12 labelled subjects
    assert pa.concat_tables(events).equals(whole.events)
    assert [part.subjects.num_rows for part in parts] == [4, 4, 4]
    report, subjects = finish_meds(parts, 1.0)
    # (through pandas: Arrow's equals takes NaN != NaN, and the static columns hold NaN)
    pd.testing.assert_frame_equal(subjects.to_pandas(), whole.subjects.to_pandas())
    assert report.to_dict() == whole.report.to_dict()
    # Each shard job counts its own subjects' rows (and shard 0 the rows without a subject id) and no other.
    assert sum(part.report.rows_read for part in parts) == whole.report.rows_read
    assert all(part.report.rows_read < whole.report.rows_read for part in parts)


class _RowsSpy:
    """Records the row count of every events-like table (one with a 'code' column) that is read from
    parquet or concatenated: a whole-cohort table would show up here as one large count."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.sizes: list[int] = []
        self.reads: list[Path] = []  # the files read, whole or in row batches (once each)
        for owner, name in [(pq, "read_table"), (pa, "concat_tables"), (pq.ParquetFile, "read_row_groups")]:
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name), name == "read_table"))
        iter_batches = pq.ParquetFile.iter_batches

        def batches(f, *args, **kwargs):  # a shard read in row batches (meds_source.READ_BATCH_ROWS)
            first = True
            for batch in iter_batches(f, *args, **kwargs):
                if "code" in batch.schema.names:
                    self.sizes.append(batch.num_rows)
                    if first:
                        self.reads.append(Path(f._spy_source))
                        first = False
                yield batch

        init = pq.ParquetFile.__init__

        def remember(f, source, *args, **kwargs):
            init(f, source, *args, **kwargs)
            f._spy_source = source

        monkeypatch.setattr(pq.ParquetFile, "iter_batches", batches)
        monkeypatch.setattr(pq.ParquetFile, "__init__", remember)

    def _wrap(self, fn, is_read: bool):
        def spy(*args, **kwargs):
            table = fn(*args, **kwargs)
            if "code" in table.column_names:
                self.sizes.append(table.num_rows)
                if is_read:
                    self.reads.append(Path(args[0]))
            return table

        return spy


def test_memory_holds_one_read_batch_or_one_output_shard(tmp_path, params_dict, monkeypatch):
    """No events-like table larger than the largest input shard or output shard is ever built: the cohort is
    never concatenated (the pre-streaming code did, in _read_data). Here subjects are hashed into the input
    shards, so every shard job reads every input shard (the next test: what it skips when ids are sorted)."""
    meds = tmp_path / "meds"
    hashed_cohort(meds, 4)
    data = [pq.read_table(p) for p in sorted((meds / "data").glob("*.parquet"))]
    params = meds_params(params_dict, meds, 2)
    spy = _RowsSpy(monkeypatch)
    stage.run(params, argparse.Namespace(step="all", out=tmp_path / "out"))
    sizes, reads = list(spy.sizes), list(spy.reads)  # before this test reads anything itself

    largest_shard = max(t.num_rows for t in data)
    static_rows = json.loads((tmp_path / "out" / REPORT_FILE).read_text())["descriptor_rows"]
    # An output shard's kept rows: its events plus its static rows (a few per subject).
    largest_batch = max(pq.read_metadata(p).num_rows for p in event_shards(tmp_path / "out")) + static_rows
    cohort = sum(t.num_rows for t in data)
    assert max(largest_shard, largest_batch) < cohort  # else the bound below would prove nothing
    assert sizes and max(sizes) <= max(largest_shard, largest_batch)
    # each of the 2 shard jobs reads each input shard once
    assert sorted(reads) == sorted(2 * [meds / "data" / f"{i}.parquet" for i in range(N_INPUT_SHARDS)])
    events, subjects, _ = read_ingested(tmp_path / "out")
    assert events.num_rows and subjects.num_rows == 12


def test_a_shard_job_reads_only_the_row_groups_of_its_subjects(tmp_path, monkeypatch):
    """Input shards sorted by subject id, in row groups of 5 subjects: a shard job reads only the row groups whose
    subject_id statistics meet its id interval (and shard 0 those holding rows without a subject id)."""
    rows = [(s, h, "HR", 60.0 + s) for s in range(1, 41) for h in (1.0, 5.0)]
    root = tmp_path / "meds"
    (root / "data").mkdir(parents=True)
    for i, chunk in enumerate((rows[:40], rows[40:])):  # subjects 1-20 | 21-40
        pq.write_table(b.data_table(chunk), root / "data" / f"{i}.parquet", row_group_size=10)
    null_row = b.data_table([(None, 1.0, "HR", 1.0)])
    pq.write_table(pa.concat_tables([b.data_table(rows[:2]), null_row]), root / "data" / "2.parquet")
    pq.write_table(b.labels_table([(s, 48.0, s % 2 == 0) for s in range(1, 41)]), root / b.LABELS)
    p = b.MedsParams(dir=str(root), labels=str(root / b.LABELS), window_start_column=None)
    read: list[tuple[int, ...]] = []  # the row groups of each read
    iter_batches = pq.ParquetFile.iter_batches

    def spy(f, *args, **kwargs):
        read.append(tuple(kwargs["row_groups"]))
        return iter_batches(f, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    whole = ingest_meds(p, root)
    read.clear()
    parts, _ = _shards(p, root, 4)  # 10 subjects a shard: 1-10, 11-20, 21-30, 31-40
    # 2 row groups of 5 subjects for each shard, and shard 0 also the file with a null subject id
    assert len(read) == 2 * 4 + 1, read
    assert [part.report.rows_read for part in parts] == [20 + 3, 20, 20, 20]
    assert finish_meds(parts, 1.0)[0].to_dict() == whole.report.to_dict()


def test_a_static_column_clash_stops_the_shard_job_and_the_merge(tmp_path):
    hashed_cohort(tmp_path / "meds", 5)
    p = b.MedsParams(dir=str(tmp_path / "meds"), labels=str(tmp_path / "meds" / b.LABELS), window_start_column=None)
    subject = pq.read_table(p.labels).column("subject_id")[0].as_py()  # the smallest id: shard 0 of 3
    clash = b.data_table([(subject, None, "group", 1.0)])
    pq.write_table(clash, tmp_path / "meds" / "data" / "3.parquet")
    with pytest.raises(DataError, match="static code 'group'"):
        meds_shard(p, tmp_path, 3, 0)
    # A code used with values in one shard and without in another: only the merge sees both.
    ids = sorted(set(pq.read_table(p.labels).column("subject_id").to_pylist()))
    both = b.data_table([(ids[0], None, "Mood", 1.0), (ids[-1], None, "Mood//low", None)])
    pq.write_table(both, tmp_path / "meds" / "data" / "3.parquet")
    parts, _ = _shards(p, tmp_path, 3)
    with pytest.raises(DataError, match="static code 'Mood//...' without a value") as e:
        finish_meds(parts, 1.0)
    assert str(tmp_path / "meds" / "data" / "3.parquet") in str(e.value)


def test_report_examples_are_the_first_in_read_order_across_shards(tmp_path, params_dict):
    """The examples of a skip reason are the first MAX_EXAMPLES in read order (shard path, then row), even
    when an early shard has fewer than that and a later one more, and when several shard jobs found them."""
    unlabelled = [(99, 1.0, "HR", 1.0)]
    shards = {
        "data/0.parquet": b.data_table([*b.GOOD_ROWS[:4], *unlabelled * 2]),
        "data/1.parquet": b.data_table([(2, 1.0, "HR", float("nan")), *unlabelled * 6, *b.GOOD_ROWS[4:]]),
    }
    p = b.write(tmp_path, shards)
    parts, _ = _shards(p, tmp_path, 2)
    report, _ = finish_meds(parts, 1.0)
    first_five = ["data/0.parquet:5", "data/0.parquet:6", "data/1.parquet:2", "data/1.parquet:3", "data/1.parquet:4"]
    assert report.examples[SKIP_NO_LABEL] == first_five
    assert report.skipped[SKIP_NO_LABEL] == 8 and report.examples[SKIP_NON_FINITE] == ["data/1.parquet:1"]
    # subject 99 (no label) lies in the last shard's id interval: that job counted it
    assert [part.report.skipped[SKIP_NO_LABEL] for part in parts] == [0, 8]
