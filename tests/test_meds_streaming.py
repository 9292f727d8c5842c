"""The MEDS source streams (issue 13, part 2): `iter_meds` reads the data shards one at a time and builds the
output shards one at a time, and the ingest stage writes byte for byte what the in-memory path wrote.

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
from seqsetvae.data.meds_source import SKIP_NO_LABEL, SKIP_NON_FINITE, ingest_meds, iter_meds
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
    stage.run(params, argparse.Namespace(out=tmp_path / "after"))

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
    stage.run(params, argparse.Namespace(out=tmp_path / "whole"))
    monkeypatch.setattr(meds_source, "READ_BATCH_ROWS", rows_per_read)
    stage.run(params, argparse.Namespace(out=tmp_path / "batched"))
    whole, batched = files(tmp_path / "whole"), files(tmp_path / "batched")
    assert sorted(batched) == sorted(whole)
    for name in whole:
        assert batched[name] == whole[name], f"{name} differs"


def test_ingest_meds_is_the_whole_cohort_of_iter_meds(tmp_path):
    hashed_cohort(tmp_path, 3)
    p = b.MedsParams(dir=str(tmp_path), labels=str(tmp_path / b.LABELS), window_start_column=None)
    whole = ingest_meds(p, tmp_path)
    batches = list(iter_meds(p, tmp_path, 3))  # 3 shards of the 12 labelled subjects
    assert len(batches) == 3
    assert pa.concat_tables(r.events for r in batches).equals(whole.events)
    # (through pandas: Arrow's equals takes NaN != NaN, and the static columns hold NaN)
    pd.testing.assert_frame_equal(pa.concat_tables(r.subjects for r in batches).to_pandas(), whole.subjects.to_pandas())
    assert batches[0].report.to_dict() == whole.report.to_dict()
    # Every batch has the cohort's static columns, NaN where it holds no row of that code.
    assert all(r.subjects.column_names == whole.subjects.column_names for r in batches)


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


def test_memory_holds_one_input_shard_or_one_output_batch(tmp_path, params_dict, monkeypatch):
    """No events-like table larger than the largest input shard or output batch is ever built, and each
    input shard is read once: the cohort is never concatenated (the pre-streaming code did, in _read_data)."""
    meds = tmp_path / "meds"
    hashed_cohort(meds, 4)
    data = [pq.read_table(p) for p in sorted((meds / "data").glob("*.parquet"))]
    params = meds_params(params_dict, meds, 2)
    spy = _RowsSpy(monkeypatch)
    stage.run(params, argparse.Namespace(out=tmp_path / "out"))
    sizes, reads = list(spy.sizes), list(spy.reads)  # before this test reads anything itself

    largest_shard = max(t.num_rows for t in data)
    static_rows = json.loads((tmp_path / "out" / REPORT_FILE).read_text())["descriptor_rows"]
    # An output batch's kept rows: its events plus its static rows (a few per subject).
    largest_batch = max(pq.read_metadata(p).num_rows for p in event_shards(tmp_path / "out")) + static_rows
    cohort = sum(t.num_rows for t in data)
    assert max(largest_shard, largest_batch) < cohort  # else the bound below would prove nothing
    assert sizes and max(sizes) <= max(largest_shard, largest_batch)
    assert sorted(reads) == sorted(meds / "data" / f"{i}.parquet" for i in range(N_INPUT_SHARDS))
    events, subjects, _ = read_ingested(tmp_path / "out")
    assert events.num_rows and subjects.num_rows == 12


def test_scratch_folder_is_removed_on_success_failure_and_abandon(tmp_path):
    hashed_cohort(tmp_path / "meds", 5)
    p = b.MedsParams(dir=str(tmp_path / "meds"), labels=str(tmp_path / "meds" / b.LABELS), window_start_column=None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    assert len(list(iter_meds(p, tmp_path, 4, scratch))) == 4
    assert list(scratch.iterdir()) == []

    batches = iter_meds(p, tmp_path, 4, scratch)
    next(batches)
    assert [q.name.startswith(".seqsetvae-meds-") for q in scratch.iterdir()] == [True]  # pieces wait there
    batches.close()
    assert list(scratch.iterdir()) == []

    # A static code named like a subjects key column is found after pass 1 wrote its pieces.
    subject = pq.read_table(p.labels).column("subject_id")[0].as_py()
    clash = b.data_table([(subject, None, "group", 1.0)])
    pq.write_table(clash, tmp_path / "meds" / "data" / "3.parquet")
    with pytest.raises(DataError, match="static code 'group'"):
        list(iter_meds(p, tmp_path, 3, scratch))
    assert list(scratch.iterdir()) == []


def test_report_examples_are_the_first_in_read_order_across_shards(tmp_path):
    """The examples of a skip reason are the first MAX_EXAMPLES in read order (shard path, then row), even
    when an early shard has fewer than that and a later one more."""
    unlabelled = [(99, 1.0, "HR", 1.0)]
    shards = {
        "data/0.parquet": b.data_table([*b.GOOD_ROWS[:4], *unlabelled * 2]),
        "data/1.parquet": b.data_table([(2, 1.0, "HR", float("nan")), *unlabelled * 6, *b.GOOD_ROWS[4:]]),
    }
    p = b.write(tmp_path, shards)
    batches = list(iter_meds(p, tmp_path, 2))
    report = batches[0].report
    first_five = ["data/0.parquet:5", "data/0.parquet:6", "data/1.parquet:2", "data/1.parquet:3", "data/1.parquet:4"]
    assert report.examples[SKIP_NO_LABEL] == first_five
    assert report.skipped[SKIP_NO_LABEL] == 8 and report.examples[SKIP_NON_FINITE] == ["data/1.parquet:1"]
    assert [r.report.rows_read for r in batches] == [report.rows_read, 0]

