"""Label efficiency: where each run's test metrics live, and their summary over folds per model and fraction.

One home for the layout dvc.yaml gives the label-efficiency stages (params `label_efficiency`):

    <evaluate>/label_efficiency/frac_<f>/<backbone>/fold_<k>.json   SeqSetVAE, backbone pretrained | random
    <baseline>/label_efficiency/frac_<f>/<model>/fold_<k>.json      logreg | gbm

(`<evaluate>` = metrics/evaluate, `<baseline>` = metrics/baseline: folders that exist whatever params say,
so the aggregate stage's deps are the same with label efficiency on or off.) The summary reads exactly the
files of the folds, fractions and models in params, never whatever else sits in those folders.

The summary (details/label_efficiency.json) holds, per model and fraction, the mean, sd (null with one
fold), number of folds and per-fold values of test AUROC and AUPRC, and the paired differences (same fold,
same test subjects) of the pretrained model minus every other model; plots/label_efficiency.csv holds
the means and sds as rows (model, fraction) for `dvc plots show`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seqsetvae.config import LabelEfficiencyParams
from seqsetvae.evaluation.metrics import DIGITS, spread
from seqsetvae.report.summary import metric_block, read_json

FOLDER = "label_efficiency"  # sub-folder of metrics/evaluate and metrics/baseline (and of details/, models/ ...)
BACKBONE_MODELS = ("pretrained", "random")  # SeqSetVAE runs, by backbone
BASELINE_MODELS = ("logreg", "gbm")
MODEL_LABELS = {
    "pretrained": "SeqSetVAE, pretrained backbone",
    "random": "SeqSetVAE, random backbone",
    "logreg": "logistic regression",
    "gbm": "gradient boosting",
}
REFERENCE = "pretrained"  # the paired differences are this model minus each other one
METRICS = ("auroc", "auprc")
CSV_COLUMNS = ("model", "label", "fraction", "n_folds", "auroc", "auroc_sd", "auprc", "auprc_sd")


def fraction_folder(fraction: float) -> str:
    """`frac_<f>` with f as Python (and DVC's ${} interpolation) prints the params value: frac_0.01, frac_1.0."""
    return f"frac_{fraction}"


def run_file(folder: Path, fraction: float, model: str, fold: int) -> Path:
    """The test-metrics file of one run: `<folder>/label_efficiency/frac_<f>/<model>/fold_<k>.json`."""
    return Path(folder) / FOLDER / fraction_folder(fraction) / model / f"fold_{fold}.json"


def models_of(le: LabelEfficiencyParams) -> list[str]:
    """The models params run, in the figure's order: the backbones, then the baselines."""
    return [m for m in BACKBONE_MODELS if m in le.backbones] + [m for m in BASELINE_MODELS if m in le.baselines]


Results = dict[str, list[list[dict[str, float]]]]  # model -> per fraction -> per fold -> the test metrics


def collect(evaluate_dir: Path, baseline_dir: Path, le: LabelEfficiencyParams) -> Results:
    """model -> per fraction (params order) -> per fold (label_efficiency.run order): the four test metrics.
    Empty when no fold runs it (`run: []`): there is nothing to summarise."""
    out: Results = {}
    if not le.run:
        return out
    for model in models_of(le):
        folder = evaluate_dir if model in BACKBONE_MODELS else baseline_dir
        out[model] = []
        for fraction in le.fractions:
            per_fold = []
            for k in le.run:
                path = run_file(folder, fraction, model, k)
                data = read_json(path, f"the label-efficiency metrics of {model}, fraction {fraction}, fold {k}")
                per_fold.append(metric_block(data, path))
            out[model].append(per_fold)
    return out


def _stats(values: np.ndarray) -> dict[str, Any]:
    return {"mean": round(float(values.mean()), DIGITS), "sd": spread(values),
            "per_fold": [round(float(v), DIGITS) for v in values]}


def summarise(results: Results, le: LabelEfficiencyParams) -> dict[str, Any]:
    """The content of details/label_efficiency.json (see the module docstring). With `run: []` the models
    and pairs are empty: nothing ran, and the report then shows no label-efficiency section."""
    models: dict[str, Any] = {}
    for model, by_fraction in results.items():
        rows = []
        for fraction, per_fold in zip(le.fractions, by_fraction):
            row: dict[str, Any] = {"fraction": fraction, "n_folds": len(per_fold)}
            for m in METRICS:
                row[m] = _stats(np.array([f[m] for f in per_fold], dtype=np.float64))
            rows.append(row)
        models[model] = {"label": MODEL_LABELS[model], "by_fraction": rows}
    paired: dict[str, Any] = {}
    if REFERENCE in results:
        for other in results:
            if other == REFERENCE:
                continue
            rows = []
            for fraction, ref, oth in zip(le.fractions, results[REFERENCE], results[other]):
                row = {"fraction": fraction}
                for m in METRICS:
                    diff = np.array([a[m] for a in ref], dtype=np.float64) - np.array([b[m] for b in oth])
                    row[m] = {**_stats(diff), "folds_at_least_as_good": int((diff >= 0).sum())}
                rows.append(row)
            paired[f"{REFERENCE} - {other}"] = {"by_fraction": rows}
    return {
        "folds": list(le.run) if results else [],
        "fractions": list(le.fractions),
        "seed": le.seed,
        "metric": "test split, whole; the head / baselines trained on the fraction of the train split's labels",
        "models": models,
        "paired": paired,
    }


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """plots/label_efficiency.csv: one row per model and fraction (x = fraction, y = auroc / auprc, one line
    per model); the sd cells are empty with one fold."""
    rows = []
    for model in ordered(summary["models"]):
        s = summary["models"][model]
        for r in s["by_fraction"]:
            rows.append({"model": model, "label": s["label"], "fraction": r["fraction"], "n_folds": r["n_folds"],
                         **{k: v for m in METRICS for k, v in ((m, r[m]["mean"]), (f"{m}_sd", r[m]["sd"]))}})
    return rows


def ordered(names: Any) -> list[str]:
    """Model names in the figure's order (backbones, then baselines): the JSON keeps its keys sorted."""
    rank = {m: i for i, m in enumerate(BACKBONE_MODELS + BASELINE_MODELS)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), m))


def has_results(summary: dict[str, Any] | None) -> bool:
    return bool(summary and summary.get("models"))
