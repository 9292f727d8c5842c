"""Task label tables: several prediction tasks on one cohort, in the sample form (canonical.SAMPLES_SCHEMA).

The main task is what ingest writes as labels.parquet (PhysioNet 2012 and synthetic: in-hospital death at
admission + 48 h, window from admission). Each extra task of params `tasks.definitions` is a rule over the
same stays (docs/preprocess.md "Tasks"):

- `prediction_time` = admission + `prediction_hours`; `window_start` = admission (the window is the first
  `prediction_hours` of the stay when preprocess.window_hours is at least that long);
- `label: in_hospital_death`: the main task's label of the stay (the source's in-hospital death);
  `label: length_of_stay_over`: PhysioNet 2012's `Length_of_stay` > `length_of_stay_days`;
- `in_unit_at_prediction: true` keeps only stays known to be still in the unit at the prediction time. The
  Outcomes files give whole days since ICU admission, so a stay is kept when its `Length_of_stay` is
  recorded and `Length_of_stay x 24 > prediction_hours`, and it has no death recorded (`Survival` -1) or
  `Survival x 24 > prediction_hours`. A day count at or below the prediction time cannot tell whether
  the stay was still there, so it is left out. Left out, counted by reason: `length_of_stay_unknown`
  (-1), `left_unit_by_prediction_time`, `died_by_prediction_time`, `survival_invalid` (negative other
  than -1); the first reason that applies, in that order;
- `label: length_of_stay_over` also leaves out a stay whose length of stay is not recorded
  (`length_of_stay_unknown`), whatever `in_unit_at_prediction` says: it has no label.

Nothing is dropped silently: the report gives the stays in, the samples kept and positive, every exclusion by
reason with the first subject ids, and per fold and split the samples and positives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from seqsetvae.config import TaskDefinition
from seqsetvae.data.canonical import SAMPLES_SCHEMA, US_PER_HOUR, WINDOW_START, samples_of
from seqsetvae.errors import DataError

LENGTH_OF_STAY_UNKNOWN = "length_of_stay_unknown"
LEFT_UNIT = "left_unit_by_prediction_time"
DIED = "died_by_prediction_time"
SURVIVAL_INVALID = "survival_invalid"
EXCLUSION_REASONS = (LENGTH_OF_STAY_UNKNOWN, LEFT_UNIT, DIED, SURVIVAL_INVALID)
MAX_EXAMPLES = 5
HOURS_PER_DAY = 24


def needs_outcomes(d: TaskDefinition) -> bool:
    """Whether the rule needs the source's length of stay and death times (PhysioNet 2012 Outcomes)."""
    return d.label == "length_of_stay_over" or d.in_unit_at_prediction


def task_samples(name: str, d: TaskDefinition, subjects: pa.Table, labels: pa.Table,
                 outcomes: pa.Table | None) -> tuple[pa.Table, dict[str, Any]]:
    """(samples table, report) of task `name` over the stays of the main task's `labels` (one sample per
    stay), with admission times from `subjects` and, where the rule needs them, `outcomes`
    (physionet2012.read_outcome_times)."""
    main = samples_of(labels)
    sid = main.subject_id
    if sid.size and np.unique(sid).size != sid.size:
        raise DataError("labels.parquet", f"task {name}: the main task has several samples per subject; task "
                                          "rules build one sample per stay (sources physionet2012, synthetic)")
    subj_ids = subjects.column("subject_id").to_numpy()
    admission = subjects.column("admission_time").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    order = np.argsort(subj_ids, kind="stable")
    pos = np.searchsorted(subj_ids[order], sid)
    found = (pos < subj_ids.size) & (subj_ids[order][np.minimum(pos, subj_ids.size - 1)] == sid)
    if not found.all():
        raise DataError("subjects.parquet", f"task {name}: subject {int(sid[~found][0])} of labels.parquet has no "
                                            "subjects row: rerun the ingest stage")
    adm = admission[order][pos]
    label = main.label.astype(bool)
    reason = np.full(sid.size, -1, dtype=np.int64)  # index into EXCLUSION_REASONS, -1: kept
    if needs_outcomes(d):
        if outcomes is None:
            raise DataError(None, f"task {name}: rule {d.label} (in_unit_at_prediction {d.in_unit_at_prediction}) "
                                  "needs length of stay and death times, which this source does not give")
        o_ids = outcomes.column("subject_id").to_numpy()
        opos = np.searchsorted(o_ids, sid)
        ofound = (opos < o_ids.size) & (o_ids[np.minimum(opos, o_ids.size - 1)] == sid)
        if not ofound.all():
            raise DataError(None, f"task {name}: stay {int(sid[~ofound][0])} has no Outcomes row")
        los = outcomes.column("length_of_stay_days").to_numpy()[opos]
        surv = outcomes.column("survival_days").to_numpy()[opos]
        h = d.prediction_hours
        checks = [(LENGTH_OF_STAY_UNKNOWN, los < 0)]
        if d.in_unit_at_prediction:
            checks += [(LEFT_UNIT, (los >= 0) & (los * HOURS_PER_DAY <= h)),
                       (DIED, (surv >= 0) & (surv * HOURS_PER_DAY <= h)),
                       (SURVIVAL_INVALID, surv < -1)]
        for i, (r, mask) in enumerate(checks):
            reason[(reason < 0) & mask] = EXCLUSION_REASONS.index(r)
        if d.label == "length_of_stay_over":
            assert d.length_of_stay_days is not None  # config.check_cross_keys
            label = los > d.length_of_stay_days
    keep = reason < 0
    prediction = adm + int(round(d.prediction_hours * US_PER_HOUR))
    table = pa.Table.from_arrays(
        [pa.array(sid[keep], pa.int64()), pa.array(prediction[keep]).cast(pa.timestamp("us")),
         pa.array(label[keep], pa.bool_()), pa.array(adm[keep]).cast(pa.timestamp("us"))],
        schema=SAMPLES_SCHEMA,
    )
    assert table.schema.field(WINDOW_START).name == WINDOW_START
    excluded = {r: int((reason == i).sum()) for i, r in enumerate(EXCLUSION_REASONS)}
    report = {
        "task": name,
        "definition": {"label": d.label, "prediction_hours": d.prediction_hours,
                       "length_of_stay_days": d.length_of_stay_days,
                       "in_unit_at_prediction": d.in_unit_at_prediction},
        "stays": int(sid.size),
        "samples": int(keep.sum()),
        "positives": int(label[keep].sum()),
        "excluded": int((~keep).sum()),
        "excluded_by_reason": excluded,
        "excluded_examples": {r: sid[reason == i][:MAX_EXAMPLES].tolist()
                              for i, r in enumerate(EXCLUSION_REASONS) if excluded[r]},
    }
    return table, report


def split_counts(samples: pa.Table, splits: pa.Table) -> dict[str, Any]:
    """Per fold and split of the split table: the task's samples, positives and positive rate. Splits are by
    subject and shared by every task; a sample whose subject the fold does not assign is counted apart."""
    sid = samples.column("subject_id").to_numpy()
    y = samples.column("boolean_value").to_numpy(zero_copy_only=False).astype(bool)
    out: dict[str, Any] = {}
    folds = splits.column("fold").to_numpy()
    s_ids = splits.column("subject_id").to_numpy()
    names = np.asarray(splits.column("split").to_pylist(), dtype=object)
    for k in np.unique(folds).tolist():
        in_fold = folds == k
        fold: dict[str, Any] = {}
        assigned = np.zeros(sid.size, dtype=bool)
        for split in ("train", "val", "test"):
            m = np.isin(sid, s_ids[in_fold & (names == split)])
            assigned |= m
            n, p = int(m.sum()), int(y[m].sum())
            fold[split] = {"samples": n, "positives": p, "positive_rate": round(p / n, 4) if n else None}
        fold["not_assigned"] = int((~assigned).sum())
        out[str(k)] = fold
    return out
