"""Read the cohort named by params data.source into canonical MEDS tables and an ingest report.

Sources: `synthetic` (embedded generator), `physionet2012` (raw challenge files, downloaded with checksums
when absent and allowed), `meds` (a MEDS dataset). The output folder holds the events in the shards of
`data.shards` (data/<k>.parquet, k = 0 .. n-1: shard k holds the subjects at positions k*N//n .. (k+1)*N//n - 1
in subject id order, canonical.shard_starts), subjects.parquet, labels.parquet and
ingest_report.json; it is written atomically (all or nothing) after MEDS validation, so a failed ingest
leaves no output behind. The PhysioNet 2012 and MEDS sources stream: PhysioNet 2012 reads its files batch
by batch, MEDS reads its data shards one at a time and then builds the output shards one at a time (kept
rows wait in a temporary folder beside the output), so memory holds about one shard, not the cohort. The
synthetic source builds its (small, generated) cohort in memory and then cuts it into shards. Relative
data paths in params resolve against the params file's folder (seqsetvae.config.resolve_path).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Iterator

from seqsetvae.config import Params
from seqsetvae.data.canonical import IngestResult, subject_batches, write_ingested

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

        return ingest_meds(params.data.meds, params.root, params.preprocess.max_outside_window_share)
    raise AssertionError(f"data.source {source!r} passed schema validation but has no reader")


def ingest_batches(params: Params, scratch_dir: Path | None = None) -> Iterator[IngestResult]:
    """The cohort as the `data.shards` batches of subjects in subject id order: the shards ingest writes.
    `scratch_dir`: where a streaming source may keep temporary files (default: the system's temp folder)."""
    if params.data.source == "physionet2012":
        from seqsetvae.data.physionet2012 import iter_physionet2012

        return iter_physionet2012(params.data.physionet2012, params.root, len(params.data.shards))
    if params.data.source == "meds":
        from seqsetvae.data.meds_source import iter_meds

        return iter_meds(params.data.meds, params.root, len(params.data.shards), scratch_dir,
                         params.preprocess.max_outside_window_share)
    return subject_batches(ingest(params), len(params.data.shards))


def summary(result: IngestResult) -> str:
    """One paragraph from the report: what was read, kept, skipped and why."""
    r = result.report.to_dict()
    skipped = ", ".join(f"{n} {reason}" for reason, n in r["skipped_by_reason"].items()) or "none"
    return (
        f"ingest ({r['source']}): {r['rows_read']} rows read, {r['rows_kept']} kept, {r['rows_skipped']} "
        f"skipped ({skipped}); {r['subjects']} subjects, {r['positives']} positive labels, "
        f"{len(r['subjects_without_measurements'])} subjects without measurements"
    )


def run(params: Params, args: argparse.Namespace) -> None:
    # Scratch space beside the output: the disk sized for the output, rather than a possibly small /tmp.
    # (A generator: its scratch folder is made at the first batch, once write_ingested made out's parent.)
    result = write_ingested(args.out, ingest_batches(params, scratch_dir=args.out.parent))
    log.info("%s -> %s", summary(result), args.out)
