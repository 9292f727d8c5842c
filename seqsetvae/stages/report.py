"""Report: reports/report.md with figures, from every fold's metrics, plot data and training curves.

Reads the aggregate JSON (mean / sd / per-split values, paired differences), each fold's evaluate plot data
(ROC, PR, reliability of SeqSetVAE and the ablation variants), the baselines' test predictions (their
curves are computed here with the evaluate stage's function) and the DVCLive training curves of pretrain and
finetune. With `--label-efficiency` (details/label_efficiency.json) and label-efficiency results in it, adds
the label-efficiency table and figure (reports/figures/label_efficiency.png). Writes the markdown (tables +
figure links; no timestamp) and a folder of PNG figures, both atomically. Extra tasks (params tasks.run,
`tasks` in the aggregate details) get one section each: their models' table and paired differences.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from pathlib import Path

from seqsetvae.config import Params
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path, write_text
from seqsetvae.report import label_efficiency as le_summary
from seqsetvae.report.render import (
    LABEL_EFFICIENCY_FIGURE,
    ReportInputs,
    draw_figures,
    label_efficiency_figure,
    markdown,
)
from seqsetvae.report.summary import read_json

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--aggregate", required=True, type=Path, help="details JSON written by the aggregate stage")
    parser.add_argument("--plots", required=True, type=Path, help="folder of the evaluate stages' plot data")
    parser.add_argument("--baseline-predictions", required=True, type=Path,
                        help="folder of the baseline stages' predictions (fold_<k>/{logreg,gbm}.parquet)")
    parser.add_argument("--curves", required=True, type=Path, help="DVCLive folder root (pretrain/, finetune/)")
    parser.add_argument("--out", required=True, type=Path, help="markdown report to write")
    parser.add_argument("--figures", required=True, type=Path, help="folder for the PNG figures (replaced whole)")
    parser.add_argument("--label-efficiency", default=None, type=Path,
                        help="label-efficiency summary written by the aggregate stage (default: no such section)")


def run(params: Params, args: argparse.Namespace) -> None:
    summary = read_json(args.aggregate, "the aggregate details")
    if summary.get("folds") != params.split.folds:
        raise DataError(args.aggregate, f"folds {summary.get('folds')} differ from params split.folds "
                                        f"{params.split.folds}: rerun the aggregate stage")
    label_efficiency = None
    if args.label_efficiency is not None:
        label_efficiency = read_json(args.label_efficiency, "the label-efficiency summary")
        le = params.label_efficiency
        expected = (list(le.run) if le_summary.models_of(le) else [], list(le.fractions))
        if (label_efficiency.get("folds"), label_efficiency.get("fractions")) != expected:
            raise DataError(args.label_efficiency, f"folds {label_efficiency.get('folds')} and fractions "
                                                   f"{label_efficiency.get('fractions')} differ from params "
                                                   f"label_efficiency {expected}: rerun the aggregate stage")
    inp = ReportInputs(
        summary=summary,
        plots_dir=args.plots,
        baseline_predictions=args.baseline_predictions,
        curves_dir=args.curves,
        variants=list(params.ablation.run),
        calibration_bins=params.evaluate.calibration_bins,
        dpi=params.report.dpi,
        label_efficiency=label_efficiency,
        head={"inputs": params.finetune.inputs, "backbone_projection": params.finetune.backbone_projection,
              "unfreeze": params.finetune.unfreeze},
        variant_settings={v: params.ablation.variant(v).settings() for v in params.ablation.run},
        task_settings={t: {k: v for k, v in dataclasses.asdict(params.tasks.task(t)).items() if v is not None}
                       for t in params.tasks.run},
    )
    if sorted(summary.get("tasks", {})) != sorted(params.tasks.run):
        raise DataError(args.aggregate, f"tasks {sorted(summary.get('tasks', {}))} differ from params tasks.run "
                                        f"{sorted(params.tasks.run)}: rerun the aggregate stage")
    with atomic_path(args.figures, is_dir=True) as tmp:
        figures = draw_figures(inp, tmp)
        if le_summary.has_results(label_efficiency):
            label_efficiency_figure(label_efficiency, inp.dpi, tmp / LABEL_EFFICIENCY_FIGURE)
    # Figure links relative to the markdown's folder, so the report renders wherever the project sits.
    rel = Path(os.path.relpath(args.figures.resolve(), args.out.resolve().parent)).as_posix()
    write_text(args.out, markdown(inp, figures, rel))
    n_figs = sum(len(f) for f in figures.values()) + int(le_summary.has_results(label_efficiency))
    log.info("report: %d models, %d split(s), %d figures -> %s, %s%s", len(summary["models"]),
             summary["n_splits"], n_figs, args.out, args.figures,
             f" ({len(set(inp.missing_curves))} training-curve series not logged)" if inp.missing_curves else "")
