"""The synthetic cohort: determinism, MEDS validity, PhysioNet-2012-like shape, a learnable time-course label."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from seqsetvae.config import SyntheticParams, params_from_dict
from seqsetvae.data import synthetic
from seqsetvae.data.canonical import (
    ADMISSION_EPOCH,
    EVENTS_DIR,
    EVENTS_SCHEMA,
    LABELS_FILE,
    SAMPLES_SCHEMA,
    REPORT_FILE,
    SUBJECTS_FILE,
    IngestResult,
    validate_meds,
    write_ingested,
)
from seqsetvae.data.summaries import per_variable_summaries
from seqsetvae.data.synthetic import (
    CALIBRATION,
    REAL_EVENTS_PER_SET,
    REAL_REPEATED_SHARE,
    REAL_SETS_PER_STAY,
    ingest_synthetic,
)
from seqsetvae.data.variables import DESCRIPTORS, TIME_SERIES

# Physiological limits, independent of the generator's calibration: no generated value may leave them.
PLAUSIBLE = {
    "ALP": (1, 5000), "ALT": (1, 20000), "AST": (1, 40000), "Albumin": (0.5, 6.5), "BUN": (1, 250),
    "Bilirubin": (0.05, 90), "Cholesterol": (20, 600), "Creatinine": (0.1, 25), "DiasABP": (10, 150),
    "FiO2": (0.21, 1.0), "GCS": (3, 15), "Glucose": (20, 1500), "HCO3": (3, 60), "HCT": (10, 65),
    "HR": (20, 250), "K": (1.5, 10), "Lactate": (0.2, 30), "MAP": (25, 200), "MechVent": (1, 1),
    "Mg": (0.5, 6), "NIDiasABP": (10, 150), "NIMAP": (25, 200), "NISysABP": (40, 260), "Na": (100, 180),
    "PaCO2": (10, 120), "PaO2": (20, 700), "Platelets": (1, 1500), "RespRate": (3, 70), "SaO2": (50, 100),
    "SysABP": (40, 260), "Temp": (30, 43), "TroponinI": (0.01, 60), "TroponinT": (0.005, 30),
    "Urine": (0, 3000), "WBC": (0.1, 100), "Weight": (25, 300), "pH": (6.8, 7.8),
}
VITALS = ("HR", "MAP", "SysABP", "NISysABP", "Temp", "Urine", "GCS", "RespRate")
LABS = ("BUN", "Creatinine", "Na", "K", "HCT", "WBC", "Platelets", "Glucose", "Lactate", "ALT", "Albumin")


def _params(base_params_dict: dict, **over) -> SyntheticParams:
    raw = copy.deepcopy(base_params_dict)
    raw["data"]["synthetic"].update(over)
    return params_from_dict(raw).data.synthetic


@pytest.fixture(scope="module")
def cohort(base_params_dict) -> tuple[SyntheticParams, IngestResult, pd.DataFrame]:
    """The default cohort of params.yaml (2,000 stays), generated once for the module."""
    p = _params(base_params_dict)
    res = ingest_synthetic(p)
    return p, res, res.events.to_pandas()


def _per_stay(events: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    sets = events.groupby(["subject_id", "time"]).size()
    return sets.groupby("subject_id").size(), sets


# ---- determinism


def test_same_seed_gives_identical_tables_and_bytes(base_params_dict, tmp_path):
    p = _params(base_params_dict, n_subjects=300, seed=7)
    a, b = ingest_synthetic(p), ingest_synthetic(p)
    for name in ("events", "subjects", "labels"):
        # via pandas: unrecorded descriptors are NaN, and Arrow's equality treats NaN != NaN
        assert getattr(a, name).to_pandas().equals(getattr(b, name).to_pandas()), name
    assert a.report.to_dict() == b.report.to_dict()
    write_ingested(tmp_path / "a", a)
    write_ingested(tmp_path / "b", b)
    for f in (f"{EVENTS_DIR}/0.parquet", SUBJECTS_FILE, LABELS_FILE, REPORT_FILE):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f

    c = ingest_synthetic(dataclasses.replace(p, seed=8))
    assert not c.events.equals(a.events)
    assert not c.labels.equals(a.labels)


def test_chunks_are_stitched_in_order(base_params_dict, monkeypatch):
    """Large cohorts are generated in chunks; ids, order and labels must be seamless across them."""
    monkeypatch.setattr(synthetic, "CHUNK_SUBJECTS", 100)
    p = _params(base_params_dict, n_subjects=250, seed=3)
    res = ingest_synthetic(p)
    ids = res.subjects.column("subject_id").to_numpy()
    assert ids.tolist() == list(range(ids[0], ids[0] + 250))
    assert res.labels.column("subject_id").to_numpy().tolist() == ids.tolist()
    ev = res.events.to_pandas()
    assert set(ev.subject_id) == set(ids)
    _assert_sorted(ev)
    # Each chunk is its own seed stream: the first chunk does not depend on how many follow.
    fewer = ingest_synthetic(dataclasses.replace(p, n_subjects=100))
    first = pc.less_equal(res.events["subject_id"], int(ids[99]))
    assert res.events.filter(first).equals(fewer.events)


# ---- the canonical contract


def _assert_sorted(ev: pd.DataFrame) -> None:
    key = ev[["subject_id", "time", "code"]]
    assert key.equals(key.sort_values(["subject_id", "time", "code"], kind="stable").reset_index(drop=True))


def test_tables_follow_the_canonical_meds_contract(cohort):
    p, res, ev = cohort
    validate_meds(res.events, res.labels)
    assert res.events.schema.equals(EVENTS_SCHEMA)
    assert res.labels.schema.equals(SAMPLES_SCHEMA)  # the MEDS label columns and each sample's window start
    _assert_sorted(ev)

    subjects = res.subjects.to_pandas()
    assert list(subjects.columns) == ["subject_id", "admission_time", "group", *DESCRIPTORS]
    for d in DESCRIPTORS:
        assert res.subjects.schema.field(d).type == pa.float32()
    assert (subjects["group"] == "synthetic").all()
    assert (subjects["admission_time"] == pd.Timestamp(ADMISSION_EPOCH)).all()
    assert len(subjects) == p.n_subjects and subjects.subject_id.is_unique

    labels = res.labels.to_pandas()
    assert labels.subject_id.tolist() == subjects.subject_id.tolist()
    assert (labels.prediction_time == pd.Timestamp(ADMISSION_EPOCH) + pd.Timedelta(hours=48)).all()
    hours = (ev.time - pd.Timestamp(ADMISSION_EPOCH)) / pd.Timedelta(hours=1)
    assert hours.min() >= 0 and hours.max() <= 48

    rep = res.report.to_dict()
    assert rep["source"] == "synthetic"
    assert rep["rows_read"] == rep["rows_kept"] == len(ev)
    assert rep["rows_skipped"] == 0
    assert rep["subjects"] == p.n_subjects
    assert rep["positives"] == int(labels.boolean_value.sum())
    assert rep["subjects_without_measurements"] == sorted(set(subjects.subject_id) - set(ev.subject_id))


# ---- shape: PhysioNet 2012 numbers


def test_sets_and_events_per_stay_match_physionet2012(cohort):
    _, _, ev = cohort
    per_stay, sets = _per_stay(ev)
    assert abs(per_stay.mean() - REAL_SETS_PER_STAY["mean"]) <= 15  # real: 73.9 distinct times per stay
    assert abs(sets.mean() - REAL_EVENTS_PER_SET["mean"]) <= 2  # real: 5.88 measurements per time
    # A spread of stay lengths: most run to ~48 h, a few end early.
    last_hour = (ev.groupby("subject_id").time.max() - pd.Timestamp(ADMISSION_EPOCH)) / pd.Timedelta(hours=1)
    assert last_hour.median() > 46
    assert 0 < (last_hour < 40).mean() < 0.05
    # Repeats of one variable at one time exist but are rare (0.23 % of events in the real data).
    repeated = ev.duplicated(["subject_id", "time", "code"]).mean()
    assert REAL_REPEATED_SHARE / 3 < repeated < REAL_REPEATED_SHARE * 3


def test_values_codes_and_frequencies_are_plausible(cohort):
    p, _, ev = cohort
    assert set(ev.code.unique()) == set(TIME_SERIES)  # no other code; each occurs in 2,000 stays
    assert np.isfinite(ev.numeric_value).all()
    code = ev.code.astype("category")
    lo = code.map({c: r[0] for c, r in PLAUSIBLE.items()}).astype(float)
    hi = code.map({c: r[1] for c, r in PLAUSIBLE.items()}).astype(float)
    bad = ev[(ev.numeric_value < lo) | (ev.numeric_value > hi)]
    assert bad.empty, bad.groupby("code").numeric_value.agg(["min", "max", "size"])
    # MAP lies between diastolic and systolic pressure at one chart.
    bp = ev[ev.code.isin(["SysABP", "DiasABP", "MAP"])].drop_duplicates(["subject_id", "time", "code"])
    wide = bp.set_index(["subject_id", "time", "code"]).numeric_value.unstack().dropna()
    assert ((wide.DiasABP <= wide.MAP) & (wide.MAP <= wide.SysABP)).mean() > 0.99

    # Vitals are charted far more often than labs are drawn (real P12: HR 57, BUN 3.5 per stay).
    counts = ev.groupby("code").size() / p.n_subjects  # measurements per stay
    assert counts[list(VITALS)].min() > 2 * counts[list(LABS)].max()
    assert counts[list(VITALS)].mean() > 8 * counts[list(LABS)].mean()


def test_calibration_table_is_reproduced(cohort):
    """Share of stays measuring each variable and its median value follow the embedded real numbers."""
    p, _, ev = cohort
    share = ev.groupby("code").subject_id.nunique() / p.n_subjects
    median = ev.groupby("code").numeric_value.median()
    for code, cal in CALIBRATION.items():
        assert abs(share[code] - cal.share) < 0.08, (code, share[code], cal.share)
        q25, q75 = cal.quantiles[3], cal.quantiles[5]  # value quantiles at 25 % and 75 %
        assert q25 <= median[code] <= q75, (code, median[code], q25, q75)


def test_descriptors_look_like_physionet2012(cohort):
    _, res, _ = cohort
    s = res.subjects.to_pandas()
    assert s.Age.between(15, 90).all() and (s.Age == 90).any()
    assert set(s.Gender.dropna().unique()) == {0.0, 1.0}
    assert set(s.ICUType.unique()) == {1.0, 2.0, 3.0, 4.0}
    assert 0.40 < s.Height.isna().mean() < 0.55  # 47.7 % missing in the real data
    assert 0.03 < s.Weight.isna().mean() < 0.14  # 8.3 %
    assert s.Height.dropna().between(120, 220).all()
    assert s.Weight.dropna().between(25, 300).all()


# ---- the label: learnable, not trivial, and carried by the time course


def _auroc(features: pd.DataFrame, y: np.ndarray) -> float:
    x_tr, x_te, y_tr, y_te = train_test_split(features.to_numpy(), y, test_size=0.3, stratify=y, random_state=0)
    model = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
        LogisticRegression(max_iter=2000),
    )
    model.fit(x_tr, y_tr)
    return float(roc_auc_score(y_te, model.predict_proba(x_te)[:, 1]))


def test_label_is_learnable_from_the_time_course(cohort):
    p, res, _ = cohort
    y = res.labels.column("boolean_value").to_numpy(zero_copy_only=False)
    assert abs(y.mean() - p.positive_rate) <= 0.03

    full = per_variable_summaries(res.events, res.subjects, window_hours=48.0)
    auc_full = _auroc(full, y)
    assert 0.70 <= auc_full <= 0.97
    # Admission facts alone say much less ...
    auc_static = _auroc(full[list(DESCRIPTORS)], y)
    assert auc_static <= auc_full - 0.10, (auc_static, auc_full)
    # ... and so does the first quarter of the stay: the outcome depends on how the stay goes on.
    auc_early = _auroc(per_variable_summaries(res.events, res.subjects, window_hours=12.0), y)
    assert auc_early <= auc_full - 0.10, (auc_early, auc_full)
