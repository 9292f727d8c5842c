"""Baselines: the fold's subjects exactly, nothing fitted on val / test, byte-identical reruns, the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml

from seqsetvae.cli import main
from seqsetvae.config import Params, params_from_dict
from seqsetvae.data.canonical import write_ingested
from seqsetvae.data.splits import SPLITS, fold_assignment, make_splits
from seqsetvae.data.summaries import samples_from_labels
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.errors import DataError
from seqsetvae.io import write_parquet
from seqsetvae.baselines import MODELS, fit_select, fold_features, run_baselines

FOLDS = [0, 1]


def _small(params_dict: dict) -> dict:
    """Repo params with a small cohort and small grids, so each fit takes well under a second."""
    d = params_dict
    d["data"]["synthetic"].update(n_subjects=1200, seed=3)
    d["split"].update(protocol="random", folds=FOLDS)
    d["baseline"]["logreg"]["C"] = [0.01, 0.1]
    d["baseline"]["gbm"].update(learning_rate=[0.1], max_leaf_nodes=[7, 15], l2_regularization=[1.0],
                                max_iter=150)
    d["evaluate"]["n_bootstrap"] = 1000
    return d


@pytest.fixture(scope="module")
def small_dict(base_params_dict) -> dict:
    import copy

    return _small(copy.deepcopy(base_params_dict))


@pytest.fixture(scope="module")
def params(small_dict) -> Params:
    return params_from_dict(small_dict)


@pytest.fixture(scope="module")
def cohort(params):
    res = ingest_synthetic(params.data.synthetic)
    splits, _ = make_splits(res.subjects, res.labels, params.split)
    return res, splits


def _features(params: Params, events, subjects, labels, splits, fold: int = 0):
    return fold_features(events, subjects, samples_from_labels(subjects, labels), splits, fold,
                         params.preprocess.window_hours, params.baseline.categorical_descriptors)


def test_features_cover_exactly_the_folds_subjects(params, cohort):
    res, splits = cohort
    ids, codes = fold_assignment(splits, 1)
    # Three test subjects lose every event: the model's preprocess would drop them, the baselines keep them.
    emptied = ids[codes == 2][:3]
    events = res.events.filter(pc.invert(pc.is_in(res.events.column("subject_id"), value_set=pa.array(emptied))))
    f = _features(params, events, res.subjects, res.labels, splits, fold=1)

    labels = dict(zip(res.labels.column("subject_id").to_pylist(), res.labels.column("boolean_value").to_pylist()))
    for k, name in enumerate(SPLITS):
        np.testing.assert_array_equal(f.keys[name]["subject_id"].to_numpy(), ids[codes == k])
        assert f.X[name].shape == (int((codes == k).sum()), len(f.columns))
        np.testing.assert_array_equal(f.y[name], [labels[s] for s in ids[codes == k]])
        assert f.report["subjects"][name]["n"] == int((codes == k).sum())
    assert f.report["subjects"]["test"]["without_events_in_window"] == 3
    test = f.frame("test").droplevel("prediction_time")
    assert test.loc[emptied].filter(like="__count").eq(0).all().all()
    assert test.loc[emptied].drop(columns=test.filter(like="__count").columns).filter(like="__").isna().all().all()
    # Same column layout in every split, decided once.
    assert all(f.X[s].shape[1] == len(f.columns) for s in SPLITS)


def test_nothing_is_fitted_on_val_or_test(params, cohort):
    res, splits = cohort
    ids, codes = fold_assignment(splits, 0)
    held_out = ids[codes != 0]
    one_point = dataclasses.replace(params.baseline, logreg=dataclasses.replace(params.baseline.logreg, C=[0.1]))

    # Perturb every val / test event (scaled values) and give val / test subjects a code train never has.
    ev = res.events
    is_held = pc.is_in(ev.column("subject_id"), value_set=pa.array(held_out)).to_numpy(zero_copy_only=False)
    values = ev.column("numeric_value").to_numpy(zero_copy_only=False).copy()
    values[is_held] = values[is_held] * 7.0 + 100.0
    extra = pa.table({
        "subject_id": pa.array(held_out, pa.int64()),
        "time": pa.array(np.full(held_out.size, np.datetime64("2000-01-01T01:00", "us")), pa.timestamp("us")),
        "code": pa.array(["ONLY_HELD_OUT"] * held_out.size, pa.string()),
        "numeric_value": pa.array(np.ones(held_out.size), pa.float32()),
    }).cast(ev.schema)
    perturbed = pa.concat_tables([ev.set_column(3, "numeric_value", pa.array(values, pa.float32())), extra])

    base = _features(params, res.events, res.subjects, res.labels, splits)
    moved = _features(params, perturbed, res.subjects, res.labels, splits)
    assert moved.columns == base.columns
    assert moved.report["features"]["codes_not_in_train"] == ["ONLY_HELD_OUT"]
    pd.testing.assert_frame_equal(moved.frame("train"), base.frame("train"))
    assert not moved.frame("test").equals(base.frame("test"))  # the perturbation did reach the held-out features

    a, b = fit_select("logreg", one_point, base), fit_select("logreg", one_point, moved)
    prep_a, prep_b = a.model.named_steps["prep"], b.model.named_steps["prep"]
    imp_a = prep_a.named_transformers_["num"].named_steps["simpleimputer"]
    imp_b = prep_b.named_transformers_["num"].named_steps["simpleimputer"]
    np.testing.assert_array_equal(imp_a.statistics_, imp_b.statistics_)
    np.testing.assert_array_equal(prep_a.named_transformers_["num"].named_steps["standardscaler"].mean_,
                                  prep_b.named_transformers_["num"].named_steps["standardscaler"].mean_)
    np.testing.assert_array_equal(a.model.named_steps["clf"].coef_, b.model.named_steps["clf"].coef_)
    # The imputer's medians are the train medians (of the columns that have missing values or not).
    train_medians = base.frame("train")[base.numeric].median().to_numpy()
    np.testing.assert_allclose(imp_a.statistics_, train_medians)


def test_selection_picks_best_val_auprc_and_auroc_is_useful(params, cohort):
    res, splits = cohort
    f = _features(params, res.events, res.subjects, res.labels, splits)
    result = run_baselines(f, params.baseline, params.evaluate)
    for name in MODELS:
        m = result.metrics[name]
        rows = m["validation"]
        assert len(rows) == {"logreg": 2, "gbm": 2}[name]
        best = max(rows, key=lambda r: r["val_auprc"])
        assert all(m["hyperparameters"][k] == best[k] for k in m["hyperparameters"])
        assert m["n"] == f.report["subjects"]["test"]["n"]
        # The synthetic label depends on the trajectories the summaries describe.
        assert m["auroc"]["value"] >= 0.70, (name, m["auroc"])
        pred = result.predictions[name]
        assert pred.column_names == ["subject_id", "prediction_time", "label", "probability"]
        np.testing.assert_array_equal(pred.column("subject_id").to_numpy(), f.keys["test"]["subject_id"].to_numpy())
        np.testing.assert_array_equal(pred.column("prediction_time").to_numpy(),
                                      f.keys["test"]["prediction_time"].to_numpy())


def _project(tmp_path: Path, small_dict: dict, cohort) -> tuple[Path, Path, Path]:
    res, splits = cohort
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(small_dict), encoding="utf-8")
    write_ingested(tmp_path / "ingested", res)
    write_parquet(tmp_path / "splits.parquet", splits)
    return params_file, tmp_path / "ingested", tmp_path / "splits.parquet"


def _cli(params_file: Path, ingested: Path, splits: Path, fold: int, out: Path) -> int:
    return main(["baseline", "--params", str(params_file), "--ingested", str(ingested), "--splits", str(splits),
                 "--fold", str(fold), "--predictions-dir", str(out / "pred"), "--metrics-dir", str(out / "metrics"),
                 "--details", str(out / "details.json")])


def test_cli_writes_outputs_byte_identical_on_rerun(tmp_path, small_dict, cohort):
    params_file, ingested, splits = _project(tmp_path, small_dict, cohort)
    runs = [tmp_path / "run1", tmp_path / "run2"]
    for out in runs:
        assert _cli(params_file, ingested, splits, 1, out) == 0
    files = sorted(p.relative_to(runs[0]) for p in runs[0].rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["details.json", "metrics/gbm/fold_1.json", "metrics/logreg/fold_1.json",
                                       "pred/.seqsetvae-output", "pred/gbm.parquet", "pred/logreg.parquet"]
    for f in files:
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes(), f
    pred = pd.read_parquet(runs[0] / "pred" / "gbm.parquet")
    ids, codes = fold_assignment(cohort[1], 1)
    np.testing.assert_array_equal(pred["subject_id"].to_numpy(), ids[codes == 2])
    assert pred["probability"].between(0, 1).all()
    details = json.loads((runs[0] / "details.json").read_text())
    for name in ("logreg", "gbm"):  # per model: the four point estimates, the same keys as the evaluate stage's
        m = json.loads((runs[0] / "metrics" / name / "fold_1.json").read_text())
        assert m == {k: details[name][k]["value"] for k in ("auroc", "auprc", "brier", "ece")}
    # What the evaluate stage reads, it can read.
    assert main(["evaluate", "--params", str(params_file), "--predictions", str(runs[0] / "pred" / "gbm.parquet"),
                 "--metrics", str(tmp_path / "ev.json"), "--details", str(tmp_path / "ev_details.json"),
                 "--plots", str(tmp_path / "plots")]) == 0


def test_unknown_fold_is_a_clear_error(tmp_path, small_dict, cohort, caplog, params):
    params_file, ingested, splits = _project(tmp_path, small_dict, cohort)
    with caplog.at_level(logging.ERROR):
        assert _cli(params_file, ingested, splits, 7, tmp_path / "out") == 3
    assert f"{splits}: fold 7 is not in the split table (folds present: {FOLDS})" in caplog.text
    assert not (tmp_path / "out").exists()
    res, split_table = cohort
    with pytest.raises(DataError, match="fold 7"):
        _features(params, res.events, res.subjects, res.labels, split_table, fold=7)


def test_both_models_fit_on_csr_and_match_the_dense_fit(params, cohort):
    """The pipelines take the CSR summaries; the fit and the chunked prediction equal a fit on the dense
    features (the Densify step reproduces them exactly)."""
    import scipy.sparse as sp

    from seqsetvae.baselines import build_model, grid, predict_proba

    res, splits = cohort
    f = _features(params, res.events, res.subjects, res.labels, splits)
    assert all(sp.issparse(f.X[s]) and f.X[s].format == "csr" for s in SPLITS)
    dense_tr, dense_te = f.frame("train").to_numpy(), f.frame("test").to_numpy()
    for name in MODELS:
        hp = grid(name, params.baseline)[0]
        on_csr = build_model(name, hp, params.baseline, f.columns, f.categorical).fit(f.X["train"], f.y["train"])
        on_dense = build_model(name, hp, params.baseline, f.columns, f.categorical).fit(dense_tr, f.y["train"])
        want = on_dense.predict_proba(dense_te)[:, 1]
        np.testing.assert_array_equal(predict_proba(on_csr, f.X["test"]), want)
        # In row chunks: the same up to BLAS blocking (a last-bit difference in logreg's dot products).
        np.testing.assert_allclose(predict_proba(on_csr, f.X["test"], chunk=17), want, rtol=1e-12, atol=0)


def test_several_samples_per_subject_stay_in_their_subjects_split(params, cohort):
    """Two samples per subject (prediction at 24 h and at 48 h after admission): one row each, in the
    subject's split, keyed by (subject_id, prediction_time) in the predictions."""
    res, splits = cohort
    one = samples_from_labels(res.subjects, res.labels)
    early = one.set_column(1, "prediction_time", pc.subtract(one.column("prediction_time"),
                                                             pa.scalar(np.timedelta64(24, "h").astype("timedelta64[us]"))))
    samples = pa.concat_tables([early.cast(one.schema), one]).sort_by([("subject_id", "ascending"), ("prediction_time", "ascending")])
    f = fold_features(res.events, res.subjects, samples, splits, 0, params.preprocess.window_hours,
                      params.baseline.categorical_descriptors)
    ids, codes = fold_assignment(splits, 0)
    for k, name in enumerate(SPLITS):
        keys = f.keys[name]
        np.testing.assert_array_equal(keys["subject_id"].to_numpy(), np.repeat(ids[codes == k], 2))
        assert f.report["subjects"][name] == {**f.report["subjects"][name], "n": 2 * int((codes == k).sum()),
                                              "subjects": int((codes == k).sum())}
    # The later sample's window is today's; the earlier one's is its first 24 h: fewer events, same subject.
    test = f.frame("test")
    counts = test.filter(like="__count").sum(axis=1).to_numpy()
    assert (counts[0::2] <= counts[1::2]).all() and (counts[0::2] < counts[1::2]).any()
    one_f = _features(params, res.events, res.subjects, res.labels, splits)
    np.testing.assert_array_equal(test.iloc[1::2][one_f.columns].to_numpy(), one_f.frame("test").to_numpy())
    small = dataclasses.replace(params.baseline, logreg=dataclasses.replace(params.baseline.logreg, C=[0.1]))
    pred = run_baselines(f, small, params.evaluate, models=("logreg",)).predictions["logreg"]
    assert pred.num_rows == 2 * int((codes == 2).sum())
    keys = pred.select(["subject_id", "prediction_time"]).to_pandas()
    assert not keys.duplicated().any()


def test_max_codes_keeps_the_codes_most_measured_in_train(params, cohort):
    res, splits = cohort
    full = _features(params, res.events, res.subjects, res.labels, splits)
    cut = fold_features(res.events, res.subjects, samples_from_labels(res.subjects, res.labels), splits, 0,
                        params.preprocess.window_hours, params.baseline.categorical_descriptors, max_codes=3)
    train = full.frame("train")
    counts = train.filter(like="__count")
    measured = (counts > 0).sum(axis=0)  # training samples that measured each code
    ranked = sorted(measured.items(), key=lambda kv: (-kv[1], kv[0]))
    want = sorted(c.removesuffix("__count") for c, _ in ranked[:3])
    assert sorted({c.split("__")[0] for c in cut.columns if "__" in c}) == want
    f = cut.report["features"]
    assert f["codes"] == 3 and f["codes_over_max_codes"] == full.report["features"]["codes"] - 3
    assert f["codes_over_max_codes_first"][0] == ranked[3][0].removesuffix("__count")
    # The kept columns hold the same values; the descriptors stay.
    pd.testing.assert_frame_equal(cut.frame("test"), full.frame("test")[cut.columns])
    assert "ICUType" in cut.columns and full.report["features"]["codes_over_max_codes"] == 0


def test_meds_string_categories_are_categorical_and_rare_columns_do_not_stop_gbm(params, cohort):
    """A MEDS cohort: a string descriptor (a `RACE//...` static row) is a categorical feature whether or not
    baseline.categorical_descriptors names it; a code measured in a handful of train samples (the long tail
    of a MEDS vocabulary) is a column gbm leaves out and reports, where scikit-learn's early stopping split
    could leave it without a single value and fail ("window shape cannot be larger than input array shape")."""
    res, splits = cohort
    ids, codes = fold_assignment(splits, 0)
    train_ids = ids[codes == 0]
    subj_ids = res.subjects.column("subject_id").to_numpy()
    race = np.where(subj_ids % 3 == 0, "A", np.where(subj_ids % 3 == 1, "B", None))
    subjects = res.subjects.append_column("RACE", pa.array(race.tolist(), pa.string()))
    one = samples_from_labels(res.subjects, res.labels)
    # a rare code: one value in each of 3 train subjects' windows (at their first event's time)
    first = res.events.to_pandas().groupby("subject_id").first().loc[train_ids[:3]]
    rare = pa.table({"subject_id": pa.array(first.index.to_numpy(), pa.int64()),
                     "time": pa.array(first["time"].to_numpy(), pa.timestamp("us")),
                     "code": pa.array(["RARE"] * 3, pa.string()),
                     "numeric_value": pa.array([1.0, 2.0, 3.0], pa.float32())})
    events = pa.concat_tables([res.events, rare.cast(res.events.schema)]).sort_by(
        [("subject_id", "ascending"), ("time", "ascending")])
    f = fold_features(events, subjects, one, splits, 0, params.preprocess.window_hours, [])
    assert "RACE" in f.categorical and f.report["features"]["categorical"] == ["RACE"]
    assert "RARE__mean" in f.columns
    small = dataclasses.replace(params.baseline, gbm=dataclasses.replace(
        params.baseline.gbm, learning_rate=[0.1], max_leaf_nodes=[7], l2_regularization=[0.0]))
    sel = fit_select("gbm", small, f)
    assert {"RARE__last", "RARE__mean", "RARE__min", "RARE__max", "RARE__hours_since_last"} <= set(sel.left_out)
    assert "RARE__count" not in sel.left_out  # a count always has a value (absent = 0)
    result = run_baselines(f, small, params.evaluate, models=("gbm",))
    assert result.metrics["gbm"]["columns_with_few_train_values"]["left_out"] == len(sel.left_out)
