"""Builders of small MEDS datasets, good and broken, written into a temporary folder.

Parquet is binary, so the bad inputs for the MEDS source are built here rather than checked in. Every
builder writes a MEDS root (`data/**/*.parquet` + `labels.parquet`) under `root` and returns the
`MedsParams` that point at it. `GOOD_ROWS` / `GOOD_LABELS` form a valid cohort: each broken case starts
from it and changes one thing, so a test failure points at exactly that thing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from seqsetvae.config import MedsParams

T0 = dt.datetime(2100, 1, 1, 8, 30)
SHARD = "data/train/0.parquet"
LABELS = "labels.parquet"


def at(hours: float | None) -> dt.datetime | None:
    """Absolute time `hours` after T0; None stays None (a static, null-time row)."""
    return None if hours is None else T0 + dt.timedelta(hours=hours)


# (subject_id, hours after T0 or None for static, code, numeric_value); prediction time is T0 + 48 h.
GOOD_ROWS: list[tuple[Any, ...]] = [
    (1, None, "Age", 71.0),
    (1, 0.0, "HR", 88.0),
    (1, 0.0, "Temp", 37.2),
    (1, 2.5, "HR", 92.0),
    (1, 3.0, "DX//I50", None),  # presence-only code: kept, value null
    (2, None, "Age", 45.0),
    (2, 1.0, "HR", 70.0),
    (2, 47.0, "Lactate", 1.1),
]
GOOD_LABELS: list[tuple[int, float, bool]] = [(1, 48.0, True), (2, 48.0, False)]

DATA_TYPES = {"subject_id": pa.int64(), "time": pa.timestamp("us"), "code": pa.string(), "numeric_value": pa.float32()}
LABEL_TYPES = {"subject_id": pa.int64(), "prediction_time": pa.timestamp("us"), "boolean_value": pa.bool_()}


def data_table(rows: Sequence[tuple[Any, ...]], **types: pa.DataType) -> pa.Table:
    """A MEDS data table from GOOD_ROWS-style tuples; `types` overrides a column's arrow type."""
    cols = list(zip(*rows)) if rows else [[], [], [], []]
    values = {
        "subject_id": list(cols[0]),
        "time": [at(h) for h in cols[1]],
        "code": list(cols[2]),
        "numeric_value": list(cols[3]),
    }
    kinds = {**DATA_TYPES, **types}
    return pa.table({name: _array(values[name], kinds[name]) for name in DATA_TYPES})


def labels_table(rows: Sequence[tuple[Any, ...]], **types: pa.DataType) -> pa.Table:
    cols = list(zip(*rows)) if rows else [[], [], []]
    values = {"subject_id": list(cols[0]), "prediction_time": [at(h) for h in cols[1]], "boolean_value": list(cols[2])}
    kinds = {**LABEL_TYPES, **types}
    return pa.table({name: _array(values[name], kinds[name]) for name in LABEL_TYPES})


def _array(values: list[Any], kind: pa.DataType) -> pa.Array:
    """Build with the natural type, then cast: lets a case ask for string ids or int32 ids alike."""
    if pa.types.is_string(kind):
        return pa.array([None if v is None else str(v) for v in values], kind)
    return pa.array(values).cast(kind) if values and any(v is not None for v in values) else pa.array(values, kind)


def write(
    root: Path,
    shards: dict[str, pa.Table] | None = None,
    labels: pa.Table | None = None,
) -> MedsParams:
    """Write a MEDS root under `root`: shards at their relative paths, labels at root/labels.parquet."""
    shards = {SHARD: data_table(GOOD_ROWS)} if shards is None else shards
    labels = labels_table(GOOD_LABELS) if labels is None else labels
    (root / "data").mkdir(parents=True, exist_ok=True)
    for rel, table in shards.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / rel)
    pq.write_table(labels, root / LABELS)
    return MedsParams(dir=str(root), labels=str(root / LABELS), window_start_column=None)


def with_rows(root: Path, extra: Sequence[tuple[Any, ...]], **types: pa.DataType) -> MedsParams:
    """The good cohort plus `extra` rows in the same shard."""
    return write(root, {SHARD: data_table([*GOOD_ROWS, *extra], **types)})
