"""Classical baselines: logistic regression and gradient boosting on per-variable summaries.

Features (`fold_features`): `per_variable_summaries` over the model's observation window
(`preprocess.window_hours`) for every subject of one fold, restricted to the codes measured in the window
by at least one **training** subject, plus the static descriptors. Columns without a single value in train
(e.g. the standard deviation of a code never measured twice) carry nothing to fit and are dropped, counted.
Unlike the model's preprocess, which drops stays with no event in the window, the baselines keep every
labelled subject of the split: such a stay has all-missing summaries (counts 0) and is imputed.

Models (`build_model`), each an sklearn Pipeline fitted on the training split only:

- `logreg`: median imputation with missing-indicator columns, standard scaling, one-hot encoding of the
  categorical descriptors (unseen categories -> all zeros), L2 `LogisticRegression` (lbfgs).
- `gbm`: `HistGradientBoostingClassifier`, missing values handled natively (no imputation), categorical
  descriptors ordinal-encoded and split as categories, early stopping on an internal stratified part of
  train (never val or test).

Selection (`fit_select`): every grid point of params `baseline.<model>` is fitted on train and scored on
val; the best val AUPRC wins (ties: the first grid point, in params order). The chosen fit is the reported
model: no refit on train + val, exactly as the neural model is trained on train and early-stopped on val.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from threadpoolctl import threadpool_limits

from seqsetvae.config import BaselineParams, EvaluateParams
from seqsetvae.data.canonical import SUBJECT_KEY_COLUMNS
from seqsetvae.data.splits import SPLITS, TRAIN, fold_assignment
from seqsetvae.data.summaries import STATS, feature_name, per_variable_summaries
from seqsetvae.errors import DataError
from seqsetvae.evaluation.metrics import DIGITS, evaluate_binary
from seqsetvae.threads import resolve_num_threads

log = logging.getLogger(__name__)

ModelName = Literal["logreg", "gbm"]
MODELS: tuple[ModelName, ...] = ("logreg", "gbm")
# HistGradientBoosting bins a categorical feature into at most 255 categories (its max_bins).
MAX_CATEGORIES = 255
_COUNT_SUFFIX = feature_name("", "count")


@dataclass
class FoldFeatures:
    """Feature frames, labels and what was left out, for one fold (rows sorted by subject_id)."""

    fold: int
    X: dict[str, pd.DataFrame]
    y: dict[str, np.ndarray]
    categorical: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.X["train"].columns if c not in self.categorical]


def _fold_labels(labels: pa.Table, ids: np.ndarray, fold: int) -> np.ndarray:
    lab_ids = labels.column("subject_id").to_numpy()
    lab_y = labels.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.int8)
    pos = pd.Index(lab_ids).get_indexer(ids)  # labels are unique per subject (the split stage checked)
    if (pos < 0).any():
        missing = ids[pos < 0][:5].tolist()
        raise DataError(
            "labels.parquet",
            f"{int((pos < 0).sum())} subject(s) of fold {fold} have no label, e.g. {missing}: "
            "the split table is stale, rerun the split stage",
        )
    return lab_y[pos]


def fold_features(
    events: pa.Table,
    subjects: pa.Table,
    labels: pa.Table,
    splits: pa.Table,
    fold: int,
    window_hours: float,
    categorical_descriptors: list[str],
    splits_path: str | None = None,
) -> FoldFeatures:
    """Summaries of the fold's subjects, with the code list and the kept columns decided on train only."""
    ids, split_code = fold_assignment(splits, fold)
    if ids.size == 0:
        folds = np.unique(splits.column("fold").to_numpy()).tolist()
        raise DataError(splits_path, f"fold {fold} is not in the split table (folds present: {folds})")
    y = _fold_labels(labels, ids, fold)

    subj = subjects.filter(pc.is_in(subjects.column("subject_id"), value_set=pa.array(ids, pa.int64())))
    if subj.num_rows != ids.size:
        missing = np.setdiff1d(ids, subj.column("subject_id").to_numpy())[:5].tolist()
        raise DataError("subjects.parquet", f"subject(s) of fold {fold} not in the subjects table, e.g. {missing}")
    ev = events.filter(pc.is_in(events.column("subject_id"), value_set=pa.array(ids, pa.int64())))
    summaries = per_variable_summaries(ev, subj, window_hours)
    outside_window = int(summaries.attrs["events_outside_window"])  # attrs do not survive reindexing
    feats = summaries.reindex(ids)  # rows in fold_assignment's (sorted subject_id) order

    train = split_code == TRAIN
    codes = [c[: -len(_COUNT_SUFFIX)] for c in feats.columns if c.endswith(_COUNT_SUFFIX)]
    train_counts = feats.loc[train, [feature_name(c, "count") for c in codes]].sum(axis=0).to_numpy()
    not_in_train = [c for c, n in zip(codes, train_counts) if n == 0]
    drop = [feature_name(c, s) for c in not_in_train for s in STATS]
    feats = feats.drop(columns=drop)
    empty = feats.columns[feats.loc[train].isna().all(axis=0).to_numpy()].tolist()
    feats = feats.drop(columns=empty)

    descriptors = [c for c in subj.column_names if c not in SUBJECT_KEY_COLUMNS]
    categorical = [c for c in categorical_descriptors if c in feats.columns]
    absent = [c for c in categorical_descriptors if c not in descriptors]
    if absent:
        log.warning("baseline.categorical_descriptors %s are not descriptors of this cohort (has %s); "
                    "left out", absent, descriptors)
    for c in categorical:
        n_cat = feats.loc[train, c].nunique(dropna=True)
        if n_cat > MAX_CATEGORIES:
            raise DataError(None, f"baseline.categorical_descriptors: '{c}' has {n_cat} categories in train, "
                                  f"more than the {MAX_CATEGORIES} gradient boosting supports")

    kept_counts = [feature_name(c, "count") for c in codes if c not in not_in_train]
    no_events = feats[kept_counts].sum(axis=1).to_numpy() == 0  # kept, imputed; the model's preprocess drops them
    X, ys, subjects_report = {}, {}, {}
    for k, name in enumerate(SPLITS):
        sel = split_code == k
        X[name], ys[name] = feats.loc[sel], y[sel]
        subjects_report[name] = {
            "n": int(sel.sum()),
            "positives": int(y[sel].sum()),
            "without_events_in_window": int((no_events & sel).sum()),
        }
    report = {
        "subjects": subjects_report,
        "features": {
            "codes": len(codes) - len(not_in_train),
            "codes_not_in_train": sorted(not_in_train),
            "columns": int(feats.shape[1]),
            "columns_without_train_values": sorted(empty),
            "categorical": categorical,
            "categorical_descriptors_absent": absent,
            "events_outside_window": outside_window,
        },
    }
    log.info("fold %d features: %d codes from train (%d codes only outside train left out), %d columns "
             "(%d without a train value left out)", fold, report["features"]["codes"], len(not_in_train),
             feats.shape[1], len(empty))
    return FoldFeatures(fold=fold, X=X, y=ys, categorical=categorical, report=report)


def subsample_train(features: FoldFeatures, keep: np.ndarray, fraction: float, seed: int) -> FoldFeatures:
    """The fold's features with the train split cut to rows `keep` (seqsetvae.data.splits.label_subsample);
    val and test stay whole. A column without a single value in the kept train rows carries nothing to fit
    (a 1 % subsample often holds no measurement of a rare variable): dropped from every split, named and
    counted in the report, as fold_features does for the whole train split."""
    X_tr = features.X["train"].iloc[keep]
    y_tr = features.y["train"][keep]
    empty = X_tr.columns[X_tr.isna().all(axis=0).to_numpy()].tolist()
    X = {name: df.drop(columns=empty) for name, df in features.X.items()}
    X["train"] = X_tr.drop(columns=empty)
    report = {**features.report, "label_subsample": {
        "fraction": fraction,
        "seed": seed,
        "train_stays": int(keep.size),
        "train_positives": int(y_tr.sum()),
        "train_stays_of": int(features.y["train"].size),
        "columns": int(X["train"].shape[1]),
        "columns_without_subsample_values": len(empty),
        "columns_without_subsample_values_names": sorted(empty),
    }}
    log.info("fold %d label subsample %g (seed %d): %d of %d train stays (%d positive); %d of %d columns have no "
             "value in it and are left out", features.fold, fraction, seed, keep.size, features.y["train"].size,
             int(y_tr.sum()), len(empty), features.X["train"].shape[1])
    return FoldFeatures(fold=features.fold, X=X, y={**features.y, "train": y_tr},
                        categorical=[c for c in features.categorical if c not in empty], report=report)


def check_fittable(name: ModelName, p: BaselineParams, y_train: np.ndarray, fold: int) -> None:
    """Refuse, with the counts and the keys to change, a train split too small for `name` to be fitted:
    both classes are needed, and gradient boosting's early stopping holds out a stratified
    `validation_fraction` of train, which needs at least 2 stays of each class and at least 2 on each side.
    (Val, where the hyperparameters are chosen, is always the whole split.)"""
    n, pos = int(y_train.size), int(np.sum(y_train))
    counts = f"fold {fold}: the train split holds {n} stays ({pos} positive, {n - pos} negative)"
    if pos == 0 or pos == n:
        raise DataError(None, f"{counts}; {name} needs both classes to be fitted")
    if name == "gbm" and p.gbm.early_stopping:
        held_out = int(np.ceil(p.gbm.validation_fraction * n))
        if min(pos, n - pos) < 2 or held_out < 2 or n - held_out < 2:
            raise DataError(None, f"{counts}; gbm's early stopping (baseline.gbm.early_stopping, "
                                  f"validation_fraction {p.gbm.validation_fraction}) holds out {held_out} of them, "
                                  "stratified, and needs at least 2 stays of each class and 2 on each side: use "
                                  "larger label_efficiency.fractions or set baseline.gbm.early_stopping false")


# --------------------------------------------------------------------------------------------------
# Models, grids and selection


def grid(name: ModelName, p: BaselineParams) -> list[dict[str, Any]]:
    """Hyperparameter points of one model, in params order (the order that breaks val ties)."""
    if name == "logreg":
        return [{"C": c} for c in p.logreg.C]
    g = p.gbm
    return [
        {"learning_rate": lr, "max_leaf_nodes": leaves, "l2_regularization": l2}
        for lr, leaves, l2 in itertools.product(g.learning_rate, g.max_leaf_nodes, g.l2_regularization)
    ]


def build_model(
    name: ModelName, hp: dict[str, Any], p: BaselineParams, numeric: list[str], categorical: list[str]
) -> Pipeline:
    """An unfitted pipeline; all of its preprocessing is fitted by `fit`, i.e. on train only."""
    if name == "logreg":
        prep = ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                 numeric),
                # NaN becomes its own category when train has it; a category unseen in train -> all zeros.
                ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
            ]
        )
        clf = LogisticRegression(C=hp["C"], max_iter=p.logreg.max_iter, random_state=p.seed)
        return Pipeline([("prep", prep), ("clf", clf)])
    if name == "gbm":
        prep = ColumnTransformer(
            [
                ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                       encoded_missing_value=np.nan), categorical),
                ("num", "passthrough", numeric),  # NaN stays NaN: the trees learn where missing goes
            ]
        )
        g = p.gbm
        clf = HistGradientBoostingClassifier(
            learning_rate=hp["learning_rate"],
            max_leaf_nodes=hp["max_leaf_nodes"],
            l2_regularization=hp["l2_regularization"],
            max_iter=g.max_iter,
            early_stopping=g.early_stopping,
            validation_fraction=g.validation_fraction,
            n_iter_no_change=g.n_iter_no_change,
            # Ordinal-encoded categorical columns come first in the ColumnTransformer's output.
            categorical_features=[True] * len(categorical) + [False] * len(numeric) if categorical else None,
            random_state=p.seed,
        )
        return Pipeline([("prep", prep), ("clf", clf)])
    raise ValueError(f"unknown baseline model {name!r}; known: {MODELS}")


def _n_iter(model: Pipeline) -> int:
    n = model.named_steps["clf"].n_iter_
    return int(np.max(n))  # LogisticRegression: an array (one per class problem); HGB: an int


@dataclass
class Selection:
    name: ModelName
    model: Pipeline
    hyperparameters: dict[str, Any]
    validation: list[dict[str, Any]]  # one row per grid point: hyperparameters, val AUROC / AUPRC, n_iter


def fit_select(name: ModelName, p: BaselineParams, features: FoldFeatures) -> Selection:
    """Fit every grid point on train, keep the one with the best val AUPRC."""
    X_tr, y_tr = features.X["train"], features.y["train"]
    X_val, y_val = features.X["val"], features.y["val"]
    for split, y in (("train", y_tr), ("val", y_val)):
        if np.unique(y).size < 2:
            raise DataError(None, f"fold {features.fold}: the {split} split has a single class; "
                                  f"{name} cannot be fitted and selected")
    check_fittable(name, p, y_tr, features.fold)
    best: tuple[float, Pipeline, dict[str, Any]] | None = None
    rows = []
    for hp in grid(name, p):
        model = build_model(name, hp, p, features.numeric, features.categorical)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X_tr, y_tr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if not converged:
            log.warning("fold %d %s %s: solver did not converge in its max_iter", features.fold, name, hp)
        prob = model.predict_proba(X_val)[:, 1]
        auprc = float(average_precision_score(y_val, prob))
        rows.append({**hp, "val_auprc": round(auprc, DIGITS),
                     "val_auroc": round(float(roc_auc_score(y_val, prob)), DIGITS),
                     "n_iter": _n_iter(model), "converged": converged})
        if best is None or auprc > best[0]:
            best = (auprc, model, hp)
    assert best is not None  # the schema requires at least one grid point
    log.info("fold %d %s: chose %s (val AUPRC %.4f)", features.fold, name, best[2], best[0])
    return Selection(name=name, model=best[1], hyperparameters=best[2], validation=rows)


@dataclass
class FoldResult:
    metrics: dict[str, Any]
    predictions: dict[str, pa.Table]  # model name -> test predictions (subject_id, label, probability)


def run_baselines(features: FoldFeatures, p: BaselineParams, ev: EvaluateParams,
                  models: tuple[ModelName, ...] = MODELS) -> FoldResult:
    """The baselines `models` on one fold: select on val, evaluate on test with the evaluate stage's settings."""
    metrics: dict[str, Any] = {"fold": features.fold, **features.report}
    predictions: dict[str, pa.Table] = {}
    X_te, y_te = features.X["test"], features.y["test"]
    for name in models:
        # OpenMP (gradient boosting) and BLAS (lbfgs) pools sized to the cores the runner gave this job
        # (seqsetvae/threads.py): busy-waiting threads on oversubscribed cores cost far more than they gain.
        with threadpool_limits(limits=resolve_num_threads(p.num_threads)):
            sel = fit_select(name, p, features)
            prob = sel.model.predict_proba(X_te)[:, 1].astype(np.float64)
        try:
            result = evaluate_binary(y_te, prob, ev.n_bootstrap, ev.seed, ev.ci, ev.calibration_bins)
        except ValueError as e:
            raise DataError(None, f"fold {features.fold} test split: {e}") from None
        metrics[name] = {**result, "model": name, "hyperparameters": sel.hyperparameters,
                         "selection": "val_auprc", "validation": sel.validation}
        predictions[name] = pa.table({
            "subject_id": pa.array(X_te.index.to_numpy(np.int64), pa.int64()),
            "label": pa.array(y_te.astype(np.int8), pa.int8()),
            "probability": pa.array(prob, pa.float64()),
        })
    return FoldResult(metrics=metrics, predictions=predictions)
