"""Evaluation metrics: agreement with scikit-learn, bootstrap CIs, curves, aggregation over splits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from seqsetvae.cli import main
from seqsetvae.evaluation.metrics import aggregate, curves, evaluate_binary, expected_calibration_error


@pytest.fixture
def toy():
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.2).astype(float)
    p = np.clip(0.2 + 0.35 * (y - 0.2) + rng.normal(0, 0.15, size=400), 0.001, 0.999)
    return y, p


def test_point_estimates_match_sklearn(toy):
    y, p = toy
    m = evaluate_binary(y, p, n_bootstrap=1000, seed=0)
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert m["auprc"]["value"] == pytest.approx(average_precision_score(y, p), abs=1e-6)
    assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p), abs=1e-6)
    assert m["n"] == 400 and m["positives"] == int(y.sum())


def test_fixed_tiny_input_exact_values():
    y = np.array([0, 0, 1, 1, 0, 1], dtype=float)
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    m = evaluate_binary(y, p, n_bootstrap=1000, seed=0)
    assert m["auroc"]["value"] == pytest.approx(8 / 9, abs=1e-6)  # 8 of 9 (pos, neg) pairs ordered right
    # ECE by hand with 10 bins: bins 1,4,3,8,2,9 each hold one prediction -> mean |y - p|
    assert expected_calibration_error(y, p, 10) == pytest.approx(np.abs(y - p).mean())


def test_bootstrap_ci_brackets_point_and_is_reproducible(toy):
    y, p = toy
    a = evaluate_binary(y, p, n_bootstrap=1000, seed=7)
    b = evaluate_binary(y, p, n_bootstrap=1000, seed=7)
    c = evaluate_binary(y, p, n_bootstrap=1000, seed=8)
    assert a == b
    assert a != c
    for k in ("auroc", "auprc", "brier", "ece"):
        assert a[k]["ci_low"] <= a[k]["value"] <= a[k]["ci_high"], k
        assert a[k]["ci_low"] < a[k]["ci_high"], k


def test_single_class_resamples_are_skipped_and_counted():
    y = np.array([1.0] + [0.0] * 29)
    p = np.linspace(0.01, 0.99, 30)
    m = evaluate_binary(y, p, n_bootstrap=1000, seed=0)
    # P(no positive in a resample of 30) = (29/30)^30 ~ 0.36
    assert 250 < m["bootstrap"]["skipped_single_class"] < 470


@pytest.mark.parametrize(
    "y,p,match",
    [
        ([0, 1], [0.5], "differ in length"),
        ([0, 2], [0.1, 0.2], "0 or 1"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([1, 1], [0.1, 0.2], "both classes"),
    ],
)
def test_bad_predictions_are_refused(y, p, match):
    with pytest.raises(ValueError, match=match):
        evaluate_binary(np.array(y, float), np.array(p, float), n_bootstrap=1000, seed=0)


def test_curves_are_monotone_and_bounded(toy):
    y, p = toy
    c = curves(y, p, n_bins=10)
    fpr = [r["fpr"] for r in c["roc"]]
    assert fpr == sorted(fpr) and fpr[0] == 0.0 and fpr[-1] == 1.0
    assert sum(r["count"] for r in c["calibration"]) == len(y)


def test_aggregate_over_splits():
    per = [{"auroc": v, "auprc": v / 2} for v in (0.8, 0.9, 0.85)]
    agg = aggregate(per, keys=("auroc", "auprc"))
    assert agg["n_splits"] == 3
    assert agg["auroc"]["mean"] == pytest.approx(0.85)
    assert agg["auroc"]["sd"] == pytest.approx(0.05)  # sample sd of 0.8, 0.9, 0.85
    assert agg["auprc"]["per_split"] == [0.4, 0.45, 0.425]


def test_one_split_has_no_spread():
    """With one split there is no sd to report: None (JSON null), never 0.0 shown as "+- 0.000"."""
    agg = aggregate([{"auroc": 0.8, "auprc": 0.4}], keys=("auroc", "auprc"))
    assert agg["auroc"] == {"mean": 0.8, "sd": None, "per_split": [0.8]}


def test_evaluate_stage_writes_metrics_and_plots(tmp_path, toy):
    y, p = toy
    preds = tmp_path / "pred.parquet"
    pd.DataFrame({"subject_id": np.arange(len(y)), "label": y, "probability": p}).to_parquet(preds)
    out, details, plots = tmp_path / "m.json", tmp_path / "d.json", tmp_path / "plots"
    cmd = ["evaluate", "--predictions", str(preds), "--metrics", str(out), "--details", str(details),
           "--plots", str(plots)]
    assert main(cmd) == 0
    m, d = json.loads(out.read_text()), json.loads(details.read_text())
    # The metrics file holds the four point estimates only (what `dvc metrics show` compares); the
    # intervals, counts, bootstrap settings and model name are the details.
    assert set(m) == {"auroc", "auprc", "brier", "ece"}
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6) == d["auroc"]["value"]
    assert d["auroc"]["ci_low"] <= m["auroc"] <= d["auroc"]["ci_high"] and d["n"] == len(y)
    assert {f.name for f in plots.iterdir()} == {"roc.csv", "pr.csv", "calibration.csv", ".seqsetvae-output"}
    first = out.read_bytes(), details.read_bytes()
    assert main(cmd) == 0
    assert (out.read_bytes(), details.read_bytes()) == first


def test_evaluate_stage_names_bad_file(tmp_path, caplog):
    preds = tmp_path / "pred.parquet"
    pd.DataFrame({"subject_id": [1, 2], "prob": [0.1, 0.2]}).to_parquet(preds)
    rc = main(["evaluate", "--predictions", str(preds), "--metrics", str(tmp_path / "m.json"),
               "--details", str(tmp_path / "d.json"), "--plots", str(tmp_path / "p")])
    assert rc == 3
    assert str(preds) in caplog.text and "missing column" in caplog.text
    assert not (tmp_path / "m.json").exists()


def test_vectorised_bootstrap_metrics_equal_sklearn_on_resamples_with_ties():
    from seqsetvae.evaluation.metrics import rowwise_metrics

    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    p = np.round(rng.random(300), 1)  # heavy ties
    idx = rng.integers(0, 300, size=(20, 300))
    rows = rowwise_metrics(y[idx], p[idx], n_bins=10)
    for r in range(20):
        yb, pb = y[idx[r]], p[idx[r]]
        assert rows["auroc"][r] == pytest.approx(roc_auc_score(yb, pb), abs=1e-12)
        assert rows["auprc"][r] == pytest.approx(average_precision_score(yb, pb), abs=1e-12)
        assert rows["brier"][r] == pytest.approx(brier_score_loss(yb, pb), abs=1e-12)
        assert rows["ece"][r] == pytest.approx(expected_calibration_error(yb, pb, 10), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Quick runs: a few bootstrap resamples


def test_a_small_n_bootstrap_validates_and_a_zero_does_not(params_dict):
    from seqsetvae.config import ParamsError, params_from_dict

    params_dict["evaluate"]["n_bootstrap"] = 5
    assert params_from_dict(params_dict).evaluate.n_bootstrap == 5
    params_dict["evaluate"]["n_bootstrap"] = 0
    with pytest.raises(ParamsError, match=r"evaluate\.n_bootstrap"):
        params_from_dict(params_dict)


def test_evaluate_stage_with_a_few_resamples(tmp_path, toy, params_dict):
    import yaml

    y, p = toy
    params_dict["evaluate"]["n_bootstrap"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_dict))
    preds = tmp_path / "pred.parquet"
    pd.DataFrame({"subject_id": np.arange(len(y)), "label": y, "probability": p}).to_parquet(preds)
    out = tmp_path / "d.json"
    args = ["evaluate", "--params", str(tmp_path / "params.yaml"), "--predictions", str(preds),
            "--metrics", str(tmp_path / "m.json"), "--details", str(out), "--plots", str(tmp_path / "plots")]
    assert main(args) == 0
    m = json.loads(out.read_text())
    assert m["bootstrap"]["resamples"] == 5 and m["bootstrap"]["skipped_single_class"] == 0
    for k in ("auroc", "auprc", "brier", "ece"):
        assert m[k]["ci_low"] <= m[k]["ci_high"], k
    assert m == evaluate_binary(y, p, n_bootstrap=5, seed=params_dict["evaluate"]["seed"]) | {"model": "pred"}


def test_no_two_class_resample_is_a_clear_error():
    # one positive in 30: a resample misses it with probability (29/30)^30 ~ 0.36; with seed 2 both of
    # 2 resamples do
    y = np.array([1.0] + [0.0] * 29)
    p = np.linspace(0.01, 0.99, 30)
    with pytest.raises(ValueError, match=r"all 2 bootstrap resample\(s\) hold a single class \(1 of 30 test subjects positive\).*raise evaluate\.n_bootstrap"):
        evaluate_binary(y, p, n_bootstrap=2, seed=2)
    assert evaluate_binary(y, p, n_bootstrap=2, seed=0)["bootstrap"]["skipped_single_class"] < 2


# The cluster bootstrap: a subject with several samples (MEDS tasks with several prediction times) is resampled
# whole (seqsetvae/evaluation/metrics.py).


def test_one_sample_per_subject_gives_the_plain_bootstrap(toy):
    y, p = toy
    ids = np.arange(1000, 1000 + y.size)[::-1]  # any ids: one sample each is the plain bootstrap, draw for draw
    assert evaluate_binary(y, p, 300, seed=4, subject_ids=ids) == evaluate_binary(y, p, 300, seed=4)
    assert "unit" not in evaluate_binary(y, p, 30, seed=4, subject_ids=ids)["bootstrap"]


def test_subjects_are_resampled_whole(toy):
    """Every subject's sample written twice: resampling subjects draws the same subjects as the plain bootstrap
    of the single copies (ids in sample order), and each metric is unchanged by doubling every sample, so
    the interval is exactly the single copies' one. Resampling the doubled samples one by one treats the
    copies as independent and gives a narrower interval: the error the cluster bootstrap avoids."""
    y, p = toy
    ids = np.arange(y.size)
    single = evaluate_binary(y, p, 400, seed=7)
    y2, p2, ids2 = np.repeat(y, 2), np.repeat(p, 2), np.repeat(ids, 2)
    clustered = evaluate_binary(y2, p2, 400, seed=7, subject_ids=ids2)
    assert clustered["bootstrap"]["unit"] == "subject"
    for metric in ("auroc", "auprc", "brier", "ece"):
        assert clustered[metric] == pytest.approx(single[metric], abs=2e-6)
    naive = evaluate_binary(y2, p2, 400, seed=7)

    def width(m):
        return m["auroc"]["ci_high"] - m["auroc"]["ci_low"]

    assert width(naive) < 0.85 * width(clustered)


def test_cluster_bootstrap_counts_single_class_resamples():
    y = np.array([1, 0, 0, 0, 0, 0], dtype=float)  # one positive subject of three, with two samples each
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.4])
    m = evaluate_binary(y, p, 200, seed=0, subject_ids=np.array([5, 5, 6, 6, 7, 7]))
    # a resample holds both classes only if it draws subject 5 (1 - (2/3)^3 of them) and is not all 5s
    assert 0 < m["bootstrap"]["skipped_single_class"] < 200
    assert m["bootstrap"]["skipped_single_class"] == pytest.approx(200 * ((2 / 3) ** 3 + (1 / 3) ** 3), abs=30)


def test_subject_ids_of_the_wrong_length_are_refused(toy):
    y, p = toy
    with pytest.raises(ValueError, match="subject ids"):
        evaluate_binary(y, p, 10, seed=0, subject_ids=np.arange(3))
