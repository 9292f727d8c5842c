"""Real MEDS clients (issue 28 item 7): data written by `meds-testing-helpers`, predictions scored by
`meds-evaluation`, our export checked by the `meds` schemas and by `meds-testing-helpers`' own reader.

The cohort is meds-testing-helpers' bundled sample dataset with tasks (static_sample_data/
simple_static_sharded_by_split_with_tasks.yaml), written UNMODIFIED by its own `MEDSDataset(...).write()`,
exactly as its pytest fixture `simple_static_MEDS_dataset_with_task` does (the fixture writes to a session-wide
temporary folder; this module writes the same thing under tmp_path): 6 subjects, each with a MEDS_BIRTH row,
an EYE_COLOR//<colour> categorical and a HEIGHT numeric static row, shards data/{train,tuning,held_out}/*.parquet,
and one task, boolean_value_task, of 21 samples in two label files (3 or 4 prediction times per subject, with
the integer_value / float_value / categorical_value columns MEDS allows, all null).

Params are set as a user would for a cohort this small (tiny model, one training step, `evaluate.n_bootstrap`
200: with one test subject of 3 samples, a third of the resamples hold a single class, and 5 resamples can all
do so, which the evaluate stage refuses). Nothing else needed changing: preprocess.max_outside_window_share
and the split sizes pass as they are (0 of 36 events outside the windows; random split 4 / 1 / 1 subjects).
"""

from __future__ import annotations

import json
from pathlib import Path

import meds
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from meds import CodeMetadataSchema, DataSchema, DatasetMetadataSchema, LabelSchema, SubjectSplitSchema
from meds_evaluation.evaluate import evaluate_binary_classification
from meds_evaluation.schema import PredictionSchema
from meds_testing_helpers.dataset import MEDSDataset
from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS
from tests.pipeline_project import TINY_OVERRIDES

from seqsetvae.cli import main as seqsetvae_main
from seqsetvae.config import PROJECT_ROOT, MedsParams, deep_merge, read_yaml
from seqsetvae.data import meds_source
from seqsetvae.data.canonical import read_ingested
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.splits import read_splits

TASK = "boolean_value_task"
SPLITS = ("train", "val", "test")


def _write_sample_dataset(root: Path) -> Path:
    """meds-testing-helpers' sample dataset with tasks, written by its own writer; returns its root."""
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT_WITH_TASKS).write(root)
    return root


def _task_samples(meds_root: Path) -> dict[tuple[int, int], bool]:
    """(subject_id, prediction_time in µs) -> label, read straight from the task's label files."""
    files = sorted((meds_root / "task_labels" / TASK).glob("*.parquet"))
    assert len(files) == 2, files  # labels_A / labels_B as the package writes them
    table = pa.concat_tables(pq.read_table(f, columns=["subject_id", "prediction_time", "boolean_value"])
                             for f in files)
    pred = table.column("prediction_time").cast(pa.timestamp("us")).cast(pa.int64()).to_pylist()
    return dict(zip(zip(table.column("subject_id").to_pylist(), pred), table.column("boolean_value").to_pylist()))


def _params(root: Path, meds_root: Path, **sections) -> Path:
    params = deep_merge(read_yaml(PROJECT_ROOT / "params.yaml"), TINY_OVERRIDES)
    params = deep_merge(params, {
        "data": {"source": "meds", "meds": {"dir": str(meds_root), "labels": str(meds_root / "task_labels" / TASK),
                                           "window_start_column": None}},
        "pretrain": {"max_epochs": 1}, "finetune": {"max_epochs": 1},
        "trainer": {"accelerator": "cpu", "limit_train_batches": 1, "limit_val_batches": 1},
        "evaluate": {"n_bootstrap": 200},
    })  # fmt: skip
    params = deep_merge(params, sections)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def _stage(params: Path, stage: str, *args: str | Path) -> None:
    rc = seqsetvae_main([stage, "--params", str(params), *map(str, args)])
    assert rc == 0, f"seqsetvae {stage} exited {rc}"


def _keys(split: PackedSplit) -> list[tuple[int, int]]:
    return list(zip(split.subject_ids.tolist(), split.prediction_times.tolist()))


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict[str, Path]:
    """The sample dataset through ingest and split (fast: no model)."""
    root = tmp_path_factory.mktemp("meds_clients")
    meds_root = _write_sample_dataset(root / "sample_meds")
    params = _params(root, meds_root)
    _stage(params, "ingest", "--out", root / "ingested")
    _stage(params, "split", "--ingested", root / "ingested", "--out", root / "splits.parquet")
    return {"root": root, "meds": meds_root, "params": params, "ingested": root / "ingested",
            "splits": root / "splits.parquet"}  # fmt: skip


@pytest.fixture(scope="module")
def trained(ingested) -> dict[str, Path]:
    """... then preprocess, a one-step pretrain, a one-step finetune and evaluate with --meds-predictions."""
    root, params = ingested["root"], ingested["params"]
    processed = root / "processed"
    _stage(params, "preprocess", "--ingested", ingested["ingested"], "--splits", ingested["splits"], "--out", processed)
    _stage(params, "pretrain", "--data", processed, "--fold", 0, "--out", root / "pretrain",
           "--metrics", root / "pretrain.json", "--details", root / "pretrain_details.json",
           "--curves", root / "pretrain_curves")  # fmt: skip
    _stage(params, "finetune", "--data", processed, "--fold", 0, "--pretrained", root / "pretrain",
           "--out", root / "finetune", "--metrics", root / "finetune.json",
           "--details", root / "finetune_details.json", "--curves", root / "finetune_curves",
           "--predictions", root / "predictions.parquet")  # fmt: skip
    _stage(params, "evaluate", "--predictions", root / "predictions.parquet", "--metrics", root / "evaluate.json",
           "--details", root / "evaluate_details.json", "--meds-predictions", root / "meds_predictions.parquet")
    return {**ingested, "processed": processed, "predictions": root / "predictions.parquet",
            "metrics": root / "evaluate.json", "meds_predictions": root / "meds_predictions.parquet"}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# meds-testing-helpers' sample dataset through the pipeline


def test_sample_dataset_is_ingested_unmodified_with_every_sample(ingested):
    expected = _task_samples(ingested["meds"])
    per_subject = np.bincount(np.unique([s for s, _ in expected], return_inverse=True)[1])
    assert len(expected) == 21 and len(per_subject) == 6 and per_subject.min() >= 3  # several per subject
    _, subjects, labels = read_ingested(ingested["ingested"])
    pred = labels.column("prediction_time").cast(pa.int64()).to_pylist()
    got = dict(zip(zip(labels.column("subject_id").to_pylist(), pred), labels.column("boolean_value").to_pylist()))
    assert got == expected
    # MEDS_BIRTH -> birth_time, EYE_COLOR//BROWN -> categorical EYE_COLOR = "BROWN", HEIGHT -> numeric HEIGHT
    by_id = {r["subject_id"]: r for r in subjects.to_pylist()}
    assert by_id[239684]["EYE_COLOR"] == "BROWN" and by_id[1195293]["EYE_COLOR"] == "BLUE"
    assert by_id[239684]["HEIGHT"] == pytest.approx(175.271115221764, rel=1e-6)
    assert str(by_id[239684]["birth_time"]) == "1980-12-28 00:00:00"
    report = json.loads((ingested["ingested"] / "ingest_report.json").read_text())
    assert report["samples"] == 21 and report["subjects"] == 6


@pytest.mark.slow
def test_sample_dataset_runs_through_every_stage_keyed_by_sample_and_split_by_subject(trained):
    expected = _task_samples(trained["meds"])
    splits = read_splits(trained["splits"]).to_pandas()
    fold0 = splits[splits["fold"] == 0]
    assert fold0["subject_id"].is_unique and set(fold0["subject_id"]) == {s for s, _ in expected}
    split_of = dict(zip(fold0["subject_id"], fold0["split"]))
    packed = {name: PackedSplit.load(trained["processed"] / "fold_0" / name) for name in SPLITS}
    seen: list[tuple[int, int]] = []
    for name, split in packed.items():
        keys = _keys(split)
        assert keys, f"{name}: no samples"
        # every sample of the split's subjects, and only theirs: the split is by subject
        assert sorted(keys) == sorted(k for k in expected if split_of[k[0]] == name), name
        assert split.labels.tolist() == [float(expected[k]) for k in keys], name
        seen += keys
    assert sorted(seen) == sorted(expected)  # each sample in exactly one packed split
    subjects = {name: set(packed[name].subject_ids.tolist()) for name in SPLITS}
    assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                or subjects["val"] & subjects["test"])  # fmt: skip
    assert max(np.bincount(np.unique(packed["test"].subject_ids, return_inverse=True)[1])) >= 3

    # one prediction per test sample, keyed by (subject, prediction time), with the sample's label
    predictions = pq.read_table(trained["predictions"])
    pred_keys = list(zip(predictions.column("subject_id").to_pylist(),
                         predictions.column("prediction_time").cast(pa.int64()).to_pylist()))  # fmt: skip
    assert predictions.num_rows == len(set(pred_keys)) == len(_keys(packed["test"]))
    assert sorted(pred_keys) == sorted(_keys(packed["test"]))
    assert predictions.column("label").to_pylist() == [int(expected[k]) for k in pred_keys]
    assert np.isfinite(predictions.column("probability").to_numpy()).all()


# --------------------------------------------------------------------------------------------------
# meds-evaluation scores our --meds-predictions


def _meds_evaluation_auroc(path: Path) -> float:
    """meds-evaluation's own scoring, in process: its CLI (meds-evaluation-cli) reads the parquet with polars
    and calls this function; `samples_equally_weighted` is the per-sample AUROC our evaluate stage reports."""
    result = evaluate_binary_classification(pl.read_parquet(path))
    return result["samples_equally_weighted"]["roc_auc_score"]


# Our metrics JSON rounds each figure to 6 decimals (seqsetvae.evaluation.metrics.DIGITS: byte-stable reruns).
ROUNDING = 5e-7


@pytest.mark.slow
def test_meds_evaluation_scores_the_pipeline_predictions_with_our_auroc(trained):
    table = pq.read_table(trained["meds_predictions"])
    PredictionSchema.validate(table)  # the exact types, no cast needed
    assert table.num_rows == pq.read_metadata(trained["predictions"]).num_rows
    ours = json.loads(trained["metrics"].read_text())["auroc"]
    assert _meds_evaluation_auroc(trained["meds_predictions"]) == pytest.approx(ours, abs=ROUNDING)


def test_meds_evaluation_scores_evaluate_output_with_our_auroc_on_many_samples(tmp_path, params_dict):
    """A predictions file as finetune writes it, with several samples per subject, ties and a non-trivial
    AUROC (the pipeline run above has one test subject, where any decent AUROC is 0.5 or 1)."""
    rng = np.random.default_rng(0)
    n = 120
    sid = np.repeat(np.arange(1, 31), 4)
    label = (rng.random(n) < 0.3).astype(np.int8)
    prob = np.round(np.clip(0.3 * label + rng.random(n) * 0.7, 0, 1), 2)  # rounded: many tied scores
    t0 = np.datetime64("2020-01-01T00:00:00", "us")
    pred_time = t0 + (np.tile(np.arange(4), 30) * 3_600_000_000).astype("timedelta64[us]")
    pq.write_table(pa.table({
        "subject_id": pa.array(sid, pa.int64()), "prediction_time": pa.array(pred_time, pa.timestamp("us")),
        "label": pa.array(label, pa.int8()), "probability": pa.array(prob, pa.float64()),
    }), tmp_path / "predictions.parquet")  # fmt: skip
    params_dict["evaluate"]["n_bootstrap"] = 20
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict), encoding="utf-8")
    _stage(tmp_path / "params.yaml", "evaluate", "--predictions", tmp_path / "predictions.parquet",
           "--metrics", tmp_path / "m.json", "--details", tmp_path / "d.json",
           "--meds-predictions", tmp_path / "meds.parquet")  # fmt: skip
    ours = json.loads((tmp_path / "m.json").read_text())["auroc"]
    assert 0.6 < ours < 0.95
    assert _meds_evaluation_auroc(tmp_path / "meds.parquet") == pytest.approx(ours, abs=ROUNDING)
    # four samples per subject: the confidence intervals resample subjects, each with all its samples
    assert json.loads((tmp_path / "d.json").read_text())["bootstrap"]["unit"] == "subject"


def test_float32_ties_in_the_meds_form_are_reported_not_silent(tmp_path, params_dict, caplog):
    """meds-evaluation's schema holds probabilities as float32 (it casts float64 down), so saturated
    probabilities that differ only below float32's resolution tie there and its AUROC differs from ours,
    which is computed on float64. The evaluate stage says so, with both figures; this pins that meds-evaluation
    does report the float32 one."""
    t0 = np.datetime64("2020-01-01T00:00:00", "us")
    label = np.array([0, 1, 0, 1, 1, 0], np.int8)
    prob = np.array([1 - 1e-9, 1 - 1e-10, 0.2, 1 - 2e-10, 0.9, 0.1])  # the first, second, fourth tie as float32
    pq.write_table(pa.table({
        "subject_id": pa.array([1, 1, 2, 2, 3, 3], pa.int64()),
        "prediction_time": pa.array(t0 + np.arange(6).astype("timedelta64[h]"), pa.timestamp("us")),
        "label": pa.array(label, pa.int8()), "probability": pa.array(prob, pa.float64()),
    }), tmp_path / "predictions.parquet")  # fmt: skip
    params_dict["evaluate"]["n_bootstrap"] = 50
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict), encoding="utf-8")
    with caplog.at_level("WARNING", logger="seqsetvae"):
        _stage(tmp_path / "params.yaml", "evaluate", "--predictions", tmp_path / "predictions.parquet",
               "--metrics", tmp_path / "m.json", "--details", tmp_path / "d.json",
               "--meds-predictions", tmp_path / "meds.parquet")  # fmt: skip
    ours = json.loads((tmp_path / "m.json").read_text())["auroc"]
    theirs = _meds_evaluation_auroc(tmp_path / "meds.parquet")
    assert ours == pytest.approx(8 / 9, abs=ROUNDING) and theirs == pytest.approx(7 / 9)
    warned = [r.getMessage() for r in caplog.records if "float32" in r.getMessage()]
    assert len(warned) == 1 and "2 distinct probabilities become ties" in warned[0]
    assert f"AUROC {theirs:.6f} where this stage reports {ours:.6f}" in warned[0]


# --------------------------------------------------------------------------------------------------
# Our export: valid MEDS, read back to the same samples


def test_export_of_the_sample_dataset_passes_the_meds_schemas_and_reads_back(ingested, tmp_path):
    out = tmp_path / "export"
    rc = meds_source.main([str(ingested["ingested"]), str(out), "--shards", "2",
                           "--splits", str(ingested["splits"]), "--fold", "0"])  # fmt: skip
    assert rc == 0
    shards = sorted((out / "data").glob("*.parquet"))
    assert len(shards) == 2
    for f in shards:
        DataSchema.validate(pq.read_table(f))
    LabelSchema.validate(pq.read_table(out / meds_source.LABELS_FILE))
    CodeMetadataSchema.validate(pq.read_table(out / meds.code_metadata_filepath))
    SubjectSplitSchema.validate(pq.read_table(out / meds.subject_splits_filepath))
    DatasetMetadataSchema.validate(json.loads((out / meds.dataset_metadata_filepath).read_text()))
    # meds-testing-helpers' reader takes it as a MEDS dataset too (it checks every table against the schemas)
    dataset = MEDSDataset(root_dir=out)
    assert sorted(dataset.subject_splits.column("subject_id").to_pylist()) == sorted(
        read_splits(ingested["splits"]).column("subject_id").to_pylist())

    # read back: the same samples, events, birth times and static descriptors (categorical ones included)
    back = meds_source.ingest_meds(MedsParams(dir=str(out), labels=str(out / meds_source.LABELS_FILE), window_start_column=None), tmp_path)
    events, subjects, labels = read_ingested(ingested["ingested"])
    keys = ["subject_id", "prediction_time", "boolean_value"]
    assert back.labels.select(keys).equals(labels.select(keys))
    assert back.labels.num_rows == 21
    assert back.events.equals(events)
    same = [c for c in subjects.column_names if c != "group"]  # group is the shard path: it names the new shard
    assert back.subjects.select(same).equals(subjects.select(same))
    assert back.report.to_dict()["rows_skipped"] == 0
