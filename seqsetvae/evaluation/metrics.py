"""Binary-outcome metrics with seeded bootstrap confidence intervals, and curve data for plots.

Point estimates come from scikit-learn (AUROC = roc_auc_score, AUPRC = average_precision_score, Brier =
brier_score_loss); expected calibration error uses equal-width probability bins. Confidence intervals are
percentile intervals over `n_bootstrap` resamples of the test subjects drawn with a seeded generator, so the
same predictions and seed give the same interval. Resamples with a single class (AUROC undefined) are
skipped and counted.

A subject with several samples (several prediction times, MEDS tasks) is resampled as a whole: its samples
are not independent, and resampling them one by one would give intervals that are too narrow (the cluster
bootstrap). Where every subject has one sample the two are the same draw, and so the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_auc_score, roc_curve

DIGITS = 6  # metrics are rounded so reruns write byte-identical files


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """Sum over equal-width bins of (bin share) * |observed rate - mean predicted probability|."""
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    observed = np.bincount(bins, weights=y, minlength=n_bins)
    predicted = np.bincount(bins, weights=p, minlength=n_bins)
    return float(np.abs(observed - predicted).sum() / len(y))


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int) -> list[dict[str, float]]:
    """Per non-empty bin: mean predicted probability, observed rate, count."""
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            rows.append(
                {
                    "bin": b,
                    "predicted": round(float(p[sel].mean()), DIGITS),
                    "observed": round(float(y[sel].mean()), DIGITS),
                    "count": int(sel.sum()),
                }
            )
    return rows


def metric_functions(n_bins: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    return {
        "auroc": lambda y, p: float(roc_auc_score(y, p)),
        "auprc": lambda y, p: float(average_precision_score(y, p)),
        "brier": lambda y, p: float(brier_score_loss(y, p)),
        "ece": lambda y, p: expected_calibration_error(y, p, n_bins),
    }


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels ({y.size}) and probabilities ({p.size}) differ in length")
    if y.size == 0:
        raise ValueError("no predictions to evaluate")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must be finite and within [0, 1]")
    if len(np.unique(y)) < 2:
        raise ValueError("both classes must be present to compute AUROC / AUPRC")
    return y, p


def _rowwise_auroc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann-Whitney U from average ranks, ties counted half), vectorised."""
    from scipy.stats import rankdata

    ranks = rankdata(p, axis=1)
    n_pos = y.sum(axis=1)
    n_neg = y.shape[1] - n_pos
    return ((ranks * y).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _rowwise_average_precision(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Average precision of each row, as scikit-learn defines it (tied scores form one threshold)."""
    order = np.argsort(-p, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, axis=1)
    ps = np.take_along_axis(p, order, axis=1)
    n = ys.shape[1]
    tp = np.cumsum(ys, axis=1)
    precision = tp / np.arange(1, n + 1)
    # precision is taken at the end of each run of tied scores: find, for each position, its run's end
    is_end = np.ones_like(ps, dtype=bool)
    is_end[:, :-1] = ps[:, :-1] != ps[:, 1:]
    pos = np.where(is_end, np.arange(n), n)
    run_end = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1]
    prec_at_end = np.take_along_axis(precision, run_end, axis=1)
    return (ys * prec_at_end).sum(axis=1) / ys.sum(axis=1)


def _rowwise_ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> np.ndarray:
    rows, n = y.shape
    bins = np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1) + np.arange(rows)[:, None] * n_bins
    observed = np.bincount(bins.ravel(), weights=y.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    predicted = np.bincount(bins.ravel(), weights=p.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    return np.abs(observed - predicted).sum(axis=1) / n


def rowwise_metrics(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """All metrics for each row of [resamples, n] label / probability matrices (rows need both classes)."""
    return {
        "auroc": _rowwise_auroc(y, p),
        "auprc": _rowwise_average_precision(y, p),
        "brier": ((p - y) ** 2).mean(axis=1),
        "ece": _rowwise_ece(y, p, n_bins),
    }


MIN_RESAMPLES = 2  # two-class bootstrap resamples an interval needs (the schema's evaluate.n_bootstrap minimum)


def _subject_members(groups: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For the cluster bootstrap: the samples sorted by subject (`order`), each subject's first position in it
    (`starts`) and sample count (`sizes`); None where every subject has one sample (the plain bootstrap)."""
    groups = np.asarray(groups).ravel()
    if groups.shape != (n,):
        raise ValueError(f"subject ids ({groups.size}) and predictions ({n}) differ in length")
    order = np.argsort(groups, kind="stable")
    sorted_ids = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    if starts.size == n:
        return None
    sizes = np.diff(np.r_[starts, n])
    return order, starts, sizes


def _cluster_resample(members: tuple[np.ndarray, np.ndarray, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One resample of subjects with replacement: the sample positions of the drawn subjects (each as often
    as it was drawn)."""
    order, starts, sizes = members
    drawn = rng.integers(0, starts.size, size=starts.size)
    lengths = sizes[drawn]
    first = np.repeat(starts[drawn], lengths)
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return order[first + within]


def evaluate_binary(
    y: np.ndarray, p: np.ndarray, n_bootstrap: int, seed: int, ci: float = 0.95, n_bins: int = 10,
    subject_ids: np.ndarray | None = None,
) -> dict[str, object]:
    """Point estimates (scikit-learn) and percentile bootstrap CIs of AUROC, AUPRC, Brier and ECE. With
    `subject_ids`, the resamples draw subjects, each with all of its samples (the module docstring)."""
    y, p = _check(y, p)
    point = {name: fn(y, p) for name, fn in metric_functions(n_bins).items()}
    rng = np.random.default_rng(seed)
    n = len(y)
    members = None if subject_ids is None else _subject_members(subject_ids, n)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in point}
    skipped = 0
    if members is None:
        chunk = max(1, min(n_bootstrap, 4_000_000 // n))  # bound memory: about 4 M cells per chunk
        for start in range(0, n_bootstrap, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
            yb, pb = y[idx], p[idx]
            both = yb.min(axis=1) != yb.max(axis=1)
            skipped += int((~both).sum())
            for name, vals in rowwise_metrics(yb[both], pb[both], n_bins).items():
                samples[name].append(vals)
    else:
        # Resamples of subjects hold different numbers of samples, so they are scored one at a time.
        for _ in range(n_bootstrap):
            idx = _cluster_resample(members, rng)
            yb, pb = y[idx][None, :], p[idx][None, :]
            if yb.min() == yb.max():
                skipped += 1
                continue
            for name, vals in rowwise_metrics(yb, pb, n_bins).items():
                samples[name].append(vals)
    if skipped == n_bootstrap:
        # Few resamples (a quick run) on a test set with few positives: no interval can be formed, and a
        # NaN bound would not even serialise. Say so instead of failing on the JSON write.
        raise ValueError(
            f"all {n_bootstrap} bootstrap resample(s) hold a single class ({int(y.sum())} of {n} test "
            "subjects positive), so no confidence interval can be formed; raise evaluate.n_bootstrap"
        )
    if n_bootstrap - skipped < MIN_RESAMPLES:
        # One resample gives an "interval" of zero width around its own value, which need not hold the point
        # estimate (AUROC 0.688 reported with the CI [0.73, 0.73]).
        raise ValueError(
            f"{n_bootstrap - skipped} of {n_bootstrap} bootstrap resample(s) hold both classes ({int(y.sum())} of "
            f"{n} test subjects positive); a confidence interval needs at least {MIN_RESAMPLES}: raise "
            "evaluate.n_bootstrap"
        )
    alpha = (1.0 - ci) / 2.0
    result: dict[str, object] = {}
    for name in point:
        s = np.concatenate(samples[name])
        lo, hi = np.quantile(s, [alpha, 1.0 - alpha]) if s.size else (np.nan, np.nan)
        result[name] = Estimate(
            round(point[name], DIGITS), round(float(lo), DIGITS), round(float(hi), DIGITS)
        ).to_dict()
    result["n"] = int(n)
    result["positives"] = int(y.sum())
    result["bootstrap"] = {"resamples": n_bootstrap, "skipped_single_class": skipped, "seed": seed, "ci": ci}
    if members is not None:  # only then, so the details of one-sample-per-subject cohorts keep their bytes
        result["bootstrap"]["unit"] = "subject"
    return result


def curves(y: np.ndarray, p: np.ndarray, n_bins: int, max_points: int = 200) -> dict[str, list[dict]]:
    """ROC, PR and reliability curve rows for DVC plots (thinned to at most `max_points` each)."""
    y, p = _check(y, p)
    fpr, tpr, _ = roc_curve(y, p)
    prec, rec, _ = precision_recall_curve(y, p)

    def thin(a: np.ndarray, b: np.ndarray, ka: str, kb: str) -> list[dict]:
        keep = np.unique(np.linspace(0, len(a) - 1, min(len(a), max_points)).round().astype(int))
        return [{ka: round(float(a[i]), DIGITS), kb: round(float(b[i]), DIGITS)} for i in keep]

    return {
        "roc": thin(fpr, tpr, "fpr", "tpr"),
        "pr": thin(rec[::-1], prec[::-1], "recall", "precision"),
        "calibration": reliability_curve(y, p, n_bins),
    }


HEADLINE = ("auroc", "auprc", "brier", "ece")  # the numbers a metrics file holds (point estimates)


def headline(result: dict[str, object]) -> dict[str, float]:
    """The point estimates of an `evaluate_binary` result: what a DVC metrics file holds. The intervals,
    counts and bootstrap settings are the details, kept in a JSON of their own."""
    return {k: result[k]["value"] for k in HEADLINE}  # type: ignore[index]


def spread(values: np.ndarray) -> float | None:
    """Sample standard deviation over splits; None for a single split, where there is no spread to show."""
    return round(float(values.std(ddof=1)), DIGITS) if values.size > 1 else None


def aggregate(per_split: list[dict[str, float]], keys: tuple[str, ...] = HEADLINE) -> dict:
    """Mean and sample standard deviation over splits of each metric's point estimate."""
    out: dict[str, object] = {"n_splits": len(per_split)}
    for k in keys:
        vals = np.asarray([m[k] for m in per_split], dtype=np.float64)
        out[k] = {
            "mean": round(float(vals.mean()), DIGITS),
            "sd": spread(vals),
            "per_split": [round(float(v), DIGITS) for v in vals],
        }
    return out
