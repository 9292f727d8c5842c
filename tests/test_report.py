"""Aggregate over splits, the ablation plumbing, folder deps for Snakemake, and the report stage end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seqsetvae.config import ParamsError, deep_merge, load_params, params_from_dict
from seqsetvae.errors import DataError
from seqsetvae.report.render import ReportInputs, markdown
from seqsetvae.report.summary import MAIN, variant_model
from seqsetvae.stages import aggregate as aggregate_stage
from seqsetvae.training.finetune_module import FeatureCache
from tests.pipeline_project import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import pipeline  # noqa: E402

# --------------------------------------------------------------------------------------------------
# aggregate on a toy input

FOLDS = [0, 1, 2]
TOY = {  # model -> metric -> per-fold values
    MAIN: {"auroc": [0.80, 0.84, 0.82], "auprc": [0.40, 0.50, 0.45],
           "brier": [0.10, 0.12, 0.11], "ece": [0.02, 0.03, 0.05]},
    "logreg": {"auroc": [0.78, 0.79, 0.83], "auprc": [0.35, 0.44, 0.46],
               "brier": [0.11, 0.12, 0.10], "ece": [0.03, 0.02, 0.04]},
    "gbm": {"auroc": [0.81, 0.80, 0.80], "auprc": [0.42, 0.43, 0.44],
            "brier": [0.09, 0.13, 0.12], "ece": [0.01, 0.04, 0.05]},
    "no_pretrain": {"auroc": [0.70, 0.72, 0.71], "auprc": [0.30, 0.31, 0.29],
                    "brier": [0.13, 0.13, 0.14], "ece": [0.06, 0.05, 0.07]},
}


def _block(model: str, fold: int) -> dict:
    """A test-metrics file as the evaluate and baseline stages write it: the four point estimates."""
    return {m: v[fold] for m, v in TOY[model].items()}


def _write_toy(root: Path) -> argparse.Namespace:
    ev, bl = root / "metrics" / "evaluate", root / "metrics" / "baseline"
    for i, k in enumerate(FOLDS):
        (ev / "ablation" / "no_pretrain").mkdir(parents=True, exist_ok=True)
        bl.mkdir(parents=True, exist_ok=True)
        (ev / f"fold_{k}.json").write_text(json.dumps(_block(MAIN, i)))
        (ev / "ablation" / "no_pretrain" / f"fold_{k}.json").write_text(json.dumps(_block("no_pretrain", i)))
        for b in ("logreg", "gbm"):
            (bl / b).mkdir(exist_ok=True)
            (bl / b / f"fold_{k}.json").write_text(json.dumps(_block(b, i)))
    # A stale file of a fold no longer in params must be ignored, not averaged in.
    (ev / "fold_7.json").write_text(json.dumps(_block(MAIN, 0)))
    return argparse.Namespace(evaluate=ev, baseline=bl, out=root / "metrics" / "aggregate",
                              details=root / "details" / "aggregate.json",
                              label_efficiency=root / "details" / "label_efficiency.json",
                              label_efficiency_plot=root / "plots" / "label_efficiency.csv")


def _toy_params(params_dict: dict):
    params_dict["split"]["folds"] = FOLDS
    params_dict["ablation"]["run"] = ["no_pretrain"]
    params_dict["ablation"]["variants"]["no_pretrain"] = {"backbone": "random", "label_fraction": 1.0}
    return params_from_dict(params_dict)


def test_aggregate_mean_sd_per_split_and_paired_differences(tmp_path, params_dict):
    args = _write_toy(tmp_path)
    aggregate_stage.run(_toy_params(params_dict), args)
    first = args.details.read_bytes()
    out = json.loads(first)
    assert out["folds"] == FOLDS and out["n_splits"] == 3
    names = {MAIN: MAIN, "logreg": "logreg", "gbm": "gbm", "no_pretrain": variant_model("no_pretrain")}
    assert set(out["models"]) == set(names.values())
    for toy_name, name in names.items():
        for m, vals in TOY[toy_name].items():
            got = out["models"][name][m]
            assert got["per_split"] == pytest.approx(vals)
            assert got["mean"] == pytest.approx(statistics.mean(vals), abs=1e-6)
            assert got["sd"] == pytest.approx(statistics.stdev(vals), abs=1e-6)
    gbm = out["paired"][f"{MAIN} - gbm"]
    for m in ("auroc", "auprc", "brier", "ece"):
        diff = [a - b for a, b in zip(TOY[MAIN][m], TOY["gbm"][m])]
        assert gbm[m]["per_split"] == pytest.approx(diff, abs=1e-6)
        assert gbm[m]["mean"] == pytest.approx(statistics.mean(diff), abs=1e-6)
        assert gbm[m]["sd"] == pytest.approx(statistics.stdev(diff), abs=1e-6)
        # at least as good: higher AUROC / AUPRC, lower Brier / ECE
        better = [d >= 0 if m in ("auroc", "auprc") else d <= 0 for d in diff]
        assert gbm[m]["splits_at_least_as_good"] == sum(better)
    assert gbm["auroc"]["splits_at_least_as_good"] == 2  # 0.80 < 0.81, then 0.84 > 0.80, 0.82 > 0.80
    assert f"{MAIN} - logreg" in out["paired"] and f"{MAIN} - {variant_model('no_pretrain')}" in out["paired"]
    # The headline folder: the means, one file per model and per comparison, the same four keys in each.
    headline = {f.name: json.loads(f.read_text()) for f in args.out.glob("*.json")}
    assert set(headline) == {f"{MAIN}.json", "logreg.json", "gbm.json", f"{MAIN}.no_pretrain.json",
                             f"{MAIN}-minus-logreg.json", f"{MAIN}-minus-gbm.json", f"{MAIN}-minus-{MAIN}.no_pretrain.json"}
    assert headline["gbm.json"] == {m: out["models"]["gbm"][m]["mean"] for m in ("auroc", "auprc", "brier", "ece")}
    assert headline[f"{MAIN}-minus-gbm.json"]["auroc"] == gbm["auroc"]["mean"]
    # Rerun: byte-identical.
    aggregate_stage.run(_toy_params(params_dict), args)
    assert args.details.read_bytes() == first
    assert {f.name: json.loads(f.read_text()) for f in args.out.glob("*.json")} == headline


def test_one_split_reports_values_without_a_spread(tmp_path, params_dict):
    """With one fold there is no sd: null in the details, and no "+- 0.000" in the report."""
    args = _write_toy(tmp_path)
    params = _toy_params(params_dict)
    params = dataclasses.replace(params, split=dataclasses.replace(params.split, folds=[FOLDS[0]]))
    aggregate_stage.run(params, args)
    out = json.loads(args.details.read_text())
    assert out["models"][MAIN]["auroc"]["sd"] is None and out["paired"][f"{MAIN} - gbm"]["auroc"]["sd"] is None
    inp = ReportInputs(summary=out, plots_dir=tmp_path, baseline_predictions=tmp_path, curves_dir=tmp_path,
                       variants=["no_pretrain"], calibration_bins=10, dpi=50)
    md = markdown(inp, {}, "figures")
    assert "+-" not in md
    assert f"| **{MAIN}** | {TOY[MAIN]['auroc'][0]:.3f} | {TOY[MAIN]['auprc'][0]:.3f} |" in md


def test_report_says_what_each_seqsetvae_row_is(tmp_path, params_dict):
    """The report names the main head's inputs and each variant's own settings (only the keys it sets), so
    the no_backbone row reads as the head without the backbone, not as a second SeqSetVAE."""
    args = _write_toy(tmp_path)
    params = _toy_params(params_dict)
    aggregate_stage.run(params, args)
    summary = json.loads(args.details.read_text())
    variants = {"no_backbone": {"backbone": "none", "label_fraction": 1.0},
                "backbone_only": {"backbone": "pretrained", "label_fraction": 1.0, "inputs": "backbone"}}
    inp = ReportInputs(summary=summary, plots_dir=tmp_path, baseline_predictions=tmp_path, curves_dir=tmp_path,
                       variants=list(variants), calibration_bins=10, dpi=50,
                       head={"inputs": "backbone_and_observation", "backbone_projection": 4, "unfreeze": "none"},
                       variant_settings=variants)
    md = markdown(inp, {}, "figures")
    assert f"{MAIN}'s head, params finetune: inputs backbone_and_observation, backbone_projection 4, unfreeze none." in md
    assert (f"{variant_model('no_backbone')}: backbone none, label_fraction 1.0; {variant_model('backbone_only')}: "
            "backbone pretrained, label_fraction 1.0, inputs backbone.") in md
    assert md.index("head, params finetune") < md.index("## Results")
    inp.head, inp.variant_settings = {}, {}  # not given: no such paragraph
    assert "params finetune" not in markdown(inp, {}, "figures")


def test_aggregate_errors_name_the_file(tmp_path, params_dict):
    args = _write_toy(tmp_path)
    (args.evaluate / "fold_1.json").unlink()
    with pytest.raises(DataError, match=r"metrics/evaluate/fold_1\.json: missing"):
        aggregate_stage.run(_toy_params(params_dict), args)
    (args.evaluate / "fold_1.json").write_text('{\n  "auroc": 0.8,\n  oops\n}')
    with pytest.raises(DataError, match=r"fold_1\.json:3: not valid JSON"):
        aggregate_stage.run(_toy_params(params_dict), args)
    (args.evaluate / "fold_1.json").write_text(json.dumps({"auroc": 0.8}))
    with pytest.raises(DataError, match=r"'auprc' missing"):
        aggregate_stage.run(_toy_params(params_dict), args)
    (args.evaluate / "fold_1.json").write_text(json.dumps(_block(MAIN, 1)))
    (args.baseline / "gbm" / "fold_2.json").unlink()
    with pytest.raises(DataError, match=r"metrics/baseline/gbm/fold_2\.json: missing"):
        aggregate_stage.run(_toy_params(params_dict), args)
    assert not args.out.exists() and not args.details.exists(), "a failed aggregate left an output behind"


def test_ablation_run_must_name_defined_variants(tmp_path, params_dict):
    import yaml

    params_dict["ablation"]["run"] = ["labels_10", "nope"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params_dict))
    with pytest.raises(ParamsError, match=r"ablation\.run.*nope"):
        load_params(path)
    params_dict["ablation"]["run"] = ["Bad-Name"]  # becomes a stage name and a path: refused by the schema
    path.write_text(yaml.safe_dump(params_dict))
    with pytest.raises(ParamsError, match=r"ablation\.run"):
        load_params(path)


# --------------------------------------------------------------------------------------------------
# the cache subset (the label subsample itself: tests/test_label_efficiency.py)


def test_feature_cache_subset_keeps_each_patients_sets():
    lengths = np.array([3, 1, 4, 2])
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    feats = {k: torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + i
             for i, k in enumerate(("mu", "logvar", "context"))}
    observation = torch.arange(8.0).view(4, 2)  # per patient
    cache = FeatureCache(features=feats, set_times=torch.arange(n, dtype=torch.float32), observation=observation,
                         offsets=offsets, labels=torch.tensor([0.0, 1.0, 0.0, 1.0]),
                         subject_ids=torch.tensor([10, 11, 12, 13]), prediction_times=torch.tensor([5, 6, 7, 8]))
    sub = cache.subset(np.array([0, 2, 3]))
    assert sub.subject_ids.tolist() == [10, 12, 13] and sub.labels.tolist() == [0.0, 0.0, 1.0]
    assert sub.prediction_times.tolist() == [5, 7, 8]  # the samples' keys follow their rows
    assert sub.lengths().tolist() == [3, 4, 2]
    assert torch.equal(sub.observation, observation[[0, 2, 3]])
    for new, old in enumerate([0, 2, 3]):
        a, b = sub.offsets[new], sub.offsets[new + 1]
        c, d = cache.offsets[old], cache.offsets[old + 1]
        for k in feats:
            assert torch.equal(sub.features[k][a:b], cache.features[k][c:d])
        assert torch.equal(sub.set_times[a:b], cache.set_times[c:d])


# --------------------------------------------------------------------------------------------------
# folder deps and rule names (workflow/pipeline.py)


def _stage(name: str, deps=(), outs=(), metrics=()) -> pipeline.Stage:
    return pipeline.Stage(name=name, cmd="true", deps=tuple(deps), params=(), outs=tuple(outs), metrics=tuple(metrics))


def test_folder_dep_expands_to_the_outputs_inside_it():
    stages = {s.name: s for s in [
        _stage("evaluate@0", deps=["predictions/fold_0.parquet"], metrics=["metrics/evaluate/fold_0.json"]),
        _stage("evaluate@1", metrics=["metrics/evaluate/fold_1.json"]),
        _stage("evaluate_ablation@labels_10-0", metrics=["metrics/evaluate/ablation/labels_10/fold_0.json"]),
        _stage("other", metrics=["metrics/evaluated.json"]),  # a name prefix, not inside the folder
        _stage("aggregate", deps=["metrics/evaluate", "seqsetvae/report"], metrics=["metrics/aggregate.json"]),
    ]}
    code = pipeline.folder_files(pipeline.ROOT, "seqsetvae/report")  # a code folder: its files (see below)
    assert "seqsetvae/report/summary.py" in code and not any("__pycache__" in f or f.endswith(".pyc") for f in code)
    assert pipeline.inputs(stages["aggregate"], stages) == [
        "metrics/evaluate/ablation/labels_10/fold_0.json", "metrics/evaluate/fold_0.json",
        "metrics/evaluate/fold_1.json", *code,
    ]
    assert pipeline.inputs(stages["evaluate@0"], stages) == ["predictions/fold_0.parquet"]
    assert {a for a, b in pipeline.edges(stages) if b == "aggregate"} == {
        "evaluate@0", "evaluate@1", "evaluate_ablation@labels_10-0"}


def test_rule_names_are_valid_and_unique():
    assert pipeline.rule_name("finetune@0") == "finetune_0"
    assert pipeline.rule_name("finetune_ablation@labels_10-0") == "finetune_ablation_labels_10_0"
    assert all(re.fullmatch(r"\w+", pipeline.rule_name(s)) for s in ("a@1.5-x", "b@x-y-z"))
    with pytest.raises(ValueError, match="same Snakemake rule"):
        pipeline.rule_names({"a@b-c": None, "a@b_c": None})  # type: ignore[dict-item]


# --------------------------------------------------------------------------------------------------
# end to end: tiny pipeline with one ablation variant, through the report


@pytest.mark.slow
def test_report_builds_from_a_tiny_run_with_an_ablation(tmp_path, tiny_run):
    variant = "random_half"  # both ablations at once: random backbone, half of the training labels
    # The session's whole tiny run, plus the variant: DVC runs the variant's stages and what follows them.
    proj = tiny_run.copy_to(tmp_path / "proj")
    proj.write_params(deep_merge(proj.params(), {
        "ablation": {"run": [variant], "variants": {variant: {"backbone": "random", "label_fraction": 0.5}}},
    }))
    stages = pipeline.load_stages(proj.root)
    assert {f"finetune_ablation@{variant}-0", f"evaluate_ablation@{variant}-0", "aggregate", "report"} <= set(stages)
    # Both runners see the folder deps' edges, and Snakemake's rule names are valid for matrix stages.
    expected = pipeline.edges(stages)
    assert (f"evaluate_ablation@{variant}-0", "aggregate") in expected and ("evaluate@0", "aggregate") in expected
    assert ("baseline@0", "aggregate") in expected and ("aggregate", "report") in expected
    dot = proj.dvc("dag", "--dot").stdout
    dvc_edges = set(re.findall(r'"?([\w@.-]+)"?\s*->\s*"?([\w@.-]+)"?', dot))
    assert dvc_edges == expected
    smk_dot = proj.snakemake("--forceall", "--rulegraph", "dot").stdout
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"]+)\"", smk_dot, flags=re.M))
    smk_edges = {(labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", smk_dot, flags=re.M)}
    assert {e for e in smk_edges if "all" not in e} == {
        (pipeline.rule_name(a), pipeline.rule_name(b)) for a, b in expected}

    proj.dvc("repro", "report")
    agg = json.loads((proj.root / "details" / "aggregate.json").read_text())
    assert set(agg["models"]) == {MAIN, "logreg", "gbm", variant_model(variant)}
    assert agg["paired"][f"{MAIN} - gbm"]["auroc"]["per_split"] == pytest.approx(
        [agg["models"][MAIN]["auroc"]["per_split"][0] - agg["models"]["gbm"]["auroc"]["per_split"][0]], abs=1e-6)
    ft = json.loads((proj.root / "details" / "finetune" / "ablation" / variant / "fold_0.json").read_text())
    assert ft["variant"]["backbone"] == "random" and ft["variant"]["label_fraction"] == 0.5
    main_ft = json.loads((proj.root / "details" / "finetune" / "fold_0.json").read_text())
    assert 0 < ft["variant"]["train_stays"] < main_ft["variant"]["train_stays"]

    report = (proj.root / "reports" / "report.md").read_text()
    assert "| model | AUROC | AUPRC | Brier | ECE | splits |" in report
    for name in (MAIN, "logreg", "gbm", variant_model(variant)):
        row = next(line for line in report.splitlines() if line.startswith((f"| {name} |", f"| **{name}** |")))
        assert f"| {agg['models'][name]['auroc']['mean']:.3f} |" in row  # one split: no "+- sd"
    assert f"| {MAIN} - gbm | AUROC |" in report
    # What the rows are, from params: the main head's inputs and the variant's own settings.
    params = load_params(proj.root / "params.yaml")
    assert (f"{MAIN}'s head, params finetune: inputs {params.finetune.inputs}, backbone_projection "
            f"{params.finetune.backbone_projection}, unfreeze {params.finetune.unfreeze}.") in report
    assert f"{variant_model(variant)}: backbone random, label_fraction 0.5." in report
    figures = sorted(p.name for p in (proj.root / "reports" / "figures").glob("*.png"))  # not the writer's marker
    for stem in ("roc", "pr", "calibration", "pretrain_curves", "finetune_curves"):
        assert f"{stem}_fold_0.png" in figures
        assert f"(../reports/figures/{stem}_fold_0.png)" not in report and f"(figures/{stem}_fold_0.png)" in report
    assert all((proj.root / "reports" / "figures" / f).stat().st_size > 1000 for f in figures)
    assert not re.search(r"20\d\d-\d\d-\d\d", report), "the report holds a date"
    # Rebuilt from the same inputs: the same markdown; and DVC is then clean.
    before = report
    proj.run("seqsetvae", "report", "--aggregate", "details/aggregate.json", "--plots", "plots/evaluate",
             "--baseline-predictions", "predictions/baseline", "--curves", "curves", "--out", "reports/report.md",
             "--figures", "reports/figures")
    assert (proj.root / "reports" / "report.md").read_text() == before
