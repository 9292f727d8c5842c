"""Subject -> split assignment, per fold, for the protocols of `params.split`.

The output table has one row per (subject, fold): `subject_id` int64, `fold` int32, `split` string in
{train, val, test}, sorted by (fold, subject_id). Only labelled subjects are assigned (the outcome is what
the splits are stratified on and evaluated against); `SplitSummary` counts the others.

Protocols:

- `random`: stratified by label. Fold k draws its own permutation from `SeedSequence([seed, k])`, so folds are
  independent repetitions and adding a fold never changes the earlier ones.
- `predefined`: a CSV fixes the assignment. `subject_id,split` is one fold, fold 0 (`folds` must be [0]);
  `subject_id,fold,split` holds several (a published multi-split protocol such as Raindrop's five P12
  splits), and `folds` must name folds the CSV holds. A labelled subject the CSV does not list in a fold is
  refused (`unlisted: refuse`) or left out of that fold and counted (`unlisted: exclude`).
- `physionet2012_set_a_test`: test = the subjects whose `group` is "set-a" (the challenge's own training
  set, used as the test set in the literature); the rest is split stratified into train/val with
  val share val / (train + val). `fractions.test` is not used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import ParamsError, SplitParams, resolve_path
from seqsetvae.data.readers import csv_rows, read_parquet
from seqsetvae.errors import DataError, excerpt

SPLITS: tuple[str, ...] = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2  # integer codes of SPLITS, used in the vectorised paths
SKIPPED = -1  # a labelled subject a predefined CSV leaves out of a fold (`unlisted: exclude`): no row
SET_A_GROUP = "set-a"
MAX_IDS_SHOWN = 5
MAX_FOLD = 999  # as the schema's split.folds items

SPLITS_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("fold", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)


@dataclass
class SplitSummary:
    """What the split stage did not assign, for the log (nothing is dropped without a count)."""

    labelled: int = 0
    subjects_without_label: int = 0
    labels_without_subject: int = 0
    csv_ids_not_labelled: int = 0  # distinct predefined-CSV ids (in the folds used) outside the labelled cohort
    # predefined, `unlisted: exclude`: fold -> labelled subjects left out because the CSV does not list them
    unlisted_excluded: dict[int, int] = field(default_factory=dict)
    unlisted_examples: dict[int, list[int]] = field(default_factory=dict)  # the first few ids, per fold


def labelled_cohort(subjects: pa.Table, labels: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, SplitSummary]:
    """(subject_ids sorted, label 0/1, group) of the subjects that have both a subjects row and at least one
    sample (label row). Splits are by subject, so every sample of a subject lands in the subject's split;
    a subject's label for stratification is 1 when any of its samples is positive (with one sample per
    subject, as PhysioNet 2012 has, that sample's label)."""
    lab_ids = labels.column("subject_id").to_numpy()
    lab_y = labels.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.int8)
    uniq, inverse = np.unique(lab_ids, return_inverse=True)
    any_positive = np.zeros(uniq.size, dtype=np.int8)
    np.maximum.at(any_positive, inverse, lab_y)
    subj_ids = subjects.column("subject_id").to_numpy()
    keep_lab = np.isin(uniq, subj_ids)
    ids, y = uniq[keep_lab], any_positive[keep_lab]
    groups = np.asarray(subjects.column("group").to_pylist(), dtype=object)
    # searchsorted with a sorter returns positions in sorted order; `sorter[...]` maps them to table rows.
    sorter = np.argsort(subj_ids, kind="stable")
    group = groups[sorter[np.searchsorted(subj_ids, ids, sorter=sorter)]] if ids.size else groups[:0]
    summary = SplitSummary(
        labelled=int(ids.size),
        subjects_without_label=int(np.sum(~np.isin(subj_ids, lab_ids))),
        labels_without_subject=int(np.sum(~np.isin(lab_ids, subj_ids))),
    )
    return ids, y, group, summary


def stratified_assign(y: np.ndarray, val: float, test: float, rng: np.random.Generator) -> np.ndarray:
    """Split codes (TRAIN/VAL/TEST) for items with labels `y`, each class split in the given shares."""
    out = np.full(y.shape[0], TRAIN, dtype=np.int8)
    for cls in np.unique(y):  # a loop over the (two) classes, not over subjects
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_test = int(round(idx.size * test))
        n_val = int(round(idx.size * val))
        out[idx[:n_test]] = TEST
        out[idx[n_test : n_test + n_val]] = VAL
    return out


@dataclass
class PredefinedSplits:
    """A predefined split CSV as arrays: one entry per row (subject, fold, split code)."""

    subject_id: np.ndarray  # int64
    fold: np.ndarray  # int64; all 0 when the CSV has no fold column
    code: np.ndarray  # int8 split codes (TRAIN / VAL / TEST)
    has_fold_column: bool


PREDEFINED_HEADERS = (["subject_id", "split"], ["subject_id", "fold", "split"])
# A subject_id in a predefined CSV: ASCII digits, no sign, spaces, separators ("1_0") or leading zeros ("0012"),
# as PhysioNet RecordIDs (`int()` alone would take all of those, and Unicode digits such as "٣").
_PLAIN_ID = re.compile(r"0|[1-9][0-9]*", re.ASCII)
MAX_SUBJECT_ID = 2**63 - 1  # subject_id is int64 (MEDS)


def read_predefined_csv(path: Path) -> PredefinedSplits:
    """A CSV `subject_id,split` (one fold, fold 0) or `subject_id,fold,split` (several folds).

    Read through the guarded CSV reader (seqsetvae.data.readers.csv_rows: a regular file of bounded size and
    line length, UTF-8, a leading BOM accepted). A bad row (wrong field count, a subject_id that is not a
    plain number, a fold that is not one from 0 to MAX_FOLD, a split name outside SPLITS, a subject given
    twice in one fold) is a DataError naming the file and its line. A subject_id is written one way only, as
    PhysioNet RecordIDs are: ASCII digits, no sign, separators or leading zeros, below 2**63 (int64).
    """
    index = {name: i for i, name in enumerate(SPLITS)}
    ids: list[int] = []
    folds: list[int] = []
    codes: list[int] = []
    seen: dict[tuple[int, int], int] = {}
    rows = csv_rows(path, "predefined split CSV")
    line, header = next(rows, (1, None))
    names = [h.strip() for h in header] if header is not None else None
    if names not in PREDEFINED_HEADERS:
        found = "the file is empty" if header is None else f"found {excerpt(','.join(header))}"
        raise DataError(path, f"header must be 'subject_id,split' or 'subject_id,fold,split', {found}", line=line)
    has_fold = len(names) == 3
    for line, row in rows:
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != len(names):
            raise DataError(path, f"expected {len(names)} fields ({','.join(names)}), found {len(row)}", line=line)
        cells = [c.strip() for c in row]
        sid_text, split = cells[0], cells[-1]
        if not _PLAIN_ID.fullmatch(sid_text) or int(sid_text) > MAX_SUBJECT_ID:
            raise DataError(
                path, f"subject_id {excerpt(sid_text)} is not an integer from 0 to 2**63 - 1 written plainly "
                "(ASCII digits only: no sign, spaces, separators or leading zeros)", line=line,
            )
        sid = int(sid_text)
        fold = 0
        if has_fold:
            fold_text = cells[1]
            if not re.fullmatch(r"[0-9]+", fold_text) or int(fold_text) > MAX_FOLD:
                raise DataError(path, f"fold {excerpt(fold_text)} is not an integer from 0 to {MAX_FOLD}", line=line)
            fold = int(fold_text)
        if split not in index:
            raise DataError(path, f"split {excerpt(split)} is not one of {', '.join(SPLITS)}", line=line)
        if (fold, sid) in seen:
            where = f" in fold {fold}" if has_fold else ""
            raise DataError(
                path, f"subject_id {sid} already assigned{where} on line {seen[(fold, sid)]}", line=line
            )
        seen[(fold, sid)] = line
        ids.append(sid)
        folds.append(fold)
        codes.append(index[split])
    return PredefinedSplits(
        np.asarray(ids, dtype=np.int64), np.asarray(folds, dtype=np.int64), np.asarray(codes, dtype=np.int8), has_fold
    )


def _predefined_fold(
    table: PredefinedSplits, fold: int, ids: np.ndarray, params: SplitParams, path: Path, summary: SplitSummary
) -> np.ndarray:
    """Split codes of the labelled subjects `ids` in one fold of the CSV; SKIPPED for a subject the fold
    does not list when `unlisted: exclude` (counted in `summary`)."""
    in_fold = table.fold == fold
    fold_ids, fold_codes = table.subject_id[in_fold], table.code[in_fold]
    order = np.argsort(fold_ids)
    fold_ids, fold_codes = fold_ids[order], fold_codes[order]
    # make_splits only asks for folds the CSV holds, so the fold has at least one row.
    pos = np.clip(np.searchsorted(fold_ids, ids), 0, fold_ids.size - 1)
    found = fold_ids[pos] == ids
    codes = np.where(found, fold_codes[pos], SKIPPED).astype(np.int8)
    if not found.all():
        missing = ids[~found]
        if params.unlisted == "refuse":
            where = f"fold {fold}: " if table.has_fold_column else ""
            raise DataError(
                path,
                f"{where}{missing.size} labelled subject(s) have no split in the CSV "
                f"(first: {missing[:MAX_IDS_SHOWN].tolist()}); list them, or set split.unlisted: exclude "
                "to leave them out of the fold (counted in the split log)",
            )
        if missing.size == ids.size:
            raise DataError(path, f"fold {fold}: the CSV lists none of the {ids.size} labelled subject(s)")
        summary.unlisted_excluded[fold] = int(missing.size)
        summary.unlisted_examples[fold] = missing[:MAX_IDS_SHOWN].tolist()
    return codes


def _check_no_empty_split(fold: int, codes: np.ndarray, n: int, params: SplitParams, csv: Path | None) -> None:
    """An empty train, val or test split is a DataError naming the fold, the split and the cause: the
    training stages would only fail later (no val/loss, a zero-size array)."""
    for code, name in enumerate(SPLITS):
        if np.any(codes == code):
            continue
        if csv is not None:
            cause = f"the predefined CSV lists none of the {n} labelled subjects in it"
            if params.unlisted == "exclude":
                cause += " (split.unlisted: exclude leaves out the ones it does not list)"
        else:
            cause = (f"{n} labelled subject(s) leave it none at split.fractions.{name} "
                     f"{getattr(params.fractions, name):g}; raise the fraction or bring more subjects")
        raise DataError(csv, f"fold {fold}: the {name} split is empty: {cause}")


def make_splits(
    subjects: pa.Table, labels: pa.Table, params: SplitParams, root: str | Path = "."
) -> tuple[pa.Table, SplitSummary]:
    """The split table for `params` (deterministic: same inputs and params -> same table)."""
    ids, y, group, summary = labelled_cohort(subjects, labels)
    if ids.size == 0:
        raise DataError(None, "no labelled subjects to split (labels.parquet and subjects.parquet share no subject)")
    fr = params.fractions
    per_fold: list[np.ndarray] = []

    if params.protocol == "random":
        for k in params.folds:
            rng = np.random.default_rng(np.random.SeedSequence([params.seed, k]))
            per_fold.append(stratified_assign(y, fr.val, fr.test, rng))

    elif params.protocol == "predefined":
        if params.predefined_csv is None:
            raise ParamsError("params.yaml: missing value for 'split.predefined_csv': protocol 'predefined' needs a CSV")
        path = resolve_path(params.predefined_csv, "split.predefined_csv", Path(root))
        table = read_predefined_csv(path)
        available = sorted(set(table.fold.tolist()))
        if not table.has_fold_column and list(params.folds) != [0]:
            raise ParamsError(
                f"params.yaml: invalid value for 'split.folds': the predefined CSV {path} has no fold column, "
                f"so it is one fold, [0]; got {params.folds} (add a fold column, subject_id,fold,split, for more)"
            )
        absent = [k for k in params.folds if k not in available]
        if absent:
            raise ParamsError(
                f"params.yaml: invalid value for 'split.folds': fold(s) {absent} are not in the predefined CSV "
                f"{path}, which holds folds {available}"
            )
        used = np.isin(table.fold, np.asarray(params.folds, dtype=np.int64))
        summary.csv_ids_not_labelled = int(np.sum(~np.isin(np.unique(table.subject_id[used]), ids)))
        for k in params.folds:
            per_fold.append(_predefined_fold(table, k, ids, params, path, summary))

    elif params.protocol == "physionet2012_set_a_test":
        is_test = group == SET_A_GROUP
        if not is_test.any():
            raise DataError(None, f"protocol physionet2012_set_a_test: no labelled subject has group '{SET_A_GROUP}'")
        if is_test.all():
            raise DataError(None, "protocol physionet2012_set_a_test: every labelled subject is in set-a, none left to train on")
        rest = np.flatnonzero(~is_test)
        val_share = fr.val / (fr.train + fr.val)
        for k in params.folds:
            rng = np.random.default_rng(np.random.SeedSequence([params.seed, k]))
            codes = np.full(ids.size, TEST, dtype=np.int8)
            codes[rest] = stratified_assign(y[rest], val_share, 0.0, rng)
            per_fold.append(codes)
    else:  # the schema rules this out; kept so a new protocol cannot fall through silently
        raise ParamsError(f"params.yaml: invalid value for 'split.protocol': {params.protocol!r}")

    for k, fold_codes in zip(params.folds, per_fold):
        _check_no_empty_split(k, fold_codes, ids.size, params, path if params.protocol == "predefined" else None)
    codes = np.concatenate(per_fold)
    keep = codes != SKIPPED  # only `unlisted: exclude` leaves a subject out of a fold, and counts it
    names = np.asarray(SPLITS, dtype=object)
    table = pa.table(
        {
            "subject_id": pa.array(np.tile(ids, len(per_fold))[keep], pa.int64()),
            "fold": pa.array(np.repeat(np.asarray(params.folds, dtype=np.int32), ids.size)[keep], pa.int32()),
            "split": pa.array(names[codes[keep]].tolist(), pa.string()),
        },
        schema=SPLITS_SCHEMA,
    )
    return table, summary


def read_splits(path: str | Path) -> pa.Table:
    """Read and check a split table written by the split stage."""
    path = Path(path)
    table = read_parquet(path, what="split table", hint=": run the split stage first")
    for f in SPLITS_SCHEMA:
        if f.name not in table.column_names:
            raise DataError(path, f"column '{f.name}' missing")
    try:
        table = table.select(SPLITS_SCHEMA.names).cast(SPLITS_SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        raise DataError(path, f"columns {SPLITS_SCHEMA.names} do not have the split table's types: "
                              f"{str(e).splitlines()[0][:200]}") from None
    bad = pc.invert(pc.is_in(table.column("split"), value_set=pa.array(SPLITS)))
    if pc.any(bad).as_py():
        raise DataError(path, f"split values must be in {SPLITS}")
    # (a lexsort, not np.unique(axis=1): every preprocess job reads this table, 1.9 s of each at 300,000 rows)
    fold, sid = table.column("fold").to_numpy(), table.column("subject_id").to_numpy()
    order = np.lexsort((sid, fold))
    fold, sid = fold[order], sid[order]
    if np.any((fold[1:] == fold[:-1]) & (sid[1:] == sid[:-1])):
        raise DataError(path, "a subject appears twice in one fold")
    return table


def fold_assignment(splits: pa.Table, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(subject_ids sorted, split codes) of one fold."""
    mask = pc.equal(splits.column("fold"), fold)
    sub = splits.filter(mask)
    ids = sub.column("subject_id").to_numpy()
    names = np.asarray(sub.column("split").to_pylist(), dtype=object)
    codes = np.select([names == s for s in SPLITS], [TRAIN, VAL, TEST]).astype(np.int8)
    order = np.argsort(ids, kind="stable")
    return ids[order], codes[order]


# --------------------------------------------------------------------------------------------------
# Label subsamples (label efficiency, ablation label_fraction): the one place a subsample is drawn.

LABEL_CLASSES = {0: "negative", 1: "positive"}
# Mixed into the subsample's hash, so `label_efficiency.seed: 0` ranks stays in an order of its own, unrelated
# to any other seeded draw of the project.
_SUBSAMPLE_STREAM = 0x1ABE1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised: a well-mixed 64-bit hash of each value (uint64 arithmetic wraps,
    and integer arithmetic gives the same bits on every platform and numpy version)."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def subsample_rank_keys(ids: np.ndarray, seed: int, cls: int) -> np.ndarray:
    """A seeded pseudo-random key per id (uint64): a class's stays are taken in increasing key order."""
    salt = _splitmix64(np.array([seed], dtype=np.uint64) ^ np.uint64(_SUBSAMPLE_STREAM))
    salt = _splitmix64(salt ^ np.uint64(cls))
    return _splitmix64(np.asarray(ids).astype(np.int64).astype(np.uint64) ^ salt)


def labels_kept(n_class: int, fraction: float, min_per_class: int = 1) -> int:
    """How many of a class's `n_class` labelled stays a subsample of `fraction` keeps: round half up of
    fraction * n_class (not ceil: 0.1 * 30 is 3.0000000000000004 in floating point), at least
    `min_per_class`. Non-decreasing in `fraction`, which is what makes the subsamples nested."""
    return max(min_per_class, int(np.floor(fraction * n_class + 0.5)))


def label_subsample(labels: np.ndarray, fraction: float, seed: int, *, ids: np.ndarray | None = None,
                    min_per_class: int = 1, what: str = "labels") -> np.ndarray:
    """Positions (sorted) of a seeded, label-stratified subsample of `fraction` of `labels` (0 / 1).

    Within each class the stays are ranked by a seeded hash of their id (`ids`, e.g. subject ids; default
    the positions) and the first `labels_kept(...)` are kept. So:
    - the subsamples of one seed are NESTED: the 1 % subsample lies inside the 5 % one, and so on;
      fraction 1 keeps every position;
    - a stay's rank depends on its id and the seed only, not on the row order or on the other stays: two
      train populations that mostly agree (the model's, which drops stays without events in the window, and
      the baselines', which keep them) get mostly the same subjects.
    Both classes must be present and each keeps at least `min_per_class` stays; otherwise a DataError names
    `what` (e.g. the train split) and the counts."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    if min_per_class < 1:
        raise ValueError(f"min_per_class must be at least 1, got {min_per_class}")
    y = np.asarray(labels).ravel() > 0.5
    ids = np.arange(y.size) if ids is None else np.asarray(ids).ravel()
    if ids.shape != y.shape:
        raise ValueError(f"{ids.size} ids for {y.size} labels")
    kept = []
    for cls, name in LABEL_CLASSES.items():
        members = np.flatnonzero(y == bool(cls))
        if members.size < min_per_class:
            raise DataError(None, f"{what}: {members.size} {name} stay(s) of {y.size}; a stratified label "
                                  f"subsample needs at least {min_per_class} of each class")
        n_keep = min(members.size, labels_kept(members.size, fraction, min_per_class))
        keys = subsample_rank_keys(ids[members], seed, cls)
        order = np.lexsort((ids[members], keys))  # by key; the id breaks a (vanishingly rare) tie
        kept.append(members[order[:n_keep]])
    return np.sort(np.concatenate(kept)).astype(np.int64)
