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

`fold_features` / `subsample_train` / `run_baselines` hold every sample's summaries: the reference, for tests
and small cohorts. The stage runs the same rules in bounded memory (seqsetvae/baseline_stream.py, the same
numbers bit for bit) through the shared parts below: `FoldSamples`, `choose_columns`, `DescriptorColumns`,
`subsample_columns`, `fit_candidates`, `select`, `score_test`.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass, field
from collections.abc import Iterable
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
from seqsetvae.data.summaries import (STATS, check_samples, densify, descriptor_levels, feature_name,
                                      per_sample_summaries, zero_fill_of)
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


@dataclass
class FoldSamples:
    """The fold's samples (SAMPLES_SCHEMA, sorted by (subject_id, prediction_time)), each one's split code
    (seqsetvae.data.splits) and label: all that is known before any event is read."""

    samples: pa.Table
    split: np.ndarray  # int8 per sample: TRAIN / VAL / TEST
    y: np.ndarray  # int8 per sample

    @classmethod
    def of(cls, subjects: pa.Table, samples: pa.Table, splits: pa.Table, fold: int,
           splits_path: str | None = None) -> FoldSamples:
        """The samples of fold `fold`'s subjects; a DataError names what is inconsistent (a fold not in the
        split table, a subject without a label or not in the subjects table, samples out of order)."""
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
        y = fold_samples.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.int8)
        return cls(samples=fold_samples, split=split_code[pos], y=y)

    @property
    def subject_id(self) -> np.ndarray:
        return self.samples.column("subject_id").to_numpy()

    def keys(self, rows: np.ndarray, prediction_time_us: np.ndarray) -> pd.DataFrame:
        """Sample keys of `rows` (positions): subject_id, prediction_time (datetime64[us])."""
        return pd.DataFrame({"subject_id": self.subject_id[rows],
                             "prediction_time": prediction_time_us[rows].astype("datetime64[us]")})

    def split_report(self, no_events: np.ndarray) -> dict[str, dict[str, int]]:
        """Per split: samples (n, positives, without an event of a kept code in the window) and their subjects."""
        sid = self.subject_id
        out = {}
        for k, name in enumerate(SPLITS):
            sel = self.split == k
            out[name] = {
                "n": int(sel.sum()),
                "positives": int(self.y[sel].sum()),
                "without_events_in_window": int((no_events & sel).sum()),
                "subjects": int(np.unique(sid[sel]).size),
            }
        return out


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
    plan = FoldSamples.of(subjects, samples, splits, fold, splits_path)
    fold_samples, sample_split, y = plan.samples, plan.split, plan.y
    tables = [events] if isinstance(events, pa.Table) else events
    summaries = per_sample_summaries(tables, fold_samples, subjects, window_hours)
    M, columns = summaries.matrix, summaries.columns

    train = sample_split == TRAIN
    layout = choose_columns(columns, _column_stored(select_rows(M, np.flatnonzero(train))), max_codes)
    M = select_columns(M, layout.keep)
    summaries.matrix = None  # one copy of the summaries at a time: memory is a few stored values x 12 B
    columns = layout.columns
    descriptors = DescriptorColumns.of(subjects, categorical_descriptors, columns)
    descriptors.check_categories(select_rows(M, np.flatnonzero(train)), columns)
    categorical, zero_fill = descriptors.categorical, zero_fill_of(columns)

    kept_counts = np.flatnonzero(zero_fill)
    # No stored count of a kept code: no event in the window; kept and imputed (the model's preprocess drops them)
    no_events = np.diff(select_columns(M, kept_counts).indptr) == 0
    n_rows, nnz = M.shape[0], int(M.nnz)
    X, ys, keys = {}, {}, {}
    for k, name in enumerate(SPLITS):
        sel = sample_split == k
        rows = np.flatnonzero(sel)
        X[name], ys[name] = select_rows(M, rows), y[sel]
        if name == SPLITS[-1]:
            del M  # the last split's rows are copied: the whole-fold matrix is no longer needed
        keys[name] = plan.keys(rows, summaries.prediction_time_us)
    report = {
        "subjects": plan.split_report(no_events),  # per split: samples (n, positives, ...) and their subjects
        "features": features_report(layout, layout.not_in_train, descriptors, max_codes,
                                    int(summaries.attrs["events_outside_window"]), nnz),
    }
    log_features(fold, n_rows, report["features"])
    return FoldFeatures(fold=fold, X=X, y=ys, keys=keys, columns=columns, categorical=categorical, report=report)


@dataclass
class ColumnLayout:
    """The columns the models get, decided on the training split's stored entries (`choose_columns`)."""

    keep: np.ndarray  # positions of the kept columns among the candidate columns, increasing
    columns: list[str]  # their names
    codes: int  # codes kept (measured in train, within max_codes)
    not_in_train: list[str]  # candidate codes without a train measurement (sorted)
    over_max: list[str]  # train codes left out by max_codes, the most measured first
    empty: list[str]  # columns of kept codes (or descriptors) without a train value (sorted)


def choose_columns(columns: list[str], stored_train: np.ndarray, max_codes: int | None) -> ColumnLayout:
    """The columns of the fold from the candidate `columns` (code-major statistics, then descriptors) and the
    stored entries of the WHOLE training split per column: the codes measured in train (at most `max_codes`,
    those measured in the most training samples; ties by name), less the columns without a train value."""
    count_cols = [j for j, c in enumerate(columns) if c.endswith(_COUNT_SUFFIX)]
    codes = [columns[j][: -len(_COUNT_SUFFIX)] for j in count_cols]
    not_in_train = [c for c, j in zip(codes, count_cols) if stored_train[j] == 0]  # counts of 0 are not stored
    # Codes by the number of training samples that measured them (the count column's stored entries).
    ranked = sorted(((-int(stored_train[j]), c) for c, j in zip(codes, count_cols) if stored_train[j] > 0))
    over_max = [c for _, c in ranked[max_codes:]] if max_codes is not None else []
    drop = {feature_name(c, s) for c in not_in_train + over_max for s in STATS}
    empty = [c for j, c in enumerate(columns) if c not in drop and stored_train[j] == 0 and not c.endswith(_COUNT_SUFFIX)]
    empty_set = set(empty)
    keep = np.array([j for j, c in enumerate(columns) if c not in drop and c not in empty_set], np.int64)
    return ColumnLayout(keep=keep, columns=[columns[j] for j in keep],
                        codes=len(codes) - len(not_in_train) - len(over_max),
                        not_in_train=not_in_train, over_max=over_max, empty=empty)


@dataclass
class DescriptorColumns:
    """The static descriptors of a cohort and which of the kept columns are categorical."""

    names: list[str]  # every descriptor of the subjects table
    levels: dict[str, list[str]]  # text descriptors -> their sorted categories
    categorical: list[str]  # kept columns treated as categories
    absent: list[str]  # params categorical_descriptors that are not descriptors of this cohort

    @classmethod
    def of(cls, subjects: pa.Table, categorical_descriptors: list[str], columns: list[str]) -> DescriptorColumns:
        names = [c for c in subjects.column_names if c not in SUBJECT_KEY_COLUMNS]
        # Text descriptors (MEDS static codes without a value: GENDER, RACE) are categories whatever params
        # lists: summaries code them as their position among the sorted categories (descriptor_levels, in the
        # report).
        levels = {d: lv for d in names if (lv := descriptor_levels(subjects.column(d).to_pandas())) is not None}
        categorical = [c for c in dict.fromkeys([*categorical_descriptors, *levels]) if c in columns]
        absent = [c for c in categorical_descriptors if c not in names]
        if absent:
            log.warning("baseline.categorical_descriptors %s are not descriptors of this cohort (has %s); "
                        "left out", absent, names)
        return cls(names=names, levels=levels, categorical=categorical, absent=absent)

    def check_categories(self, train_rows: sp.csr_matrix, columns: list[str]) -> None:
        """Refuse a categorical column with more categories in train (`train_rows`, in `columns`) than gradient
        boosting supports."""
        zero_fill = zero_fill_of(columns)
        for c in self.categorical:
            j = columns.index(c)
            col = densify(select_columns(train_rows, np.array([j])), zero_fill[[j]])[:, 0]
            n_cat = pd.Series(col).nunique(dropna=True)
            if n_cat > MAX_CATEGORIES:
                raise DataError(None, f"baseline.categorical_descriptors: '{c}' has {n_cat} categories in train, "
                                      f"more than the {MAX_CATEGORIES} gradient boosting supports")


def features_report(layout: ColumnLayout, not_in_train: list[str], descriptors: DescriptorColumns,
                    max_codes: int | None, events_outside_window: int, stored_values: int) -> dict[str, Any]:
    """The `features` part of the details JSON (its keys in this order: the recorded results' bytes)."""
    report = {
        "codes": layout.codes,
        "codes_not_in_train": sorted(not_in_train),
        "max_codes": max_codes,
        "codes_over_max_codes": len(layout.over_max),  # train codes left out by max_codes, the rarest
        "codes_over_max_codes_first": layout.over_max[:20],  # the most frequent of them, in rank order
        "columns": len(layout.columns),
        "columns_without_train_values": sorted(layout.empty),
        "categorical": descriptors.categorical,
        "categorical_descriptors_absent": descriptors.absent,
        "events_outside_window": events_outside_window,
        "stored_values": stored_values,
    }
    if any(d in layout.columns for d in descriptors.levels):  # only then: cohorts without text descriptors keep their bytes
        report["categorical_levels"] = {d: lv for d, lv in descriptors.levels.items() if d in layout.columns}
    return report


def log_features(fold: int, n_rows: int, f: dict[str, Any]) -> None:
    log.info("fold %d features: %d samples, %d codes from train (%d codes only outside train left out), "
             "%d columns (%d without a train value left out), %d stored values (CSR)", fold, n_rows,
             f["codes"], len(f["codes_not_in_train"]), f["columns"], len(f["columns_without_train_values"]),
             f["stored_values"])


def subsample_train(features: FoldFeatures, keep: np.ndarray, fraction: float, seed: int,
                    report_key: str = "label_subsample") -> FoldFeatures:
    """The fold's features with the train split cut to rows `keep` (seqsetvae.data.splits.label_subsample);
    val and test stay whole. A column without a single value in the kept train rows carries nothing to fit
    (a 1 % subsample often holds no measurement of a rare variable): dropped from every split, named and
    counted in the report, as fold_features does for the whole train split."""
    X_tr = select_rows(features.X["train"], keep)
    y_tr = features.y["train"][keep]
    kept, empty = subsample_columns(features.columns, _column_stored(X_tr))
    X = {name: select_columns(m, kept) for name, m in features.X.items()}
    X["train"] = select_columns(X_tr, kept)
    keys = {**features.keys, "train": features.keys["train"].iloc[keep].reset_index(drop=True)}
    report = {**features.report, report_key: subsample_report(
        features.fold, report_key, fraction, seed, y_tr, int(features.y["train"].size), len(features.columns),
        int(kept.size), empty)}
    return FoldFeatures(fold=features.fold, X=X, y={**features.y, "train": y_tr}, keys=keys,
                        columns=[features.columns[j] for j in kept],
                        categorical=[c for c in features.categorical if c not in empty], report=report)


def subsample_columns(columns: list[str], stored: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(positions kept, names left out) of `columns` given the stored entries per column of a train subsample:
    a count column always has a value (absent = 0); any other column without a stored entry has none."""
    empty_mask = (stored == 0) & ~zero_fill_of(columns)
    return np.flatnonzero(~empty_mask), [c for c, e in zip(columns, empty_mask) if e]


def subsample_report(fold: int, report_key: str, fraction: float, seed: int, y_kept: np.ndarray, n_of: int,
                     n_columns_of: int, n_columns: int, empty: list[str]) -> dict[str, Any]:
    """The details JSON's entry of a train subsample (label fraction or max_train_samples), logged."""
    log.info("fold %d " + report_key.replace("_", " ") + " %g (seed %d): %d of %d train stays (%d positive); %d of %d columns have no "
             "value in it and are left out", fold, fraction, seed, y_kept.size, n_of, int(y_kept.sum()), len(empty),
             n_columns_of)
    return {
        "fraction": fraction,
        "seed": seed,
        "train_stays": int(y_kept.size),
        "train_positives": int(y_kept.sum()),
        "train_stays_of": n_of,
        "columns": n_columns,
        "columns_without_subsample_values": len(empty),
        "columns_without_subsample_values_names": sorted(empty),
    }


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


def predict_proba(model: Pipeline, X: Any, chunk: int | None = None) -> np.ndarray:
    """Positive-class probabilities of `model` on `X`, predicted `chunk` (default PREDICT_CHUNK) rows at a time
    (row-wise models: the same numbers as one call)."""
    chunk = PREDICT_CHUNK if chunk is None else chunk
    n = X.shape[0]
    if n <= chunk:
        return model.predict_proba(X)[:, 1]
    return np.concatenate([model.predict_proba(X[i:i + chunk])[:, 1] for i in range(0, n, chunk)])


class _HistGradientBoosting(HistGradientBoostingClassifier):
    """HistGradientBoostingClassifier that also fits when a numeric column has no value in the part of train it
    bins. With early stopping, scikit-learn (1.9.1) bins only its internal training part; a rare column (a code's
    `std`, stored for a few samples) whose every train value falls in the internal validation part is all NaN
    there, and binning stops with "window shape cannot be larger than input array shape". Such a column is held
    at 0 for the binning (one value: no split can use it, as if it were absent); any other fit is untouched, so
    models without such a column are the stock class's bit for bit. The columns are logged and kept in
    `columns_without_fit_values_`."""

    def _bin_data(self, X, sample_weight, is_training_data):  # noqa: ANN001, ANN202 (scikit-learn's signature)
        if is_training_data:
            empty = np.isnan(X).all(axis=0)
            categorical = getattr(self, "is_categorical_", None)
            if categorical is not None:
                empty &= ~np.asarray(categorical, bool)
            self.columns_without_fit_values_ = np.flatnonzero(empty)
            if empty.any():
                log.info("gbm: %d column(s) without a value in the boosting's training part (its early-stopping "
                         "split) are held constant", int(empty.sum()))
                X = np.array(X, dtype=X.dtype, order="F")
                X[:, empty] = 0.0
        return super()._bin_data(X, sample_weight, is_training_data)


def build_model(
    name: ModelName, hp: dict[str, Any], p: BaselineParams, columns: list[str], categorical: list[str],
) -> Pipeline:
    """An unfitted pipeline on summaries CSR input with `columns`; all of its preprocessing is fitted by
    `fit`, i.e. on train only."""
    zero_fill = zero_fill_of(columns)
    cat_idx = [columns.index(c) for c in categorical]
    num_idx = [j for j, c in enumerate(columns) if c not in categorical]
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
        clf = _HistGradientBoosting(
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


def check_selectable(name: ModelName, p: BaselineParams, y_train: np.ndarray, y_val: np.ndarray, fold: int) -> None:
    """Refuse a fold whose train or val split cannot fit and select `name` (a single class, too few stays)."""
    for split, y in (("train", y_train), ("val", y_val)):
        if np.unique(y).size < 2:
            raise DataError(None, f"fold {fold}: the {split} split has a single class; "
                                  f"{name} cannot be fitted and selected")
    check_fittable(name, p, y_train, fold)


@dataclass
class Candidate:
    """One grid point of one model, fitted on train."""

    hyperparameters: dict[str, Any]
    model: Pipeline
    converged: bool


def fit_candidates(name: ModelName, p: BaselineParams, X_train: Any, y_train: np.ndarray, columns: list[str],
                   categorical: list[str], fold: int) -> list[Candidate]:
    """Every grid point of `name` fitted on the training rows, in params order."""
    out = []
    for hp in grid(name, p):
        model = build_model(name, hp, p, columns, categorical)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(X_train, y_train)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        if not converged:
            log.warning("fold %d %s %s: solver did not converge in its max_iter", fold, name, hp)
        out.append(Candidate(hyperparameters=hp, model=model, converged=converged))
    return out


def select(name: ModelName, candidates: list[Candidate], y_val: np.ndarray, val_probs: list[np.ndarray],
           fold: int) -> Selection:
    """The candidate with the best val AUPRC (ties: the first, in params order), and the grid's val rows."""
    best: tuple[float, Candidate] | None = None
    rows = []
    for cand, prob in zip(candidates, val_probs, strict=True):
        auprc = float(average_precision_score(y_val, prob))
        rows.append({**cand.hyperparameters, "val_auprc": round(auprc, DIGITS),
                     "val_auroc": round(float(roc_auc_score(y_val, prob)), DIGITS),
                     "n_iter": _n_iter(cand.model), "converged": cand.converged})
        if best is None or auprc > best[0]:
            best = (auprc, cand)
    assert best is not None  # the schema requires at least one grid point
    log.info("fold %d %s: chose %s (val AUPRC %.4f)", fold, name, best[1].hyperparameters, best[0])
    return Selection(name=name, model=best[1].model, hyperparameters=best[1].hyperparameters, validation=rows)


def fit_select(name: ModelName, p: BaselineParams, features: FoldFeatures) -> Selection:
    """Fit every grid point on train, keep the one with the best val AUPRC."""
    X_tr, y_tr = features.X["train"], features.y["train"]
    X_val, y_val = features.X["val"], features.y["val"]
    check_selectable(name, p, y_tr, y_val, features.fold)
    candidates = fit_candidates(name, p, X_tr, y_tr, features.columns, features.categorical, features.fold)
    return select(name, candidates, y_val, [predict_proba(c.model, X_val) for c in candidates], features.fold)


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
        metrics[name], predictions[name] = score_test(sel, y_te, prob, keys, ev, features.fold)
    return FoldResult(metrics=metrics, predictions=predictions)


def score_test(sel: Selection, y_test: np.ndarray, prob: np.ndarray, keys: pd.DataFrame, ev: EvaluateParams,
                fold: int) -> tuple[dict[str, Any], pa.Table]:
    """The chosen fit's test metrics (the evaluate stage's settings) and its test predictions table."""
    try:
        result = evaluate_binary(y_test, prob, ev.n_bootstrap, ev.seed, ev.ci, ev.calibration_bins,
                                 subject_ids=keys["subject_id"].to_numpy(np.int64))
    except ValueError as e:
        raise DataError(None, f"fold {fold} test split: {e}") from None
    metrics = {**result, "model": sel.name, "hyperparameters": sel.hyperparameters,
               "selection": "val_auprc", "validation": sel.validation}
    predictions = pa.table({
        "subject_id": pa.array(keys["subject_id"].to_numpy(np.int64), pa.int64()),
        "prediction_time": pa.array(keys["prediction_time"].to_numpy("datetime64[us]"), pa.timestamp("us")),
        "label": pa.array(y_test.astype(np.int8), pa.int8()),
        "probability": pa.array(prob, pa.float64()),
    })
    return metrics, predictions
