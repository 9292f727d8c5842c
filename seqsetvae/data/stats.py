"""Exact train statistics of one fold: vocabulary, log decision, normalisation.

The train values arrive as exact (code, value) counts merged across shards, a batch of consecutive codes at
a time (value_counts.merged_batches), and every statistic (quantiles by numpy's 'linear' rule, float64 sums
in the order of a sequential sum over the sorted values) is recovered from them exactly, code by code: the
numbers equal those of all train values held in memory at once, whatever the number of shards or batches.
`fit_fold` turns them into a `FoldStats`; `normalise` applies one to events; `stats_to_json` writes
vocab.json / norm_stats.json. The rules are in docs/preprocess.md.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from seqsetvae.config import PreprocessParams
from seqsetvae.data.batch import PAD_CODE, UNK_CODE
from seqsetvae.data.value_counts import ValueBatch

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
IQR_TO_SD = 1.349  # IQR of a standard normal: makes the robust scale comparable to an sd
VOCAB_FILE = "vocab.json"
NORM_STATS_FILE = "norm_stats.json"

# --------------------------------------------------------------------------------------------------
# Per-fold statistics (train only)


@dataclass(frozen=True)
class FoldStats:
    """Vocabulary and normalisation of one fold, indexed by code (position in CohortEvents.code_names)."""

    token_of_code: np.ndarray  # int32 [C]: vocabulary index, UNK_CODE for codes not in the vocabulary
    tokens: list[str]  # vocabulary, index = token id
    train_counts: np.ndarray  # int64 [C]
    log1p: np.ndarray  # bool [C]
    center: np.ndarray  # float64 [C]
    scale: np.ndarray  # float64 [C], > 0
    n_values: np.ndarray  # int64 [C]: train values the statistics come from
    log_codes_absent: list[str]  # codes named in an explicit log_transform list but not in train


class SortedTrainValues:
    """The train values of every code in ascending order, expanded from (value, count) entries on demand:
    order statistics by position, and sums in the exact order of a sequential sum over the sorted values
    (what np.bincount(code, weights=...) over sorted values computed when the values were held in memory),
    so float64 results are bit for bit the same. Expansion goes in chunks: memory stays bounded."""

    CHUNK = 1 << 22

    def __init__(self, code: np.ndarray, value: np.ndarray, count: np.ndarray, n_codes: int):
        self.value, self.count, self.n_codes = value, count, n_codes
        self.bounds = np.searchsorted(code, np.arange(n_codes + 1))  # entries of code c: bounds[c]:bounds[c+1]
        self.cum = np.cumsum(count)  # expanded position just after each entry
        self.n = np.bincount(code, weights=count, minlength=n_codes).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.n)[:-1]]).astype(np.int64)  # expanded start per code

    def at(self, pos: np.ndarray) -> np.ndarray:
        """Values at expanded positions `pos` (all codes together, code-major)."""
        if self.value.size == 0:
            return np.full(pos.shape, np.nan)
        return self.value[np.minimum(np.searchsorted(self.cum, pos, side="right"), self.value.size - 1)]

    def runs(self):
        """(code, ascending values) chunks, code by code."""
        for c in np.flatnonzero(self.n).tolist():
            a, b = int(self.bounds[c]), int(self.bounds[c + 1])
            if self.n[c] <= self.CHUNK:
                yield c, np.repeat(self.value[a:b], self.count[a:b])
                continue
            for lo in range(0, int(self.n[c]), self.CHUNK):
                pos = self.starts[c] + np.arange(lo, min(lo + self.CHUNK, int(self.n[c])))
                yield c, self.at(pos)

    def sums(self, *terms, transform=None) -> list[np.ndarray]:
        """Per code, for each `term(code, y) -> array`, the sequential float64 sum of term over y, the sorted x
        or `transform(code, x)`, computed once per run for every term (a log1p costs a C-library call per
        distinct value, stats.log1p_portable)."""
        out = [np.zeros(self.n_codes) for _ in terms]
        for c, x in self.runs():
            y = x if transform is None else transform(c, x)
            for acc, term in zip(out, terms):
                # cumsum is a sequential sum; starting from the carried total continues it exactly
                acc[c] = np.cumsum(np.concatenate([[acc[c]], term(c, y)]))[-1]
        return out


def _quantiles(vals: SortedTrainValues, transform, q: float) -> np.ndarray:
    """Quantile q of each code's (transformed) train values, numpy's 'linear' rule, exactly."""
    n = vals.n
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    frac = pos - lo
    codes = np.arange(n.size)
    x_lo = transform(codes, vals.at(vals.starts + lo))
    x_hi = transform(codes, vals.at(vals.starts + hi))
    return np.where(n > 0, x_lo + frac * (x_hi - x_lo), np.nan)


def _skewness(vals: SortedTrainValues, f) -> np.ndarray:
    """Population skewness g1 per code of f(x) (0 where the variance is 0 or there are no values)."""
    safe_n = np.maximum(vals.n, 1)
    (s1,) = vals.sums(lambda c, y: y, transform=lambda c, x: f(x))
    mean = s1 / safe_n
    s2, s3 = vals.sums(lambda c, d: d * d, lambda c, d: d * d * d, transform=lambda c, x: f(x) - mean[c])
    m2, m3 = s2 / safe_n, s3 / safe_n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m2 > 0, m3 / np.power(np.where(m2 > 0, m2, 1.0), 1.5), 0.0)


def _log1p0(x: np.ndarray) -> np.ndarray:
    return log1p_portable(np.maximum(x, 0.0))


def log1p_portable(x: np.ndarray) -> np.ndarray:
    """log1p of each element through the C library's double log1p, then in x's dtype: the same bits on every
    x86-64 CPU. numpy's own log1p takes Intel SVML on CPUs with AVX-512, whose last bit differs from glibc's,
    so the normalisation statistics and packed values (and the byte pins of tests/test_samples.py) changed
    from one host to another. One call per distinct value (np.unique), broadcast back: fast where values are
    recorded at a fixed precision (PhysioNet 2012: under 100,000 distinct values in 5 M events)."""
    flat = np.asarray(x).ravel()
    distinct, where = np.unique(flat, return_inverse=True)
    logs = np.fromiter(map(math.log1p, distinct.astype(np.float64).tolist()), dtype=np.float64, count=distinct.size)
    return logs[where].astype(flat.dtype, copy=False).reshape(np.shape(x))


def fit_fold(code_names: np.ndarray, train_counts: np.ndarray, values: Iterable[ValueBatch],
             params: PreprocessParams) -> FoldStats:  # fmt: skip
    """Vocabulary, log decision and normalisation from one fold's train events: `train_counts` [C] events
    per code (value-less ones too), `values` the train values in batches of consecutive codes covering the
    positions of `code_names` (sorted) in order. Each code's statistics depend on its own values only, so
    one batch is in memory at a time; exact: the same numbers as from all train values in memory."""
    n_codes = code_names.size
    in_vocab = train_counts >= params.min_code_count
    token_of_code = np.where(in_vocab, 2 + np.cumsum(in_vocab) - 1, UNK_CODE).astype(np.int32)
    tokens = [PAD_TOKEN, UNK_TOKEN, *code_names[in_vocab].tolist()]
    assert tokens[PAD_CODE] == PAD_TOKEN and tokens[UNK_CODE] == UNK_TOKEN

    log_codes_absent: list[str] = []
    listed = None  # an explicit log_transform list: the vocabulary codes it names
    if params.log_transform not in ("none", "auto"):
        wanted = set(params.log_transform)
        listed = np.isin(code_names, list(wanted)) & in_vocab
        log_codes_absent = sorted(wanted - set(code_names[in_vocab].tolist()))

    n_values = np.zeros(n_codes, np.int64)
    log1p = np.zeros(n_codes, bool)
    center, scale = np.zeros(n_codes), np.zeros(n_codes)
    covered = 0
    for batch in values:
        if batch.first != covered:
            raise ValueError(f"value batches must cover the codes in order: got {batch.first}, expected {covered}")
        part = slice(batch.first, batch.end)
        vals = SortedTrainValues(batch.code, batch.value, batch.count, batch.end - batch.first)
        n_values[part], log1p[part], center[part], scale[part] = _code_statistics(
            vals, params, None if listed is None else listed[part])
        covered = batch.end
    if covered != n_codes:
        raise ValueError(f"value batches covered {covered} of {n_codes} codes")
    return FoldStats(token_of_code, tokens, train_counts, log1p, center, scale, n_values, log_codes_absent)


def _code_statistics(vals: SortedTrainValues, params: PreprocessParams,
                     listed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(n_values, log1p, center, scale) of the codes of `vals` (`listed`: their log1p under an explicit
    log_transform list)."""
    n_values = vals.n
    n_codes = n_values.size
    lt = params.log_transform
    if lt == "none":
        log1p = np.zeros(n_codes, dtype=bool)
    elif lt == "auto":
        minimum = np.full(n_codes, np.nan)
        minimum[n_values > 0] = vals.at(vals.starts[n_values > 0])  # first of each sorted group
        nonneg = (n_values > 0) & (minimum >= 0)
        skew = _skewness(vals, lambda x: x)
        skew_log = _skewness(vals, _log1p0)
        log1p = nonneg & (skew > params.log_auto_min_skew) & (np.abs(skew_log) < np.abs(skew))
    else:
        assert listed is not None
        log1p = listed

    # log1p is monotone: the order within each code is unchanged by the transform.
    def xt(c, x):
        return _log1p0(x) if log1p[c] else x

    def xt_vec(codes, x):
        return np.where(log1p[codes], _log1p0(x), x)

    safe_n = np.maximum(n_values, 1)
    (s1,) = vals.sums(lambda c, y: y, transform=xt)
    mean = s1 / safe_n
    (ss,) = vals.sums(lambda c, y: (y - mean[c]) ** 2, transform=xt)
    sd = np.sqrt(ss / safe_n)
    if params.normalisation == "robust":
        center = _quantiles(vals, xt_vec, 0.5)
        iqr = _quantiles(vals, xt_vec, 0.75) - _quantiles(vals, xt_vec, 0.25)
        scale = iqr / IQR_TO_SD
    else:
        center, scale = mean, sd
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))  # the floor: IQR -> sd -> 1
    center = np.where(n_values > 0, center, 0.0)
    return n_values, log1p, center, scale


def normalise(code: np.ndarray, value: np.ndarray, stats: FoldStats, clip: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens int32 [N], values float32 [N], values clamped to 0 before log1p) for events given by their
    code ids (into the fold's code names) and raw values."""
    tok = stats.token_of_code[code]
    v = value.copy()
    is_log = stats.log1p[code]
    lv = v[is_log]
    clamped = int(np.sum(lv < 0))
    v[is_log] = _log1p0(lv)
    # float32 arithmetic: the output is float32 and the statistics are already fixed
    z = (v - stats.center.astype(np.float32)[code]) / stats.scale.astype(np.float32)[code]
    np.clip(z, -clip, clip, out=z)
    # value-less events and <unk> (no statistics of its own) carry value 0
    z[np.isnan(z) | (tok == UNK_CODE)] = 0.0
    return tok, z, clamped


def stats_to_json(code_names: np.ndarray, stats: FoldStats, params: PreprocessParams) -> tuple[dict, dict]:
    """(vocab.json, norm_stats.json) contents; statistics keyed by code name, for vocabulary codes."""
    in_vocab = stats.token_of_code != UNK_CODE
    vocab = {
        "tokens": stats.tokens,
        "pad": PAD_CODE,
        "unk": UNK_CODE,
        "min_code_count": params.min_code_count,
        "train_counts": {name: int(n) for name, n in zip(code_names.tolist(), stats.train_counts.tolist())},
        "unk_codes": code_names[~in_vocab].tolist(),
    }
    norm = {
        "normalisation": params.normalisation,
        "clip": params.clip,
        "log_transform": params.log_transform,
        "log_auto_min_skew": params.log_auto_min_skew,
        "log_transform_codes_absent": stats.log_codes_absent,
        "codes": {
            str(code_names[i]): {
                "center": float(stats.center[i]),
                "scale": float(stats.scale[i]),
                "log1p": bool(stats.log1p[i]),
                "n_values": int(stats.n_values[i]),
            }
            for i in np.flatnonzero(in_vocab)
        },
    }
    return vocab, norm

