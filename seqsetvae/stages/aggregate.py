"""Aggregate over splits: mean and sd of test AUROC / AUPRC / Brier / ECE per model, and paired differences.

Reads, for every fold in params `split.folds`, the main model's evaluate metrics (`<evaluate>/fold_<k>.json`),
the baselines' metrics (`<baseline>/<model>/fold_<k>.json`: logreg, gbm) and each ablation variant of
`ablation.run` (`<evaluate>/ablation/<variant>/fold_<k>.json`). Writes (rounded, sorted keys: the same inputs
give the same bytes):

- `--details`: per model, mean / sd / per-split values, and per split the paired differences SeqSetVAE
  minus each other model with the number of splits where SeqSetVAE is at least as good (sd null with one
  split). The report reads this.
- `--out`: the headline metrics folder DVC shows and diffs: `<model>.json` (mean over splits of each test
  metric) and `SeqSetVAE-minus-<model>.json` (mean paired difference), replaced whole.
- extra tasks (params `tasks.run`, read from `<evaluate>/tasks/<task>/...` and `<baseline>/tasks/<task>/...` in
  the main task's layout): the same summary per task under `tasks.<task>` of the details (with `main_task`,
  naming the task of the top-level tables) and `<task>.<model>.json` headline files; absent when none ran, so
  the main task's outputs are byte for byte what they were.
- `--label-efficiency`: details/label_efficiency.json, the label-efficiency runs of params `label_efficiency`
  (per model and fraction: mean, sd, folds, per-fold AUROC / AUPRC; pretrained minus each other model, paired
  per fold), and `--label-efficiency-plot`: the same means as CSV rows for `dvc plots show`. Both are
  written with `label_efficiency.run: []` too (no models, a header-only CSV): DVC outputs always exist.
  See seqsetvae/report/label_efficiency.py.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from seqsetvae.config import Params
from seqsetvae.io import atomic_path, write_json
from seqsetvae.report import label_efficiency
from seqsetvae.report.summary import TASKS, MAIN, collect, headline_files, mean_sd, summarise, summarise_tasks

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluate", required=True, type=Path, help="folder of the evaluate stages' metrics")
    parser.add_argument("--baseline", required=True, type=Path, help="folder of the baseline stages' metrics")
    parser.add_argument("--out", required=True, type=Path, help="headline metrics folder to write (replaced whole)")
    parser.add_argument("--details", required=True, type=Path, help="aggregate details JSON to write")
    parser.add_argument("--label-efficiency", required=True, type=Path,
                        help="label-efficiency summary JSON to write (details/label_efficiency.json)")
    parser.add_argument("--label-efficiency-plot", required=True, type=Path,
                        help="label-efficiency CSV to write for dvc plots (plots/label_efficiency.csv)")


def run(params: Params, args: argparse.Namespace) -> None:
    results = collect(args.evaluate, args.baseline, params.split.folds, params.ablation.run)
    summary = summarise(results)
    if params.tasks.run:  # extra tasks: one summary each, beside the main task's (absent when none ran)
        summary["main_task"] = params.tasks.main
        summary[TASKS] = summarise_tasks(args.evaluate, args.baseline, params.split.folds, params.ablation.run,
                                         params.tasks.run)
    write_json(args.details, summary)
    with atomic_path(args.out, is_dir=True) as tmp:
        for name, values in headline_files(summary).items():
            write_json(tmp / name, values)
    for name, s in summary["models"].items():
        log.info("%-28s AUROC %s  AUPRC %s  (%d splits)", name, mean_sd(s["auroc"]["mean"], s["auroc"]["sd"], 4),
                 mean_sd(s["auprc"]["mean"], s["auprc"]["sd"], 4), s["n_splits"])
    gbm = summary["paired"][f"{MAIN} - gbm"]
    log.info("%s - gbm: AUROC %+.4f (at least as good on %d of %d splits), AUPRC %+.4f (%d of %d) -> %s",
             MAIN, gbm["auroc"]["mean"], gbm["auroc"]["splits_at_least_as_good"], summary["n_splits"],
             gbm["auprc"]["mean"], gbm["auprc"]["splits_at_least_as_good"], summary["n_splits"], args.out)
    for task, t in summary.get(TASKS, {}).items():
        for name, m in t["models"].items():
            log.info("%-14s %-28s AUROC %s  AUPRC %s", task, name, mean_sd(m["auroc"]["mean"], m["auroc"]["sd"], 4),
                     mean_sd(m["auprc"]["mean"], m["auprc"]["sd"], 4))
    write_label_efficiency(params, args)


def write_label_efficiency(params: Params, args: argparse.Namespace) -> None:
    le = params.label_efficiency
    summary = label_efficiency.summarise(label_efficiency.collect(args.evaluate, args.baseline, le), le)
    write_json(args.label_efficiency, summary)
    with atomic_path(args.label_efficiency_plot) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=label_efficiency.CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(label_efficiency.csv_rows(summary))
    if not label_efficiency.has_results(summary):
        log.info("label efficiency: not run (label_efficiency.run is empty) -> %s (no models)", args.label_efficiency)
        return
    for model, s in summary["models"].items():
        log.info("label efficiency %-10s %s", model, "  ".join(
            f"{r['fraction']:g}: AUROC {mean_sd(r['auroc']['mean'], r['auroc']['sd'])} AUPRC "
            f"{mean_sd(r['auprc']['mean'], r['auprc']['sd'])}" for r in s["by_fraction"]))
    log.info("label efficiency: %d model(s) x %d fraction(s) x %d fold(s) -> %s, %s", len(summary["models"]),
             len(summary["fractions"]), len(summary["folds"]), args.label_efficiency, args.label_efficiency_plot)

