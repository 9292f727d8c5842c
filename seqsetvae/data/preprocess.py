"""Canonical events + split table -> per fold: vocabulary, normalisation statistics, packed splits.

The orchestration of the preprocess jobs; each concern has a module of its own:

- windows.py: per shard, the events inside the samples' windows, deduplicated, in sets (fold independent);
- stats.py: a fold's vocabulary, log decision and normalisation from exact train-value counts;
- pack.py: a shard's samples cut into packed pieces (packed.py's format).

The work is one job per step and shard (dvc.yaml, `foreach` over params `data.shards`; Snakemake runs the
same jobs, side by side or as SLURM jobs), each a pure function of its inputs:

1. `scan_shard` (stage preprocess_scan@k): shard k's events in windows; per fold the train code counts, the
   train values as exact (code, value) counts, the sizes of every packed split. Written as a `ShardScan`
   folder (npz + npy + json, no pickle; the value counts sorted by (code, value) with per-code offsets).
2. `FoldFit` (stage preprocess_fit@f): fold f's scans of every shard merged in shard order (code ids in
   order of first appearance, then sorted), the window checks, and the fold's statistics (stats.fit_fold),
   the value counts read from the scans a range of codes at a time (value_counts.merged_batches). Writes
   vocab.json, norm_stats.json and the fitted arrays.
3. `pack_shard` (stage preprocess_pack@k): shard k normalised with every fold's statistics and cut into one
   packed piece per fold and split.
4. `assemble` (stage preprocess): per fold and split, the shards' pieces appended in shard order into one
   packed split (PackedSplitWriter: one piece in memory at a time), and the report.

Shard k holds the subjects at positions k*N//n .. (k+1)*N//n - 1 of the cohort's N subject ids in ascending
order (canonical.shard_starts; ingest writes the shards by that rule). The subjects table, the fold
assignment, the labels and the descriptors are cut to a shard by its subject id range. Because the
statistics are exact and every merge goes in shard order, the output is byte for byte that of the whole
cohort in one piece, for any number of shards (tests/test_preprocess_shards.py checks it against the
pre-shard code). Memory per job: one shard's events (scan, pack); the fit holds the small per-code figures of
every scan and one batch of value counts (value_counts.BATCH_ENTRIES entries, or one code's distinct values
where a code has more), not the cohort's distinct (code, value) pairs; the assembly one piece.

`preprocess_shards` runs the same four steps in this process, one shard at a time (tests, notebooks, the
in-memory entry point `preprocess`); the scans' value counts go to a scratch folder beside the output,
removed when it ends, however it ends (io.scratch_folder; a killed run's is removed by the next).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.config import PreprocessParams
from seqsetvae.data.batch import UNK_CODE
from seqsetvae.data.canonical import (
    EVENTS_DIR,
    Samples,
    read_subjects_labels,
    samples_of,
    shard_first_ids,
)
from seqsetvae.data.pack import ShardLayout, pack_samples
from seqsetvae.data.packed import PackedSplit, PackedSplitWriter
from seqsetvae.data.readers import read_parquet
from seqsetvae.data.splits import SPLITS, fold_assignment
from seqsetvae.data.stats import (
    NORM_STATS_FILE,
    VOCAB_FILE,
    FoldStats,
    fit_fold,
    normalise,
    stats_to_json,
)
from seqsetvae.data.descriptors import SubjectDescriptors, refuse_reserved_codes
from seqsetvae.data.value_counts import TrainValueCounts, ValueCountsFile, merged_batches
from seqsetvae.data.windows import CohortEvents, lookup, prepare_events
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path, scratch_folder, write_json

log = logging.getLogger(__name__)

REPORT_FILE = "preprocess_report.json"
SCAN_ARRAYS, SCAN_JSON = "scan.npz", "scan.json"  # a ShardScan folder
FIT_ARRAYS, FIT_JSON = "fit.npz", "fit.json"  # a FoldFit folder (beside vocab.json, norm_stats.json)
PACK_JSON = "pack.json"  # a pack folder: fold_<f>/<split>/ pieces and their figures


# --------------------------------------------------------------------------------------------------
# A shard's input: its events and the cohort tables cut to its subject id range


@dataclass(frozen=True)
class ShardInput:
    """Everything one shard's work needs, cut to the shard's subject id range: the work of every step is a
    pure function of it (and, when packing, of the fitted statistics)."""

    source: Any  # path of an events parquet file, or a reader `read(columns=None) -> pa.Table`
    static: SubjectDescriptors | None  # the range's subjects' descriptors (descriptors: admission_set)
    params: PreprocessParams
    assignment: dict[int, tuple[np.ndarray, np.ndarray]]  # fold -> (subject ids sorted, split code), in range
    samples: Samples  # the samples of the range's subjects
    first_id: int  # the range's first subject id (int64 min for shard 0)
    end_id: int | None  # the next non-empty shard's first id (None: no upper bound)

    def prepare(self, report: dict[str, Any]) -> CohortEvents:
        events = _read(self.source)
        self._check_range(events)
        if self.static is not None:
            refuse_reserved_codes(events, self.source)
        return prepare_events(events, self.samples, self.params, report, self.static)

    def _check_range(self, events: pa.Table) -> None:
        """Every event of the shard lies in its subject id range (the rule of canonical.shard_starts), so the
        cut of the cohort tables loses nothing the shard looks up."""
        if events.num_rows == 0:
            return
        sid = events.column("subject_id")
        lo, hi = pc.min(sid).as_py(), pc.max(sid).as_py()
        if lo < self.first_id or (self.end_id is not None and hi >= self.end_id):
            where = self.source if isinstance(self.source, (str, Path)) else None
            upper = f"below {self.end_id}" if self.end_id is not None else "with no upper bound"
            raise DataError(
                where,
                f"subject ids {lo}..{hi} lie outside this shard's range (from {self.first_id}, {upper}): shards must "
                "hold ascending, disjoint subject id ranges cut by the data.shards rule (rerun the ingest stage)",
            )


class CohortCut:
    """The cohort tables (subjects, samples, fold assignment, descriptors) and the shards' subject id
    ranges (`first_ids`: first id of every shard, int64 max for an empty one), cut per shard by `input`."""

    def __init__(self, subjects: pa.Table, labels: pa.Table, splits: pa.Table, params: PreprocessParams,
                 first_ids: np.ndarray, splits_path: str | Path = "splits.parquet"):  # fmt: skip
        if subjects.num_rows == 0:
            raise DataError("subjects.parquet", "no subjects: the cohort is empty")
        self.params = params
        self.first_ids = np.asarray(first_ids, dtype=np.int64)
        self.static = SubjectDescriptors.of(subjects) if params.descriptors == "admission_set" else None
        self.samples = samples_of(labels)
        folds = np.unique(splits.column("fold").to_numpy())
        if folds.size == 0:
            raise DataError(splits_path, "the split table is empty")
        self.assignment = {fold: fold_assignment(splits, fold) for fold in folds.tolist()}

    @property
    def n_shards(self) -> int:
        return int(self.first_ids.size)

    def bounds(self, k: int) -> tuple[int, int | None]:
        """(first id, end id or None) of shard k's range: from its first id up to the next non-empty shard's
        first id; the first non-empty shard has no lower bound and the last none above (as ingest cuts them,
        canonical.subject_batches). An empty shard's range is empty (with every shard empty, shard 0 takes
        every id)."""
        empty, lowest = np.iinfo(np.int64).max, int(np.iinfo(np.int64).min)
        nonempty = np.flatnonzero(self.first_ids != empty)
        if self.first_ids[k] == empty:
            return (lowest, None) if (k == 0 and nonempty.size == 0) else (0, 0)
        lo = lowest if k == nonempty[0] else int(self.first_ids[k])
        later = nonempty[nonempty > k]
        return lo, (int(self.first_ids[later[0]]) if later.size else None)

    def _mask(self, k: int, sid: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds(k)
        mask = sid >= lo
        if hi is not None:
            mask &= sid < hi
        return mask

    def input(self, k: int, source: Any) -> ShardInput:
        s = None if self.static is None else self.static.cut(lambda sid: self._mask(k, sid))
        cut = {}
        for fold, (ids, split_code) in self.assignment.items():
            m = self._mask(k, ids)
            cut[fold] = (ids[m], split_code[m])
        sm = self.samples
        lm = self._mask(k, sm.subject_id)
        part = Samples(*(a[lm] for a in (sm.subject_id, sm.prediction_us, sm.label, sm.window_start_us)))
        lo, hi = self.bounds(k)
        return ShardInput(source, s, self.params, cut, part, lo, hi)


def _read(shard: Any, columns: list[str] | None = None) -> pa.Table:
    """A shard's events: a shard is the path of an events parquet file, or a reader
    `read(columns=None) -> pa.Table` (tests, the in-memory entry point)."""
    if isinstance(shard, (str, Path)):
        return read_parquet(Path(shard), columns, what="events shard", hint=": rerun the ingest stage")
    return shard(columns=columns)


# --------------------------------------------------------------------------------------------------
# Step 1: scan a shard


@dataclass
class FoldScan:
    """One shard's figures for one fold; code ids are the shard's own (positions in its code_names)."""

    train_counts: np.ndarray  # int64 [shard codes]
    values: TrainValueCounts | ValueCountsFile  # in memory after scan_shard, on disk after ShardScan.load
    not_in_fold: int
    events_not_in_fold: int
    counts: dict[str, np.ndarray]  # split -> int64 [n_samples, n_sets, n_events] packed
    assigned: dict[str, np.ndarray]  # split -> int64 [subjects, samples, samples of subjects without events,
                                     # samples without events in their window, events in windows, outside]


@dataclass
class ShardScan:
    events: dict[str, Any]  # report["events"] of the shard
    code_names: np.ndarray
    folds: dict[int, FoldScan]
    descriptors: dict[str, Any] | None = None  # {"codes": [...], "events": n, "samples": {counts}} (admission_set)

    def save(self, directory: str | Path) -> None:
        """Write the scan into `directory` (replaced whole, atomically): the per-code arrays in one .npz, each
        fold's value counts as .npy files the fit reads a code range at a time, figures in JSON."""
        arrays: dict[str, np.ndarray] = {"code_names": np.asarray(self.code_names, dtype=str)}
        meta: dict[str, Any] = {"events": self.events, "descriptors": self.descriptors, "folds": {}}
        for fold, f in self.folds.items():
            arrays[f"fold_{fold}.train_counts"] = f.train_counts
            meta["folds"][str(fold)] = {
                "not_in_fold": f.not_in_fold, "events_not_in_fold": f.events_not_in_fold,
                "counts": {s: v.tolist() for s, v in f.counts.items()},
                "assigned": {s: v.tolist() for s, v in f.assigned.items()},
            }  # fmt: skip
        with atomic_path(directory, is_dir=True) as tmp:
            np.savez(tmp / SCAN_ARRAYS, **arrays)
            for fold, f in self.folds.items():
                assert isinstance(f.values, TrainValueCounts), "a loaded scan is saved already"
                f.values.save(tmp, f"fold_{fold}", len(self.code_names))
            write_json(tmp / SCAN_JSON, meta)

    @classmethod
    def load(cls, directory: str | Path, folds: Iterable[int] | None = None) -> "ShardScan":
        """A scan saved by `save` (only `folds`, when given); its value counts stay on disk (ValueCountsFile)."""
        directory = Path(directory)
        meta = _read_json(directory / SCAN_JSON, "run the preprocess_scan stage")
        arrays = _read_npz(directory / SCAN_ARRAYS, "run the preprocess_scan stage")
        wanted = [int(f) for f in meta["folds"]] if folds is None else list(folds)
        out = {}
        for fold in wanted:
            if str(fold) not in meta["folds"]:
                raise DataError(directory / SCAN_JSON, f"holds no fold {fold}: rerun the preprocess_scan stage")
            m = meta["folds"][str(fold)]
            values = ValueCountsFile(directory, f"fold_{fold}")
            if values.n_codes != len(arrays["code_names"]):
                raise DataError(directory, f"fold {fold}'s value counts do not match its codes: rerun the preprocess_scan stage")
            out[fold] = FoldScan(
                train_counts=arrays[f"fold_{fold}.train_counts"], values=values, not_in_fold=m["not_in_fold"],
                events_not_in_fold=m["events_not_in_fold"],
                counts={s: np.asarray(v, dtype=np.int64) for s, v in m["counts"].items()},
                assigned={s: np.asarray(v, dtype=np.int64) for s, v in m["assigned"].items()},
            )  # fmt: skip
        return cls(meta["events"], arrays["code_names"], out, meta["descriptors"])


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, f"missing: {fix}") from None
    except (OSError, ValueError) as e:
        raise DataError(path, f"unreadable ({e}): {fix}") from None


def _read_npz(path: Path, fix: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DataError(path, f"missing: {fix}") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(path, f"corrupt or truncated ({e}): {fix}") from None


def scan_shard(task: ShardInput) -> ShardScan:
    """Step 1, one shard: windows / deduplicate / sets, then per fold the train code counts, the train
    values as exact counts (each event once, however many windows hold it) and the size of every split."""
    shard_report: dict[str, Any] = {}
    ev = task.prepare(shard_report)
    layout = ShardLayout(ev)
    smp = ev.samples
    packed = layout.sample_sets > 0
    with_events = lookup(ev.subjects_with_events, smp.subject_id)[1]
    out_ids, n_in, n_out = ev.outside_by_subject
    d = ev.descriptors
    folds = {}
    for fold, (ids, split_code) in task.assignment.items():
        subject_split, found = layout.split_of(ids, split_code, ev.subject_ids)
        event_split = subject_split[layout.event_subject]
        sample_split, _ = layout.split_of(ids, split_code, smp.subject_id)
        code, value = ev.code, ev.value
        if d is not None:  # a sample's descriptor events belong to its split (counted once per sample)
            event_split = np.r_[event_split, np.repeat(sample_split, np.diff(d.offsets))]
            code, value = np.r_[code, d.code], np.r_[value, d.value]
        values = TrainValueCounts()
        has_value = (event_split == 0) & ~np.isnan(value)
        values.add(code[has_value], value[has_value])
        io_split, _ = layout.split_of(ids, split_code, out_ids)
        counts, assigned = {}, {}
        for s_code, s_name in enumerate(SPLITS):
            sm = sample_split == s_code
            pm = sm & packed
            counts[s_name] = np.array([pm.sum(), layout.sample_sets[pm].sum(), layout.sample_events[pm].sum()],
                                      dtype=np.int64)  # fmt: skip
            io = io_split == s_code
            # (a sample with descriptor events is packed even where its subject has no event)
            assigned[s_name] = np.array([
                np.sum(split_code == s_code), sm.sum(), np.sum(sm & ~with_events & ~packed),
                np.sum(sm & with_events & ~packed), n_in[io].sum(), n_out[io].sum()], dtype=np.int64)  # fmt: skip
        folds[fold] = FoldScan(
            train_counts=np.bincount(code[event_split == 0], minlength=ev.code_names.size).astype(np.int64),
            values=values,
            not_in_fold=int(np.sum(~found)),
            events_not_in_fold=int(layout.events_per_subject[~found].sum()),
            counts=counts,
            assigned=assigned,
        )
    descriptors = None
    if d is not None:
        descriptors = {"codes": ev.code_names[np.unique(d.code)].tolist(), "events": int(d.code.size),
                       "samples": d.report}  # fmt: skip
    return ShardScan(shard_report["events"], ev.code_names, folds, descriptors)



# --------------------------------------------------------------------------------------------------
# Step 2: fit one fold from every shard's scan


@dataclass
class FoldFit:
    """One fold's statistics and the figures of its splits, from the scans of every shard."""

    fold: int
    code_names: np.ndarray  # every code of the cohort, sorted
    stats: FoldStats
    events: dict[str, Any]  # report["events"], summed over shards (the same for every fold)
    counts: dict[str, np.ndarray]  # split -> [n_samples, n_sets, n_events] packed
    assigned: dict[str, np.ndarray]  # split -> FoldScan.assigned, summed
    not_in_fold: int
    events_not_in_fold: int
    descriptors: dict[str, Any] | None = None  # ShardScan.descriptors summed over every shard (admission_set)

    @classmethod
    def reduce(cls, fold: int, scans: Iterable[ShardScan], params: PreprocessParams,
               splits_path: str | Path = "splits.parquet") -> "FoldFit":  # fmt: skip
        """Merge the scans strictly in shard order, check the windows, and fit the statistics (exact)."""
        reduction = FoldReduction(fold)
        for scan in scans:
            reduction.add(scan)
        return reduction.finish(params, splits_path)

    def save(self, directory: str | Path, params: PreprocessParams) -> None:
        """vocab.json and norm_stats.json (as the packed output holds them), the fitted arrays and the figures,
        into `directory` (replaced whole, atomically)."""
        s = self.stats
        vocab_json, norm_json = stats_to_json(self.code_names, s, params)
        with atomic_path(directory, is_dir=True) as tmp:
            write_json(tmp / VOCAB_FILE, vocab_json)
            write_json(tmp / NORM_STATS_FILE, norm_json)
            np.savez(tmp / FIT_ARRAYS, code_names=np.asarray(self.code_names, dtype=str),
                     token_of_code=s.token_of_code, train_counts=s.train_counts, log1p=s.log1p, center=s.center,
                     scale=s.scale, n_values=s.n_values)  # fmt: skip
            write_json(tmp / FIT_JSON, {
                "fold": self.fold, "tokens": s.tokens, "log_codes_absent": s.log_codes_absent, "events": self.events,
                "counts": {k: v.tolist() for k, v in self.counts.items()},
                "assigned": {k: v.tolist() for k, v in self.assigned.items()},
                "not_in_fold": self.not_in_fold, "events_not_in_fold": self.events_not_in_fold,
                "descriptors": self.descriptors,
            })  # fmt: skip

    @classmethod
    def load(cls, directory: str | Path) -> "FoldFit":
        directory = Path(directory)
        meta = _read_json(directory / FIT_JSON, "run the preprocess_fit stage")
        a = _read_npz(directory / FIT_ARRAYS, "run the preprocess_fit stage")
        stats = FoldStats(a["token_of_code"], meta["tokens"], a["train_counts"], a["log1p"], a["center"],
                          a["scale"], a["n_values"], meta["log_codes_absent"])  # fmt: skip
        return cls(int(meta["fold"]), a["code_names"], stats, meta["events"],
                   {k: np.asarray(v, np.int64) for k, v in meta["counts"].items()},
                   {k: np.asarray(v, np.int64) for k, v in meta["assigned"].items()},
                   int(meta["not_in_fold"]), int(meta["events_not_in_fold"]), meta["descriptors"])  # fmt: skip


class FoldReduction:
    """One fold's fit, built scan by scan in shard order (FoldFit.reduce): several folds can then share one
    pass over the scans. The scans' small figures are summed as they come; their value counts stay on disk
    (scans loaded by ShardScan.load) and are merged at `finish`, a range of codes at a time."""

    def __init__(self, fold: int) -> None:
        self.fold = fold
        self.code_ids: dict[str, int] = {}  # code name -> provisional id (order of first appearance)
        self.train_counts = np.zeros(0, np.int64)
        self.values: list[tuple[ValueCountsFile, np.ndarray]] = []  # per scan: its counts, its codes' provisional ids
        self.events: dict[str, Any] = {}
        self.not_in_fold = self.events_not_in_fold = 0
        self.counts: dict[str, np.ndarray] = {}
        self.assigned: dict[str, np.ndarray] = {}
        self.descriptors: dict[str, Any] | None = None

    def add(self, scan: ShardScan) -> None:
        self.events = _add_counts(self.events, scan.events)
        if scan.descriptors is not None:
            d, s = self.descriptors, scan.descriptors
            self.descriptors = s if d is None else {"codes": sorted(set(d["codes"]) | set(s["codes"])),
                                                    "events": d["events"] + s["events"],
                                                    "samples": _add_counts(d["samples"], s["samples"])}  # fmt: skip
        code_ids = self.code_ids
        prov = np.array([code_ids.setdefault(n, len(code_ids)) for n in scan.code_names.tolist()], dtype=np.int64)
        f = scan.folds[self.fold]
        self.train_counts = _grow(self.train_counts, len(code_ids))
        self.train_counts[prov] += f.train_counts  # (prov: distinct ids)
        if not isinstance(f.values, ValueCountsFile):
            raise TypeError("FoldReduction.add takes scans loaded from their folder (ShardScan.load)")
        self.values.append((f.values, prov))
        self.not_in_fold += f.not_in_fold
        self.events_not_in_fold += f.events_not_in_fold
        for s_name in SPLITS:
            self.counts[s_name] = self.counts.get(s_name, np.zeros(3, np.int64)) + f.counts[s_name]
            self.assigned[s_name] = self.assigned.get(s_name, 0) + f.assigned[s_name]

    def finish(self, params: PreprocessParams, splits_path: str | Path = "splits.parquet") -> FoldFit:
        """Check the windows and the splits, and fit the statistics (exact)."""
        fold, counts, assigned, events = self.fold, self.counts, self.assigned, self.events
        for s_name in SPLITS:
            _check_windows(assigned[s_name], events, fold, s_name, params, splits_path)
            # A split without a sample trains, validates or tests on nothing: the training stages would fail
            # later on an empty array. (Its samples all lack events in their windows, or it had none.)
            if counts[s_name][0] == 0:
                raise DataError(
                    splits_path,
                    f"fold {fold} {s_name}: no sample to pack: none of its {int(assigned[s_name][1])} sample(s) "
                    f"of {int(assigned[s_name][0])} subject(s) has an event in its window "
                    f"(preprocess.window_hours {params.window_hours:g}); widen the window or check the split",
                )
        # Codes in lexical order, as one pass over the whole cohort numbers them.
        code_ids = self.code_ids
        code_names = np.sort(np.array(list(code_ids), dtype=str))
        code_map = np.searchsorted(code_names, np.array(list(code_ids), dtype=str)).astype(np.int64)
        by_name = np.zeros(code_names.size, np.int64)
        by_name[code_map] = _grow(self.train_counts, len(code_ids))
        # A scan's codes are in lexical order, so their positions among the cohort's increase: each code's
        # entries are contiguous in every scan, and a range of codes is one read per file.
        parts = [(values, code_map[prov]) for values, prov in self.values]
        for values, positions in parts:
            if np.any(np.diff(positions) <= 0):
                raise DataError(values.bits.path.parent, "its codes are not in lexical order: rerun the preprocess_scan stage")
        stats = fit_fold(code_names, by_name, merged_batches(parts, code_names.size), params)
        return FoldFit(fold, code_names, stats, events, counts, assigned, self.not_in_fold, self.events_not_in_fold,
                       self.descriptors)


# --------------------------------------------------------------------------------------------------
# Step 3: pack a shard with every fold's statistics


@dataclass
class ShardPack:
    """One shard's packed pieces: fold -> (values clamped before log1p, {split: (piece, events <unk>,
    positives)}) for the splits the shard has samples of."""

    folds: dict[int, tuple[int, dict[str, tuple[PackedSplit, int, int]]]]

    def save(self, directory: str | Path) -> None:
        meta: dict[str, Any] = {}
        with atomic_path(directory, is_dir=True) as tmp:
            for fold, (clamped, pieces) in self.folds.items():
                meta[str(fold)] = {"values_clamped_to_0_before_log1p": clamped, "splits": {}}
                for s_name, (piece, unk, pos) in pieces.items():
                    piece.save(tmp / f"fold_{fold}" / s_name)
                    meta[str(fold)]["splits"][s_name] = {"events_unk": unk, "positives": pos}
            write_json(tmp / PACK_JSON, meta)

    @classmethod
    def load(cls, directory: str | Path) -> "ShardPack":
        """The pieces memory-mapped (PackedSplit.load): appending one reads it once, page by page."""
        directory = Path(directory)
        meta = _read_json(directory / PACK_JSON, "run the preprocess_pack stage")
        folds = {}
        for fold, m in meta.items():
            pieces = {s: (PackedSplit.load(directory / f"fold_{fold}" / s), r["events_unk"], r["positives"])
                      for s, r in m["splits"].items()}  # fmt: skip
            folds[int(fold)] = (int(m["values_clamped_to_0_before_log1p"]), pieces)
        return cls(folds)


def pack_shard(task: ShardInput, fits: dict[int, FoldFit]) -> ShardPack:
    """Normalise one shard with each fold's statistics and cut each split's piece."""
    ev = task.prepare({}).with_code_names(next(iter(fits.values())).code_names)
    layout = ShardLayout(ev)
    packed = layout.sample_sets > 0
    out = {}
    for fold, (ids, split_code) in task.assignment.items():
        sample_split, _ = layout.split_of(ids, split_code, ev.samples.subject_id)
        tokens, values, clamped = normalise(ev.code, ev.value, fits[fold].stats, task.params.clip)
        descriptors = None
        if ev.descriptors is not None:
            d_tokens, d_values, d_clamped = normalise(ev.descriptors.code, ev.descriptors.value, fits[fold].stats,
                                                      task.params.clip)  # fmt: skip
            descriptors, clamped = (d_tokens, d_values), clamped + d_clamped
        pieces = {}
        for s_code, s_name in enumerate(SPLITS):
            which = np.flatnonzero((sample_split == s_code) & packed)
            if not which.size:
                continue
            piece = pack_samples(ev, layout, which, tokens, values, descriptors)
            pieces[s_name] = (piece, int(np.sum(piece.codes == UNK_CODE)), int(piece.labels.sum()))
        out[fold] = (clamped, pieces)
    return ShardPack(out)


# --------------------------------------------------------------------------------------------------
# Step 4: assemble the packed folds and the report


def assemble(fits: dict[int, FoldFit], packs: Iterable[ShardPack], params: PreprocessParams, out_dir: str | Path,
             fit_dirs: dict[int, Path] | None = None, statistics_from: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Write out_dir/fold_<k>/{vocab.json, norm_stats.json, train/, val/, test/} and the report, atomically:
    each split's pieces appended in shard order (`packs` in shard order, consumed one at a time).
    `fit_dirs`: where the fits were saved (their vocab.json / norm_stats.json are copied as they are);
    `statistics_from`: the output whose statistics an extra task was packed with (in the report)."""
    report: dict[str, Any] = {"params": dataclasses.asdict(params)}
    if statistics_from is not None:
        report["statistics_from"] = statistics_from
    folds = sorted(fits)
    if fits[folds[0]].descriptors is not None:
        descriptors = dict(fits[folds[0]].descriptors)
        report["descriptor_samples"] = descriptors.pop("samples")
        report["descriptor_events"] = descriptors
    report["events"] = fits[folds[0]].events
    report["folds"] = {}
    with atomic_path(out_dir, is_dir=True) as tmp:
        writers, fold_reports = {}, {}
        for fold in folds:
            fit = fits[fold]
            fold_dir = tmp / f"fold_{fold}"
            fold_dir.mkdir()
            if fit_dirs is not None:
                for name in (VOCAB_FILE, NORM_STATS_FILE):
                    shutil.copyfile(Path(fit_dirs[fold]) / name, fold_dir / name)
            else:
                vocab_json, norm_json = stats_to_json(fit.code_names, fit.stats, params)
                write_json(fold_dir / VOCAB_FILE, vocab_json)
                write_json(fold_dir / NORM_STATS_FILE, norm_json)
            for s_name in SPLITS:
                writers[fold, s_name] = PackedSplitWriter(fold_dir / s_name, *fit.counts[s_name].tolist())
            fold_reports[fold] = {
                "vocab_size": len(fit.stats.tokens),
                "log1p_codes": fit.code_names[fit.stats.log1p].tolist(),
                "values_clamped_to_0_before_log1p": 0,
                "subjects_with_events_not_in_fold": fit.not_in_fold,
                "events_of_subjects_not_in_fold": fit.events_not_in_fold,
                "splits": {s: {"events_unk": 0, "positives": 0} for s in SPLITS},
            }
        for pack in packs:
            for fold, (clamped, pieces) in pack.folds.items():
                fold_reports[fold]["values_clamped_to_0_before_log1p"] += clamped
                for s_name, (piece, events_unk, positives) in pieces.items():
                    writers[fold, s_name].append(piece)
                    sr = fold_reports[fold]["splits"][s_name]
                    sr["events_unk"] += events_unk
                    sr["positives"] += positives
            del pack
        for fold in folds:
            fit, fold_report = fits[fold], fold_reports[fold]
            for s_name in SPLITS:
                writers[fold, s_name].close()
                n_samples, n_sets, n_events = fit.counts[s_name].tolist()
                n_subj, n_assigned, no_events, no_window, ev_in, ev_out = fit.assigned[s_name].tolist()
                sr = fold_report["splits"][s_name]
                fold_report["splits"][s_name] = {
                    "subjects_assigned": n_subj,
                    "samples_assigned": n_assigned,
                    "samples": n_samples,
                    "sets": n_sets,
                    "events": n_events,
                    "events_unk": sr["events_unk"],
                    "positives": sr["positives"],
                    "dropped_samples": {"no_events": no_events, "no_events_in_window": no_window},
                    "subject_events_in_windows": ev_in,
                    "subject_events_outside_windows": ev_out,
                }
            report["folds"][str(fold)] = fold_report
            log.info(
                "fold %d: vocab %d, log1p %s; %s",
                fold,
                fold_report["vocab_size"],
                fold_report["log1p_codes"],
                "; ".join(
                    f"{s} {r['samples']} samples ({sum(r['dropped_samples'].values())} dropped) {r['sets']} sets {r['events']} events"
                    for s, r in fold_report["splits"].items()
                ),
            )
        write_json(tmp / REPORT_FILE, report)
    return report


# --------------------------------------------------------------------------------------------------
# In one process: the four steps over shards given as paths or readers


def preprocess_shards(
    shards: Sequence[Any],
    subjects: pa.Table,
    labels: pa.Table,
    splits: pa.Table,
    params: PreprocessParams,
    out_dir: str | Path,
    splits_path: str | Path = "splits.parquet",
    shard_names: Sequence[str] | None = None,
    fixed_stats: Any = None,
) -> dict[str, Any]:
    """The four steps in this process, one shard in memory at a time: `shards` are the events, each a parquet
    path or a reader `read(columns=None)` (called twice), subject-disjoint, in ascending subject id ranges.
    The output is byte for byte that of the stages (and of the cohort as one shard).

    `fixed_stats` (seqsetvae.data.fixed_stats.FixedStats, None: fit them): another task's samples packed with
    the vocabulary and statistics of an earlier output (the main task's, which the backbone was pretrained
    with) instead of fitting them on this task's train windows; its vocab.json / norm_stats.json are copied."""
    names = list(shard_names) if shard_names is not None else [
        str(s) if isinstance(s, (str, Path)) else f"shard {k}" for k, s in enumerate(shards)]  # fmt: skip
    cut = CohortCut(subjects, labels, splits, params, _shard_first_ids(shards, names), splits_path)
    if fixed_stats is not None:
        fixed_stats.check(sorted(cut.assignment), params)
    # One pass over the shards: each scan's figures are summed into every fold's, its value counts written to
    # a scratch folder (as the scan jobs write them) and merged from there by the fits, a code range at a time.
    reductions = {fold: FoldReduction(fold) for fold in cut.assignment}
    scratch_parent = Path(out_dir).resolve().parent
    scratch_parent.mkdir(parents=True, exist_ok=True)
    with scratch_folder("seqsetvae-preprocess", scratch_parent) as scratch:
        for k, s in enumerate(shards):
            scan_shard(cut.input(k, s)).save(scratch / f"shard_{k}")
            scan = ShardScan.load(scratch / f"shard_{k}")
            for reduction in reductions.values():
                reduction.add(scan)
        fits = {fold: r.finish(params, splits_path) for fold, r in reductions.items()}
    fit_dirs = None
    if fixed_stats is not None:  # the figures of this task's windows, the statistics of the backbone's data
        fits = {fold: dataclasses.replace(fit, stats=fixed_stats.fold_stats(fold, fit.code_names))
                for fold, fit in fits.items()}
        fit_dirs = {fold: fixed_stats.fold_dir(fold) for fold in fits}
    packs = (pack_shard(cut.input(k, s), fits) for k, s in enumerate(shards))
    return assemble(fits, packs, params, out_dir, fit_dirs,
                    statistics_from=None if fixed_stats is None else fixed_stats.describe())


def preprocess(
    events: pa.Table,
    subjects: pa.Table,
    labels: pa.Table,
    splits: pa.Table,
    params: PreprocessParams,
    out_dir: str | Path,
    splits_path: str | Path = "splits.parquet",
) -> dict[str, Any]:
    """Preprocess a cohort held in memory (one shard): see `preprocess_shards`."""
    return preprocess_shards([lambda columns=None: events], subjects, labels, splits, params, out_dir, splits_path)


def preprocess_ingested(ingested: str | Path, splits: pa.Table, params: PreprocessParams, out_dir: str | Path,
                        splits_path: str | Path = "splits.parquet", labels: pa.Table | None = None,
                        fixed_stats: Any = None) -> dict[str, Any]:  # fmt: skip
    """Preprocess an ingest folder in this process, shard by shard (canonical.event_shards). `labels`: another
    task's samples (default: the ingest folder's labels.parquet); `fixed_stats`: see preprocess_shards."""
    from seqsetvae.data.canonical import event_shards

    subjects, ingested_labels = read_subjects_labels(ingested)
    return preprocess_shards(event_shards(ingested), subjects, ingested_labels if labels is None else labels,
                             splits, params, out_dir, splits_path, fixed_stats=fixed_stats)


# --------------------------------------------------------------------------------------------------
# The stages' file-based entry points (seqsetvae/stages/preprocess*.py)


def ingested_cut(ingested: str | Path, splits: pa.Table, params: PreprocessParams, n_shards: int,
                 splits_path: str | Path) -> CohortCut:  # fmt: skip
    """The cohort of an ingest folder cut into `n_shards` shards by the data.shards rule."""
    subjects, labels = read_subjects_labels(ingested)
    first_ids = shard_first_ids(subjects.column("subject_id").to_numpy(), n_shards)
    return CohortCut(subjects, labels, splits, params, first_ids, splits_path)


def shard_path(ingested: str | Path, k: int) -> Path:
    """The events file of shard k of an ingest folder."""
    return Path(ingested) / EVENTS_DIR / f"{k}.parquet"


def _check_windows(assigned: np.ndarray, events: dict[str, Any], fold: int, split: str, params: PreprocessParams,
                   splits_path: str | Path) -> None:  # fmt: skip
    """No silent empty windows: stop when more than preprocess.max_outside_window_share of a split's events
    (of its subjects, timed) lies outside every sample's window, naming the share and the likely cause."""
    ev_in, ev_out = int(assigned[4]), int(assigned[5])
    total = ev_in + ev_out
    if total == 0 or ev_out / total <= params.max_outside_window_share:
        return
    why = events["outside_window"]
    causes = (f"{why['before_window']} before the first window of their subject (history before the stay, or a "
              f"birth row?), {why['after_prediction_time']} after the last prediction time, "
              f"{why['between_windows']} between windows (counts over every split)")
    raise DataError(
        splits_path,
        f"fold {fold} {split}: {ev_out} of {total} events ({ev_out / total:.1%}) lie outside every sample's window "
        f"[max(window_start, prediction_time - {params.window_hours:g} h), prediction_time]: {causes}. Check the "
        "prediction times and preprocess.window_hours (data.meds.window_start_column for windows from a start "
        "time), or set preprocess.max_outside_window_share: 1 to accept it knowingly",
    )


def _grow(a: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([a, np.zeros(n - a.size, a.dtype)]) if a.size < n else a


def _add_counts(total: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Sum two `report["events"]` dicts (numbers add, nested dicts merge, strings are the same)."""
    if not total:
        return part
    return {k: _add_counts(v, part[k]) if isinstance(v, dict) else v if isinstance(v, str) else v + part[k]
            for k, v in total.items()}  # fmt: skip


def _shard_first_ids(shards: Sequence[Any], names: Sequence[str]) -> np.ndarray:
    """First subject id of every shard (int64 max for an empty one), checked to be ascending and disjoint:
    the canonical layout, on which the output's subject order and the cut of the subjects table rely."""
    if len(shards) == 1:
        return np.array([np.iinfo(np.int64).min])
    firsts, prev_last, prev_name = [], None, None
    for shard, name in zip(shards, names):
        sid = _read(shard, ["subject_id"]).column("subject_id")
        if len(sid) == 0:
            firsts.append(np.iinfo(np.int64).max)
            continue
        lo, hi = pc.min(sid).as_py(), pc.max(sid).as_py()
        if prev_last is not None and lo <= prev_last:
            raise DataError(name, f"subject ids {lo}..{hi} overlap or precede those of {prev_name} (up to "
                            f"{prev_last}): shards must hold ascending, disjoint subject id ranges (rerun ingest)")  # fmt: skip
        firsts.append(lo)
        prev_last, prev_name = hi, name
    return np.array(firsts, dtype=np.int64)


def scan_dir(root: str | Path, k: int) -> Path:
    return Path(root) / f"shard_{k}"


def fit_dir(root: str | Path, fold: int) -> Path:
    return Path(root) / f"fold_{fold}"


def run_scan(ingested: str | Path, splits: pa.Table, params: PreprocessParams, n_shards: int, k: int,
             out: str | Path, splits_path: str | Path = "splits.parquet") -> ShardScan:  # fmt: skip
    """Step 1 as a job: scan shard k of the ingest folder into `out`."""
    _check_shard(k, n_shards)
    cut = ingested_cut(ingested, splits, params, n_shards, splits_path)
    scan = scan_shard(cut.input(k, shard_path(ingested, k)))
    scan.save(out)
    return scan


def run_fit(scans: str | Path, n_shards: int, params: PreprocessParams, fold: int, out: str | Path,
            splits_path: str | Path = "splits.parquet") -> FoldFit:  # fmt: skip
    """Step 2 as a job: fold `fold`'s statistics from the scans of shards 0 .. n_shards-1 (under `scans`),
    merged in shard order, into `out`. Scans are read one at a time."""
    loaded = (ShardScan.load(scan_dir(scans, k), folds=[fold]) for k in range(n_shards))
    fit = FoldFit.reduce(fold, loaded, params, splits_path)
    fit.save(out, params)
    return fit


def run_pack(ingested: str | Path, splits: pa.Table, params: PreprocessParams, n_shards: int, k: int,
             fits: str | Path, out: str | Path, splits_path: str | Path = "splits.parquet") -> ShardPack:  # fmt: skip
    """Step 3 as a job: shard k normalised with every fold's statistics (under `fits`), packed into `out`."""
    _check_shard(k, n_shards)
    cut = ingested_cut(ingested, splits, params, n_shards, splits_path)
    loaded = {fold: FoldFit.load(fit_dir(fits, fold)) for fold in cut.assignment}
    pack = pack_shard(cut.input(k, shard_path(ingested, k)), loaded)
    pack.save(out)
    return pack


def run_assemble(fits: str | Path, packs: str | Path, splits: pa.Table, params: PreprocessParams, n_shards: int,
                 out: str | Path) -> dict[str, Any]:  # fmt: skip
    """Step 4 as a job: the packed folds and the report from the fits (under `fits`) and the packs of shards
    0 .. n_shards-1 (under `packs`, read one at a time, memory-mapped)."""
    folds = np.unique(splits.column("fold").to_numpy()).tolist()
    loaded = {fold: FoldFit.load(fit_dir(fits, fold)) for fold in folds}
    shard_packs = (ShardPack.load(scan_dir(packs, k)) for k in range(n_shards))
    return assemble(loaded, shard_packs, params, out, fit_dirs={fold: fit_dir(fits, fold) for fold in folds})


def _check_shard(k: int, n_shards: int) -> None:
    if not 0 <= k < n_shards:
        raise DataError(None, f"shard {k} is not one of data.shards 0 .. {n_shards - 1}")
