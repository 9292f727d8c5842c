"""Descriptor events (preprocess.descriptors: admission_set): every sample's descriptors as the events of one
set at the start of its own window.

A sample's descriptors are its subject's columns of subjects.parquet, plus its age at its prediction time:

- a numeric column NAME gives the event `static/NAME` with its value (NaN: a value-less event, as a column
  that is NaN for "not recorded" always did, e.g. PhysioNet 2012's missing Height; null: no event);
- a text column NAME (MEDS ingest makes the static code GENDER//F the column GENDER = "F") gives the
  value-less event `static/NAME//CATEGORY` (null: no event);
- `birth_time` (MEDS ingest writes it from the MEDS_BIRTH row) gives `static/age_at_prediction`: years of
  365.25 days from birth to the sample's prediction time, the baselines' `age_at_prediction`
  (canonical.years_between); a subject without a birth time gets no age event.

They are per sample, not per subject: two samples of one subject have different ages and windows, and an
event placed at the subject's admission would lie outside the window of a sample predicted days later.
windows.prepare_events puts them at the sample's window start: into the window's first set when that set
lies exactly there (so on PhysioNet 2012 and the synthetic demo, whose windows start at admission, the set
at admission is what the descriptors-at-admission events always made), else in a set of their own at hour
0. From there they go through the same train-only statistics, vocabulary and min_code_count as every code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from seqsetvae.data.canonical import (
    AGE_AT_PREDICTION,
    BIRTH_TIME,
    CATEGORY_SEPARATOR,
    SUBJECT_KEY_COLUMNS,
    Samples,
    ranges,
    refuse_age_column,
    years_between,
)
from seqsetvae.errors import DataError

STATIC_PREFIX = "static/"  # code of a descriptor event: static/<subjects column>, e.g. static/Age
AGE_CODE = STATIC_PREFIX + AGE_AT_PREDICTION


@dataclass(frozen=True)
class SubjectDescriptors:
    """The sample-independent part of the descriptors: one row per (subject, recorded descriptor), sorted
    by subject, with its event code and value; and the subjects' birth times."""

    subject_id: np.ndarray  # int64 [R], sorted
    code: np.ndarray  # str [R]
    value: np.ndarray  # float32 [R], NaN = value-less
    text: np.ndarray  # bool [R]: a text descriptor's row (value-less by definition)
    birth_subject_id: np.ndarray  # int64 [B], sorted: the subjects with a birth time
    birth_us: np.ndarray  # int64 [B]
    birth_column: bool  # whether the subjects table has birth_time at all (a MEDS cohort with MEDS_BIRTH rows)

    @classmethod
    def of(cls, subjects: pa.Table, where: str | Path = "subjects.parquet") -> "SubjectDescriptors":
        """The descriptors of a subjects table; a column that is neither numeric nor text, or one whose name
        is the age's, is a DataError naming it."""
        refuse_age_column(subjects.column_names, where)
        sid = subjects.column("subject_id").to_numpy().astype(np.int64, copy=False)
        sids, codes, values, texts = [], [], [], []
        for field in subjects.schema:
            if field.name in SUBJECT_KEY_COLUMNS:
                continue
            column = subjects.column(field.name)
            if pa.types.is_floating(field.type) or pa.types.is_integer(field.type):
                keep = pc.is_valid(column).to_numpy(zero_copy_only=False)
                sids.append(sid[keep])
                codes.append(np.full(int(keep.sum()), STATIC_PREFIX + field.name, dtype=object))
                values.append(column.cast(pa.float32()).to_numpy(zero_copy_only=False)[keep])
                texts.append(np.zeros(int(keep.sum()), dtype=bool))
            elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                keep = pc.is_valid(column).to_numpy(zero_copy_only=False)
                text = column.to_numpy(zero_copy_only=False)[keep].astype(object)
                sids.append(sid[keep])
                codes.append(STATIC_PREFIX + field.name + CATEGORY_SEPARATOR + text)
                values.append(np.full(text.size, np.nan, dtype=np.float32))
                texts.append(np.ones(text.size, dtype=bool))
            else:
                raise DataError(where, f"column {field.name!r} has type {field.type}: a descriptor column is numeric "
                                       "or text (preprocess.descriptors: admission_set)")
        subject = np.concatenate(sids) if sids else np.zeros(0, np.int64)
        _refuse_clashing_codes(codes, texts)
        order = np.argsort(subject, kind="stable")
        if BIRTH_TIME in subjects.column_names:
            birth = subjects.column(BIRTH_TIME).cast(pa.timestamp("us")).cast(pa.int64())
            has = pc.is_valid(birth).to_numpy(zero_copy_only=False)
            b_sid, b_us = sid[has], pc.fill_null(birth, 0).to_numpy()[has]
            b_order = np.argsort(b_sid, kind="stable")
            b_sid, b_us = b_sid[b_order], b_us[b_order]
        else:
            b_sid, b_us = np.zeros(0, np.int64), np.zeros(0, np.int64)
        return cls(
            subject_id=subject[order],
            code=(np.concatenate(codes) if codes else np.zeros(0, object))[order].astype(str),
            value=(np.concatenate(values) if values else np.zeros(0, np.float32))[order].astype(np.float32),
            text=(np.concatenate(texts) if texts else np.zeros(0, bool))[order],
            birth_subject_id=b_sid,
            birth_us=b_us.astype(np.int64),
            birth_column=BIRTH_TIME in subjects.column_names,
        )

    def cut(self, in_range) -> "SubjectDescriptors":
        """The rows of the subjects for which `in_range(subject ids) -> bool mask` holds (a shard's range)."""
        keep, b_keep = in_range(self.subject_id), in_range(self.birth_subject_id)
        return SubjectDescriptors(self.subject_id[keep], self.code[keep], self.value[keep], self.text[keep],
                                  self.birth_subject_id[b_keep], self.birth_us[b_keep], self.birth_column)

    def code_names(self) -> np.ndarray:
        """Every descriptor code these subjects can give (the age's where one has a birth time), sorted."""
        names = np.unique(self.code)
        return np.union1d(names, [AGE_CODE]) if self.birth_subject_id.size else names

    def for_samples(self, samples: Samples, lower_us: np.ndarray) -> "SampleDescriptors":
        """Each sample's descriptor events, in sample order (unsorted within a sample), and the counts of the
        report. A sample whose window is empty (its start after its prediction time) gets none: an event at
        its window start would lie after the prediction time."""
        n = len(samples)
        open_window = lower_us <= samples.upper_us
        first = np.searchsorted(self.subject_id, samples.subject_id, "left")
        last = np.searchsorted(self.subject_id, samples.subject_id, "right")
        last = np.where(open_window, last, first)
        rows = ranges(first, last)
        b_pos = np.clip(np.searchsorted(self.birth_subject_id, samples.subject_id), 0,
                        max(self.birth_subject_id.size - 1, 0))
        has_birth = (self.birth_subject_id[b_pos] == samples.subject_id) if self.birth_subject_id.size else \
            np.zeros(n, dtype=bool)  # fmt: skip
        with_age = has_birth & open_window
        aged = np.flatnonzero(with_age)
        age = years_between(self.birth_us[b_pos[aged]], samples.prediction_us[aged]).astype(np.float32)
        value = np.concatenate([self.value[rows], age])
        nonfinite = np.isinf(value)  # as for every event: NaN means value-less, +-inf would poison the statistics
        value[nonfinite] = np.nan
        sample = np.concatenate([np.repeat(np.arange(n), last - first), aged])
        counts = np.bincount(sample, minlength=n)
        report: dict[str, Any] = {
            "with_descriptor_events": int(np.sum(counts > 0)),
            "without_descriptor_events": {
                "nothing_recorded": int(np.sum((counts == 0) & open_window)),
                "window_starts_after_prediction_time": int(np.sum(~open_window)),
            },
            "non_finite_values_made_value_less": int(nonfinite.sum()),
            # NaN in a numeric column (not recorded) is a value-less token, as it always was on PhysioNet 2012
            "numeric_not_recorded_value_less": int(np.sum(~self.text[rows] & np.isnan(self.value[rows]))),
        }
        if self.birth_column:
            report["age_at_prediction"] = {"samples_with_age": int(aged.size),
                                           "samples_without_birth_time": int(np.sum(~has_birth))}  # fmt: skip
        return SampleDescriptors(sample.astype(np.int64), np.concatenate([self.code[rows], np.full(aged.size, AGE_CODE)]),
                                 value, report)  # fmt: skip


def _refuse_clashing_codes(codes: list[np.ndarray], texts: list[np.ndarray], where: str | Path = "subjects.parquet") -> None:
    """A numeric column `GENDER//F` (MEDS: the static code GENDER//F given a value) and a text column GENDER
    holding "F" would give one token, static/GENDER//F, for two descriptors: a DataError naming it."""
    if not codes:
        return
    code, text = np.concatenate(codes), np.concatenate(texts)
    both = np.intersect1d(code[~text].astype(str), code[text].astype(str))
    if both.size:
        raise DataError(where, f"{both[0]!r} would be the token of a numeric descriptor column and of a text "
                               "column's category; rename one of the static codes")


@dataclass(frozen=True)
class SampleDescriptors:
    """Descriptor events of a shard's samples, by sample position, with code names (windows.prepare_events
    turns them into code ids and places them)."""

    sample: np.ndarray  # int64 [D], position of the sample
    code: np.ndarray  # str [D]
    value: np.ndarray  # float32 [D], NaN = value-less
    report: dict[str, Any]  # the per-sample counts: samples with / without descriptor events, by reason


def refuse_reserved_codes(events: pa.Table, source: Any) -> None:
    """With descriptors: admission_set, STATIC_PREFIX is the descriptor tokens' namespace: a data code in it
    (a MEDS timed code literally named `static/Age`) would become the same token as the descriptor and its
    values would be normalised together. Such a code is a DataError naming the shard (checked on the
    distinct codes); PhysioNet 2012 and synthetic codes never start with it."""
    codes = pc.unique(events.column("code").combine_chunks().cast(pa.string())).drop_null()
    reserved = codes.filter(pc.starts_with(codes, STATIC_PREFIX))
    if len(reserved):
        first = sorted(reserved.to_pylist())[0]
        where = source if isinstance(source, (str, Path)) else None
        raise DataError(
            where,
            f"{len(reserved)} data code(s) start with {STATIC_PREFIX!r} (first: {first[:80]!r}), the namespace of "
            "the descriptor tokens (preprocess.descriptors: admission_set makes subjects.parquet's column Age the "
            f"token {STATIC_PREFIX}Age), so one would be taken for a descriptor. Rename the code(s) in the "
            "source, or set preprocess.descriptors: none",
        )
