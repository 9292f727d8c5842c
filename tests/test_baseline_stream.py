"""The baseline stage's bounded path (seqsetvae.baseline_stream: two passes over event chunks) gives exactly the
fits, predictions and details of the all-in-memory path (fold_features, subsample_train, run_baselines)."""

from __future__ import annotations

import argparse
import copy
import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from seqsetvae import baselines
from seqsetvae.baseline_stream import run_fold
from seqsetvae.baselines import FoldSamples, fold_features, run_baselines, subsample_train
from seqsetvae.config import params_from_dict
from seqsetvae.data.canonical import subject_batches, write_ingested
from seqsetvae.data.splits import make_splits
from seqsetvae.data.summaries import samples_from_labels
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.errors import DataError
from seqsetvae.stages.baseline import iter_event_chunks, train_subsamples

N_SHARDS = 3


@pytest.fixture(scope="module")
def params(base_params_dict):
    d = copy.deepcopy(base_params_dict)
    d["data"]["synthetic"].update(n_subjects=900, seed=5)
    d["split"].update(protocol="random", folds=[0])
    d["baseline"]["logreg"]["C"] = [0.01, 0.1]
    d["baseline"]["gbm"].update(learning_rate=[0.1], max_leaf_nodes=[7, 15], l2_regularization=[1.0], max_iter=60)
    d["evaluate"]["n_bootstrap"] = 50
    return params_from_dict(d)


@pytest.fixture(scope="module")
def cohort(params, tmp_path_factory):
    """An ingest folder of several shards, with a text descriptor, and three samples per subject (at 24 h,
    36 h and 48 h after admission: overlapping windows)."""
    res = ingest_synthetic(params.data.synthetic)
    n = res.subjects.num_rows
    gender = pa.array([None if i % 7 == 0 else ("M" if i % 2 else "F") for i in range(n)], pa.string())
    res = dataclasses.replace(res, subjects=res.subjects.append_column("GENDER", gender))
    folder = tmp_path_factory.mktemp("stream") / "ingested"
    write_ingested(folder, subject_batches(res, N_SHARDS))
    one = samples_from_labels(res.subjects, res.labels)
    parts = [one.set_column(1, "prediction_time", pc.subtract(one.column("prediction_time"), pa.scalar(
        np.timedelta64(h, "h").astype("timedelta64[us]")))).cast(one.schema) for h in (24, 12)]
    samples = pa.concat_tables([*parts, one]).sort_by([("subject_id", "ascending"), ("prediction_time", "ascending")])
    splits, _ = make_splits(res.subjects, res.labels, params.split)
    return folder, res, samples, splits


def _in_memory(params, res, samples, splits, subsamples, max_codes):
    f = fold_features(res.events, res.subjects, samples, splits, 0, params.preprocess.window_hours,
                      params.baseline.categorical_descriptors, max_codes=max_codes)
    whole = np.arange(f.y["train"].size)  # positions in the whole train split of the current train rows
    for s in subsamples:  # subsample_train takes positions in the current (already cut) train split
        f = subsample_train(f, np.searchsorted(whole, s.rows), s.fraction, s.seed, report_key=s.report_key)
        whole = s.rows
    return run_baselines(f, params.baseline, params.evaluate)


@pytest.mark.parametrize("label_fraction, max_train, max_codes, chunk_rows, predict_chunk", [
    (None, None, None, 1 << 21, 8192),  # P12's and the demo's settings: one chunk per shard, one prediction call
    (0.5, 300, 6, 997, 101),  # both subsamples nested, few codes, many chunks, prediction blocks across chunks
])
def test_streamed_fold_is_the_in_memory_fold_bit_for_bit(params, cohort, monkeypatch, label_fraction, max_train,
                                                         max_codes, chunk_rows, predict_chunk):
    folder, res, samples, splits = cohort
    monkeypatch.setattr(baselines, "PREDICT_CHUNK", predict_chunk)
    p = dataclasses.replace(params, baseline=dataclasses.replace(params.baseline, max_train_samples=max_train))
    args = argparse.Namespace(label_fraction=label_fraction, splits="splits.parquet", fold=0)
    plan = FoldSamples.of(res.subjects, samples, splits, 0)
    subsamples = train_subsamples(plan, p, args)
    assert [s.report_key for s in subsamples] == (["label_subsample", "train_sample"] if max_train else [])
    chunks = list(iter_event_chunks(folder, chunk_rows))
    assert len(chunks) >= N_SHARDS
    streamed = run_fold(lambda: iter(chunks), res.subjects, plan, p.preprocess.window_hours,
                        p.baseline.categorical_descriptors, max_codes, subsamples, p.baseline, p.evaluate,
                        baselines.MODELS, 0)
    want = _in_memory(p, res, samples, splits, subsamples, max_codes)
    for key in want.metrics:  # part by part first: a failure names the part that differs
        assert streamed.metrics[key] == want.metrics[key], key
    assert streamed.metrics == want.metrics
    assert streamed.metrics["features"]["categorical_levels"] == {"GENDER": ["F", "M"]}
    for name in baselines.MODELS:
        assert streamed.predictions[name].equals(want.predictions[name])
    n_val = want.metrics["subjects"]["val"]["n"]
    assert (n_val > predict_chunk) == (predict_chunk < 8192)  # the small block size does cut val in blocks


def test_event_chunks_refuse_a_shard_not_sorted_by_subject(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"subject_id": np.array([2, 1], np.int64)}), tmp_path / "data" / "0.parquet")
    with pytest.raises(DataError, match="not sorted by subject_id"):
        list(iter_event_chunks(tmp_path))
