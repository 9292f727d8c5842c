"""Where each fold's results live, and the cross-fold summary: details/aggregate.json (everything) and the
headline metrics folder metrics/aggregate/ (one small file per model and per paired comparison).

One home for the output layout that dvc.yaml declares (main model, baselines, ablation variants), so the
aggregate and report stages read exactly the files of the folds and variants in params, never whatever
else happens to sit in a folder (a fold dropped from params leaves its old files behind).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqsetvae.errors import DataError
from seqsetvae.evaluation.metrics import DIGITS, HEADLINE, aggregate, spread

MAIN = "SeqSetVAE"
BASELINES = ("logreg", "gbm")
METRICS = HEADLINE
HIGHER_IS_BETTER = {"auroc": True, "auprc": True, "brier": False, "ece": False}
ABLATION = "ablation"  # sub-folder holding the ablation variants' outputs


def variant_model(variant: str) -> str:
    """The model name of an ablation variant in the summary and the report."""
    return f"{MAIN}/{variant}"


def fold_file(folder: Path, fold: int, variant: str | None = None, suffix: str = ".json") -> Path:
    """`<folder>/fold_<k><suffix>` for the main model, `<folder>/ablation/<variant>/fold_<k><suffix>` for a
    variant (the paths dvc.yaml gives the evaluate / evaluate_ablation stages; suffix "" for a folder)."""
    base = folder if variant is None else folder / ABLATION / variant
    return base / f"fold_{fold}{suffix}"


def baseline_file(folder: Path, model: str, fold: int) -> Path:
    """`<folder>/<model>/fold_<k>.json`: one metrics file per baseline model, so every test-metrics file in
    the project has the same four keys (one short `dvc metrics show` table, a row per model and fold)."""
    return folder / model / f"fold_{fold}.json"


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, f"missing: run the stage that writes {what}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON: {e.msg}", e.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object ({what})")
    return data


def metric_block(data: dict[str, Any], path: Path) -> dict[str, float]:
    """The four test metrics of one metrics file, checked: {metric: float}."""
    for m in METRICS:
        value = data.get(m)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise DataError(path, f"'{m}' missing or not a finite number")
    return {m: float(data[m]) for m in METRICS}


@dataclass(frozen=True)
class FoldResults:
    """Per model (main, baselines, variants): the test metrics of each fold, in `folds` order."""

    folds: list[int]
    by_model: dict[str, list[dict[str, float]]]


def collect(evaluate_dir: Path, baseline_dir: Path, folds: list[int], variants: list[str]) -> FoldResults:
    """Read every fold's metrics of the main model, the baselines and each ablation variant."""
    by_model: dict[str, list[dict[str, float]]] = {MAIN: [], **{b: [] for b in BASELINES}}
    by_model.update({variant_model(v): [] for v in variants})
    for k in folds:
        path = fold_file(evaluate_dir, k)
        by_model[MAIN].append(metric_block(read_json(path, f"the evaluate metrics of fold {k}"), path))
        for b in BASELINES:
            path = baseline_file(baseline_dir, b, k)
            by_model[b].append(metric_block(read_json(path, f"the {b} baseline metrics of fold {k}"), path))
        for v in variants:
            path = fold_file(evaluate_dir, k, v)
            data = read_json(path, f"the evaluate metrics of ablation variant {v}, fold {k}")
            by_model[variant_model(v)].append(metric_block(data, path))
    return FoldResults(folds=list(folds), by_model=by_model)


TASKS = "tasks"  # sub-folder holding the extra tasks' outputs (params tasks.run): <folder>/tasks/<task>/...


def task_folder(folder: Path, task: str) -> Path:
    """`<folder>/tasks/<task>`: where an extra task's metrics sit, in the main task's layout (fold_<k>.json,
    ablation/<variant>/fold_<k>.json, <model>/fold_<k>.json), as dvc.yaml's *_task stages write them."""
    return Path(folder) / TASKS / task


def summarise_tasks(evaluate_dir: Path, baseline_dir: Path, folds: list[int], variants: list[str],
                    tasks: list[str]) -> dict[str, Any]:
    """Per extra task, the summary `summarise` gives the main task: its own table of models and paired
    differences (same folds, same variants, same baselines)."""
    return {t: summarise(collect(task_folder(evaluate_dir, t), task_folder(baseline_dir, t), folds, variants))
            for t in tasks}


def mean_sd(mean: float, sd: float | None, digits: int = 3, signed: bool = False) -> str:
    """"0.812 +- 0.010"; the mean alone with one split (sd None): there is no spread to show."""
    text = f"{mean:{'+' if signed else ''}.{digits}f}"
    return text if sd is None else f"{text} +- {sd:.{digits}f}"


def paired_differences(a: list[dict[str, float]], b: list[dict[str, float]]) -> dict[str, Any]:
    """Per metric, model a minus model b on each split (same test subjects), their mean and sd over splits,
    and the number of splits where a is at least as good as b (higher AUROC / AUPRC, lower Brier / ECE)."""
    out: dict[str, Any] = {}
    for m in METRICS:
        diff = np.array([x[m] for x in a], dtype=np.float64) - np.array([y[m] for y in b])
        better = diff >= 0 if HIGHER_IS_BETTER[m] else diff <= 0
        out[m] = {
            "per_split": [round(float(d), DIGITS) for d in diff],
            "mean": round(float(diff.mean()), DIGITS),
            "sd": spread(diff),
            "splits_at_least_as_good": int(better.sum()),
        }
    return out


def summarise(results: FoldResults) -> dict[str, Any]:
    """The content of details/aggregate.json: per model mean / sd / per-split values of each metric, and
    paired differences of the main model against each baseline and each ablation variant."""
    models = {name: aggregate(per_fold, METRICS) for name, per_fold in results.by_model.items()}
    main = results.by_model[MAIN]
    paired = {f"{MAIN} - {other}": paired_differences(main, per_fold)
              for other, per_fold in results.by_model.items() if other != MAIN}
    return {
        "folds": results.folds,
        "n_splits": len(results.folds),
        "models": models,
        "paired": paired,
        "higher_is_better": HIGHER_IS_BETTER,
    }


def headline_name(name: str) -> str:
    """File stem of a model or comparison in metrics/aggregate/: "SeqSetVAE/labels_10" -> "SeqSetVAE.labels_10",
    "SeqSetVAE - gbm" -> "SeqSetVAE-minus-gbm"."""
    return name.replace(" - ", "-minus-").replace("/", ".")


def headline_files(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The files of the headline metrics folder: per model the mean over splits of each test metric, per
    paired comparison the mean difference. The same four keys in every file, and in every per-fold metrics
    file, so `dvc metrics show` is one short table with a row per file; sd and per-split values stay in the
    details (there is no sd with one split)."""
    files = {f"{headline_name(n)}.json": {m: s[m]["mean"] for m in METRICS} for n, s in summary["models"].items()}
    files.update({f"{headline_name(n)}.json": {m: d[m]["mean"] for m in METRICS}
                  for n, d in summary["paired"].items()})
    for task, task_summary in summary.get(TASKS, {}).items():  # extra tasks: <task>.<model>.json
        files.update({f"{task}.{name}": values for name, values in headline_files(task_summary).items()})
    return files
