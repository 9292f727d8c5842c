"""Subject -> split assignment, per fold, for the protocols of `params.split`.

The output table has one row per (subject, fold): `subject_id` int64, `fold` int32, `split` string in
{train, val, test}, sorted by (fold, subject_id). Only labelled subjects are assigned (the outcome is what
the splits are stratified on and evaluated against); `SplitSummary` counts the others.

Protocols:

- `random`: stratified by label. Fold k draws its own permutation from `SeedSequence([seed, k])`, so folds are
  independent repetitions and adding a fold never changes the earlier ones.
- `predefined`: a CSV `subject_id,split` fixes one assignment (`folds` must be [0]).
- `physionet2012_set_a_test`: test = the subjects whose `group` is "set-a" (the challenge's own training
  set, used as the test set in the literature); the rest is split stratified into train/val with
  val share val / (train + val). `fractions.test` is not used.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from seqsetvae.config import ParamsError, SplitParams, resolve_path
from seqsetvae.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")
TRAIN, VAL, TEST = 0, 1, 2  # integer codes of SPLITS, used in the vectorised paths
SET_A_GROUP = "set-a"
MAX_IDS_SHOWN = 5

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
    csv_ids_not_labelled: int = 0


def labelled_cohort(subjects: pa.Table, labels: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, SplitSummary]:
    """(subject_ids sorted, label 0/1, group) of the subjects that have both a subjects row and one label."""
    lab_ids = labels.column("subject_id").to_numpy()
    uniq, counts = np.unique(lab_ids, return_counts=True)
    if np.any(counts > 1):
        dup = uniq[counts > 1]
        raise DataError(
            "labels.parquet",
            f"{dup.size} subject(s) have more than one label (first: {dup[:MAX_IDS_SHOWN].tolist()}); "
            "one prediction per subject is supported",
        )
    subj_ids = subjects.column("subject_id").to_numpy()
    keep_lab = np.isin(lab_ids, subj_ids)
    ids = lab_ids[keep_lab]
    y = labels.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.int8)[keep_lab]
    order = np.argsort(ids, kind="stable")
    ids, y = ids[order], y[order]
    groups = np.asarray(subjects.column("group").to_pylist(), dtype=object)
    # searchsorted with a sorter returns positions in sorted order; `sorter[...]` maps them to table rows.
    sorter = np.argsort(subj_ids, kind="stable")
    group = groups[sorter[np.searchsorted(subj_ids, ids, sorter=sorter)]] if ids.size else groups[:0]
    summary = SplitSummary(
        labelled=int(ids.size),
        subjects_without_label=int(np.sum(~np.isin(subj_ids, lab_ids))),
        labels_without_subject=int(np.sum(~keep_lab)),
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


def read_predefined_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(subject_ids, split codes) from a CSV `subject_id,split`; a bad row is a DataError naming its line."""
    index = {name: i for i, name in enumerate(SPLITS)}
    ids: list[int] = []
    codes: list[int] = []
    seen: dict[int, int] = {}
    try:
        f = open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(path, f"cannot read predefined split CSV: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["subject_id", "split"]:
            raise DataError(path, f"header must be 'subject_id,split', found {header!r}", line=1)
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue  # blank line
            if len(row) != 2:
                raise DataError(path, f"expected 2 fields (subject_id,split), found {len(row)}", line=line)
            sid_text, split = row[0].strip(), row[1].strip()
            try:
                sid = int(sid_text)
            except ValueError:
                raise DataError(path, f"subject_id {sid_text!r} is not an integer", line=line) from None
            if split not in index:
                raise DataError(path, f"split {split!r} is not one of {', '.join(SPLITS)}", line=line)
            if sid in seen:
                raise DataError(path, f"subject_id {sid} already assigned on line {seen[sid]}", line=line)
            seen[sid] = line
            ids.append(sid)
            codes.append(index[split])
    return np.asarray(ids, dtype=np.int64), np.asarray(codes, dtype=np.int8)


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
        if list(params.folds) != [0]:
            raise ParamsError(f"params.yaml: invalid value for 'split.folds': protocol 'predefined' has one fold, [0]; got {params.folds}")
        if params.predefined_csv is None:
            raise ParamsError("params.yaml: missing value for 'split.predefined_csv': protocol 'predefined' needs a CSV")
        path = resolve_path(params.predefined_csv, "split.predefined_csv", Path(root))
        csv_ids, csv_codes = read_predefined_csv(path)
        order = np.argsort(csv_ids)
        csv_ids, csv_codes = csv_ids[order], csv_codes[order]
        pos = np.clip(np.searchsorted(csv_ids, ids), 0, max(csv_ids.size - 1, 0))
        found = csv_ids[pos] == ids if csv_ids.size else np.zeros(ids.size, dtype=bool)
        if not found.all():
            missing = ids[~found]
            raise DataError(
                path,
                f"{missing.size} labelled subject(s) have no split in the CSV (first: {missing[:MAX_IDS_SHOWN].tolist()})",
            )
        summary.csv_ids_not_labelled = int(np.sum(~np.isin(csv_ids, ids)))
        per_fold.append(csv_codes[pos])

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
            codes =  np.full(ids.size, TEST, dtype=np.int8)
            codes[rest] = stratified_assign(y[rest], val_share, 0.0, rng)
            per_fold.append(codes)
    else:  # the schema rules this out; kept so a new protocol cannot fall through silently
        raise ParamsError(f"params.yaml: invalid value for 'split.protocol': {params.protocol!r}")

    names = np.asarray(SPLITS, dtype=object)
    table = pa.table(
        {
            "subject_id": pa.array(np.tile(ids, len(per_fold)), pa.int64()),
            "fold": pa.array(np.repeat(np.asarray(params.folds, dtype=np.int32), ids.size), pa.int32()),
            "split": pa.array(names[np.concatenate(per_fold)].tolist(), pa.string()),
        },
        schema=SPLITS_SCHEMA,
    )
    return table, summary


def read_splits(path: str | Path) -> pa.Table:
    """Read and check a split table written by the split stage."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "missing: run the split stage first")
    table = pq.read_table(path)
    for f in SPLITS_SCHEMA:
        if f.name not in table.column_names:
            raise DataError(path, f"column '{f.name}' missing")
    table = table.select(SPLITS_SCHEMA.names).cast(SPLITS_SCHEMA)
    bad = pc.invert(pc.is_in(table.column("split"), value_set=pa.array(SPLITS)))
    if pc.any(bad).as_py():
        raise DataError(path, f"split values must be in {SPLITS}")
    key = np.stack([table.column("fold").to_numpy().astype(np.int64), table.column("subject_id").to_numpy()])
    if np.unique(key, axis=1).shape[1] != table.num_rows:
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
