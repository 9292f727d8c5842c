"""The canonical tables every source is ingested into, and how they are written.

`ingest` writes one folder holding:

- `data/<k>.parquet` the events, in shards k = 0, 1, ... (MEDS layout `data/*.parquet`; MEDS data schema:
                     `subject_id` int64, `time` timestamp[us], `code` string, `numeric_value` float32); one
                     row per time-series measurement. Shards split the cohort by subject: each holds the
                     events of a run of subjects (params `data.shards`: shard k of n holds the subjects
                     at positions k*N//n .. (k+1)*N//n - 1 of the N subject ids in ascending order,
                     `shard_starts`; a shard may be empty when n > N), sorted by (subject_id, time, code), every subject in one shard only and
                     contiguous (MEDS rule), and every subject id of shard k below every one of shard k+1.
                     So a stage can stream the cohort shard by shard in bounded memory.
- `subjects.parquet` one row per subject: `subject_id` int64, `admission_time` timestamp[us],
                     `group` string (where the subject came from, e.g. "set-a"), then one float32 column
                     per static descriptor, NaN where not recorded.
- `labels.parquet`   the SAMPLES: one row per prediction to make, `subject_id` int64, `prediction_time`
                     timestamp[us], `boolean_value` bool (the MEDS label schema's columns; a subject may
                     have any number of rows, one per prediction time), then `window_start` timestamp[us]
                     (nullable): where the sample's input window may start at the earliest (e.g. the
                     ICU admission of a `first_24h` task). A sample's input is the subject's events with
                     time in [max(window_start, prediction_time - preprocess.window_hours),
                     prediction_time], both ends included (`sample_windows`); nothing after the
                     prediction time is ever read. Sorted by (subject_id, prediction_time), the pair
                     unique. PhysioNet 2012 and the synthetic cohort have one sample per stay, predicted
                     at admission + 48 h with window_start = admission.
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
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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
MEDS_LABEL_COLUMNS = tuple(LABELS_SCHEMA.names)  # what the MEDS label schema validates
WINDOW_START = "window_start"
# The samples table ingest writes as labels.parquet: the MEDS label columns plus each sample's window start.
SAMPLES_SCHEMA = LABELS_SCHEMA.append(pa.field(WINDOW_START, pa.timestamp("us"), nullable=True))
# The subjects columns that are not descriptors: the key, where the stay starts (PhysioNet 2012, synthetic;
# MEDS: the first kept event), the source group, and `birth_time` (MEDS cohorts with MEDS_BIRTH rows only).
BIRTH_TIME = "birth_time"  # subjects column (MEDS source): the time of the subject's MEDS_BIRTH row, or null
SUBJECT_KEY_COLUMNS = ("subject_id", "admission_time", "group", BIRTH_TIME)
CATEGORY_SEPARATOR = "//"  # a static code with no value, GENDER//F: categorical descriptor GENDER = "F"
# The descriptor computed from birth_time per sample (the baselines' feature, the neural model's static/ token).
AGE_AT_PREDICTION = "age_at_prediction"
DAYS_PER_YEAR = 365.25

EVENTS_DIR = "data"  # events shards: data/0.parquet, data/1.parquet, ... (MEDS: data/*.parquet)
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

    def merge(self, other: IngestReport) -> None:
        """Add the report of the next batch of subjects (batches in subject order) into this one, so a
        report merged from batches equals the report of one pass over all of them: counts add up,
        example lists keep their first MAX_EXAMPLES in subject order, constant entries must agree."""
        self.rows_read += other.rows_read
        self.rows_kept += other.rows_kept
        for reason, n in other.skipped.items():
            self.skipped[reason] += n
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(ex[: MAX_EXAMPLES - len(mine)])
        self.subjects += other.subjects
        self.positives += other.positives
        self.subjects_without_measurements.extend(other.subjects_without_measurements)
        self.extra = _merge_extra(self.extra, other.extra)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IngestReport:
        """The report `to_dict` wrote (a shard job's part, read back by the merge): every key not of the
        common fields is the source's extra."""
        d = dict(d)
        report = cls(source=d.pop("source"), rows_read=d.pop("rows_read"), rows_kept=d.pop("rows_kept"),
                     skipped=Counter(d.pop("skipped_by_reason")), subjects=d.pop("subjects"),
                     positives=d.pop("positives"),
                     subjects_without_measurements=list(d.pop("subjects_without_measurements")))  # fmt: skip
        report.examples = {reason: list(ex) for reason, ex in d.pop("skip_examples").items()}
        d.pop("rows_skipped")  # derived: the sum of skipped_by_reason
        report.extra = d
        return report

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


def _merge_extra(a: Any, b: Any) -> Any:
    """Merge two source-specific report entries: numbers add, dicts merge key by key, lists are example
    lists (kept to MAX_EXAMPLES) unless both are equal constants, anything else must be equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _merge_extra(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in {**a, **b}}
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str):
        if a != b:
            raise AssertionError(f"report entry differs between ingest batches: {a!r} vs {b!r}")
        return a
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    if isinstance(a, list) and isinstance(b, list):
        # e.g. [lo, hi] ranges, constant per source, or examples (which never repeat across batches)
        return a if a == b else (a + b)[:MAX_EXAMPLES]
    raise AssertionError(f"cannot merge report entries {a!r} and {b!r}")


@dataclass
class IngestResult:
    events: pa.Table
    subjects: pa.Table
    labels: pa.Table
    report: IngestReport


def validate_meds(events: pa.Table, labels: pa.Table) -> None:
    """Check the tables against the official `meds` package's schemas (raises DataError)."""
    from meds import DataSchema, LabelSchema

    labels = labels.select([c for c in MEDS_LABEL_COLUMNS if c in labels.column_names])
    for name, table, schema in (("events", events, DataSchema), ("labels", labels, LabelSchema)):
        try:
            schema.validate(table)
        except Exception as e:  # the meds package raises its own error types
            raise DataError(None, f"canonical {name} table does not satisfy the MEDS schema: {e}") from e


def shard_starts(n_subjects: int, n_shards: int) -> np.ndarray:
    """The subject -> shard rule (params data.shards): with the N subject ids in ascending order, shard k holds
    positions starts[k] .. starts[k + 1] - 1, starts[k] = k * N // n. Contiguous, sizes differ by at most one,
    and deterministic (it depends on the ids alone); a shard is empty when n > N."""
    return (np.arange(n_shards + 1, dtype=np.int64) * int(n_subjects)) // int(n_shards)


def shard_first_ids(subject_ids: np.ndarray, n_shards: int) -> np.ndarray:
    """First subject id of each of `n_shards` shards cut by `shard_starts` from `subject_ids` (any order;
    int64 max for an empty shard): shard k takes the ids from first_ids[k] (any id for shard 0) up to the next
    non-empty shard's first id."""
    ids = np.sort(np.asarray(subject_ids, dtype=np.int64))
    starts = shard_starts(ids.size, n_shards)
    first = np.full(n_shards, np.iinfo(np.int64).max, dtype=np.int64)
    nonempty = starts[:-1] < starts[1:]
    first[nonempty] = ids[starts[:-1][nonempty]]
    return first


def shard_id_range(sorted_ids: np.ndarray, n_shards: int, k: int) -> tuple[int | None, int | None] | None:
    """Shard k's subjects as a subject id interval [lo, hi) of the cut of `shard_starts` over `sorted_ids`
    (ascending, unique): None for an empty shard; lo None (no lower bound) for the first non-empty shard
    and hi None (no upper bound) for the last, so that every id, also one no shard's subjects hold (a MEDS
    subject without a label) or int64 max (an exclusive bound would drop it), lies in exactly one shard."""
    starts = shard_starts(sorted_ids.size, n_shards)
    a, b = int(starts[k]), int(starts[k + 1])
    if a == b:
        return None
    return (int(sorted_ids[a]) if a > 0 else None, int(sorted_ids[b]) if b < sorted_ids.size else None)


def subject_batches(result: IngestResult, n_shards: int) -> Iterator[IngestResult]:
    """Cut an in-memory result into `n_shards` batches of subjects by the rule of `shard_starts` (in subject id
    order; a batch may be empty), the shards `write_ingested` writes. Events must be sorted by subject (they
    are: canonical order). The report goes whole with the first batch: it describes the cohort, and later
    batches add nothing to it."""
    ids = np.sort(result.subjects.column("subject_id").to_numpy())
    ev_sid = result.events.column("subject_id").to_numpy()
    lab_sid = result.labels.column("subject_id").to_numpy()
    subj_sid = result.subjects.column("subject_id").to_numpy()
    for k in range(n_shards):
        bounds = shard_id_range(ids, n_shards, k)
        if bounds is None:  # an empty shard (more shards than subjects)
            e0 = e1 = 0
            in_batch = lambda sid: pa.array(np.zeros(sid.size, dtype=bool))  # noqa: E731
        else:
            lo = np.iinfo(np.int64).min if bounds[0] is None else bounds[0]
            hi = bounds[1]
            e0 = np.searchsorted(ev_sid, lo)  # events sorted by subject: one slice
            e1 = ev_sid.size if hi is None else np.searchsorted(ev_sid, hi)
            in_batch = lambda sid, lo=lo, hi=hi: pa.array((sid >= lo) & ((sid < hi) if hi is not None else True))  # noqa: E731
        yield IngestResult(
            events=result.events.slice(e0, e1 - e0),
            subjects=result.subjects.filter(in_batch(subj_sid)),
            labels=result.labels.filter(in_batch(lab_sid)),
            report=result.report if k == 0 else IngestReport(source=result.report.source),
        )


def write_ingested(out_dir: str | Path, result: IngestResult | Iterable[IngestResult]) -> IngestResult:
    """Validate and write the ingest outputs into `out_dir`, atomically (all or nothing).

    `result` is the whole cohort, written as one shard, or an iterable of batches of subjects in subject
    id order (a source reading its files batch by batch), each written as the next shard as soon as it
    comes, so only one batch is in memory. Subjects and labels (one row per subject) are collected and
    written at the end, with the merged report. Returns the subjects, labels and report, and the events of
    the last batch only."""
    import json

    batches = [result] if isinstance(result, IngestResult) else result
    subjects, labels, report, last = [], [], None, None
    prev_max = None
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / EVENTS_DIR).mkdir()
        for k, batch in enumerate(batches):
            validate_meds(batch.events, batch.labels)
            sid = batch.events.column("subject_id")
            if batch.events.num_rows:
                lo, hi = pc.min(sid).as_py(), pc.max(sid).as_py()
                if prev_max is not None and lo <= prev_max:  # a contract of the layout: fail loudly
                    raise AssertionError(f"ingest batch {k} starts at subject {lo}, not after {prev_max}")
                prev_max = hi
            pq.write_table(batch.events, tmp / EVENTS_DIR / f"{k}.parquet", compression="zstd")
            subjects.append(batch.subjects)
            labels.append(batch.labels)
            if report is None:
                report = batch.report
            else:
                report.merge(batch.report)
            last = batch
        if last is None:
            raise AssertionError("write_ingested got no batch")
        subjects_t, labels_t = pa.concat_tables(subjects), pa.concat_tables(labels)
        pq.write_table(subjects_t, tmp / SUBJECTS_FILE, compression="zstd")
        pq.write_table(labels_t, tmp / LABELS_FILE, compression="zstd")
        (tmp / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return IngestResult(events=last.events, subjects=subjects_t, labels=labels_t, report=report)


def event_shards(in_dir: str | Path) -> list[Path]:
    """The events shards of an ingest folder, in shard order (data/0.parquet, data/1.parquet, ...)."""
    data_dir = Path(in_dir) / EVENTS_DIR
    if not data_dir.is_dir():
        raise DataError(data_dir, "missing: run the ingest stage first")
    shards = []
    for p in data_dir.iterdir():
        if p.name.startswith("."):  # not data: DVC's .gitignore (each shard is a DVC output of its own job)
            continue
        if p.suffix != ".parquet" or not p.stem.isdigit():
            raise DataError(p, "not an events shard (expected data/<k>.parquet, written by the ingest stage)")
        shards.append(p)
    shards.sort(key=lambda p: int(p.stem))
    if [int(p.stem) for p in shards] != list(range(len(shards))):
        raise DataError(data_dir, f"shards are not numbered 0..{len(shards) - 1}: rerun the ingest stage")
    if not shards:
        raise DataError(data_dir, "no events shards: rerun the ingest stage")
    return shards


def read_subjects_labels(in_dir: str | Path) -> tuple[pa.Table, pa.Table]:
    """(subjects, labels) of an ingest folder: small, one row per subject. Read through the guarded reader:
    a missing, truncated or non-parquet file is a DataError naming it."""
    from seqsetvae.data.readers import read_parquet

    in_dir = Path(in_dir)
    hint = ": run the ingest stage first"
    return (read_parquet(in_dir / SUBJECTS_FILE, what="subjects table", hint=hint),
            read_parquet(in_dir / LABELS_FILE, what="labels table", hint=hint))


US_PER_HOUR = 3_600_000_000


def years_between(birth_us: np.ndarray, at_us: np.ndarray) -> np.ndarray:
    """Age in years of DAYS_PER_YEAR days (float64) at `at_us` of a subject born at `birth_us` (microseconds):
    the one definition of age_at_prediction, for the baselines and the neural model's descriptors."""
    return (at_us - birth_us) / (DAYS_PER_YEAR * 24 * US_PER_HOUR)


def refuse_age_column(column_names: list[str], where: str | Path | None) -> None:
    """A subjects column named age_at_prediction (a MEDS static code of that name) beside birth_time would be
    taken for the age computed from birth_time: a DataError naming it. The one check of the baselines'
    descriptors and the neural model's."""
    if AGE_AT_PREDICTION in column_names and BIRTH_TIME in column_names:
        raise DataError(where, f"descriptor column {AGE_AT_PREDICTION!r} clashes with the age computed from "
                               f"birth_time (token static/{AGE_AT_PREDICTION}); rename the static code")


def ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenated integer ranges lo[i]:hi[i] (vectorised; empty ranges give nothing)."""
    n = hi - lo
    total = int(n.sum())
    starts = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n)
    return starts + np.arange(total, dtype=np.int64)


def lex_searchsorted(keys: tuple[np.ndarray, np.ndarray], query: tuple[np.ndarray, np.ndarray],
                     side: str) -> np.ndarray:  # fmt: skip
    """np.searchsorted for rows sorted by two int64 keys (a, b), e.g. (subject, time): the insertion point of
    each query (a, b), found by one stable sort of keys and queries together (no key packing, so no overflow).
    side left: a query goes before equal keys; right: after them."""
    n, m = keys[0].size, query[0].size
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    tie = np.r_[np.ones(n, np.int8), np.zeros(m, np.int8)] if side == "left" else np.r_[np.zeros(n, np.int8),
                                                                                        np.ones(m, np.int8)]
    order = np.lexsort((tie, np.r_[keys[1], query[1]], np.r_[keys[0], query[0]]))
    position = np.empty(n + m, dtype=np.int64)
    position[order] = np.arange(n + m)
    q_pos = position[n:]
    rank = np.empty(m, dtype=np.int64)  # queries before each query in the merged order
    rank[np.argsort(q_pos, kind="stable")] = np.arange(m)
    return q_pos - rank


@dataclass(frozen=True)
class Samples:
    """The samples of a labels table as arrays, in table order (sorted by subject, prediction time):
    the one place a sample's window is computed (`lower_us`, `upper_us`, both included)."""

    subject_id: np.ndarray  # int64 [P]
    prediction_us: np.ndarray  # int64 [P], microseconds since the epoch
    label: np.ndarray  # int8 [P]
    window_start_us: np.ndarray  # int64 [P]; int64 min where none was given

    def __len__(self) -> int:
        return int(self.subject_id.size)

    def lower_us(self, window_hours: float) -> np.ndarray:
        """Start of each sample's window: max(window_start, prediction_time - window_hours)."""
        return np.maximum(self.window_start_us, self.prediction_us - int(round(window_hours * US_PER_HOUR)))

    @property
    def upper_us(self) -> np.ndarray:
        return self.prediction_us



def samples_of(labels: pa.Table, where: str | Path = LABELS_FILE) -> Samples:
    """The samples of an ingested labels table (canonical order is checked: sorted by subject_id, then
    prediction_time, the pair unique). A table without `window_start` (a plain MEDS label table) has none."""
    sid = labels.column("subject_id").to_numpy().astype(np.int64, copy=False)
    pred = labels.column("prediction_time").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    y = labels.column("boolean_value").to_numpy(zero_copy_only=False).astype(np.int8)
    if WINDOW_START in labels.column_names:
        col = labels.column(WINDOW_START).cast(pa.timestamp("us")).cast(pa.int64())
        start = pc.fill_null(col, np.iinfo(np.int64).min).to_numpy()
    else:
        start = np.full(sid.size, np.iinfo(np.int64).min, dtype=np.int64)
    if sid.size > 1:
        later = (np.diff(sid) > 0) | ((np.diff(sid) == 0) & (np.diff(pred) > 0))
        if not later.all():
            i = int(np.flatnonzero(~later)[0]) + 1
            raise DataError(where, f"row {i + 1}: samples must be sorted by (subject_id, prediction_time) with "
                                   f"each pair once (subject {sid[i]}); rerun the ingest stage")
    return Samples(sid, pred, y, start)


def read_ingested(in_dir: str | Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Read (events, subjects, labels) written by `write_ingested`, the shards joined into one events table.
    For consumers that need the whole cohort in memory; the preprocess stage streams `event_shards`."""
    subjects, labels = read_subjects_labels(in_dir)
    from seqsetvae.data.readers import read_parquet

    events = pa.concat_tables([read_parquet(p, what="events shard") for p in event_shards(in_dir)])
    return events, subjects, labels
