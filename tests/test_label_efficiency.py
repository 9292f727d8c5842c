"""Label efficiency (issue 12 D): the one label subsample, its params, the baselines on a subsample, the summary
and figure, and the label-efficiency stages end to end on the synthetic cohort through DVC."""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from seqsetvae.cli import main
from seqsetvae.config import ParamsError, deep_merge, load_params, params_from_dict
from seqsetvae.data.canonical import write_ingested
from seqsetvae.data.splits import label_subsample, labels_kept, make_splits
from seqsetvae.data.summaries import samples_from_labels
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.errors import DataError
from seqsetvae.io import write_parquet
from seqsetvae.baselines import check_fittable, fold_features, subsample_train
from seqsetvae.report import label_efficiency as le_summary
from seqsetvae.report.render import label_efficiency_figure, label_efficiency_markdown
from seqsetvae.stages import aggregate as aggregate_stage
from tests.pipeline_project import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import pipeline  # noqa: E402

FRACTIONS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]


def _labels(n_pos: int, n_neg: int, seed: int = 3) -> np.ndarray:
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    np.random.default_rng(seed).shuffle(y)
    return y


# --------------------------------------------------------------------------------------------------
# The subsample: seqsetvae.data.splits.label_subsample


def test_subsample_of_subjects_with_several_samples():
    """MEDS tasks: a subject has several samples, all with its subject id. Within a class a subject's samples
    share its rank, so the subsample takes whole subjects: at most one subject per class is cut at the
    boundary. Still nested across fractions and stratified by sample counts."""
    rng = np.random.default_rng(5)
    ids = np.repeat(np.arange(300), rng.integers(1, 6, size=300))  # 1-5 samples per subject
    y = (rng.random(ids.size) < 0.2).astype(float)
    previous = np.array([], np.int64)
    for f in FRACTIONS:
        keep = label_subsample(y, f, seed=1, ids=ids)
        for cls in (0.0, 1.0):
            in_class = y == cls
            assert int((y[keep] == cls).sum()) == labels_kept(int(in_class.sum()), f)
            kept_ids, whole_ids = ids[keep][y[keep] == cls], ids[in_class]
            partial = [s for s in np.unique(kept_ids) if (kept_ids == s).sum() < (whole_ids == s).sum()]
            assert len(partial) <= 1, (f, cls, partial)
        assert np.isin(previous, keep).all(), f"the {f:g} subsample does not hold the smaller one"
        previous = keep
    # the rank depends on the ids, not on the row order
    perm = rng.permutation(ids.size)
    back = np.sort(perm[label_subsample(y[perm], 0.25, seed=1, ids=ids[perm])])
    kept_pairs = set(zip(ids[back], y[back]))
    assert kept_pairs == set(zip(ids[label_subsample(y, 0.25, seed=1, ids=ids)], y[label_subsample(y, 0.25, seed=1, ids=ids)]))


def test_subsample_is_stratified_sorted_and_seeded():
    y = _labels(140, 860)
    for f in FRACTIONS:
        keep = label_subsample(y, f, seed=1)
        assert np.all(np.diff(keep) > 0), "positions must be sorted and unique"
        assert int(y[keep].sum()) == labels_kept(140, f) and int((y[keep] == 0).sum()) == labels_kept(860, f)
    keep = label_subsample(y, 0.25, seed=1)
    assert keep.size == 35 + 215 and y[keep].mean() == pytest.approx(0.14, abs=0.005)
    assert np.array_equal(keep, label_subsample(y, 0.25, seed=1))
    assert not np.array_equal(keep, label_subsample(y, 0.25, seed=2))


def test_subsamples_of_one_seed_are_nested():
    y = _labels(140, 860)
    for seed in (0, 7):
        subsets = [set(label_subsample(y, f, seed).tolist()) for f in FRACTIONS]
        for smaller, larger in zip(subsets, subsets[1:]):
            assert smaller < larger
    assert np.array_equal(label_subsample(y, 1.0, seed=5), np.arange(y.size))


def test_counts_round_half_up_and_keep_one_of_each_class():
    assert labels_kept(30, 0.1) == 3  # 0.1 * 30 = 3.0000000000000004: ceil would give 4
    assert labels_kept(5, 0.5) == 3 and labels_kept(15, 0.1) == 2  # 2.5 -> 3, 1.5 -> 2: half up, not to even
    assert labels_kept(20, 0.01) == 1 and labels_kept(20, 0.01, min_per_class=2) == 2
    y = _labels(17, 103)
    keep = label_subsample(y, 0.01, seed=0)
    assert int(y[keep].sum()) == 1 and int((y[keep] == 0).sum()) == 1


def test_subsample_follows_the_ids_not_the_row_order():
    """Ranked by a seeded hash of the id: reordering the rows keeps the same subjects, and a population
    with a few more stays (the baselines keep stays without events, the model drops them) keeps mostly the
    same subjects."""
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.unique(rng.integers(0, 10**12, size=900))[:800])  # 800 distinct, unordered
    y = _labels(120, 680)
    chosen = set(ids[label_subsample(y, 0.25, 4, ids=ids)])
    order = rng.permutation(ids.size)
    assert set(ids[order][label_subsample(y[order], 0.25, 4, ids=ids[order])]) == chosen
    extra_ids, extra_y = 10**12 + np.arange(12), _labels(2, 10, seed=1)
    wider = set(np.r_[ids, extra_ids][label_subsample(np.r_[y, extra_y], 0.25, 4, ids=np.r_[ids, extra_ids])])
    assert len(chosen & wider) >= 0.95 * len(chosen)


def test_subsample_errors_are_clear():
    with pytest.raises(DataError, match=r"fold 0 train: 0 positive stay\(s\) of 50; .*at least 1 of each class"):
        label_subsample(np.zeros(50), 0.5, 0, what="fold 0 train")
    with pytest.raises(DataError, match=r"1 positive stay\(s\) of 31; .*at least 2 of each class"):
        label_subsample(_labels(1, 30), 0.5, 0, min_per_class=2)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="label fraction must be in"):
            label_subsample(_labels(5, 5), bad, 0)
    with pytest.raises(ValueError, match="ids for"):
        label_subsample(_labels(5, 5), 0.5, 0, ids=np.arange(3))


# --------------------------------------------------------------------------------------------------
# params


def _load(tmp_path: Path, d: dict):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_params(path)


def test_repository_default_runs_nothing_and_loads_typed():
    le = load_params("params.yaml").label_efficiency
    assert le.run == [] and le.fractions == sorted(le.fractions) and le.fractions[-1] == 1.0
    assert le.backbones == ["pretrained", "random"] and le.baselines == ["logreg", "gbm"]


@pytest.mark.parametrize("change,key", [
    ({"run": [3]}, r"'label_efficiency\.run': fold\(s\) \[3\] not in 'split\.folds' \[0\]"),
    ({"fractions": [0.5, 0.1]}, r"'label_efficiency\.fractions': \[0\.5, 0\.1\] must be in increasing order"),
    ({"fractions": [0.1, 0.1]}, r"'label_efficiency\.fractions'.*non-unique"),
    ({"fractions": [0.0, 0.5]}, r"'label_efficiency\.fractions\.0'"),
    ({"fractions": [0.5, 1.5]}, r"'label_efficiency\.fractions\.1'"),
    ({"fractions": []}, r"'label_efficiency\.fractions'"),
    ({"backbones": ["pretrained", "imagenet"]}, r"'label_efficiency\.backbones\.1'"),
    ({"baselines": ["xgboost"]}, r"'label_efficiency\.baselines\.0'"),
    ({"seed": -1}, r"'label_efficiency\.seed'"),
    ({"folds": [0]}, r"unknown key 'label_efficiency\.folds'"),
])
def test_invalid_label_efficiency_params_name_the_key(tmp_path, params_dict, change, key):
    params_dict["label_efficiency"].update(change)
    with pytest.raises(ParamsError, match=key):
        _load(tmp_path, params_dict)
    with pytest.raises(ParamsError, match=key):  # the same checks for an in-memory dict
        params_from_dict(params_dict)


def test_label_efficiency_needs_the_frozen_backbone_and_a_backbone_input(tmp_path, params_dict):
    params_dict["label_efficiency"]["run"] = [0]
    params_dict["finetune"]["unfreeze"] = "transformer"
    with pytest.raises(ParamsError, match=r"'label_efficiency\.run'.*'finetune\.unfreeze: none'"):
        _load(tmp_path, params_dict)
    params_dict["label_efficiency"]["run"] = []  # off: any unfreeze is fine
    assert _load(tmp_path, params_dict).finetune.unfreeze == "transformer"
    params_dict["finetune"]["unfreeze"] = "none"
    params_dict["label_efficiency"]["run"] = [0]
    params_dict["finetune"]["inputs"] = "observation"  # no backbone: pretrained and random would be one run
    with pytest.raises(ParamsError, match=r"'label_efficiency\.run'.*'finetune\.inputs: observation'"):
        _load(tmp_path, params_dict)
    params_dict["finetune"]["inputs"] = "backbone_and_observation"
    assert _load(tmp_path, params_dict).finetune.inputs == "backbone_and_observation"


def test_missing_section_is_named(tmp_path, params_dict):
    del params_dict["label_efficiency"]
    with pytest.raises(ParamsError, match=r"missing key 'label_efficiency'"):
        _load(tmp_path, params_dict)


def test_finetune_run_kinds_and_their_seeds(params_dict):
    from seqsetvae.stages.finetune import run_kind
    from seqsetvae.stages.options import label_fraction_arg

    params_dict["label_efficiency"]["seed"], params_dict["ablation"]["seed"] = 11, 22
    params = params_from_dict(params_dict)
    main_run = run_kind(params, None, None, None)
    assert (main_run.name, main_run.backbone, main_run.label_fraction, main_run.label_seed) == (
        "main", "pretrained", 1.0, None)
    le = run_kind(params, None, "random", 0.05)
    assert (le.name, le.backbone, le.label_fraction, le.label_seed) == ("label_efficiency", "random", 0.05, 11)
    assert run_kind(params, None, None, 0.5).backbone == "pretrained"
    ablation = run_kind(params, "labels_10", None, None)
    assert (ablation.backbone, ablation.label_fraction, ablation.label_seed) == ("pretrained", 0.1, 22)
    with pytest.raises(ParamsError, match="without --variant"):
        run_kind(params, "labels_10", None, 0.5)
    assert label_fraction_arg("0.25") == 0.25 and label_fraction_arg("1") == 1.0
    for bad in ("0", "1.01", "nan", "a quarter"):
        with pytest.raises(argparse.ArgumentTypeError):
            label_fraction_arg(bad)


# --------------------------------------------------------------------------------------------------
# Baselines on a subsample


@pytest.fixture(scope="module")
def cohort(base_params_dict):
    d = copy.deepcopy(base_params_dict)
    d["data"]["synthetic"].update(n_subjects=400, seed=5)
    d["baseline"]["logreg"]["C"] = [0.1]
    d["baseline"]["gbm"].update(learning_rate=[0.1], max_leaf_nodes=[7], l2_regularization=[0.0], max_iter=30)
    d["evaluate"]["n_bootstrap"] = 20
    params = params_from_dict(d)
    res = ingest_synthetic(params.data.synthetic)
    splits, _ = make_splits(res.subjects, res.labels, params.split)
    return d, params, res, splits


def test_subsample_train_drops_columns_without_values_and_counts_them(cohort):
    _, params, res, splits = cohort
    full = fold_features(res.events, res.subjects, samples_from_labels(res.subjects, res.labels), splits, 0,
                         params.preprocess.window_hours, params.baseline.categorical_descriptors)
    y = full.y["train"]
    keep = label_subsample(y, 0.02, 0, ids=full.keys["train"]["subject_id"].to_numpy())
    sub = subsample_train(full, keep, 0.02, 0)
    assert sub.keys["train"]["subject_id"].tolist() == full.keys["train"]["subject_id"].iloc[keep].tolist()
    assert np.array_equal(sub.y["train"], y[keep])
    full_train = full.frame("train")
    empty = [c for c in full_train.columns if full_train.iloc[keep][c].isna().all()]
    assert empty, "a 2 % subsample should miss some variable entirely"
    report = sub.report["label_subsample"]
    assert report["columns_without_subsample_values"] == len(empty)
    assert report["columns_without_subsample_values_names"] == sorted(empty)
    assert report["columns"] == full.X["train"].shape[1] - len(empty) == len(sub.columns)
    # The kept columns' values are the full features' values on the kept rows.
    pd.testing.assert_frame_equal(sub.frame("train"), full_train.iloc[keep][sub.columns])
    assert report["train_stays"] == keep.size and report["train_positives"] == int(y[keep].sum())
    for split in ("val", "test"):  # whole, with the same columns as train
        assert sub.keys[split].equals(full.keys[split]) and np.array_equal(sub.y[split], full.y[split])
        assert sub.X[split].shape[1] == sub.X["train"].shape[1]


def test_gbm_refuses_too_few_labels_naming_the_keys(cohort):
    _, params, _, _ = cohort
    with pytest.raises(DataError, match=r"fold 2: the train split holds 12 stays \(1 positive, 11 negative\); "
                                        r"gbm's early stopping \(baseline\.gbm\.early_stopping"):
        check_fittable("gbm", params.baseline, np.r_[1, np.zeros(11)], 2)
    check_fittable("logreg", params.baseline, np.r_[1, np.zeros(11)], 2)  # no inner split: one of each suffices
    check_fittable("gbm", params.baseline, np.r_[1, 1, np.zeros(18)], 2)
    with pytest.raises(DataError, match="needs both classes"):
        check_fittable("logreg", params.baseline, np.zeros(12), 2)


def _baseline_cli(tmp_path: Path, cohort, *extra: str) -> int:
    d, _, res, splits = cohort
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(d))
    if not (tmp_path / "ingested").exists():
        write_ingested(tmp_path / "ingested", res)
        write_parquet(tmp_path / "splits.parquet", splits)
    return main(["baseline", "--params", str(tmp_path / "params.yaml"), "--ingested", str(tmp_path / "ingested"),
                 "--splits", str(tmp_path / "splits.parquet"), "--fold", "0", "--predictions-dir",
                 str(tmp_path / "out" / "pred"), "--metrics-dir", str(tmp_path / "out" / "metrics"),
                 "--details", str(tmp_path / "out" / "details.json"), *extra])


def test_baseline_cli_fits_the_models_named_on_the_subsample(tmp_path, cohort, caplog):
    assert _baseline_cli(tmp_path, cohort, "--models", "logreg", "--label-fraction", "0.1") == 0
    files = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["details.json", "metrics/logreg/fold_0.json", "pred/.seqsetvae-output", "pred/logreg.parquet"]
    details = json.loads((tmp_path / "out" / "details.json").read_text())
    assert details["label_subsample"]["fraction"] == 0.1 and "gbm" not in details
    n_train = details["subjects"]["train"]["n"]
    assert details["label_subsample"]["train_stays_of"] == n_train > details["label_subsample"]["train_stays"]
    test_ids = pd.read_parquet(tmp_path / "out" / "pred" / "logreg.parquet")["subject_id"]
    assert test_ids.size == details["subjects"]["test"]["n"]  # test stays whole
    # 1 % of ~270 negatives and ~50 positives: one positive, and gbm's early stopping cannot split it.
    with caplog.at_level(logging.ERROR):
        assert _baseline_cli(tmp_path, cohort, "--models", "gbm", "--label-fraction", "0.01") == 3
    assert "baseline.gbm.early_stopping" in caplog.text and "1 positive" in caplog.text
    with pytest.raises(SystemExit):
        _baseline_cli(tmp_path, cohort, "--label-fraction", "0")


# --------------------------------------------------------------------------------------------------
# Summary over folds, CSV, figure and markdown (toy metrics files)

TOY_FOLDS = [0, 2]
TOY_FRACTIONS = [0.1, 1.0]


def _toy_value(model: str, fraction: float, fold: int, metric: str) -> float:
    base = {"pretrained": 0.80, "random": 0.74, "logreg": 0.78, "gbm": 0.79}[model]
    return round(base - (0.1 if fraction < 1 else 0.0) + 0.01 * fold + (0.0 if metric == "auroc" else -0.4), 6)


def _write_toy(root: Path, params_dict: dict) -> tuple[argparse.Namespace, object]:
    params_dict["split"]["folds"] = [0, 1, 2]
    params_dict["ablation"]["run"] = []  # the toy writes no variant metrics
    params_dict["label_efficiency"].update(run=TOY_FOLDS, fractions=TOY_FRACTIONS)
    params = params_from_dict(params_dict)
    ev, bl = root / "metrics" / "evaluate", root / "metrics" / "baseline"
    for k in params.split.folds:  # the main model's and the baselines' own metrics, which aggregate needs
        for path in (ev / f"fold_{k}.json", bl / "logreg" / f"fold_{k}.json", bl / "gbm" / f"fold_{k}.json"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"auroc": 0.8, "auprc": 0.4, "brier": 0.1, "ece": 0.02}))
    for model in le_summary.models_of(params.label_efficiency):
        folder = ev if model in le_summary.BACKBONE_MODELS else bl
        for f in TOY_FRACTIONS:
            for k in TOY_FOLDS + [1]:  # fold 1 is not in label_efficiency.run: must be ignored
                path = le_summary.run_file(folder, f, model, k)
                path.parent.mkdir(parents=True, exist_ok=True)
                value = {m: _toy_value(model, f, k, m) for m in ("auroc", "auprc")}
                path.write_text(json.dumps({**value, "brier": 0.1, "ece": 0.02} if k != 1 else {"auroc": 0.0}))
    args = argparse.Namespace(evaluate=ev, baseline=bl, out=root / "metrics" / "aggregate",
                              details=root / "details" / "aggregate.json",
                              label_efficiency=root / "details" / "label_efficiency.json",
                              label_efficiency_plot=root / "plots" / "label_efficiency.csv")
    return args, params


def test_summary_means_sds_pairs_and_csv(tmp_path, params_dict):
    args, params = _write_toy(tmp_path, params_dict)
    aggregate_stage.run(params, args)
    first = args.label_efficiency.read_bytes()
    s = json.loads(first)
    assert s["folds"] == TOY_FOLDS and s["fractions"] == TOY_FRACTIONS and s["seed"] == 0
    assert le_summary.ordered(s["models"]) == ["pretrained", "random", "logreg", "gbm"]
    for model, m in s["models"].items():
        for row, f in zip(m["by_fraction"], TOY_FRACTIONS):
            assert row["fraction"] == f and row["n_folds"] == 2
            for metric in ("auroc", "auprc"):
                vals = [_toy_value(model, f, k, metric) for k in TOY_FOLDS]
                assert row[metric]["per_fold"] == pytest.approx(vals)
                assert row[metric]["mean"] == pytest.approx(statistics.mean(vals), abs=1e-6)
                assert row[metric]["sd"] == pytest.approx(statistics.stdev(vals), abs=1e-6)
    assert set(s["paired"]) == {"pretrained - random", "pretrained - logreg", "pretrained - gbm"}
    gbm = s["paired"]["pretrained - gbm"]["by_fraction"][0]["auprc"]
    assert gbm["per_fold"] == pytest.approx([0.01, 0.01]) and gbm["folds_at_least_as_good"] == 2
    with open(args.label_efficiency_plot, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * len(TOY_FRACTIONS)
    for r in rows:
        row = s["models"][r["model"]]["by_fraction"][TOY_FRACTIONS.index(float(r["fraction"]))]
        assert float(r["auroc"]) == row["auroc"]["mean"] and float(r["auprc_sd"]) == row["auprc"]["sd"]
    aggregate_stage.run(params, args)  # rerun: byte-identical
    assert args.label_efficiency.read_bytes() == first
    # A missing run is an error naming the file, and nothing is half written.
    le_summary.run_file(args.baseline, 1.0, "gbm", 2).unlink()
    args.label_efficiency.unlink()
    with pytest.raises(DataError, match=r"label_efficiency/frac_1\.0/gbm/fold_2\.json: missing"):
        aggregate_stage.run(params, args)
    assert not args.label_efficiency.exists()


def test_off_writes_an_empty_summary_and_no_report_section(tmp_path, params_dict):
    args, params = _write_toy(tmp_path, params_dict)
    import dataclasses

    params = dataclasses.replace(params, label_efficiency=dataclasses.replace(params.label_efficiency, run=[]))
    aggregate_stage.run(params, args)
    s = json.loads(args.label_efficiency.read_text())
    assert s["models"] == {} and s["folds"] == [] and not le_summary.has_results(s)
    assert args.label_efficiency_plot.read_text() == ",".join(le_summary.CSV_COLUMNS) + "\n"


def test_figure_and_markdown(tmp_path, params_dict):
    args, params = _write_toy(tmp_path, params_dict)
    aggregate_stage.run(params, args)
    s = json.loads(args.label_efficiency.read_text())
    label_efficiency_figure(s, 60, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = "\n".join(label_efficiency_markdown(s, "figures"))
    assert "| model | metric | 10 % | 100 % |" in md
    pre = s["models"]["pretrained"]["by_fraction"][0]["auroc"]
    assert f"| SeqSetVAE, pretrained backbone | AUROC | {pre['mean']:.3f} +- {pre['sd']:.3f} |" in md
    assert "| pretrained - gbm | AUPRC | +0.010 +- 0.000 (2 / 2) |" in md
    assert "(figures/label_efficiency.png)" in md


# --------------------------------------------------------------------------------------------------
# The stages: both runners, and a tiny run end to end through DVC


def test_stage_names_follow_params(tmp_path):
    proj = Project.create(tmp_path / "proj", {"label_efficiency": {"run": [0], "fractions": [0.25, 1.0],
                                                                   "baselines": ["gbm"]}})
    stages = pipeline.load_stages(proj.root)
    le = sorted(s for s in stages if "label_efficiency" in s)
    assert le == sorted(
        [f"{kind}_label_efficiency@0-{b}-{f}" for kind in ("finetune", "evaluate")
         for b in ("pretrained", "random") for f in ("0.25", "1.0")]
        + [f"baseline_label_efficiency@0-gbm-{f}" for f in ("0.25", "1.0")])
    ft = stages["finetune_label_efficiency@0-random-0.25"]
    assert "--backbone random --label-fraction 0.25" in ft.cmd and "label_efficiency.seed" in ft.params
    assert "metrics/evaluate/label_efficiency/frac_0.25/random/fold_0.json" in \
        stages["evaluate_label_efficiency@0-random-0.25"].metrics
    assert "baseline.gbm" in stages["baseline_label_efficiency@0-gbm-1.0"].params
    assert "baseline.logreg" not in stages["baseline_label_efficiency@0-gbm-1.0"].params
    # The paths the stages write are the paths the summary reads.
    assert str(le_summary.run_file(Path("metrics/baseline"), 1.0, "gbm", 0)) in \
        stages["baseline_label_efficiency@0-gbm-1.0"].metrics
    off = pipeline.load_stages(Project.create(tmp_path / "off").root)
    assert not any("label_efficiency" in s for s in off), "the default pipeline runs no label-efficiency stage"


def _downstream(stages, roots: set[str]) -> list[str]:
    """`roots` and every stage that depends on them, transitively."""
    edges = pipeline.edges(stages)
    found = set(roots)
    while more := {b for a, b in edges if a in found} - found:
        found |= more
    return sorted(found)


@pytest.mark.slow
def test_label_efficiency_end_to_end(tmp_path, tiny_run):
    # The session's whole tiny run, plus label efficiency on fold 0 (and fewer bootstrap draws).
    proj = tiny_run.copy_to(tmp_path / "proj")
    proj.write_params(deep_merge(proj.params(), {"label_efficiency": {"run": [0], "fractions": [0.25, 1.0]},
                                                 "evaluate": {"n_bootstrap": 50}}))
    stages = pipeline.load_stages(proj.root)
    # Both runners: the same stages and edges (the Snakefile generates its rules from dvc.yaml).
    expected = pipeline.edges(stages)
    assert ("evaluate_label_efficiency@0-pretrained-0.25", "aggregate") in expected
    assert ("baseline_label_efficiency@0-gbm-0.25", "aggregate") in expected
    dvc_edges = set(re.findall(r'"?([\w@.-]+)"?\s*->\s*"?([\w@.-]+)"?', proj.dvc("dag", "--dot").stdout))
    assert dvc_edges == expected
    smk_dot = proj.snakemake("--forceall", "--rulegraph", "dot").stdout
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"]+)\"", smk_dot, flags=re.M))
    assert {n for n in labels.values() if n != "all"} == {pipeline.rule_name(s) for s in stages}
    smk_edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", smk_dot, flags=re.M)}
    assert {e for e in smk_edges if "all" not in e} == {(pipeline.rule_name(a), pipeline.rule_name(b))
                                                        for a, b in expected}

    # DVC runs what the new params call for: every label-efficiency stage (new), the stages whose params
    # changed (evaluate.n_bootstrap), and every stage that follows them; the rest of the run is kept.
    changed = set(proj.dvc_changed_stages())
    assert {s for s in stages if "label_efficiency" in s} <= changed
    assert sorted(proj.dvc_repro_ran()) == _downstream(stages, changed)
    root = proj.root
    s = json.loads((root / "details" / "label_efficiency.json").read_text())
    assert s["folds"] == [0] and s["fractions"] == [0.25, 1.0]
    assert le_summary.ordered(s["models"]) == ["pretrained", "random", "logreg", "gbm"]
    for model, m in s["models"].items():  # the summary holds exactly the per-run metrics
        for row in m["by_fraction"]:
            folder = "evaluate" if model in ("pretrained", "random") else "baseline"
            run = json.loads((root / "metrics" / folder / "label_efficiency" / f"frac_{row['fraction']}" / model
                              / "fold_0.json").read_text())
            for metric in ("auroc", "auprc"):
                assert row[metric]["per_fold"] == [run[metric]] and row[metric]["mean"] == run[metric]
                assert row[metric]["sd"] is None and row["n_folds"] == 1
    for other in ("random", "gbm"):
        for row, a, b in zip(s["paired"][f"pretrained - {other}"]["by_fraction"],
                             s["models"]["pretrained"]["by_fraction"], s["models"][other]["by_fraction"]):
            assert row["auroc"]["per_fold"] == pytest.approx([a["auroc"]["mean"] - b["auroc"]["mean"]], abs=1e-6)
    with open(root / "plots" / "label_efficiency.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], float(r["fraction"])) for r in rows] == [
        (m, f) for m in ("pretrained", "random", "logreg", "gbm") for f in (0.25, 1.0)]
    for r in rows:
        row = s["models"][r["model"]]["by_fraction"][[0.25, 1.0].index(float(r["fraction"]))]
        assert float(r["auprc"]) == row["auprc"]["mean"] and r["auprc_sd"] == ""

    # The runs trained on what they say: a quarter of the train split, the same subsample for both backbones.
    details = {(b, f): json.loads((root / "details" / "finetune" / "label_efficiency" / f"frac_{f}" / b
                                   / "fold_0.json").read_text())["variant"] for b in ("pretrained", "random")
               for f in ("0.25", "1.0")}
    main_ft = json.loads((root / "details" / "finetune" / "fold_0.json").read_text())
    n_train, n_pos = main_ft["variant"]["train_stays"], main_ft["variant"]["train_positives"]
    assert details[("pretrained", "1.0")]["train_stays"] == n_train
    quarter = details[("pretrained", "0.25")]
    assert quarter == details[("random", "0.25")] | {"backbone": "pretrained"}
    assert quarter["train_positives"] == labels_kept(n_pos, 0.25)
    assert quarter["train_stays"] == labels_kept(n_pos, 0.25) + labels_kept(n_train - n_pos, 0.25)
    # A quarter of the labels gets the optimiser steps of every label: validation (so checkpoints and early
    # stopping) comes every 4 passes over the subsample, about as many steps apart as in the main run.
    def val_steps(curves: Path) -> np.ndarray:
        with open(curves / "plots" / "metrics" / "val" / "auroc.tsv", newline="") as f:
            return np.array([int(r["step"]) for r in csv.DictReader(f, delimiter="\t")])

    main_steps = val_steps(root / "curves" / "finetune" / "fold_0")
    quarter_steps = val_steps(root / "curves" / "label_efficiency" / "frac_0.25" / "pretrained" / "fold_0")
    main_gap, quarter_gap = np.unique(np.diff(main_steps)), np.unique(np.diff(quarter_steps))
    project_params = load_params(root / "params.yaml")
    assert len(quarter_steps) == len(main_steps) == project_params.finetune.max_epochs  # no early stop in 2
    assert len(main_gap) == 1 and len(quarter_gap) == 1, (main_gap, quarter_gap)
    assert 0.75 <= quarter_gap[0] / main_gap[0] <= 1.25, (quarter_gap, main_gap)  # 1 pass: ~0.25
    gbm = json.loads((root / "details" / "baseline" / "label_efficiency" / "frac_0.25" / "gbm" / "fold_0.json")
                     .read_text())
    assert gbm["label_subsample"]["fraction"] == 0.25
    assert gbm["label_subsample"]["train_stays"] < gbm["subjects"]["train"]["n"]
    # 100 % of the labels is the main model's and the baselines' own run: same seeds, same test metrics.
    for model, main_file in (("pretrained", "evaluate/fold_0.json"), ("logreg", "baseline/logreg/fold_0.json"),
                             ("gbm", "baseline/gbm/fold_0.json")):
        folder = "evaluate" if model == "pretrained" else "baseline"
        full = json.loads((root / "metrics" / folder / "label_efficiency" / "frac_1.0" / model / "fold_0.json")
                          .read_text())
        assert full == json.loads((root / "metrics" / main_file).read_text()), model

    report = (root / "reports" / "report.md").read_text()
    assert "## Label efficiency" in report and "(figures/label_efficiency.png)" in report
    pre = s["models"]["pretrained"]["by_fraction"]
    row = f"| SeqSetVAE, pretrained backbone | AUROC | {pre[0]['auroc']['mean']:.3f} | {pre[1]['auroc']['mean']:.3f} |"
    assert row in report
    assert (root / "reports" / "figures" / "label_efficiency.png").stat().st_size > 5000
    # DVC draws the CSV with the project's template: one line per model, AUROC and AUPRC panels.
    out = proj.dvc("plots", "show", "--json")
    assert "failed to load" not in out.stderr.lower()
    shown = json.loads(out.stdout)
    entries = [v for k, v in shown.get("data", shown).items() if k.endswith("plots/label_efficiency.csv")]
    assert entries, sorted(shown.get("data", shown))
    spec = entries[0][0]["content"]
    assert spec["spec"]["encoding"]["color"]["field"] == "label"
    assert {d["model"] for d in spec["data"]["values"]} == {"pretrained", "random", "logreg", "gbm"}
    assert proj.dvc_changed_stages() == []
