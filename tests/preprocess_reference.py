"""FROZEN REFERENCE: seqsetvae/data/preprocess.py as it was before the sharded data layer (issue 13, commit
c3dbbed), the whole cohort in memory. tests/test_preprocess_shards.py checks that the sharded preprocess
writes byte for byte what this wrote. Do not edit it to follow later changes: a deliberate change of the
preprocess output updates the test instead (and says why).

Original docstring follows.

Canonical events + split table -> per fold: vocabulary, normalisation statistics, packed splits.

Everything here is vectorised over events (numpy on arrays pulled once out of pyarrow): events are sorted
once by (subject, time, code), and set / patient / duplicate boundaries are found with `np.diff` on that
order. There is no Python loop over events, sets or patients; the loops are over folds, splits and the
handful of statistics.

Pipeline (fold independent, done once):

1. Observation window: keep events with 0 <= time - admission_time <= window_hours. Events outside it,
   without a time, or of a subject missing from subjects.parquet are counted in the report by reason.
2. Duplicates: a variable recorded more than once at one timestamp of one stay is reduced per
   `duplicates`: `mean` (default) averages the recorded values (value-less rows do not count), `last` keeps
   the last row in input order, `keep` keeps every row. Mean is the default because in PhysioNet 2012 a
   repeat at one minute is a re-measurement or a charting correction of the same quantity, with no order
   that says which is right: the mean is the least noisy estimate, and it keeps a set a *set* (one token per
   variable), which is what the SetVAE's per-variable reconstruction assumes.
3. Sets: all events of a subject at one timestamp form one set; set time = hours since admission.

Per fold (statistics from TRAIN subjects only, applied to every split):

4. Vocabulary: `<pad>`=0, `<unk>`=1, then the codes with at least `min_code_count` train events, in
   lexical order. Other codes (rare, or unseen in train) become `<unk>` with value 0.
5. Log transform (`log1p`), decided per code: `auto` takes a code whose train values are all >= 0, whose
   skewness exceeds `log_auto_min_skew`, and whose skewness after log1p is smaller in magnitude (the
   transform must actually help); or an explicit list of codes; or `none`. Values below 0 of a
   log-transformed code (possible in val/test) are clamped to 0 first, and counted.
6. Normalisation per code: `robust` = (x - median) / (IQR / 1.349) (1.349 makes the scale the standard
   deviation for normal data); `standard` = (x - mean) / sd. The scale has a floor: a zero IQR (a variable
   that is nearly constant, e.g. FiO2 or MechVent) falls back to the sd, a zero sd to 1, so no constant
   variable divides by zero. Values are then clipped to [-clip, clip]. Value-less events (null
   `numeric_value`, e.g. presence-only MEDS codes) get value 0 and are not part of any statistic.
7. Packing per split (packed.py). Subjects assigned to a split with no event in the window are not packed;
   the report counts them per split, by reason (no events at all / none inside the window).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import PreprocessParams
from seqsetvae.data.batch import PAD_CODE, UNK_CODE
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.splits import SPLITS, fold_assignment
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path, write_json
from seqsetvae.data.stats import log1p_portable  # the one change to the frozen code: log1p of the C library, as
# the code under test (numpy's own differs in the last bit between CPUs with and without AVX-512)

log = logging.getLogger(__name__)

PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
US_PER_HOUR = 3_600_000_000
IQR_TO_SD = 1.349  # IQR of a standard normal: makes the robust scale comparable to an sd
VOCAB_FILE = "vocab.json"
NORM_STATS_FILE = "norm_stats.json"
REPORT_FILE = "preprocess_report.json"


# --------------------------------------------------------------------------------------------------
# Fold-independent part: window, sort, duplicates, set boundaries


@dataclass(frozen=True)
class CohortEvents:
    """Windowed, deduplicated events sorted by (subject, time, code), with set and patient boundaries."""

    code: np.ndarray  # int32 [N], index into code_names
    value: np.ndarray  # float32 [N], NaN = value-less
    code_names: np.ndarray  # str [C], lexical order
    set_offsets: np.ndarray  # int64 [T+1], event ranges of sets
    set_times: np.ndarray  # float32 [T], hours since admission
    patient_set_offsets: np.ndarray  # int64 [U+1], set ranges of patients
    patient_ids: np.ndarray  # int64 [U], sorted; subjects with at least one event in the window
    subjects_with_events: np.ndarray  # int64, sorted; subjects with any event in the input at all

    @property
    def n_events(self) -> int:
        return int(self.code.shape[0])

    def events_per_patient(self) -> np.ndarray:
        return np.diff(self.set_offsets[self.patient_set_offsets])


def _int_us(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(microseconds since epoch as int64, null mask) of a timestamp column of any unit."""
    col = col.cast(pa.timestamp("us"))
    null = pc.is_null(col).to_numpy(zero_copy_only=False)
    filled = pc.fill_null(col, pa.scalar(0, pa.timestamp("us"))).cast(pa.int64())
    return filled.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), null


def _is_sorted(*keys: np.ndarray) -> bool:
    """Whether rows are in lexicographic order of `keys` (most significant first)."""
    if keys[0].size < 2:
        return True
    later = np.zeros(keys[0].size - 1, dtype=bool)  # already strictly after the previous row
    for k in keys:
        d = np.diff(k) if k.dtype.kind != "u" else np.diff(k.astype(np.int64))
        if np.any(~later & (d < 0)):
            return False
        later |= d > 0
    return True


def _lookup(keys: np.ndarray, query: np.ndarray, sorter: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(position in `keys`, found) of each query; `keys` sorted, or unsorted with its argsort `sorter`."""
    if keys.size == 0:
        return np.zeros(query.size, dtype=np.int64), np.zeros(query.size, dtype=bool)
    pos = np.clip(np.searchsorted(keys, query, sorter=sorter), 0, keys.size - 1)
    if sorter is not None:
        pos = sorter[pos]
    return pos, keys[pos] == query


def _starts_of_runs(*keys: np.ndarray) -> np.ndarray:
    """True where a row differs from the previous one in any of `keys` (and at row 0)."""
    new = np.zeros(keys[0].size, dtype=bool)
    new[:1] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def prepare_events(
    events: pa.Table, subjects: pa.Table, params: PreprocessParams, report: dict[str, Any]
) -> CohortEvents:
    """Window, sort, reduce duplicates and find set boundaries; counts go into `report["events"]`."""
    n_read = events.num_rows
    subject = events.column("subject_id").to_numpy().astype(np.int64, copy=False)
    time_us, time_null = _int_us(events.column("time"))
    enc = events.column("code").combine_chunks().dictionary_encode()
    raw_names = enc.dictionary.to_numpy(zero_copy_only=False).astype(str)
    order = np.argsort(raw_names, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    code = rank[enc.indices.to_numpy(zero_copy_only=False)].astype(np.int32)
    code_names = raw_names[order]
    value = events.column("numeric_value").to_numpy(zero_copy_only=False).astype(np.float32)
    nonfinite = np.isinf(value)  # NaN already means value-less; +-inf would poison every statistic
    value[nonfinite] = np.nan

    # Admission time per event: look up each run of equal subject ids once (events come grouped by
    # subject, so there are about as many runs as subjects), then spread the answer over the run.
    subj_ids = subjects.column("subject_id").to_numpy()
    if subj_ids.size == 0:
        raise DataError("subjects.parquet", "no subjects: the cohort is empty")
    adm_us, adm_null = _int_us(subjects.column("admission_time"))
    run_starts = np.flatnonzero(np.diff(subject, prepend=subject[:1] - 1) != 0) if n_read else np.zeros(0, np.int64)
    run_len = np.diff(np.append(run_starts, n_read))
    sorter = np.argsort(subj_ids, kind="stable")
    run_pos, run_found = _lookup(subj_ids, subject[run_starts], sorter)
    has_events = np.zeros(subj_ids.size, dtype=bool)
    has_events[run_pos[run_found]] = True
    subjects_with_events = np.sort(subj_ids[has_events])
    known = np.repeat(run_found & ~adm_null[run_pos], run_len)
    rel_us = time_us - np.repeat(adm_us[run_pos], run_len)
    window_us = int(round(params.window_hours * US_PER_HOUR))

    no_time = time_null
    unknown = ~known & ~no_time
    before = known & ~no_time & (rel_us < 0)
    after = known & ~no_time & (rel_us > window_us)
    keep = ~(no_time | unknown | before | after)

    if not keep.all():  # (boolean indexing of millions of rows is not free; skip it when nothing goes)
        k = np.flatnonzero(keep)
        subject, time_us, rel_us, code, value = subject[k], time_us[k], rel_us[k], code[k], value[k]
    if not _is_sorted(subject, time_us, code):
        # Stable, so rows equal in (subject, time, code) stay in input order: `last` depends on it.
        o = np.lexsort((code, time_us, subject))
        subject, time_us, rel_us, code, value = subject[o], time_us[o], rel_us[o], code[o], value[o]

    # Duplicate groups: rows equal in (subject, time, code).
    n = subject.size
    new_time = _starts_of_runs(subject, time_us)
    new_group = _starts_of_runs(subject, time_us, code)
    n_groups = int(new_group.sum())
    if params.duplicates != "keep" and n_groups < n:
        starts = np.flatnonzero(new_group)
        if params.duplicates == "mean":
            gid = np.cumsum(new_group) - 1
            has = ~np.isnan(value)
            sums = np.bincount(gid, weights=np.where(has, value, 0.0), minlength=n_groups)
            cnt = np.bincount(gid, weights=has, minlength=n_groups)
            with np.errstate(invalid="ignore", divide="ignore"):
                merged = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan).astype(np.float32)
            take = starts
        else:  # last
            take = np.append(starts[1:], n) - 1
            merged = value[take]
        subject, time_us, rel_us, code, value = subject[take], time_us[take], rel_us[take], code[take], merged
        new_time = _starts_of_runs(subject, time_us)

    set_starts = np.flatnonzero(new_time)
    new_patient = _starts_of_runs(subject)
    patient_starts = np.flatnonzero(new_patient)

    report["events"] = {
        "read": n_read,
        "outside_window": {
            "before_admission": int(before.sum()),
            "after_window": int(after.sum()),
            "without_time": int(no_time.sum()),
            "subject_not_in_subjects_table": int(unknown.sum()),
        },
        "in_window": int(keep.sum()),
        "duplicates_policy": params.duplicates,
        "duplicate_rows_merged": int(keep.sum()) - int(subject.size),
        "non_finite_values_made_value_less": int(nonfinite.sum()),
        "kept": int(subject.size),
        "value_less": int(np.isnan(value).sum()),
        "sets": int(set_starts.size),
        "subjects_with_events_in_window": int(patient_starts.size),
    }
    return CohortEvents(
        code=code,
        value=value,
        code_names=code_names,
        set_offsets=np.append(set_starts, subject.size).astype(np.int64),
        set_times=(rel_us[set_starts] / US_PER_HOUR).astype(np.float32),
        patient_set_offsets=np.append(np.flatnonzero(new_patient[set_starts]), set_starts.size).astype(np.int64),
        patient_ids=subject[patient_starts],
        subjects_with_events=subjects_with_events,
    )


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


def _grouped_quantiles(sorted_vals: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float) -> np.ndarray:
    """Quantile q of each group (numpy's 'linear' rule) of values sorted within contiguous groups."""
    pos = q * np.maximum(counts - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(counts - 1, 0))
    frac = pos - lo
    idx_lo = np.minimum(starts + lo, max(sorted_vals.size - 1, 0))
    idx_hi = np.minimum(starts + hi, max(sorted_vals.size - 1, 0))
    if sorted_vals.size == 0:
        return np.full(counts.shape, np.nan)
    out = sorted_vals[idx_lo] + frac * (sorted_vals[idx_hi] - sorted_vals[idx_lo])
    return np.where(counts > 0, out, np.nan)


def _grouped_skewness(code: np.ndarray, x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Population skewness g1 per code (0 where the variance is 0 or there are no values)."""
    c = n.size
    safe_n = np.maximum(n, 1)
    mean = np.bincount(code, weights=x, minlength=c) / safe_n
    d = x - mean[code]
    m2 = np.bincount(code, weights=d * d, minlength=c) / safe_n
    m3 = np.bincount(code, weights=d * d * d, minlength=c) / safe_n
    with np.errstate(invalid="ignore", divide="ignore"):
        g1 = np.where(m2 > 0, m3 / np.power(np.where(m2 > 0, m2, 1.0), 1.5), 0.0)
    return g1


def fit_fold(ev: CohortEvents, train_events: np.ndarray, params: PreprocessParams) -> FoldStats:
    """Vocabulary, log decision and normalisation from the events flagged in `train_events` only."""
    n_codes = ev.code_names.size
    train_counts = np.bincount(ev.code[train_events], minlength=n_codes).astype(np.int64)
    in_vocab = train_counts >= params.min_code_count
    token_of_code = np.where(in_vocab, 2 + np.cumsum(in_vocab) - 1, UNK_CODE).astype(np.int32)
    tokens = [PAD_TOKEN, UNK_TOKEN, *ev.code_names[in_vocab].tolist()]
    assert tokens[PAD_CODE] == PAD_TOKEN and tokens[UNK_CODE] == UNK_TOKEN

    # Train values grouped by code, sorted within each code (for quantiles). A stable argsort of small
    # unsigned codes is a radix sort; the values are then sorted per code in place (a loop over codes,
    # not events), which is much faster than a two-key lexsort of millions of floats.
    has_value = train_events & ~np.isnan(ev.value)
    code_dtype = np.uint8 if n_codes <= 2**8 else np.uint16 if n_codes <= 2**16 else np.int64
    c = ev.code[has_value]
    o = np.argsort(c.astype(code_dtype), kind="stable")
    x = ev.value[has_value][o].astype(np.float64)
    n_values = np.bincount(c, minlength=n_codes).astype(np.int64)
    c = np.repeat(np.arange(n_codes, dtype=np.int32), n_values)
    starts = np.concatenate([[0], np.cumsum(n_values)[:-1]]).astype(np.int64)
    for s, k in zip(starts[n_values > 1].tolist(), n_values[n_values > 1].tolist()):
        x[s : s + k].sort()
    minimum = np.full(n_codes, np.nan)
    minimum[n_values > 0] = x[starts[n_values > 0]]  # first of each sorted group

    log_codes_absent: list[str] = []
    lt = params.log_transform
    if lt == "none":
        log1p = np.zeros(n_codes, dtype=bool)
    elif lt == "auto":
        nonneg = (n_values > 0) & (minimum >= 0)
        skew = _grouped_skewness(c, x, n_values)
        skew_log = _grouped_skewness(c, log1p_portable(np.maximum(x, 0.0)), n_values)
        log1p = nonneg & (skew > params.log_auto_min_skew) & (np.abs(skew_log) < np.abs(skew))
    else:
        wanted = set(lt)
        log1p = np.isin(ev.code_names, list(wanted)) & in_vocab
        log_codes_absent = sorted(wanted - set(ev.code_names[in_vocab].tolist()))

    # Transform in sorted order: log1p is monotone, so the order within each code is unchanged.
    xt = np.where(log1p[c], log1p_portable(np.maximum(x, 0.0)), x)
    safe_n = np.maximum(n_values, 1)
    mean = np.bincount(c, weights=xt, minlength=n_codes) / safe_n
    sd = np.sqrt(np.bincount(c, weights=(xt - mean[c]) ** 2, minlength=n_codes) / safe_n)
    if params.normalisation == "robust":
        center = _grouped_quantiles(xt, starts, n_values, 0.5)
        iqr = _grouped_quantiles(xt, starts, n_values, 0.75) - _grouped_quantiles(xt, starts, n_values, 0.25)
        scale = iqr / IQR_TO_SD
    else:
        center, scale = mean, sd
    scale = np.where(scale > 0, scale, np.where(sd > 0, sd, 1.0))  # the floor: IQR -> sd -> 1
    center = np.where(n_values > 0, center, 0.0)
    return FoldStats(token_of_code, tokens, train_counts, log1p, center, scale, n_values, log_codes_absent)


def normalise(ev: CohortEvents, stats: FoldStats, clip: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens int32 [N], values float32 [N], values clamped to 0 before log1p) for every event."""
    tok = stats.token_of_code[ev.code]
    v = ev.value.copy()
    is_log = stats.log1p[ev.code]
    lv = v[is_log]
    clamped = int(np.sum(lv < 0))
    v[is_log] = log1p_portable(np.maximum(lv, 0.0))
    # float32 arithmetic: the output is float32 and the statistics are already fixed
    z = (v - stats.center.astype(np.float32)[ev.code]) / stats.scale.astype(np.float32)[ev.code]
    np.clip(z, -clip, clip, out=z)
    # value-less events and <unk> (no statistics of its own) carry value 0
    z[np.isnan(z) | (tok == UNK_CODE)] = 0.0
    return tok, z, clamped


def stats_to_json(ev: CohortEvents, stats: FoldStats, params: PreprocessParams) -> tuple[dict, dict]:
    """(vocab.json, norm_stats.json) contents; statistics keyed by code name, for vocabulary codes."""
    in_vocab = stats.token_of_code != UNK_CODE
    vocab = {
        "tokens": stats.tokens,
        "pad": PAD_CODE,
        "unk": UNK_CODE,
        "min_code_count": params.min_code_count,
        "train_counts": {name: int(n) for name, n in zip(ev.code_names.tolist(), stats.train_counts.tolist())},
        "unk_codes": ev.code_names[~in_vocab].tolist(),
    }
    norm = {
        "normalisation": params.normalisation,
        "clip": params.clip,
        "log_transform": params.log_transform,
        "log_auto_min_skew": params.log_auto_min_skew,
        "log_transform_codes_absent": stats.log_codes_absent,
        "codes": {
            str(ev.code_names[i]): {
                "center": float(stats.center[i]),
                "scale": float(stats.scale[i]),
                "log1p": bool(stats.log1p[i]),
                "n_values": int(stats.n_values[i]),
            }
            for i in np.flatnonzero(in_vocab)
        },
    }
    return vocab, norm


# --------------------------------------------------------------------------------------------------
# The stage: all folds, atomically


def _label_lookup(labels: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    ids = labels.column("subject_id").to_numpy()
    y = labels.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.float32)
    o = np.argsort(ids, kind="stable")
    ids, y = ids[o], y[o]
    if ids.size > 1 and np.any(np.diff(ids) == 0):
        raise DataError("labels.parquet", "a subject has more than one label; one prediction per subject is supported")
    return ids, y


STATIC_PREFIX = "static/"  # code of a descriptor event: static/<subjects column>, e.g. static/Age


def descriptor_events(subjects: pa.Table) -> pa.Table:
    """The subjects' numeric descriptors (Age, Gender, Height, ICUType, admission Weight on PhysioNet 2012) as
    events at admission, coded static/<column> (preprocess.descriptors: admission_set). They then go through
    the same windowing, train-only normalisation and vocabulary as every measurement, and form (part of) the
    set at time 0, as SeFT feeds static data in as extra set elements. Missing descriptors give no event."""
    numeric = [f.name for f in subjects.schema
               if f.name not in ("subject_id", "admission_time") and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    parts = []
    for name in numeric:
        col = subjects.column(name).cast(pa.float32())
        keep = pc.and_(pc.is_valid(col), pc.is_valid(subjects.column("admission_time")))
        sub = subjects.filter(keep)
        parts.append(pa.table({
            "subject_id": sub.column("subject_id").cast(pa.int64()),
            "time": sub.column("admission_time").cast(pa.timestamp("us")),
            "code": pa.array([STATIC_PREFIX + name] * sub.num_rows, pa.string()),
            "numeric_value": col.filter(keep),
        }))
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                        ("numeric_value", pa.float32())])
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()


def preprocess(
    events: pa.Table,
    subjects: pa.Table,
    labels: pa.Table,
    splits: pa.Table,
    params: PreprocessParams,
    out_dir: str | Path,
    splits_path: str | Path = "splits.parquet",
) -> dict[str, Any]:
    """Write out_dir/fold_<k>/{vocab.json, norm_stats.json, train/, val/, test/} and the report, atomically."""
    report: dict[str, Any] = {"params": dataclasses.asdict(params)}
    if params.descriptors == "admission_set":
        static = descriptor_events(subjects)
        report["descriptor_events"] = {"codes": sorted(set(static.column("code").to_pylist())), "events": static.num_rows}
        events = pa.concat_tables([events.select(static.column_names).cast(static.schema), static])
    ev = prepare_events(events, subjects, params, report)
    label_ids, label_y = _label_lookup(labels)
    folds = np.unique(splits.column("fold").to_numpy())
    if folds.size == 0:
        raise DataError(splits_path, "the split table is empty")
    sets_per_patient = np.diff(ev.patient_set_offsets)
    events_per_patient = ev.events_per_patient()
    events_per_set = np.diff(ev.set_offsets)
    set_patient = np.repeat(np.arange(ev.patient_ids.size), sets_per_patient)
    event_patient = np.repeat(np.arange(ev.patient_ids.size), events_per_patient)
    report["folds"] = {}

    with atomic_path(out_dir, is_dir=True) as tmp:
        for fold in folds.tolist():
            ids, split_code = fold_assignment(splits, fold)
            pos, found = _lookup(ids, ev.patient_ids)
            patient_split = np.where(found, split_code[pos], -1)  # -1: has events, not in this fold
            event_split = patient_split[event_patient]
            stats = fit_fold(ev, event_split == 0, params)
            tokens, values, clamped = normalise(ev, stats, params.clip)
            vocab_json, norm_json = stats_to_json(ev, stats, params)

            fold_dir = tmp / f"fold_{fold}"
            fold_dir.mkdir()
            write_json(fold_dir / VOCAB_FILE, vocab_json)
            write_json(fold_dir / NORM_STATS_FILE, norm_json)
            fold_report: dict[str, Any] = {
                "vocab_size": len(stats.tokens),
                "log1p_codes": ev.code_names[stats.log1p].tolist(),
                "values_clamped_to_0_before_log1p": clamped,
                "subjects_with_events_not_in_fold": int(np.sum(~found)),
                "events_of_subjects_not_in_fold": int(events_per_patient[~found].sum()),
                "splits": {},
            }
            for s_code, s_name in enumerate(SPLITS):
                assigned = ids[split_code == s_code]
                pm = patient_split == s_code
                lab_pos, lab_found = _lookup(label_ids, ev.patient_ids[pm])
                if not lab_found.all():
                    missing = ev.patient_ids[pm][~lab_found]
                    raise DataError(
                        splits_path,
                        f"fold {fold} {s_name}: {missing.size} subject(s) have no label (first: {missing[:5].tolist()})",
                    )
                sm = pm[set_patient]
                em = pm[event_patient]
                packed = PackedSplit(
                    codes=tokens[em],
                    values=values[em],
                    set_offsets=np.concatenate([[0], np.cumsum(events_per_set[sm])]).astype(np.int64),
                    set_times=ev.set_times[sm],
                    patient_offsets=np.concatenate([[0], np.cumsum(sets_per_patient[pm])]).astype(np.int64),
                    subject_ids=ev.patient_ids[pm],
                    labels=label_y[lab_pos],
                )
                packed.save(fold_dir / s_name)
                _, in_window = _lookup(ev.patient_ids, assigned)
                _, any_events = _lookup(ev.subjects_with_events, assigned)
                fold_report["splits"][s_name] = {
                    "subjects_assigned": int(assigned.size),
                    "subjects": packed.n_patients,
                    "sets": packed.n_sets,
                    "events": packed.n_events,
                    "events_unk": int(np.sum(packed.codes == UNK_CODE)),
                    "positives": int(packed.labels.sum()),
                    "dropped_subjects": {
                        "no_events": int(np.sum(~any_events)),
                        "no_events_in_window": int(np.sum(any_events & ~in_window)),
                    },
                }
            report["folds"][str(fold)] = fold_report
            log.info(
                "fold %d: vocab %d, log1p %s; %s",
                fold,
                len(stats.tokens),
                fold_report["log1p_codes"],
                "; ".join(
                    f"{s} {r['subjects']} subjects ({sum(r['dropped_subjects'].values())} dropped) {r['sets']} sets {r['events']} events"
                    for s, r in fold_report["splits"].items()
                ),
            )
        write_json(tmp / REPORT_FILE, report)
    return report
