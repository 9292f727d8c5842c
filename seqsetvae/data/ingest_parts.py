"""Ingest as one job per shard (dvc.yaml: `ingest_shard@<k>` for each k of params data.shards, then `ingest`):
what a shard job writes, and how the merge joins the jobs' parts into the ingest folder.

Shard job k reads from the input only what its shard needs (the source decides how: seqsetvae/stages/ingest.py)
and writes, each atomically:

- the events shard `<ingested>/data/<k>.parquet`, the file the downstream shard jobs read, in its final place
  (so a rerun that gives the same bytes leaves DVC nothing to rerun downstream);
- its part `<parts>/shard_<k>/`: `subjects.parquet` and `labels.parquet` (its subjects' rows) and `part.json`
  (shard k of n, the events shard's row count, the report of its rows, and the source's notes for the merge).

The merge reads every part in shard order, makes the checks that need the whole cohort (the source's `finish`:
e.g. the MEDS share of rows after every prediction time, a static code used two ways) and writes
`<ingested>/subjects.parquet`, `labels.parquet` and `ingest_report.json` (the report of one pass over the
cohort: every count by reason, the first examples in read order), the report last. It also removes events
shards numbered n and above: DVC leaves the outputs of a stage that params no longer define (data.shards
shortened), and a reader of the folder takes every data/<k>.parquet as a shard.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from seqsetvae.data.canonical import (
    EVENTS_DIR,
    EVENTS_SCHEMA,
    LABELS_FILE,
    REPORT_FILE,
    SUBJECTS_FILE,
    IngestReport,
    IngestResult,
    validate_meds,
)
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path

log = logging.getLogger(__name__)

PART_FILE = "part.json"


@dataclass
class ShardPart:
    """What shard job k hands to the merge (besides its events shard)."""

    shard: int
    shards: int
    events_rows: int
    report: IngestReport
    notes: dict[str, Any]  # the source's, for its finish (MEDS: the input files, each static column's first row)
    subjects: pa.Table
    labels: pa.Table


# The source's merge of the parts (in shard order) into the cohort's report and subjects table; it raises
# DataError for what only the whole cohort shows.
Finish = Callable[[list[ShardPart]], tuple[IngestReport, pa.Table]]


def events_path(ingested: Path, k: int) -> Path:
    return Path(ingested) / EVENTS_DIR / f"{k}.parquet"


def part_path(parts: Path, k: int) -> Path:
    return Path(parts) / f"shard_{k}"


@contextlib.contextmanager
def _output(path: Path, is_dir: bool, atomic: bool) -> Iterator[Path]:
    """Where to write output `path`: a temporary moved onto it on success (`atomic`), or the path itself, for
    a writer inside a folder that is itself written atomically (`seqsetvae ingest` with every step, whose
    errors then name that folder, not a temporary inside it)."""
    if atomic:
        with atomic_path(path, is_dir=is_dir) as tmp:
            yield tmp
        return
    (path if is_dir else path.parent).mkdir(parents=True, exist_ok=True)
    yield path


def write_shard(ingested: Path, parts: Path, k: int, n: int, result: IngestResult, notes: dict[str, Any],
                atomic: bool = True) -> None:  # fmt: skip
    """Shard job k's outputs: the events shard and the part (each atomically unless inside an atomic folder:
    `_output`; the events first, so a part never describes an events shard that is not there)."""
    validate_meds(result.events, result.labels)
    with _output(events_path(ingested, k), False, atomic) as tmp:
        pq.write_table(result.events, tmp, compression="zstd")
    part = {"shard": k, "shards": n, "events_rows": result.events.num_rows, "report": result.report.to_dict(),
            "notes": notes}  # fmt: skip
    with _output(part_path(parts, k), True, atomic) as tmp:
        pq.write_table(result.subjects, tmp / SUBJECTS_FILE, compression="zstd")
        pq.write_table(result.labels, tmp / LABELS_FILE, compression="zstd")
        (tmp / PART_FILE).write_text(json.dumps(part, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_part(parts: Path, k: int, n: int) -> ShardPart:
    """Part k of n, checked to be the part of shard k of a run with n shards."""
    from seqsetvae.data.readers import read_parquet

    folder = part_path(parts, k)
    meta_path = folder / PART_FILE
    if not meta_path.is_file():
        raise DataError(meta_path, f"missing: run the shard job of shard {k} (dvc.yaml ingest_shard@{k}) first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if (meta["shard"], meta["shards"]) != (k, n):
        raise DataError(meta_path, f"is the part of shard {meta['shard']} of {meta['shards']}, not of shard {k} of "
                                   f"{n} (params data.shards): rerun the ingest shard jobs")  # fmt: skip
    hint = f": rerun the shard job of shard {k}"
    return ShardPart(
        shard=k, shards=n, events_rows=meta["events_rows"], report=IngestReport.from_dict(meta["report"]),
        notes=meta["notes"], subjects=read_parquet(folder / SUBJECTS_FILE, what="subjects part", hint=hint),
        labels=read_parquet(folder / LABELS_FILE, what="labels part", hint=hint),
    )  # fmt: skip


def merge_in_order(parts: list[ShardPart]) -> tuple[IngestReport, pa.Table]:
    """The finish of a source whose shard reports add up (IngestReport.merge, in shard order) and whose
    shards' subjects tables have the same columns (PhysioNet 2012, synthetic)."""
    report = parts[0].report
    for part in parts[1:]:
        report.merge(part.report)
    return report, pa.concat_tables([p.subjects for p in parts])


def merge_parts(ingested: Path, parts_dir: Path, n: int, finish: Finish, atomic: bool = True) -> IngestResult:
    """Join the n parts into `<ingested>/{subjects,labels}.parquet` and ingest_report.json (see the module
    docstring; each file atomically unless inside an atomic folder: `_output`). Returns the subjects, labels
    and report (the events stay on disk: an empty events table)."""
    parts = [read_part(parts_dir, k, n) for k in range(n)]
    prev_max = None
    for part in parts:
        shard = events_path(ingested, part.shard)
        if not shard.is_file():
            raise DataError(shard, f"missing: run the shard job of shard {part.shard} first")
        rows = pq.read_metadata(shard).num_rows
        if rows != part.events_rows:
            raise DataError(shard, f"holds {rows} rows, its part {part_path(parts_dir, part.shard)} says "
                                   f"{part.events_rows}: rerun the shard job of shard {part.shard}")  # fmt: skip
        ids = part.subjects.column("subject_id").to_numpy()
        if ids.size:  # a contract of the layout (shards in subject id order): fail loudly
            if prev_max is not None and ids.min() <= prev_max:
                raise AssertionError(f"ingest shard {part.shard} starts at subject {ids.min()}, not after {prev_max}")
            prev_max = int(ids.max())
    report, subjects = finish(parts)
    labels = pa.concat_tables([p.labels for p in parts])
    if subjects.num_rows and not np.all(np.diff(subjects.column("subject_id").to_numpy()) > 0):
        raise AssertionError("merged subjects are not in ascending subject id order")
    ingested = Path(ingested)
    for name, table in ((SUBJECTS_FILE, subjects), (LABELS_FILE, labels)):
        with _output(ingested / name, False, atomic) as tmp:
            pq.write_table(table, tmp, compression="zstd")
    with _output(ingested / REPORT_FILE, False, atomic) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for stale in sorted((ingested / EVENTS_DIR).glob("*.parquet")):
        if stale.stem.isdigit() and int(stale.stem) >= n:
            stale.unlink()
            log.info("removed %s: an events shard of a run with more shards than params data.shards", stale)
    return IngestResult(events=EVENTS_SCHEMA.empty_table(), subjects=subjects, labels=labels, report=report)
