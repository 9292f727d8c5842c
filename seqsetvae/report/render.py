"""Figures (matplotlib, Agg, PNG) and the markdown of reports/report.md.

Figures are drawn on `matplotlib.figure.Figure` objects (no pyplot: no global state, no display needed).
The markdown holds no timestamp and no absolute path, and the PNGs no date or software version, so the
same inputs give the same report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from seqsetvae.data.readers import read_csv_frame, read_parquet_pandas
from seqsetvae.errors import DataError
from seqsetvae.evaluation.metrics import curves as curve_rows
from seqsetvae.report import label_efficiency as le_summary
from seqsetvae.report.summary import BASELINES, MAIN, METRICS, fold_file, mean_sd, variant_model

LABELS = {"auroc": "AUROC", "auprc": "AUPRC", "brier": "Brier", "ece": "ECE"}
CURVE_KINDS = {  # plot-data file -> (x column, y column, x label, y label)
    "roc": ("fpr", "tpr", "false positive rate", "true positive rate"),
    "pr": ("recall", "precision", "recall", "precision"),
    "calibration": ("predicted", "observed", "mean predicted probability", "observed mortality"),
}
# Training curves from the DVCLive folders: panel title -> [(series label, file under plots/metrics/)].
PRETRAIN_PANELS = {
    "loss (ELBO)": [("train", "train/loss_step"), ("val", "val/loss")],
    "reconstruction": [("train", "train/recon_step"), ("val", "val/recon")],
    "KL": [("train", "train/kl_step"), ("val", "val/kl")],
}
FINETUNE_PANELS = {
    "loss": [("train", "train/loss_step"), ("val", "val/loss")],
    "val AUROC / AUPRC": [("val AUROC", "val/auroc"), ("val AUPRC", "val/auprc")],
}


@dataclass
class ReportInputs:
    """What the report reads; paths are relative to the project (they also appear in the report)."""

    summary: dict[str, Any]
    plots_dir: Path  # evaluate plot data: fold_<k>/{roc,pr,calibration}.csv (+ ablation/<v>/fold_<k>/)
    baseline_predictions: Path  # fold_<k>/{logreg,gbm}.parquet
    curves_dir: Path  # DVCLive: pretrain/fold_<k>, finetune/fold_<k>
    variants: list[str]
    calibration_bins: int
    dpi: int
    label_efficiency: dict[str, Any] | None = None  # details/label_efficiency.json (None: not given)
    # What the SeqSetVAE rows are, as params give them: the main model's head (finetune.inputs /
    # backbone_projection / unfreeze) and, per variant run, the keys it sets in ablation.variants.
    head: dict[str, Any] = field(default_factory=dict)
    variant_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing_curves: list[str] = field(default_factory=list)  # training-curve files not found (reported)
    # Extra tasks (params tasks.run): name -> its definition's keys, shown above its table.
    task_settings: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Data


def _read_csv(path: Path, columns: tuple[str, str]) -> pd.DataFrame:
    df = read_csv_frame(path, "plot data file", hint=": run the evaluate stage first")
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DataError(path, f"missing column(s) {absent}", 1)
    return df


def model_curves(inp: ReportInputs, fold: int) -> dict[str, dict[str, pd.DataFrame]]:
    """kind -> model -> curve rows, for every model of one fold. The main model and the variants come from
    the evaluate stage's plot data; the baselines' curves are computed from their test predictions with
    the same function (seqsetvae.evaluation.metrics.curves)."""
    out: dict[str, dict[str, pd.DataFrame]] = {kind: {} for kind in CURVE_KINDS}
    sources = [(MAIN, None)] + [(variant_model(v), v) for v in inp.variants]
    for name, variant in sources:
        folder = fold_file(inp.plots_dir, fold, variant, suffix="")
        for kind, (x, y, _, _) in CURVE_KINDS.items():
            out[kind][name] = _read_csv(folder / f"{kind}.csv", (x, y))
    for b in BASELINES:
        path = fold_file(inp.baseline_predictions, fold, suffix="") / f"{b}.parquet"
        pred = read_parquet_pandas(path, ["label", "probability"], what="baseline predictions file",
                                   hint=": run the baseline stage first")
        try:
            rows = curve_rows(pred["label"].to_numpy(), pred["probability"].to_numpy(), inp.calibration_bins)
        except ValueError as e:
            raise DataError(path, str(e)) from None
        for kind in CURVE_KINDS:
            out[kind][b] = pd.DataFrame(rows[kind])
    return out


def read_dvclive(folder: Path, name: str, missing: list[str]) -> pd.DataFrame | None:
    """One DVCLive series (columns step, value) or None, noting the absent file in `missing`."""
    path = folder / "plots" / "metrics" / f"{name}.tsv"
    if not path.is_file():
        missing.append(str(path))
        return None
    df = read_csv_frame(path, "training-curve file", sep="\t")
    if "step" not in df.columns or len(df.columns) != 2:
        raise DataError(path, "expected two columns: step and the metric", 1)
    return df.set_axis(["step", "value"], axis=1)


# --------------------------------------------------------------------------------------------------
# Figures


def _save(fig: Figure, path: Path, dpi: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # No Software / date chunks: the PNG depends on the data (and the matplotlib renderer) only.
    fig.savefig(path, dpi=dpi, format="png", metadata={"Software": None}, bbox_inches="tight")


def _style(model: str, index: int) -> dict[str, Any]:
    """Main model bold, baselines dashed, variants dotted; `index` (position in the legend) picks the colour."""
    if model == MAIN:
        return {"color": "C0", "linewidth": 2.2, "zorder": 3}
    if model in BASELINES:
        return {"color": f"C{index}", "linewidth": 1.4, "linestyle": "--"}
    return {"color": f"C{index % 10}", "linewidth": 1.2, "linestyle": ":"}


def ordered(models: list[str]) -> list[str]:
    """Main model first, then the baselines, then the ablation variants (the JSON keeps them sorted)."""
    rank = {MAIN: 0, **{b: 1 + i for i, b in enumerate(BASELINES)}}
    return sorted(models, key=lambda m: (rank.get(m, len(rank)), m))


def curve_figure(kind: str, fold: int, by_model: dict[str, pd.DataFrame], prevalence: float | None, dpi: int,
                 path: Path) -> None:
    x, y, xlabel, ylabel = CURVE_KINDS[kind]
    fig = Figure(figsize=(4.6, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, model in enumerate(ordered(list(by_model))):
        df = by_model[model]
        marker = "o" if kind == "calibration" else None
        ax.plot(df[x], df[y], label=model, marker=marker, markersize=3, **_style(model, i))
    if kind in ("roc", "calibration"):
        ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8, label="chance" if kind == "roc" else "perfect")
    elif prevalence is not None:
        ax.axhline(prevalence, color="0.6", linewidth=0.8, label=f"prevalence {prevalence:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel,
           title=f"{ {'roc': 'ROC', 'pr': 'Precision-recall', 'calibration': 'Reliability'}[kind]} - fold {fold}")
    ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "best")
    ax.grid(alpha=0.3)
    _save(fig, path, dpi)


def training_figure(title: str, panels: dict[str, list[tuple[str, str]]], folder: Path, dpi: int, path: Path,
                    missing: list[str]) -> None:
    fig = Figure(figsize=(4.0 * len(panels), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (panel, series) in zip(axes, panels.items()):
        for label, name in series:
            df = read_dvclive(folder, name, missing)
            if df is not None:
                style = {"alpha": 0.6, "linewidth": 0.8} if name.endswith("_step") else {"marker": "o", "markersize": 3}
                ax.plot(df["step"], df["value"], label=label, **style)
        ax.set(title=panel, xlabel="optimiser step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path, dpi)


def draw_figures(inp: ReportInputs, figures_dir: Path) -> dict[int, dict[str, str]]:
    """Every figure, per fold: {fold: {figure key: file name under figures_dir}}."""
    made: dict[int, dict[str, str]] = {}
    for fold in inp.summary["folds"]:
        files: dict[str, str] = {}
        by_kind = model_curves(inp, fold)
        for kind, by_model in by_kind.items():
            files[kind] = f"{kind}_fold_{fold}.png"
            prevalence = _prevalence(inp, fold) if kind == "pr" else None
            curve_figure(kind, fold, by_model, prevalence, inp.dpi, figures_dir / files[kind])
        for stage, panels in (("pretrain", PRETRAIN_PANELS), ("finetune", FINETUNE_PANELS)):
            files[stage] = f"{stage}_curves_fold_{fold}.png"
            training_figure(f"{stage} - fold {fold}", panels, fold_file(inp.curves_dir / stage, fold, suffix=""),
                            inp.dpi, figures_dir / files[stage], inp.missing_curves)
        made[fold] = files
    return made


LABEL_EFFICIENCY_FIGURE = "label_efficiency.png"
LABEL_EFFICIENCY_STYLE = {  # pretrained bold (the reason to pretrain), random dotted, baselines dashed
    "pretrained": {"color": "C0", "linewidth": 2.2, "zorder": 3},
    "random": {"color": "C3", "linewidth": 1.4, "linestyle": ":"},
    "logreg": {"color": "C1", "linewidth": 1.4, "linestyle": "--"},
    "gbm": {"color": "C2", "linewidth": 1.4, "linestyle": "--"},
}


def percent(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def label_efficiency_figure(summary: dict[str, Any], dpi: int, path: Path) -> None:
    """Two panels, test AUROC and AUPRC against the label fraction (log axis), one line per model with
    mean +- sd error bars over folds (no bars with one fold)."""
    fractions = summary["fractions"]
    fig = Figure(figsize=(9.2, 3.9), layout="constrained")
    axes = fig.subplots(1, len(le_summary.METRICS))
    for ax, metric in zip(axes, le_summary.METRICS):
        for model in le_summary.ordered(summary["models"]):
            s = summary["models"][model]
            rows = s["by_fraction"]
            sd = [r[metric]["sd"] for r in rows]
            ax.errorbar([r["fraction"] for r in rows], [r[metric]["mean"] for r in rows],
                        yerr=None if any(v is None for v in sd) else sd, label=s["label"], marker="o",
                        markersize=3.5, capsize=3, **LABEL_EFFICIENCY_STYLE.get(model, {}))
        ax.set_xscale("log")
        ax.set_xticks(fractions, [percent(f) for f in fractions])
        ax.minorticks_off()
        ax.set(xlabel="share of the training labels", ylabel=f"test {LABELS[metric]}", title=LABELS[metric])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    n = len(summary["folds"])
    fig.suptitle(f"Label efficiency: mean +- sd over {n} folds" if n > 1 else "Label efficiency: one fold")
    _save(fig, path, dpi)


def _prevalence(inp: ReportInputs, fold: int) -> float:
    path = fold_file(inp.baseline_predictions, fold, suffix="") / f"{BASELINES[0]}.parquet"
    return float(read_parquet_pandas(path, ["label"], what="baseline predictions file")["label"].mean())


# --------------------------------------------------------------------------------------------------
# Markdown


def _f(x: float) -> str:
    return f"{x:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(inp: ReportInputs, figures: dict[int, dict[str, str]], figures_rel: str) -> str:
    s = inp.summary
    folds, n = s["folds"], s["n_splits"]
    fold_cols = [f"fold {k}" for k in folds]
    models: dict[str, Any] = s["models"]
    lines = [
        "# SeqSetVAE: in-hospital mortality report",
        "",
        f"Test-split results over {n} split(s) (folds {', '.join(map(str, folds))}): {MAIN} (pretrained "
        "backbone + head), the baselines (logistic regression and gradient boosting on per-variable "
        "summaries) and the ablation variants. "
        + ("Mean +- sample sd over splits." if n > 1 else "One split: its values, with no spread to show."),
        "",
        *models_markdown(inp),
        "## Results (mean +- sd over splits)" if n > 1 else "## Results",
        "",
    ]
    lines += _table(["model", *(LABELS[m] for m in METRICS), "splits"],
                    [[f"**{name}**" if name == MAIN else name,
                      *(mean_sd(models[name][m]["mean"], models[name][m]["sd"]) for m in METRICS),
                      str(models[name]["n_splits"])]
                     for name in ordered(list(models))])
    lines += ["", "Higher is better for AUROC and AUPRC, lower for Brier and ECE.", "",
              f"## Paired comparison per split ({MAIN} minus the other model, same test subjects)", ""]
    rows = []
    for other in ordered([name for name in models if name != MAIN]):
        pair = f"{MAIN} - {other}"
        for m in ("auroc", "auprc"):
            d = s["paired"][pair][m]
            rows.append([pair, LABELS[m], *(f"{x:+.3f}" for x in d["per_split"]),
                         mean_sd(d["mean"], d["sd"], signed=True), f"{d['splits_at_least_as_good']} / {n}"])
    lines += _table(["comparison", "metric", *fold_cols, "mean +- sd" if n > 1 else "difference",
                     f"splits {MAIN} >= other"], rows)
    lines += ["", "## Per-split values", ""]
    lines += _table(["model", "metric", *fold_cols],
                    [[name, LABELS[m], *(_f(x) for x in models[name][m]["per_split"])]
                     for name in ordered(list(models)) for m in ("auroc", "auprc")])
    if s.get("tasks"):
        lines += ["", *tasks_markdown(s, inp.task_settings)]
    if le_summary.has_results(inp.label_efficiency):
        lines += ["", *label_efficiency_markdown(inp.label_efficiency, figures_rel)]
    lines += ["", "## Figures", ""]
    captions = {"roc": "ROC", "pr": "precision-recall", "calibration": "reliability (calibration)",
                "pretrain": "pretraining curves (loss, reconstruction, KL)",
                "finetune": "finetuning curves (loss, val AUROC / AUPRC)"}
    for fold, files in figures.items():
        lines += [f"### Fold {fold}", ""]
        for key, name in files.items():
            lines.append(f"![fold {fold} {captions[key]}]({figures_rel}/{name})")
        lines.append("")
    if inp.missing_curves:
        lines += ["Training-curve series not logged (left out of the figures): "
                  + ", ".join(f"`{p}`" for p in sorted(set(inp.missing_curves))) + ".", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def tasks_markdown(s: dict[str, Any], task_settings: dict[str, dict[str, Any]]) -> list[str]:
    """One section per extra task (params tasks.run): its models' test metrics and SeqSetVAE's paired
    differences, the same rows as the main task's tables above, from the same pretrained backbones."""
    n = s["n_splits"]
    lines = ["## Other tasks, from the same pretrained backbone", "",
             f"The tables above are the main task, {s.get('main_task')}. Each task below is finetuned per fold from "
             "the same pretrained backbone, its samples packed with the main task's vocabulary and statistics; "
             "the baselines and the ablation variants are refit on its labels (docs/preprocess.md, Tasks). "
             + ("Mean +- sample sd over splits." if n > 1 else "One split: its values."), ""]
    for task, t in s["tasks"].items():
        models = t["models"]
        settings = task_settings.get(task)
        lines += [f"### {task}", ""]
        if settings:
            lines += ["params tasks.definitions." + task + ": " + _settings(settings) + ".", ""]
        lines += _table(["model", *(LABELS[m] for m in METRICS), "splits"],
                        [[f"**{name}**" if name == MAIN else name,
                          *(mean_sd(models[name][m]["mean"], models[name][m]["sd"]) for m in METRICS),
                          str(models[name]["n_splits"])] for name in ordered(list(models))])
        rows = []
        for other in ordered([name for name in models if name != MAIN]):
            pair = f"{MAIN} - {other}"
            for m in ("auroc", "auprc"):
                d = t["paired"][pair][m]
                rows.append([pair, LABELS[m], mean_sd(d["mean"], d["sd"], signed=True),
                             f"{d['splits_at_least_as_good']} / {n}"])
        lines += ["", *_table(["comparison", "metric", "mean +- sd" if n > 1 else "difference",
                               f"splits {MAIN} >= other"], rows), ""]
    return lines


def _settings(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def models_markdown(inp: ReportInputs) -> list[str]:
    """What each SeqSetVAE row is, in the params' own words, so a reader of the report alone knows what
    the head saw (e.g. the observation state beside the backbone) without opening params.yaml."""
    if not inp.head:
        return []
    lines = [f"{MAIN}'s head, params finetune: {_settings(inp.head)}."]
    if inp.variant_settings:
        lines[0] += (" Each ablation variant sets, in ablation.variants, only what differs (the rest is the "
                     "finetune section's; a variant with backbone none trains its head on the observation "
                     "state alone): " + "; ".join(f"{variant_model(v)}: {_settings(kv)}"
                                                  for v, kv in inp.variant_settings.items()) + ".")
    return [*lines, ""]


def label_efficiency_markdown(le: dict[str, Any], figures_rel: str) -> list[str]:
    """The label-efficiency section: test AUROC / AUPRC per model and label fraction, the paired
    differences of the pretrained model, and the figure."""
    fractions, n = le["fractions"], len(le["folds"])
    cols = [percent(f) for f in fractions]
    ref = le_summary.REFERENCE
    lines = [
        "## Label efficiency",
        "",
        f"Test AUROC and AUPRC when {MAIN}'s head (params finetune, on a frozen pretrained or random backbone) and the "
        f"baselines train on a share of the "
        f"training labels: nested, label-stratified subsamples (seed {le['seed']}); validation and test stay "
        f"whole. Folds {', '.join(map(str, le['folds']))}; "
        + ("mean +- sd over folds." if n > 1 else "one fold, no spread to show."),
        "",
    ]
    lines += _table(["model", "metric", *cols],
                    [[s["label"], LABELS[m], *(mean_sd(r[m]["mean"], r[m]["sd"]) for r in s["by_fraction"])]
                     for s in (le["models"][k] for k in le_summary.ordered(le["models"]))
                     for m in le_summary.METRICS])
    if le["paired"]:
        lines += ["", f"Paired per fold (same test subjects), {le_summary.REFERENCE} minus the other model; in "
                      "brackets the folds where the pretrained model is at least as good:", ""]
        lines += _table(["comparison", "metric", *cols],
                        [[pair, LABELS[m], *(f"{mean_sd(r[m]['mean'], r[m]['sd'], signed=True)} "
                                             f"({r[m]['folds_at_least_as_good']} / {n})" for r in d["by_fraction"])]
                         for pair, d in ((f"{ref} - {other}", le["paired"][f"{ref} - {other}"])
                                         for other in le_summary.ordered(p.split(" - ", 1)[1] for p in le["paired"]))
                         for m in le_summary.METRICS])
    lines += ["", f"![label efficiency: test AUROC and AUPRC against the share of training labels]"
                  f"({figures_rel}/{LABEL_EFFICIENCY_FIGURE})"]
    return lines
