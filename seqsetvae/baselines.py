"""Classical baselines: logistic regression and gradient boosting on per-variable summaries.

Features (`fold_features`): `per_sample_summaries` (a CSR matrix, one row per sample (subject_id,
prediction_time), built events shard by events shard) over each sample's window (`preprocess.window_hours`
before prediction_time, from window_start at the earliest) for every sample of the fold's subjects,
restricted to the codes measured in the window of at least one **training** sample (at most
`baseline.max_codes` of them, the most measured), plus the static descriptors. Columns without a single
value in train (e.g. the standard deviation of a code never measured twice) carry nothing to fit and are
dropped, counted. Unlike the model's preprocess, which drops stays with no event in the window, the
baselines keep every labelled sample of the split: such a sample has all-missing summaries (counts 0) and
is imputed.

Models (`build_model`), each an sklearn Pipeline on the CSR features, fitted on the training split only; the
first step (`Densify`) gives the dense values (absent entries NaN, absent counts 0), because sklearn 1.9's
HistGradientBoostingClassifier refuses sparse input and its SimpleImputer / StandardScaler read an absent
entry as 0: training rows of the kept columns whole, prediction in row chunks (`predict_proba`):

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
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
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
from seqsetvae.data.summaries import (STATS, check_samples, densify, feature_name, per_sample_summaries,
                                      string_descriptors, zero_fill_of)
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
    """Feature matrices (CSR, one row per sample), labels, sample keys and what was left out, for one fold.

    Rows are samples sorted by (subject_id, prediction_time); `columns` name the matrix columns, `zero_fill`
    marks the `count` columns. Missing-value rule (seqsetvae.data.summaries): an entry not stored is
    missing (NaN), except in a count column, where it is 0; stored zeros are values."""

    fold: int
    X: dict[str, sp.csr_matrix]
    y: dict[str, np.ndarray]
    keys: dict[str, pd.DataFrame]  # per split: subject_id (int64), prediction_time (datetime64[us]) per row
    columns: list[str]
    categorical: list[str]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def zero_fill(self) -> np.ndarray:
        return zero_fill_of(self.columns)

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.columns if c not in self.categorical]

    def frame(self, split: str) -> pd.DataFrame:
        """The split's features as a dense frame (index subject_id, prediction_time): tests and small
        cohorts only, it holds rows x columns."""
        index = pd.MultiIndex.from_frame(self.keys[split])
        return pd.DataFrame(densify(self.X[split], self.zero_fill), index=index, columns=self.columns)


def select_columns(matrix: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """Columns `keep` (increasing positions) of a CSR matrix, explicit zeros kept (they are values here)."""
    keep = np.asarray(keep, np.int64)
    if keep.size == matrix.shape[1] and np.array_equal(keep, np.arange(keep.size)):
        return matrix  # every column: no copy
    new = np.full(matrix.shape[1], -1, np.int32)
    new[keep] = np.arange(keep.size, dtype=np.int32)
    mapped = new[matrix.indices]  # int32: 4 B per stored value while the matrix is copied
    stored = mapped >= 0
    kept_before = np.zeros(stored.size + 1, np.int64)  # stored values kept before each position
    np.cumsum(stored, out=kept_before[1:])
    indptr = kept_before[matrix.indptr]
    del kept_before
    return sp.csr_matrix((matrix.data[stored], mapped[stored], indptr), shape=(matrix.shape[0], keep.size))


def select_rows(matrix: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    """Rows `rows` (positions) of a CSR matrix, explicit zeros kept."""
    rows = np.asarray(rows, np.int64)
    lengths = np.diff(matrix.indptr)[rows]
    starts = matrix.indptr[:-1][rows]
    take = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(int(lengths.sum()))
    return sp.csr_matrix((matrix.data[take], matrix.indices[take], np.r_[0, np.cumsum(lengths)]),
                         shape=(rows.size, matrix.shape[1]))


def _column_stored(matrix: sp.csr_matrix) -> np.ndarray:
    """Stored entries per column."""
    return np.bincount(matrix.indices, minlength=matrix.shape[1])


def _fold_samples(samples: pa.Table, ids: np.ndarray, fold: int) -> tuple[pa.Table, np.ndarray]:
    """The samples of the fold's subjects, and each one's position in `ids`."""
    sid = samples.column("subject_id").to_numpy()
    pos = np.searchsorted(ids, sid)
    in_fold = (pos < ids.size) & (ids[np.minimum(pos, ids.size - 1)] == sid)
    with_sample = np.zeros(ids.size, bool)
    with_sample[pos[in_fold]] = True
    if not with_sample.all():
        missing = ids[~with_sample][:5].tolist()
        raise DataError(
            "labels.parquet",
            f"{int((~with_sample).sum())} subject(s) of fold {fold} have no label, e.g. {missing}: "
            "the split table is stale, rerun the split stage",
        )
    return samples.filter(pa.array(in_fold)), pos[in_fold]


def fold_features(
    events: pa.Table | Iterable[pa.Table],
    subjects: pa.Table,
    samples: pa.Table,
    splits: pa.Table,
    fold: int,
    window_hours: float,
    categorical_descriptors: list[str],
    splits_path: str | None = None,
    max_codes: int | None = None,
) -> FoldFeatures:
    """Per-sample summaries of the fold's samples, with the code list and the kept columns decided on train only.

    `events`: the canonical events, one table or tables in subject order (the ingest shards, read one by
    one: `stages.baseline.iter_event_shards`); `samples`: SAMPLES_SCHEMA (seqsetvae.data.summaries), one
    row per sample, sorted; a sample's split is its subject's. `max_codes` (params baseline.max_codes):
    keep at most this many codes, those measured in the most training samples (ties: by name), since the
    models fit on dense training rows; the others are counted in the report."""
    ids, split_code = fold_assignment(splits, fold)
    if ids.size == 0:
        folds = np.unique(splits.column("fold").to_numpy()).tolist()
        raise DataError(splits_path, f"fold {fold} is not in the split table (folds present: {folds})")
    check_samples(samples)
    subj_ids = subjects.column("subject_id").to_numpy()
    if not np.isin(ids, subj_ids).all():
        missing = np.setdiff1d(ids, subj_ids)[:5].tolist()
        raise DataError("subjects.parquet", f"subject(s) of fold {fold} not in the subjects table, e.g. {missing}")
    fold_samples, pos = _fold_samples(samples, ids, fold)
    sample_split = split_code[pos]
    y = fold_samples.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.int8)
    tables = [events] if isinstance(events, pa.Table) else events
    summaries = per_sample_summaries(tables, fold_samples, subjects, window_hours)
    M, columns = summaries.matrix, summaries.columns

    train = sample_split == TRAIN
    stored_train = _column_stored(select_rows(M, np.flatnonzero(train)))
    count_cols = [j for j, c in enumerate(columns) if c.endswith(_COUNT_SUFFIX)]
    codes = [columns[j][: -len(_COUNT_SUFFIX)] for j in count_cols]
    not_in_train = [c for c, j in zip(codes, count_cols) if stored_train[j] == 0]  # counts of 0 are not stored
    # Codes by the number of training samples that measured them (the count column's stored entries).
    ranked = sorted(((-int(stored_train[j]), c) for c, j in zip(codes, count_cols) if stored_train[j] > 0))
    over_max = [c for _, c in ranked[max_codes:]] if max_codes is not None else []
    drop = {feature_name(c, s) for c in not_in_train + over_max for s in STATS}
    empty = [c for j, c in enumerate(columns) if c not in drop and stored_train[j] == 0 and not c.endswith(_COUNT_SUFFIX)]
    keep = np.array([j for j, c in enumerate(columns) if c not in drop and c not in set(empty)], np.int64)
    M = select_columns(M, keep)
    summaries.matrix = None  # one copy of the summaries at a time: memory is a few stored values x 12 B
    columns = [columns[j] for j in keep]

    descriptors = [c for c in subjects.column_names if c not in SUBJECT_KEY_COLUMNS]
    # String categories (MEDS NAME//CATEGORY static rows) are category numbers: categorical whether listed or not.
    categorical = list(dict.fromkeys([c for c in categorical_descriptors if c in columns]
                                     + [c for c in string_descriptors(subjects) if c in columns]))
    absent = [c for c in categorical_descriptors if c not in descriptors]
    if absent:
        log.warning("baseline.categorical_descriptors %s are not descriptors of this cohort (has %s); "
                    "left out", absent, descriptors)
    zero_fill = zero_fill_of(columns)
    train_rows = select_rows(M, np.flatnonzero(train))
    for c in categorical:
        j = columns.index(c)
        col = densify(select_columns(train_rows, np.array([j])), zero_fill[[j]])[:, 0]
        n_cat = pd.Series(col).nunique(dropna=True)
        if n_cat > MAX_CATEGORIES:
            raise DataError(None, f"baseline.categorical_descriptors: '{c}' has {n_cat} categories in train, "
                                  f"more than the {MAX_CATEGORIES} gradient boosting supports")

    kept_counts = np.flatnonzero(zero_fill)
    # No stored count of a kept code: no event in the window; kept and imputed (the model's preprocess drops them)
    no_events = np.diff(select_columns(M, kept_counts).indptr) == 0
    fold_sid = fold_samples.column("subject_id").to_numpy()
    fold_pt = summaries.prediction_time_us.astype("datetime64[us]")
    n_rows, nnz = M.shape[0], int(M.nnz)
    X, ys, keys, subjects_report = {}, {}, {}, {}
    for k, name in enumerate(SPLITS):
        sel = sample_split == k
        rows = np.flatnonzero(sel)
        X[name], ys[name] = select_rows(M, rows), y[sel]
        if name == SPLITS[-1]:
            del M  # the last split's rows are copied: the whole-fold matrix is no longer needed
        keys[name] = pd.DataFrame({"subject_id": fold_sid[sel], "prediction_time": fold_pt[sel]})
        subjects_report[name] = {
            "n": int(sel.sum()),
            "positives": int(y[sel].sum()),
            "without_events_in_window": int((no_events & sel).sum()),
            "subjects": int(np.unique(fold_sid[sel]).size),
        }
    report = {
        "subjects": subjects_report,  # per split: samples (n, positives, ...) and their distinct subjects
        "features": {
            "codes": len(codes) - len(not_in_train) - len(over_max),
            "codes_not_in_train": sorted(not_in_train),
            "max_codes": max_codes,
            "codes_over_max_codes": len(over_max),  # train codes left out by max_codes, the rarest
            "codes_over_max_codes_first": over_max[:20],  # the most frequent of them, in rank order
            "columns": len(columns),
            "columns_without_train_values": sorted(empty),
            "categorical": categorical,
            "categorical_descriptors_absent": absent,
            "events_outside_window": int(summaries.attrs["events_outside_window"]),
            "stored_values": nnz,
        },
    }
    log.info("fold %d features: %d samples, %d codes from train (%d codes only outside train left out), "
             "%d columns (%d without a train value left out), %d stored values (CSR)", fold, n_rows,
             report["features"]["codes"], len(not_in_train), len(columns), len(empty), nnz)
    return FoldFeatures(fold=fold, X=X, y=ys, keys=keys, columns=columns, categorical=categorical, report=report)


def subsample_train(features: FoldFeatures, keep: np.ndarray, fraction: float, seed: int) -> FoldFeatures:
    """The fold's features with the train split cut to rows `keep` (seqsetvae.data.splits.label_subsample);
    val and test stay whole. A column without a single value in the kept train rows carries nothing to fit
    (a 1 % subsample often holds no measurement of a rare variable): dropped from every split, named and
    counted in the report, as fold_features does for the whole train split."""
    X_tr = select_rows(features.X["train"], keep)
    y_tr = features.y["train"][keep]
    stored = _column_stored(X_tr)
    zero_fill = features.zero_fill
    # A count column always has a value (absent = 0); any other column without a stored entry has none.
    empty_mask = (stored == 0) & ~zero_fill
    empty = [c for c, e in zip(features.columns, empty_mask) if e]
    kept = np.flatnonzero(~empty_mask)
    X = {name: select_columns(m, kept) for name, m in features.X.items()}
    X["train"] = select_columns(X_tr, kept)
    keys = {**features.keys, "train": features.keys["train"].iloc[keep].reset_index(drop=True)}
    report = {**features.report, "label_subsample": {
        "fraction": fraction,
        "seed": seed,
        "train_stays": int(keep.size),
        "train_positives": int(y_tr.sum()),
        "train_stays_of": int(features.y["train"].size),
        "columns": int(kept.size),
        "columns_without_subsample_values": len(empty),
        "columns_without_subsample_values_names": sorted(empty),
    }}
    log.info("fold %d label subsample %g (seed %d): %d of %d train stays (%d positive); %d of %d columns have no "
             "value in it and are left out", features.fold, fraction, seed, keep.size, features.y["train"].size,
             int(y_tr.sum()), len(empty), len(features.columns))
    return FoldFeatures(fold=features.fold, X=X, y={**features.y, "train": y_tr}, keys=keys,
                        columns=[features.columns[j] for j in kept],
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


class Densify(TransformerMixin, BaseEstimator):
    """First step of both pipelines: summaries CSR rows -> dense float64 under their missing-value rule
    (absent NaN, absent count 0), i.e. exactly the dense features the models were fitted on before the
    summaries became sparse. Stateless. scikit-learn 1.9's HistGradientBoostingClassifier refuses sparse
    input, and SimpleImputer / StandardScaler read an absent sparse entry as 0, not as missing, so both
    models densify here: in `fit` the training rows of the kept columns, in prediction `predict_proba`
    (below) row chunks of at most PREDICT_CHUNK rows. Dense input passes through."""

    def __init__(self, zero_fill: np.ndarray | None = None):
        self.zero_fill = zero_fill

    def fit(self, X: Any, y: Any = None) -> Densify:
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        if sp.issparse(X):
            return densify(sp.csr_matrix(X), self.zero_fill)
        return np.asarray(X, dtype=np.float64)


# Rows densified at once when predicting (val / test): bounds prediction memory to chunk x columns.
PREDICT_CHUNK = 8192


def predict_proba(model: Pipeline, X: Any, chunk: int = PREDICT_CHUNK) -> np.ndarray:
    """Positive-class probabilities of `model` on `X`, predicted `chunk` rows at a time (row-wise models:
    the same numbers as one call)."""
    n = X.shape[0]
    if n <= chunk:
        return model.predict_proba(X)[:, 1]
    return np.concatenate([model.predict_proba(X[i:i + chunk])[:, 1] for i in range(0, n, chunk)])


# gbm leaves out a numeric column with fewer values than this in train. scikit-learn's
# HistGradientBoostingClassifier fails ("window shape cannot be larger than input array shape") when a column
# has no value at all in the part of train that its early stopping keeps for fitting, which a column with a
# handful of values (a rare code of a MEDS cohort) can meet by chance; with 10 values the chance is about
# validation_fraction ** 10. PhysioNet 2012's rarest column has 37 train values on fold 0, so nothing changes there.
GBM_MIN_TRAIN_VALUES = 10


def columns_with_few_values(X: sp.csr_matrix, columns: list[str], minimum: int) -> list[str]:
    """The numeric summary columns with fewer than `minimum` values (finite stored entries) in `X`; a count
    column always has a value (absent = 0)."""
    csc = sp.csc_matrix(X)
    finite = np.isfinite(csc.data)
    per_column = np.add.reduceat(finite, csc.indptr[:-1]) if finite.size else np.zeros(len(columns), np.int64)
    per_column = np.where(np.diff(csc.indptr) > 0, per_column, 0)  # reduceat gives a neighbour's value for empty
    zero_fill = zero_fill_of(columns)
    return [c for j, c in enumerate(columns) if not zero_fill[j] and per_column[j] < minimum]


def build_model(
    name: ModelName, hp: dict[str, Any], p: BaselineParams, columns: list[str], categorical: list[str],
    left_out: Sequence[str] = (),
) -> Pipeline:
    """An unfitted pipeline on summaries CSR input with `columns` (`left_out`: numeric columns the model does
    not use); all of its preprocessing is fitted by `fit`, i.e. on train only."""
    zero_fill = zero_fill_of(columns)
    cat_idx = [columns.index(c) for c in categorical]
    num_idx = [j for j, c in enumerate(columns) if c not in categorical and c not in set(left_out)]
    if name == "logreg":
        prep = ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
                 num_idx),
                # NaN becomes its own category when train has it; a category unseen in train -> all zeros.
                ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), cat_idx),
            ]
        )
        clf = LogisticRegression(C=hp["C"], max_iter=p.logreg.max_iter, random_state=p.seed)
        return Pipeline([("densify", Densify(zero_fill)), ("prep", prep), ("clf", clf)])
    if name == "gbm":
        prep = ColumnTransformer(
            [
                ("cat", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                       encoded_missing_value=np.nan), cat_idx),
                ("num", "passthrough", num_idx),  # NaN stays NaN: the trees learn where missing goes
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
            categorical_features=[True] * len(cat_idx) + [False] * len(num_idx) if cat_idx else None,
            random_state=p.seed,
        )
        return Pipeline([("densify", Densify(zero_fill)), ("prep", prep), ("clf", clf)])
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
    left_out: list[str] = field(default_factory=list)  # columns the model did not use (GBM_MIN_TRAIN_VALUES)


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
    left_out = []
    if name == "gbm":
        numeric = [c for c in features.columns if c not in features.categorical]
        left_out = [c for c in columns_with_few_values(X_tr, features.columns, GBM_MIN_TRAIN_VALUES) if c in numeric]
        if left_out:
            log.warning("fold %d gbm: %d column(s) with fewer than %d train values left out (first: %s)",
                        features.fold, len(left_out), GBM_MIN_TRAIN_VALUES, left_out[:5])
    for hp in grid(name, p):
        model = build_model(name, hp, p, features.columns, features.categorical, left_out)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X_tr, y_tr)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if not converged:
            log.warning("fold %d %s %s: solver did not converge in its max_iter", features.fold, name, hp)
        prob = predict_proba(model, X_val)
        auprc = float(average_precision_score(y_val, prob))
        rows.append({**hp, "val_auprc": round(auprc, DIGITS),
                     "val_auroc": round(float(roc_auc_score(y_val, prob)), DIGITS),
                     "n_iter": _n_iter(model), "converged": converged})
        if best is None or auprc > best[0]:
            best = (auprc, model, hp)
    assert best is not None  # the schema requires at least one grid point
    log.info("fold %d %s: chose %s (val AUPRC %.4f)", features.fold, name, best[2], best[0])
    return Selection(name=name, model=best[1], hyperparameters=best[2], validation=rows, left_out=left_out)


@dataclass
class FoldResult:
    metrics: dict[str, Any]
    predictions: dict[str, pa.Table]  # model -> test predictions (subject_id, prediction_time, label, probability)


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
            prob = predict_proba(sel.model, X_te).astype(np.float64)
        keys = features.keys["test"]
        try:
            result = evaluate_binary(y_te, prob, ev.n_bootstrap, ev.seed, ev.ci, ev.calibration_bins,
                                     subject_ids=keys["subject_id"].to_numpy(np.int64))
        except ValueError as e:
            raise DataError(None, f"fold {features.fold} test split: {e}") from None
        metrics[name] = {**result, "model": name, "hyperparameters": sel.hyperparameters,
                         "selection": "val_auprc", "validation": sel.validation}
        if sel.left_out:  # only then, so the details of cohorts without such columns keep their bytes
            metrics[name]["columns_with_few_train_values"] = {
                "minimum": GBM_MIN_TRAIN_VALUES, "left_out": len(sel.left_out), "first": sel.left_out[:20]}
        predictions[name] = pa.table({
            "subject_id": pa.array(keys["subject_id"].to_numpy(np.int64), pa.int64()),
            "prediction_time": pa.array(keys["prediction_time"].to_numpy("datetime64[us]"), pa.timestamp("us")),
            "label": pa.array(y_te.astype(np.int8), pa.int8()),
            "probability": pa.array(prob, pa.float64()),
        })
    return FoldResult(metrics=metrics, predictions=predictions)
