"""Read the cohort named by params data.source into canonical MEDS tables and an ingest report.

Sources: `synthetic` (embedded generator), `physionet2012` (raw challenge files, downloaded with checksums
when absent and allowed), `meds` (a MEDS dataset). The output folder holds events.parquet,
subjects.parquet, labels.parquet and ingest_report.json; it is written atomically (all or nothing) after
MEDS validation, so a failed ingest leaves no output behind. Relative data paths in params resolve against
the params file's folder (seqsetvae.config.resolve_path).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from seqsetvae.config import Params
from seqsetvae.data.canonical import IngestResult, write_ingested

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("data/ingested"), help="output folder (default: data/ingested)"
    )


def ingest(params: Params) -> IngestResult:
    """Dispatch on data.source; each source module is imported only when it is used."""
    source = params.data.source
    if source == "synthetic":
        from seqsetvae.data.synthetic import ingest_synthetic

        return ingest_synthetic(params.data.synthetic)
    if source == "physionet2012":
        from seqsetvae.data.physionet2012 import ingest_physionet2012

        return ingest_physionet2012(params.data.physionet2012, params.root)
    if source == "meds":
        from seqsetvae.data.meds_source import ingest_meds

        return ingest_meds(params.data.meds, params.root)
    raise AssertionError(f"data.source {source!r} passed schema validation but has no reader")


def summary(result: IngestResult) -> str:
    """One paragraph from the report: what was read, kept, skipped and why."""
    r = result.report.to_dict()
    skipped = ", ".join(f"{n} {reason}" for reason, n in r["skipped_by_reason"].items()) or "none"
    return (
        f"ingest ({r['source']}): {r['rows_read']} rows read, {r['rows_kept']} kept, {r['rows_skipped']} "
        f"skipped ({skipped}); {r['subjects']} subjects, {r['positives']} positive labels, "
        f"{len(r['subjects_without_measurements'])} subjects without measurements; "
        f"{result.events.num_rows} events"
    )


def run(params: Params, args: argparse.Namespace) -> None:
    result = ingest(params)
    write_ingested(args.out, result)
    log.info("%s -> %s", summary(result), args.out)
