"""Aggregate over splits: mean and sd of test AUROC / AUPRC / Brier / ECE per model, and paired differences.

Reads, for every fold in params `split.folds`, the main model's evaluate metrics (`<evaluate>/fold_<k>.json`),
the baselines' metrics (`<baseline>/fold_<k>.json`: logreg, gbm) and each ablation variant of
`ablation.run` (`<evaluate>/ablation/<variant>/fold_<k>.json`). Writes one JSON (rounded, sorted keys: the
same inputs give the same bytes) with, per model, mean / sd / per-split values, and per split the paired
differences SeqSetVAE minus each other model with the number of splits where SeqSetVAE is at least as good.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from seqsetvae.config import Params
from seqsetvae.io import write_json
from seqsetvae.report.summary import MAIN, collect, summarise

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluate", required=True, type=Path, help="folder of the evaluate stages' metrics")
    parser.add_argument("--baseline", required=True, type=Path, help="folder of the baseline stages' metrics")
    parser.add_argument("--out", required=True, type=Path, help="aggregate metrics JSON to write")


def run(params: Params, args: argparse.Namespace) -> None:
    results = collect(args.evaluate, args.baseline, params.split.folds, params.ablation.run)
    summary = summarise(results)
    write_json(args.out, summary)
    for name, s in summary["models"].items():
        log.info("%-28s AUROC %.4f +- %.4f  AUPRC %.4f +- %.4f  (%d splits)", name, s["auroc"]["mean"],
                 s["auroc"]["sd"], s["auprc"]["mean"], s["auprc"]["sd"], s["n_splits"])
    gbm = summary["paired"][f"{MAIN} - gbm"]
    log.info("%s - gbm: AUROC %+.4f (at least as good on %d of %d splits), AUPRC %+.4f (%d of %d) -> %s",
             MAIN, gbm["auroc"]["mean"], gbm["auroc"]["splits_at_least_as_good"], summary["n_splits"],
             gbm["auprc"]["mean"], gbm["auprc"]["splits_at_least_as_good"], summary["n_splits"], args.out)
