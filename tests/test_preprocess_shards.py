"""The sharded data layer writes what the whole-cohort computation wrote, byte for byte.

The oracle is tests/preprocess_reference.py, a frozen copy of preprocess before sharding (all events in
memory, statistics from all train values sorted in memory). The sharded path ingests into shards of a
few subjects and runs the preprocess jobs as the stages run them (scan per shard, fit per fold, pack per
shard, assemble; every step through its files), and in one process (`preprocess_ingested`), and must give
the same files: vocab,
normalisation statistics (float64, to the last bit), packed arrays and report. Cohorts are random and made
to reach every rule: duplicates, value-less and non-finite values, events outside the window and of
unknown subjects, negative values of log-transformed codes, heavy tails (log auto), rare codes (<unk>),
descriptors, subjects without events, several folds; the chunked expansion of long value runs is forced
with a small chunk. On real PhysioNet 2012 data (when present) the same holds for set a, and the sharded
ingest gives the same tables and report as one batch.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from seqsetvae.config import params_from_dict
from seqsetvae.data import preprocess as prep
from seqsetvae.data import stats, value_counts
from seqsetvae.data.canonical import (
    ADMISSION_EPOCH,
    EVENTS_SCHEMA,
    SAMPLES_SCHEMA,
    event_shards,
    read_ingested,
    subject_batches,
    write_ingested,
    IngestReport,
    IngestResult,
    shard_first_ids,
    shard_starts,
)
from seqsetvae.data.splits import SPLITS, SPLITS_SCHEMA
from seqsetvae.errors import DataError
from tests import preprocess_reference as reference


def _cohort(seed: int, n_subjects: int = 60, window_hours: float = 48.0) -> IngestResult:
    """A cohort whose samples are one per subject, predicted at admission + window_hours with the window from
    admission: the one shape in which the sample-aware preprocess and the frozen reference (window from
    admission) must write the same arrays."""
    rng = np.random.default_rng(seed)
    sid, hours, codes, values = [], [], [], []
    # ids with gaps, so shard ranges and subjects without events fall between shards
    ids = np.sort(rng.choice(np.arange(1, 10 * n_subjects), n_subjects, replace=False))
    no_events = set(rng.choice(ids, 4, replace=False).tolist())
    for s in ids.tolist():
        if s in no_events:
            continue
        for h in np.sort(rng.choice(np.arange(-8, 56 * 4), rng.integers(1, 25), replace=False)) / 4.0:
            for c in rng.choice(8, rng.integers(1, 6), replace=False).tolist():
                for _ in range(1 + (rng.random() < 0.15)):  # some (subject, time, code) repeated
                    v = {0: rng.normal(0, 1), 1: rng.lognormal(1, 1.5), 2: round(rng.normal(80, 15)),
                         3: rng.choice([0.0, 1.0]), 4: rng.exponential(3) - 0.5, 5: rng.normal(7.4, 0.05),
                         6: rng.lognormal(0, 2), 7: 5.0}[c]  # fmt: skip
                    if rng.random() < 0.05:
                        v = None  # value-less
                    elif rng.random() < 0.01:
                        v = float("inf")
                    sid.append(s), hours.append(h), codes.append(f"C{c}"), values.append(v)
        if rng.random() < 0.1:
            sid.append(s), hours.append(1.0), codes.append(f"rare{s % 3}"), values.append(1.0)
    sid.append(10**6), hours.append(1.0), codes.append("C0"), values.append(1.0)  # not in the subjects table
    order = np.lexsort((np.array(codes), np.array(hours), np.array(sid)))
    take = lambda xs: [xs[i] for i in order]  # noqa: E731 (stable: repeats keep their order)
    events = pa.table({
        "subject_id": pa.array(take(sid), pa.int64()),
        "time": pa.array([ADMISSION_EPOCH + dt.timedelta(hours=h) for h in take(hours)], pa.timestamp("us")),
        "code": pa.array(take(codes), pa.string()),
        "numeric_value": pa.array(take(values), pa.float32()),
    }, schema=EVENTS_SCHEMA)  # fmt: skip
    n = ids.size
    subjects = pa.table({
        "subject_id": pa.array(ids, pa.int64()),
        "admission_time": pa.array([ADMISSION_EPOCH] * n, pa.timestamp("us")),
        "group": pa.array(["g"] * n, pa.string()),
        "Age": pa.array(np.where(rng.random(n) < 0.2, np.nan, rng.normal(65, 15, n)), pa.float32()),
        "Weight": pa.array(rng.lognormal(4.3, 0.3, n), pa.float32()),
    })  # fmt: skip
    labels = pa.table({
        "subject_id": pa.array(ids, pa.int64()),
        "prediction_time": pa.array([ADMISSION_EPOCH + dt.timedelta(hours=window_hours)] * n, pa.timestamp("us")),
        "boolean_value": pa.array(rng.random(n) < 0.3, pa.bool_()),
        "window_start": pa.array([ADMISSION_EPOCH] * n, pa.timestamp("us")),
    }, schema=SAMPLES_SCHEMA)  # fmt: skip
    return IngestResult(events, subjects, labels, IngestReport(source="test"))


def _splits(subjects: pa.Table, folds: list[int], seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = subjects.column("subject_id").to_numpy()
    rows = [(s, f, SPLITS[rng.choice(3, p=[0.6, 0.2, 0.2])]) for f in folds for s in ids.tolist()]
    return pa.table({
        "subject_id": pa.array([r[0] for r in rows], pa.int64()),
        "fold": pa.array([r[1] for r in rows], pa.int32()),
        "split": pa.array([r[2] for r in rows], pa.string()),
    }, schema=SPLITS_SCHEMA)  # fmt: skip


def _files(root: Path) -> dict[str, bytes]:
    """Every file's bytes, less the output writer's markers (seqsetvae/io.py): the reference saves each packed
    split through PackedSplit.save, a folder output of its own with a marker, where preprocess writes them
    inside its one output folder."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".seqsetvae-output"}


# What the sample-aware preprocess (issue 28) writes beyond the frozen reference (which saves through today's
# PackedSplit, so it writes the same files): the samples' prediction times (the reference has none: zeros),
# and a report counted by sample and by window. The arrays, the
# vocabulary and the statistics are compared byte for byte.
NOT_IN_REFERENCE = ("prediction_times.npy", "meta.json", "preprocess_report.json")


def _assert_same_output(got: Path, want: Path) -> None:
    got_files, want_files = _files(got), _files(want)
    assert sorted(got_files) == sorted(want_files)
    for name, data in want_files.items():
        if name.endswith(NOT_IN_REFERENCE):
            if name.endswith("meta.json"):  # the counts agree; only the format version moved on
                meta = json.loads(got_files[name])
                assert meta.pop("format_version") == 2 and meta == {k: v for k, v in json.loads(data).items()
                                                                    if k != "format_version"}, name
            continue
        if got_files[name] != data and name.endswith(".json"):  # a readable diff first
            assert json.loads(got_files[name]) == json.loads(data), name
        assert got_files[name] == data, name


VARIANTS = {
    "default": {},
    "standard-nolog-keep": {"normalisation": "standard", "log_transform": "none", "duplicates": "keep"},
    "list-last-descriptors": {"log_transform": ["C4", "C6", "absent"], "duplicates": "last",
                              "descriptors": "admission_set", "min_code_count": 3},
    "auto-descriptors-window": {"descriptors": "admission_set", "window_hours": 24.0, "clip": 2.0},
}  # fmt: skip


def _run_jobs(ingested: Path, splits: pa.Table, params, n_shards: int, work: Path, out: Path) -> None:
    """The preprocess stages' jobs, each through its files: scan per shard, fit per fold, pack per shard,
    assemble (what dvc.yaml's preprocess_scan@k / preprocess_fit@f / preprocess_pack@k / preprocess run)."""
    folds = np.unique(splits.column("fold").to_numpy()).tolist()
    for k in range(n_shards):
        prep.run_scan(ingested, splits, params, n_shards, k, work / "scan" / f"shard_{k}")
    for fold in folds:
        prep.run_fit(work / "scan", n_shards, params, fold, work / "fit" / f"fold_{fold}")
    for k in range(n_shards):
        prep.run_pack(ingested, splits, params, n_shards, k, work / "fit", work / "pack" / f"shard_{k}")
    prep.run_assemble(work / "fit", work / "pack", splits, params, n_shards, out)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("n_shards", [9, 1])
def test_sharded_preprocess_equals_whole_cohort_reference(tmp_path, params_dict, variant, n_shards, monkeypatch):
    params_dict["preprocess"].update(VARIANTS[variant], max_outside_window_share=1.0)  # events after the window on purpose
    params = params_from_dict(params_dict).preprocess
    cohort = _cohort(seed=len(variant) + (7 if n_shards == 9 else 1000), window_hours=params.window_hours)
    splits = _splits(cohort.subjects, folds=[0, 3], seed=1)
    reference.preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params, tmp_path / "want")

    write_ingested(tmp_path / "ingested", subject_batches(cohort, n_shards))
    shards = event_shards(tmp_path / "ingested")
    assert len(shards) == n_shards
    monkeypatch.setattr(stats.SortedTrainValues, "CHUNK", 5)  # long runs expand in many chunks
    _run_jobs(tmp_path / "ingested", splits, params, n_shards, tmp_path / "work", tmp_path / "got_jobs")
    _assert_same_output(tmp_path / "got_jobs", tmp_path / "want")
    prep.preprocess_ingested(tmp_path / "ingested", splits, params, tmp_path / "got_one_process")
    _assert_same_output(tmp_path / "got_one_process", tmp_path / "want")
    # the in-memory entry point (one shard) too
    prep.preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params, tmp_path / "got1")
    _assert_same_output(tmp_path / "got1", tmp_path / "want")


def test_fit_in_small_value_batches_equals_whole_cohort_reference(tmp_path, params_dict, monkeypatch):
    """The fit merges the scans' value counts a code range at a time: with a batch of a few entries (one code
    a batch, long codes expanded in chunks) the output is still the reference's, byte for byte."""
    params_dict["preprocess"].update(VARIANTS["auto-descriptors-window"], max_outside_window_share=1.0)
    params = params_from_dict(params_dict).preprocess
    cohort = _cohort(seed=11, window_hours=params.window_hours)
    splits = _splits(cohort.subjects, folds=[0, 3], seed=1)
    reference.preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params, tmp_path / "want")
    write_ingested(tmp_path / "ingested", subject_batches(cohort, 4))
    monkeypatch.setattr(value_counts, "BATCH_ENTRIES", 3)
    monkeypatch.setattr(stats.SortedTrainValues, "CHUNK", 5)
    _run_jobs(tmp_path / "ingested", splits, params, 4, tmp_path / "work", tmp_path / "got_jobs")
    _assert_same_output(tmp_path / "got_jobs", tmp_path / "want")
    prep.preprocess_ingested(tmp_path / "ingested", splits, params, tmp_path / "got_one_process")
    _assert_same_output(tmp_path / "got_one_process", tmp_path / "want")
    # the one-process run's scratch folder (the scans' value counts) is gone, also when the fit stops it
    strict = dataclasses.replace(params, max_outside_window_share=0.0)
    with pytest.raises(DataError, match="lie outside every sample's window"):
        prep.preprocess_ingested(tmp_path / "ingested", splits, strict, tmp_path / "refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["got_jobs", "got_one_process", "ingested", "want", "work"]


def test_more_shards_than_subjects_gives_empty_shards_and_the_same_output(tmp_path, params_dict):
    """data.shards longer than the cohort: the rule k*N//n leaves some shards empty; their jobs run and add
    nothing, and the output is that of one shard."""
    params_dict["preprocess"]["max_outside_window_share"] = 1.0
    params = params_from_dict(params_dict).preprocess
    cohort = _cohort(seed=5, n_subjects=16)
    splits = _splits(cohort.subjects, folds=[0], seed=2)
    prep.preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params, tmp_path / "want")
    write_ingested(tmp_path / "ingested", subject_batches(cohort, 20))
    sizes = [pa.parquet.read_metadata(p).num_rows for p in event_shards(tmp_path / "ingested")]
    assert len(sizes) == 20 and sizes.count(0) >= 4
    _run_jobs(tmp_path / "ingested", splits, params, 20, tmp_path / "work", tmp_path / "got")
    assert _files(tmp_path / "got") == _files(tmp_path / "want")


def test_shard_rule_is_contiguous_balanced_and_deterministic():
    """canonical.shard_starts: shard k holds positions k*N//n .. (k+1)*N//n - 1 of the sorted ids."""
    assert shard_starts(12_000, 6).tolist() == [0, 2000, 4000, 6000, 8000, 10000, 12000]  # P12: 6 x 2,000
    assert shard_starts(10, 4).tolist() == [0, 2, 5, 7, 10]
    assert shard_starts(2, 4).tolist() == [0, 0, 1, 1, 2]  # more shards than subjects: empty ones
    first = shard_first_ids(np.array([40, 10, 30, 20, 50]), 2)
    assert first.tolist() == [10, 30]


@pytest.mark.parametrize("budget", [1, 7, 1 << 22])
def test_train_value_counts_are_exact_and_mergeable(tmp_path, budget):
    """Counts of the values split over shards with codes of their own, saved and merged a code range at a time
    (any batch size), equal the counts of all values at once; order is numeric, -x < x."""
    rng = np.random.default_rng(0)
    names = np.array(["a", "b", "c", "d"])
    code = rng.integers(0, 4, 5000)
    value = np.round(rng.normal(0, 3, 5000), 1).astype(np.float32)
    parts = []
    for k, part in enumerate(np.array_split(np.arange(5000), 7)):
        local = np.unique(code[part])  # the shard's codes (positions in `names`), in lexical order
        counts = value_counts.TrainValueCounts()
        for half in np.array_split(part, 2):  # add merges
            counts.add(np.searchsorted(local, code[half]), value[half])
        counts.save(tmp_path, f"shard_{k}", local.size)
        parts.append((value_counts.ValueCountsFile(tmp_path, f"shard_{k}"), local.astype(np.int64)))
    batches = list(value_counts.merged_batches(parts, names.size, budget))
    assert [b.first for b in batches] == [0, *[b.end for b in batches[:-1]]] and batches[-1].end == names.size
    if budget == 1:
        assert len(batches) == names.size  # one code a batch when a code alone is over the budget
    for b in batches:
        for c in range(b.first, b.end):
            mine = b.code == c - b.first
            np.testing.assert_array_equal(np.repeat(b.value[mine], b.count[mine]),
                                          np.sort(value[code == c]).astype(np.float64))  # fmt: skip
            bits = b.value[mine].astype(np.float32).view(np.uint32)  # distinct pairs (-0.0 and 0.0 are two)
            assert np.unique(bits).size == bits.size


def test_value_counts_files_that_are_cut_short_are_named(tmp_path):
    counts = value_counts.TrainValueCounts()
    counts.add(np.array([0, 0, 1]), np.array([1.0, 2.0, 3.0], np.float32))
    counts.save(tmp_path, "fold_0", 2)
    bits = tmp_path / "fold_0.value_bits.npy"
    bits.write_bytes(bits.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"fold_0.value_bits.npy: truncated"):
        value_counts.ValueCountsFile(tmp_path, "fold_0")
    counts.save(tmp_path, "fold_1", 2)
    (tmp_path / "fold_1.value_counts.npy").unlink()
    with pytest.raises(DataError, match=r"fold_1.value_counts.npy: missing"):
        value_counts.ValueCountsFile(tmp_path, "fold_1")


def test_shards_out_of_subject_order_are_refused(tmp_path, params_dict):
    cohort = _cohort(seed=3)
    write_ingested(tmp_path / "ingested", subject_batches(cohort, 3))
    shards = event_shards(tmp_path / "ingested")
    first, last = shards[0].read_bytes(), shards[-1].read_bytes()
    shards[0].write_bytes(last), shards[-1].write_bytes(first)

    with pytest.raises(DataError, match="ascending, disjoint subject id ranges"):
        prep.preprocess_ingested(tmp_path / "ingested", _splits(cohort.subjects, [0], 0),
                                 params_from_dict(params_dict).preprocess, tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out").exists()
    # the scan job of a shard whose events lie outside its range by the data.shards rule: named
    with pytest.raises(DataError, match="0.parquet: subject ids .* outside this shard's range"):
        prep.run_scan(tmp_path / "ingested", _splits(cohort.subjects, [0], 0), params_from_dict(params_dict).preprocess,
                      3, 0, tmp_path / "scan")  # fmt: skip
    assert not (tmp_path / "scan").exists()


def test_physionet2012_sharded_ingest_and_preprocess_equal_one_batch(tmp_path, p12_dir, base_params_dict):
    """Real data, set a (4,000 stays): ingest in 6 shards gives the tables and report of one
    batch, and preprocess over those shards writes byte for byte what the reference writes."""
    import argparse

    from seqsetvae.data.physionet2012 import ingest_physionet2012
    from seqsetvae.data.splits import make_splits
    from seqsetvae.stages import ingest as ingest_stage

    d = copy.deepcopy(base_params_dict)
    d["data"]["physionet2012"].update({"dir": str(p12_dir), "sets": ["a"], "download": False})
    d["preprocess"]["descriptors"] = "admission_set"
    d["split"]["folds"] = [0, 1]
    params = params_from_dict(d)
    whole = ingest_physionet2012(params.data.physionet2012, params.root)
    d["data"].update(source="physionet2012", shards=list(range(6)))
    ingest_stage.run(params_from_dict(d), argparse.Namespace(step="all", out=tmp_path / "ingested"))  # the 6 jobs
    assert len(event_shards(tmp_path / "ingested")) == 6
    events, subjects, labels = read_ingested(tmp_path / "ingested")
    for got, want in ((events, whole.events), (subjects, whole.subjects), (labels, whole.labels)):
        assert got.schema == want.schema
        pd.testing.assert_frame_equal(got.to_pandas(), want.to_pandas())  # (Table.equals: NaN != NaN)
    report = json.loads((tmp_path / "ingested" / "ingest_report.json").read_text())
    assert report == json.loads(json.dumps(whole.report.to_dict()))

    splits, _ = make_splits(whole.subjects, whole.labels, params.split)
    reference.preprocess(whole.events, whole.subjects, whole.labels, splits, params.preprocess,
                         tmp_path / "want")  # fmt: skip
    _run_jobs(tmp_path / "ingested", splits, params.preprocess, 6, tmp_path / "work", tmp_path / "got")
    _assert_same_output(tmp_path / "got", tmp_path / "want")


def test_log1p_portable_is_the_c_librarys_log1p_whatever_the_cpu():
    """The normalisation's log1p goes through math.log1p (glibc), not numpy's SIMD loops, which take Intel SVML on
    AVX-512 hosts and differ in the last bit: the packed bytes must not depend on the CPU (tests/test_samples.py)."""
    import math

    from seqsetvae.data.stats import log1p_portable

    rng = np.random.default_rng(0)
    x64 = np.r_[rng.lognormal(size=5000), 0.0, 1e-300, np.nan, 3.0, 3.0]
    got = log1p_portable(x64)
    assert got.dtype == np.float64
    expected = np.array([math.log1p(v) for v in x64])
    np.testing.assert_array_equal(got, expected)  # bit for bit, NaN in place
    x32 = x64.astype(np.float32).reshape(-1, 5)
    got32 = log1p_portable(x32)
    assert got32.dtype == np.float32 and got32.shape == x32.shape
    np.testing.assert_array_equal(got32.ravel(), np.array([math.log1p(float(v)) for v in x32.ravel()]).astype(np.float32))
    assert log1p_portable(np.zeros(0, np.float32)).shape == (0,)
