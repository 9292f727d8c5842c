"""Evaluate test-split predictions: AUROC, AUPRC, Brier, ECE with bootstrap CIs; ROC / PR / calibration data.

Reads the predictions parquet written by `finetune` from its best checkpoint (subject_id, prediction_time,
label, probability: one row per sample; the baselines' too); writes a metrics JSON (the four point estimates: what `dvc metrics show` compares), a
details JSON (the bootstrap intervals, counts, bootstrap settings and model name) and, with `--plots`, a
folder of plot data (roc.csv, pr.csv, calibration.csv) that dvc.yaml declares as DVC plots. The
label-efficiency runs give no `--plots`: dozens of curve sets nobody draws would crowd `dvc plots show`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from seqsetvae.config import Params
from seqsetvae.data.readers import read_parquet_pandas
from seqsetvae.errors import DataError
from seqsetvae.evaluation.metrics import DIGITS, curves, evaluate_binary, headline, metric_functions
from seqsetvae.io import atomic_path, write_json, write_parquet

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("subject_id", "label", "probability")  # and prediction_time, for --meds-predictions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", required=True, help="parquet with subject_id, label, probability")
    p.add_argument("--metrics", required=True, help="metrics JSON to write (point estimates)")
    p.add_argument("--details", required=True, help="details JSON to write (intervals, counts, settings)")
    p.add_argument("--plots", default=None, help="folder for roc.csv, pr.csv, calibration.csv (default: none written)")
    p.add_argument("--name", default=None, help="model name recorded in the metrics (default: file stem)")
    p.add_argument("--meds-predictions", default=None,
                   help="also write the predictions in the form MEDS-DEV's evaluator (meds-evaluation) reads: "
                        "subject_id, prediction_time, boolean_value, predicted_boolean_value, "
                        "predicted_boolean_probability (default: none written)")


def read_predictions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = read_parquet_pandas(path, what="predictions file")
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; expected {list(PREDICTION_COLUMNS)}")
    return df


# meds_evaluation.schema.PredictionSchema (meds-evaluation 0.0.6): the MEDS label schema plus the predictions.
MEDS_PREDICTION_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64()),
    pa.field("prediction_time", pa.timestamp("us")),
    pa.field("boolean_value", pa.bool_()),
    pa.field("predicted_boolean_value", pa.bool_()),
    pa.field("predicted_boolean_probability", pa.float32()),
])


def meds_predictions(df: pd.DataFrame, path: str | Path) -> pa.Table:
    """Predictions in MEDS-DEV's prediction form; predicted_boolean_value is probability >= 0.5 (the
    probabilities are calibrated on val, docs/training.md)."""
    if "prediction_time" not in df.columns:
        raise DataError(path, "missing column 'prediction_time': the MEDS prediction form keys a row by "
                              "(subject_id, prediction_time)")
    prob = df["probability"].to_numpy()
    return pa.Table.from_arrays([
        pa.array(df["subject_id"].to_numpy(), pa.int64()),
        pa.array(df["prediction_time"]).cast(pa.timestamp("us")),
        pa.array(df["label"].to_numpy() > 0, pa.bool_()),
        pa.array(prob >= 0.5, pa.bool_()),
        pa.array(prob, pa.float64()).cast(pa.float32()),
    ], schema=MEDS_PREDICTION_SCHEMA)


def _warn_if_float32_changes_auroc(df: pd.DataFrame, table: pa.Table, metrics: dict, path: str | Path) -> None:
    """The MEDS prediction form holds probabilities as float32 (meds-evaluation casts any other float to it),
    where this stage scores the float64 ones. Saturated probabilities (a calibrated model's 1 - 1e-9 and
    1 - 1e-10) that differ only below float32's resolution become ties there, and a MEDS-DEV evaluator then
    reports another AUROC. Never silently: a warning with both figures and the number of merged values."""
    p64 = df["probability"].to_numpy(dtype=np.float64)
    p32 = table.column("predicted_boolean_probability").to_numpy()
    merged = len(np.unique(p64)) - len(np.unique(p32))
    if merged == 0:
        return
    auroc32 = metric_functions(1)["auroc"](df["label"].to_numpy(), p32)
    if round(auroc32, DIGITS) != metrics["auroc"]["value"]:
        log.warning(
            "%s: as float32 (the MEDS prediction form) %d distinct probabilities become ties, so a MEDS-DEV "
            "evaluator (meds-evaluation) reports AUROC %.6f where this stage reports %.6f from the float64 "
            "probabilities", path, merged, auroc32, metrics["auroc"]["value"],
        )


def run(params: Params, args: argparse.Namespace) -> None:
    ev = params.evaluate
    df = read_predictions(args.predictions)
    try:
        metrics = evaluate_binary(
            df["label"].to_numpy(), df["probability"].to_numpy(), ev.n_bootstrap, ev.seed, ev.ci, ev.calibration_bins,
            subject_ids=df["subject_id"].to_numpy(),
        )
        curve_rows = curves(df["label"].to_numpy(), df["probability"].to_numpy(), ev.calibration_bins)
    except ValueError as e:
        raise DataError(args.predictions, str(e)) from None
    metrics["model"] = args.name or Path(args.predictions).stem
    if args.plots is not None:
        with atomic_path(args.plots, is_dir=True) as tmp:
            for name, rows in curve_rows.items():
                pd.DataFrame(rows).to_csv(tmp / f"{name}.csv", index=False)
    if args.meds_predictions is not None:
        table = meds_predictions(df, args.predictions)
        _warn_if_float32_changes_auroc(df, table, metrics, args.meds_predictions)
        write_parquet(args.meds_predictions, table)
    write_json(args.details, metrics)
    write_json(args.metrics, headline(metrics))
    log.info(
        "%s: AUROC %.4f [%.4f, %.4f]  AUPRC %.4f [%.4f, %.4f]  (n=%d, %d positive)",
        metrics["model"],
        metrics["auroc"]["value"], metrics["auroc"]["ci_low"], metrics["auroc"]["ci_high"],
        metrics["auprc"]["value"], metrics["auprc"]["ci_low"], metrics["auprc"]["ci_high"],
        metrics["n"], metrics["positives"],
    )
