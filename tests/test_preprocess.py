"""preprocess: window, vocabulary, train-only statistics, log transform, duplicates, dropped subjects."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from seqsetvae.config import params_from_dict
from seqsetvae.data.batch import UNK_CODE
from seqsetvae.data.canonical import ADMISSION_EPOCH, EVENTS_SCHEMA, LABELS_SCHEMA
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import SPLITS_SCHEMA

# ----------------------------------------------------------------------------------------------------
# Building small canonical tables by hand (imported by the split and datamodule tests too)


def make_tables(
    rows: list[tuple[int, float, str, float | None]],
    subject_ids: list[int],
    labels: dict[int, bool],
    groups: dict[int, str] | None = None,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(events, subjects, labels) from rows (subject, hours since admission, code, value or None)."""
    rows = sorted(rows, key=lambda r: (r[0], r[1], r[2]))  # canonical order (stable: keeps repeats' order)
    times = [ADMISSION_EPOCH + dt.timedelta(hours=h) for _, h, _, _ in rows]
    events = pa.table(
        {
            "subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array(times, pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([r[3] for r in rows], pa.float32()),
        },
        schema=EVENTS_SCHEMA,
    )
    groups = groups or {}
    subjects = pa.table(
        {
            "subject_id": pa.array(subject_ids, pa.int64()),
            "admission_time": pa.array([ADMISSION_EPOCH] * len(subject_ids), pa.timestamp("us")),
            "group": pa.array([groups.get(s, "set-b") for s in subject_ids], pa.string()),
        }
    )
    lab_ids = sorted(labels)
    label_table = pa.table(
        {
            "subject_id": pa.array(lab_ids, pa.int64()),
            "prediction_time": pa.array([ADMISSION_EPOCH + dt.timedelta(hours=48)] * len(lab_ids), pa.timestamp("us")),
            "boolean_value": pa.array([labels[s] for s in lab_ids], pa.bool_()),
        },
        schema=LABELS_SCHEMA,
    )
    return events, subjects, label_table


def random_cohort(n_subjects: int, seed: int, n_codes: int = 6, max_sets: int = 40):
    """A cohort with varied stay lengths (1..max_sets sets), set sizes and labels; every subject labelled."""
    rng = np.random.default_rng(seed)
    n_sets = rng.integers(1, max_sets + 1, n_subjects)
    rows: list[tuple[int, float, str, float | None]] = []
    for sid, k in zip(range(1, n_subjects + 1), n_sets.tolist()):
        hours = np.sort(rng.choice(np.arange(0, 48 * 4), size=k, replace=False)) / 4.0
        for h in hours.tolist():
            codes = rng.choice(n_codes, size=rng.integers(1, n_codes + 1), replace=False)
            rows += [(sid, h, f"V{c}", float(rng.normal(10 * c, 1 + c))) for c in sorted(codes.tolist())]
    ids = list(range(1, n_subjects + 1))
    labels = {s: bool(rng.random() < 0.3) for s in ids}
    return make_tables(rows, ids, labels)


def split_table(assign: dict[int, str], fold: int = 0) -> pa.Table:
    ids = sorted(assign)
    return pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "fold": pa.array([fold] * len(ids), pa.int32()),
            "split": pa.array([assign[s] for s in ids], pa.string()),
        },
        schema=SPLITS_SCHEMA,
    )
