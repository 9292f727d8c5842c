"""The canonical tables every source is ingested into, and how they are written.

`ingest` writes one folder holding:

- `events.parquet`   MEDS data schema: `subject_id` int64, `time` timestamp[us], `code` string,
                     `numeric_value` float32; one row per time-series measurement, sorted by
                     (subject_id, time, code), each subject contiguous (MEDS rule).
- `subjects.parquet` one row per subject: `subject_id` int64, `admission_time` timestamp[us],
                     `group` string (where the subject came from, e.g. "set-a"), then one float32 column
                     per static descriptor, NaN where not recorded.
- `labels.parquet`   MEDS label schema: `subject_id` int64, `prediction_time` timestamp[us],
                     `boolean_value` bool (in-hospital death).
- `ingest_report.json` rows read / kept / skipped by reason (with the first examples as `file:line`),
                     subjects, subjects without measurements, positives.

Time in `events` is absolute (MEDS); sources that only know time since admission (PhysioNet 2012,
synthetic) use `ADMISSION_EPOCH` as every stay's admission time.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path

ADMISSION_EPOCH = dt.datetime(2000, 1, 1)

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us")),
        pa.field("code", pa.string(), nullable=False),
        pa.field("numeric_value", pa.float32()),
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("prediction_time", pa.timestamp("us"), nullable=False),
        pa.field("boolean_value", pa.bool_(), nullable=False),
    ]
)
SUBJECT_KEY_COLUMNS = ("subject_id", "admission_time", "group")

EVENTS_FILE = "events.parquet"
SUBJECTS_FILE = "subjects.parquet"
LABELS_FILE = "labels.parquet"
REPORT_FILE = "ingest_report.json"

MAX_EXAMPLES = 5  # examples (file:line) kept per skip reason in the report


@dataclass
class IngestReport:
    """Counts of what ingest read, kept and skipped (and why). Nothing is dropped without a count here."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    subjects: int = 0
    positives: int = 0
    subjects_without_measurements: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def skip(self, reason: str, where: str | None = None, n: int = 1) -> None:
        self.skipped[reason] += n
        if where is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < MAX_EXAMPLES:
                ex.append(where)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": int(sum(self.skipped.values())),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "skip_examples": {k: v for k, v in sorted(self.examples.items())},
            "subjects": self.subjects,
            "positives": self.positives,
            "subjects_without_measurements": sorted(int(s) for s in self.subjects_without_measurements),
            **self.extra,
        }


@dataclass
class IngestResult:
    events: pa.Table
    subjects: pa.Table
    labels: pa.Table
    report: IngestReport


def validate_meds(events: pa.Table, labels: pa.Table) -> None:
    """Check the tables against the official `meds` package's schemas (raises DataError)."""
    from meds import DataSchema, LabelSchema

    for name, table, schema in (("events", events, DataSchema), ("labels", labels, LabelSchema)):
        try:
            schema.validate(table)
        except Exception as e:  # the meds package raises its own error types
            raise DataError(None, f"canonical {name} table does not satisfy the MEDS schema: {e}") from e


def write_ingested(out_dir: str | Path, result: IngestResult) -> None:
    """Validate and write the four ingest outputs into `out_dir`, atomically (all or nothing)."""
    import json

    validate_meds(result.events, result.labels)
    with atomic_path(out_dir, is_dir=True) as tmp:
        pq.write_table(result.events, tmp / EVENTS_FILE, compression="zstd")
        pq.write_table(result.subjects, tmp / SUBJECTS_FILE, compression="zstd")
        pq.write_table(result.labels, tmp / LABELS_FILE, compression="zstd")
        (tmp / REPORT_FILE).write_text(
            json.dumps(result.report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )


def read_ingested(in_dir: str | Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Read (events, subjects, labels) written by `write_ingested`."""
    in_dir = Path(in_dir)
    for name in (EVENTS_FILE, SUBJECTS_FILE, LABELS_FILE):
        if not (in_dir / name).is_file():
            raise DataError(in_dir / name, "missing: run the ingest stage first")
    return (
        pq.read_table(in_dir / EVENTS_FILE),
        pq.read_table(in_dir / SUBJECTS_FILE),
        pq.read_table(in_dir / LABELS_FILE),
    )
