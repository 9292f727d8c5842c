"""Read the cohort named by params data.source into canonical MEDS tables and an ingest report.

Sources: `synthetic` (embedded generator), `physionet2012` (raw challenge files, downloaded with checksums
when absent and allowed), `meds` (a MEDS dataset). The ingest folder holds the events in the shards of
`data.shards` (data/<k>.parquet, k = 0 .. n-1: shard k holds the subjects at positions k*N//n .. (k+1)*N//n - 1
in subject id order, canonical.shard_starts), subjects.parquet, labels.parquet and ingest_report.json.

`seqsetvae ingest STEP ...`, one job per shard and a merge (dvc.yaml: ingest_shard@<k>, ingest):

- `[all] --out DIR` (no step): every shard job in this one process, one after the other, then the merge; the
  folder is written atomically (all or nothing), so a failed ingest leaves no output behind (scripts, tests,
  benchmarks); the same bytes as the jobs;
- `shard --shard K --out DIR --parts DIR`: shard K's events as DIR/data/K.parquet, and its part (its subjects,
  labels and report) as PARTS/shard_K (seqsetvae/data/ingest_parts.py);
- `merge --out DIR --parts DIR`: every part joined into DIR/{subjects,labels}.parquet and ingest_report.json,
  after the checks that need the whole cohort.

What a shard job reads (each reads the labels or outcomes, which fix the shards' subjects, and checks the
input's structure): MEDS: only the row groups of the data files whose subject_id statistics meet its subject id
interval, in batches, keeping its own subjects' rows; PhysioNet 2012: every record file's header (the record
ids and the structure checks, as before), then only its own stays' files; synthetic: it generates the (small)
cohort and keeps its shard. So a job holds about one shard's rows. Relative data paths in params resolve
against the params file's folder (seqsetvae.config.resolve_path).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path
from typing import Any

from seqsetvae.config import Params
from seqsetvae.data.canonical import IngestReport, IngestResult, subject_batches
from seqsetvae.data.ingest_parts import Finish, merge_in_order, merge_parts, write_shard
from seqsetvae.io import atomic_path

log = logging.getLogger(__name__)

STEPS = ("all", "shard", "merge")
PARTS_IN_ALL = ".parts"  # step all: the parts wait here, inside the output's temporary folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("step", nargs="?", default="all", choices=STEPS,
                        help="which job: shard / merge; all (default): every shard, then the merge, in this process")
    parser.add_argument(
        "--out", type=Path, default=Path("data/ingested"), help="the ingest folder (default: data/ingested)"
    )
    parser.add_argument("--shard", type=int, help="shard index, one of data.shards (shard)")
    parser.add_argument("--parts", type=Path, help="folder of the shard jobs' parts, shard_<k> (shard, merge)")


def ingest(params: Params) -> IngestResult:
    """The whole cohort in memory, in one result (tests, the export). Each source module is imported only when
    it is used."""
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


def ingest_shard(params: Params, k: int) -> tuple[IngestResult, dict[str, Any]]:
    """Shard k of data.shards, read from the input (module docstring), and the source's notes for the merge."""
    n = len(params.data.shards)
    if params.data.source == "physionet2012":
        from seqsetvae.data.physionet2012 import physionet2012_shard

        return physionet2012_shard(params.data.physionet2012, params.root, n, k), {}
    if params.data.source == "meds":
        from seqsetvae.data.meds_source import meds_shard

        return meds_shard(params.data.meds, params.root, n, k)
    # synthetic: the cohort is generated whole (it is small); its report goes whole with shard 0
    for j, batch in enumerate(subject_batches(ingest(params), n)):
        if j == k:
            return batch, {}
    raise AssertionError(f"shard {k} is not one of {n}")


def finish(params: Params) -> Finish:
    """How the source merges its shards' parts (ingest_parts.merge_parts)."""
    if params.data.source == "meds":
        from seqsetvae.data.meds_source import finish_meds

        share = params.preprocess.max_outside_window_share
        return lambda parts: finish_meds(parts, share)
    return merge_in_order


def summary(report: IngestReport) -> str:
    """One paragraph from the report: what was read, kept, skipped and why."""
    r = report.to_dict()
    skipped = ", ".join(f"{n} {reason}" for reason, n in r["skipped_by_reason"].items()) or "none"
    return (
        f"ingest ({r['source']}): {r['rows_read']} rows read, {r['rows_kept']} kept, {r['rows_skipped']} "
        f"skipped ({skipped}); {r['subjects']} subjects, {r['positives']} positive labels, "
        f"{len(r['subjects_without_measurements'])} subjects without measurements"
    )


def run(params: Params, args: argparse.Namespace) -> None:
    n = len(params.data.shards)
    if args.step == "shard":
        if args.shard is None or args.parts is None:
            raise SystemExit("seqsetvae ingest shard: --shard and --parts required")
        if not 0 <= args.shard < n:
            raise SystemExit(f"seqsetvae ingest shard: --shard {args.shard} is not one of data.shards (0 .. {n - 1})")
        result, notes = ingest_shard(params, args.shard)
        write_shard(args.out, args.parts, args.shard, n, result, notes)
        log.info("ingest shard %d of %d: %d subjects, %d events -> %s", args.shard, n, result.subjects.num_rows,
                 result.events.num_rows, args.out)  # fmt: skip
        return
    if args.step == "merge":
        if args.parts is None:
            raise SystemExit("seqsetvae ingest merge: --parts required")
        result = merge_parts(args.out, args.parts, n, finish(params))
    else:
        with atomic_path(args.out, is_dir=True) as tmp:
            parts = tmp / PARTS_IN_ALL
            for k in range(n):  # inside the folder written atomically: its files need no atomic writes of their own
                write_shard(tmp, parts, k, n, *ingest_shard(params, k), atomic=False)
            result = merge_parts(tmp, parts, n, finish(params), atomic=False)
            shutil.rmtree(parts)
    log.info("%s -> %s", summary(result.report), args.out)
