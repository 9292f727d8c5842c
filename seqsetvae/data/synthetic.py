"""The embedded synthetic cohort: deterministic, PhysioNet-2012-shaped ICU stays with a learnable label.

Every stay is driven by a hidden **severity process** `s(t)` on an hourly grid over the 48 h window:

    s(t) = s0 + slope * t / 48 + x(t) + jump * [t >= t_jump]

`s0` is the admission severity (depends a little on ICU type and age), `slope` says whether the patient
improves or deteriorates, `x` is an Ornstein-Uhlenbeck wobble (hour-to-hour autocorrelation 0.9) and a
minority of patients suffer an acute deterioration (`jump`) at a random hour. Each measured value is
`z = loading * s~(t) + patient offset + measurement noise` (s~ = standardised severity), mapped through the
real variable's quantile function, so the marginal distribution of every variable matches PhysioNet 2012
while its movement over time follows the patient's trajectory. Loadings take their sign and size from
how well the variable's last value separates deaths in the real data (e.g. GCS falls, BUN and lactate
rise with severity).

The label (in-hospital death) is drawn from
`logit = a + W_LEVEL * mean severity over the last 6 h of the stay + W_TREND * (change over the last 24 h)
+ W_AGE * (age - 65) / 10`, with `a` solved so that the expected rate is `positive_rate`: it depends on
how the stay *ends*, not on static facts, so a model must read the time course.

Sampling imitates the real charting: a roughly hourly vitals chart (with missed hours and extra checks),
partial charts (urine output, temperature, GCS alone), a few lab panels a day, arterial blood gases for
ventilated patients, and per-patient care patterns (arterial line or cuff pressures, ventilation or
respiratory rate). The calibration numbers below were measured once on the real data (see
docs/data_synthetic.md); the generator never reads the real data.

Deterministic: the same `SyntheticParams` give identical tables (byte-identical parquet). Subjects are
generated in fixed-size chunks, each from its own seed stream, so memory stays bounded for 100,000+
subjects and a chunk's content does not depend on how many chunks follow it.
"""

from __future__ import annotations

import functools
import statistics
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from seqsetvae.config import SyntheticParams
from seqsetvae.data.canonical import (
    ADMISSION_EPOCH,
    EVENTS_SCHEMA,
    SAMPLES_SCHEMA,
    IngestReport,
    IngestResult,
)
from seqsetvae.data.variables import DESCRIPTORS, TIME_SERIES

# --------------------------------------------------------------------------------------------------
# Calibration: measured once on the 12,000 real stays (sets a, b, c) with a throwaway script.


@dataclass(frozen=True)
class VarCalibration:
    """One variable in the real data: how often it is measured and what its values look like."""

    share: float  # share of stays that measure it at least once
    mean_count: float  # mean measurements per stay (all stays)
    count_q25: float  # quartiles of the count among stays that measure it
    count_median: float
    count_q75: float
    quantiles: tuple[float, ...]  # value quantiles at VALUE_QUANTILE_PROBS
    last_auroc: float  # AUROC of the stay's last value for in-hospital death (direction of the loading)


VALUE_QUANTILE_PROBS: tuple[float, ...] = (0.005, 0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975, 0.995)

# fmt: off
CALIBRATION: dict[str, VarCalibration] = {code: VarCalibration(*row[:5], row[5], row[6]) for code, row in {
    # code:        share  mean   q25  med  q75   value quantiles (0.5% ... 99.5%)                      last AUROC
    "ALP":         (0.425, 0.79,  1,  1,  2,    (24, 34, 45, 59, 82, 124, 213, 454, 945.4),               0.596),
    "ALT":         (0.434, 0.81,  1,  1,  2,    (4, 8, 13, 20.25, 42, 147, 754.1, 3432, 7835),            0.549),
    "AST":         (0.434, 0.81,  1,  1,  2,    (10, 13, 19, 30, 62, 208.2, 969.9, 5165, 10400),          0.584),
    "Albumin":     (0.406, 0.60,  1,  1,  2,    (1.3, 1.6, 2, 2.4, 2.9, 3.4, 3.7, 4.1, 4.4),              0.402),
    "BUN":         (0.985, 3.48,  3,  3,  4,    (3, 5, 9, 13, 20, 33, 56, 92, 128.3),                     0.681),
    "Bilirubin":   (0.434, 0.82,  1,  1,  2,    (0.1, 0.2, 0.3, 0.5, 0.9, 2.4, 6.7, 20.39, 38),           0.590),
    "Cholesterol": (0.079, 0.08,  1,  1,  1,    (58.79, 80.85, 103, 124, 153, 182.5, 211, 244.1, 307.7),  0.423),
    "Creatinine":  (0.985, 3.49,  3,  3,  4,    (0.3, 0.4, 0.6, 0.7, 1, 1.5, 2.9, 6.2, 10.2),             0.614),
    "DiasABP":     (0.702, 36.67, 41, 53, 65,   (25, 38, 45, 51, 58, 67, 76, 88, 102),                    0.457),
    "FiO2":        (0.676, 7.93,  7,  13, 15.25, (0.3, 0.35, 0.4, 0.4, 0.5, 0.6, 1, 1, 1),                0.537),
    "GCS":         (0.985, 15.50, 12, 13, 16,   (3, 3, 6, 8, 13, 15, 15, 15, 15),                         0.244),
    "Glucose":     (0.976, 3.28,  2,  3,  4,    (51, 71, 89, 105, 127, 157, 204, 295, 468),               0.579),
    "HCO3":        (0.983, 3.41,  2,  3,  4,    (10, 13, 17, 20, 23, 26, 29, 33, 38),                     0.354),
    "HCT":         (0.984, 4.58,  3,  4,  6,    (18.8, 21.9, 24.8, 27.4, 30.2, 33.6, 37.3, 41.8, 46.4),   0.524),
    "HR":          (0.985, 57.26, 49, 55, 65,   (47, 56, 65, 75, 86, 99, 112, 128, 146),                  0.543),
    "K":           (0.979, 3.65,  3,  3,  5,    (2.7, 3, 3.4, 3.7, 4.1, 4.4, 4.9, 5.7, 6.7),              0.518),
    "Lactate":     (0.548, 2.03,  1,  2,  5,    (0.6, 0.8, 1, 1.4, 2.1, 3.6, 6.1, 10.6, 15.6),            0.639),
    "MAP":         (0.701, 36.74, 41, 52, 65,   (46, 55, 62, 69, 77, 88, 100, 116, 139),                  0.460),
    "MechVent":    (0.632, 7.64,  7,  13, 16,   (1, 1, 1, 1, 1, 1, 1, 1, 1),                              0.500),
    "Mg":          (0.976, 3.41,  2,  3,  4,    (1.1, 1.3, 1.6, 1.8, 2, 2.2, 2.5, 2.9, 3.5),              0.566),
    "NIDiasABP":   (0.874, 24.57, 9,  26, 46,   (22, 31, 40, 48, 57, 68, 79, 92, 105),                    0.429),
    "NIMAP":       (0.872, 24.21, 9,  26, 45,   (43, 51, 58.67, 66, 75.33, 86.67, 98, 111.7, 125.7),      0.425),
    "NISysABP":    (0.876, 24.59, 9,  26, 46,   (67, 81, 92, 102, 117, 134, 150, 170, 190),               0.435),
    "Na":          (0.982, 3.41,  2,  3,  4,    (122, 129, 133, 136, 139, 142, 145, 150, 157),            0.559),
    "PaCO2":       (0.755, 5.75,  3,  7,  11,   (21, 26, 31, 35, 39, 45, 51, 63, 80),                     0.411),
    "PaO2":        (0.754, 5.74,  3,  7,  11,   (46, 60, 73, 90, 122, 176, 288, 406, 467),                0.494),
    "Platelets":   (0.984, 3.55,  2,  3,  4,    (21, 43, 78.9, 117, 172, 238, 319, 450.8, 636.8),         0.465),
    "RespRate":    (0.277, 13.79, 44, 49, 55,   (8, 11, 13, 16, 19, 23, 27, 32, 39),                      0.555),
    "SaO2":        (0.447, 2.00,  1,  3,  6,    (79, 90, 94, 96, 97, 98, 99, 99, 100),                    0.475),
    "SysABP":      (0.702, 36.68, 41, 53, 65,   (53, 79, 91, 102, 116, 134, 152, 172, 193),               0.463),
    "Temp":        (0.985, 21.63, 12, 14, 24,   (34.1, 35.3, 36, 36.6, 37.1, 37.6, 38.1, 38.7, 39.3),     0.467),
    "TroponinI":   (0.047, 0.10,  1,  2,  3,    (0.3, 0.3, 0.44, 0.9, 3.3, 11.05, 24.82, 41.03, 48.33),   0.535),
    "TroponinT":   (0.220, 0.52,  1,  2,  3,    (0.01, 0.01, 0.02, 0.06, 0.18, 0.89, 3.148, 9.5, 19.95),  0.503),
    "Urine":       (0.974, 34.26, 29, 38, 44,   (0, 5, 20, 37, 70, 140, 275, 500, 1000),                  0.347),
    "WBC":         (0.982, 3.24,  2,  3,  4,    (0.8, 3.1, 5.9, 8.3, 11.5, 15.5, 20.6, 29.5, 48.3),       0.571),
    "Weight":      (0.678, 31.25, 35, 48, 56,   (40, 47, 57, 67, 80, 95, 112.8, 140.5, 182),              0.422),
    "pH":          (0.759, 6.02,  3,  7,  11,   (7.1, 7.2, 7.28, 7.33, 7.38, 7.43, 7.46, 7.51, 7.56),     0.456),
}.items()}
# fmt: on

# Stay-level shape of the real data (12,000 stays; a "set" is one distinct timestamp of a stay).
REAL_SETS_PER_STAY = {"mean": 73.9, "q25": 58, "median": 71, "q75": 87}
REAL_EVENTS_PER_SET = {"mean": 5.88, "median": 6}
REAL_REPEATED_SHARE = 0.0023  # share of events repeating a (stay, time, variable) already seen
# Hours since admission of a stay's last measurement and of its first, as quantile knots (prob, hours).
STAY_END_KNOTS = ((0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0),
                  (1.33, 34.51, 40.43, 44.3, 46.37, 47.03, 47.23, 47.55, 47.8, 47.92, 48.0))
FIRST_TIME_KNOTS = ((0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0),
                    (0.0, 0.05, 0.17, 0.48, 1.05, 1.9, 2.67, 5.22, 8.0))
# Descriptors: Age quantile knots (the real release caps ages at 90: 3.9 % of stays), sex, ICU type.
AGE_KNOTS = ((0, 0.005, 0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.9613, 1.0),
             (15, 19, 24, 40, 53, 67, 78, 85, 88, 89.99, 89.99))
AGE_CAP_SHARE = 0.0387
P_MALE = 0.561
P_GENDER_MISSING = 0.001
ICU_TYPE_PROBS = (0.147, 0.211, 0.358, 0.284)  # 1 coronary, 2 cardiac surgery, 3 medical, 4 surgical
P_HEIGHT_MISSING = 0.477
P_WEIGHT_MISSING = 0.083
HEIGHT_CM = {0: (160.0, 6.8), 1: (175.3, 7.5)}  # (mean, sd) by Gender (0 female, 1 male)
WEIGHT_KG = {0: (70.0, 0.256), 1: (83.0, 0.21)}  # (median, log-sd) by Gender
# Care patterns measured per ICU type (share of stays): arterial line, mechanical ventilation.
P_ART_LINE_BY_ICU = (0.673, 0.956, 0.476, 0.810)
P_VENT_BY_ICU = (0.439, 0.914, 0.522, 0.662)

# --------------------------------------------------------------------------------------------------
# Generator design (chosen so that the generated cohort reproduces the calibration above).

CHUNK_SUBJECTS = 10_000  # subjects per independently seeded chunk (bounded memory)
REFERENCE_SEED, REFERENCE_SUBJECTS = 0, 20_000  # fixed draw giving the population moments of severity
SUBJECT_ID_START = 1
CODES: tuple[str, ...] = tuple(sorted(TIME_SERIES))  # code order = byte order of the strings (MEDS sort)
CODE_INDEX = {c: i for i, c in enumerate(CODES)}
HOURS = 48  # latent grid: hours 0..48

# Latent severity.
# Admission severity shift by ICU type, ordered as the real death rates (12.7 / 4.9 / 19.8 / 14.9 %).
ICU_SEVERITY_SHIFT = (0.0, -0.8, 0.35, 0.1)
AGE_SEVERITY_PER_DECADE = 0.12
S0_SD = 0.8
SLOPE_MEAN, SLOPE_SD = -0.3, 0.9  # change over 48 h: most improve a little, some deteriorate
OU_SD, OU_RHO = 0.45, 0.9  # hour-to-hour wobble
P_JUMP, JUMP_MEAN, JUMP_SD = 0.15, 1.3, 0.4  # acute deterioration at a random hour
# Label rule.
W_LEVEL, W_TREND, W_AGE = 1.8, 1.0, 0.15
LEVEL_HOURS, TREND_HOURS = 6, 24
LOADING_SCALE = 2.0  # loading = LOADING_SCALE * (2 * real last-value AUROC - 1), clipped
MAX_LOADING = 0.8
# Share of a variable's non-severity variance that is a stable per-patient offset (labs drift slowly).
PATIENT_SHARE_VITAL, PATIENT_SHARE_LAB = 0.45, 0.75
# Care pattern couplings: sicker patients more often ventilated / with arterial lines / lactate.
CARE_SEVERITY_LOGIT = 0.6

# Charting. Vitals chart roughly hourly (a tick kept with P_TICK) plus extra checks; each chart is
# "full" (HR, pressures, ...) or "partial" (urine, temperature, GCS, ventilator only).
P_TICK = 0.92
EXTRA_CHARTS_SHAPE, EXTRA_CHARTS_MEAN = 2.0, 22.0
P_FULL_CHART = 0.87
# Per-patient rate of each chart group ~ Beta(mean, concentration): a low concentration spreads the
# counts across stays (temperature, cuff pressures), a high one keeps them regular (GCS every ~4 h).
# group: (mean rate on full charts, on partial charts, concentration)
CHART_RATES = {
    "HR": (0.995, 0.0, 50.0),
    "ART": (0.96, 0.0, 30.0),  # SysABP, DiasABP, MAP together, patients with an arterial line
    "NI_WITH_ART": (0.25, 0.0, 2.0),  # cuff pressures, patients who also have an arterial line
    "NI": (0.93, 0.0, 10.0),  # cuff pressures, patients without an arterial line
    "RespRate": (0.9, 0.0, 30.0),
    "Weight": (0.9, 0.2, 20.0),
    "Urine": (0.52, 0.75, 20.0),
    "Temp": (0.28, 0.3, 2.5),
    "GCS": (0.2, 0.25, 40.0),
    "VENT": (0.2, 0.25, 10.0),  # FiO2 (and MechVent when ventilated)
}
P_CUFF = 0.95  # stays with cuff pressures at all (with an arterial line they are rare per chart)
P_RESP_NO_VENT = 0.754  # respiratory rate is charted only for patients who are not ventilated
P_FIO2_NO_VENT = 0.12
P_WEIGHT_SERIES = 0.678
P_BASIC = 0.99  # HR, labs, GCS, Temp: almost every stay
P_URINE = 0.975
# Labs: draws per stay = round(stay share of 48 h * (base + Poisson)), at least 1; panel members
# present at a draw with these rates.
LAB_DRAWS_BASE, LAB_DRAWS_POISSON = 2.7, 0.65
P_LAB_AT_CHART = 0.13  # a lab draw stamped at a chart time (as 13 % of real lab sets are)
LAB_PANEL = {"BUN": 1.0, "Creatinine": 0.99, "HCO3": 0.97, "Na": 0.94, "K": 0.93, "Glucose": 0.91,
             "Mg": 0.95, "HCT": 0.93, "Platelets": 0.95, "WBC": 0.93}
EXTRA_SINGLE_CHECKS = {"HCT": 1.2, "K": 0.5}  # Poisson means per 48 h (bleeding, potassium replacement)
P_LIVER, P_ALBUMIN_GIVEN_LIVER, P_LIVER_REPEAT = 0.434, 0.93, 0.3
LIVER_PANEL = ("ALP", "ALT", "AST", "Bilirubin")
P_TROPONIN_T, P_TROPONIN_I, P_TROPONIN_REPEAT = 0.22, 0.047, 0.55
P_CHOLESTEROL = 0.079
# Blood gases: count ~ Gamma-Poisson with these means; members present with these rates.
P_ABG_VENT, P_ABG_NO_VENT = 0.97, 0.40
ABG_MEAN_VENT, ABG_MEAN_NO_VENT = 9.0, 3.5
ABG_PANEL = {"pH": 1.0, "PaCO2": 0.96, "PaO2": 0.95}
P_SAO2_PATIENT, P_SAO2_AT_ABG = 0.68, 0.45
P_LACTATE, LACTATE_AT_ABG, LACTATE_EXTRA_MEAN = 0.55, 0.18, 1.0
# Repeats of one variable at one timestamp (rare; in the real data mostly MAP, Urine, Temp): the share
# of that variable's measurements that get a second row.
REPEAT_CODES = {"MAP": 0.019, "Urine": 0.012, "Temp": 0.0023}
# Rounding of generated values, as the real files record them.
RESOLUTION = {
    "ALP": 1, "ALT": 1, "AST": 1, "Albumin": 0.1, "BUN": 1, "Bilirubin": 0.1, "Cholesterol": 1,
    "Creatinine": 0.1, "DiasABP": 1, "FiO2": 0.05, "GCS": 1, "Glucose": 1, "HCO3": 1, "HCT": 0.1,
    "HR": 1, "K": 0.1, "Lactate": 0.1, "MAP": 1, "MechVent": 1, "Mg": 0.1, "NIDiasABP": 1, "NIMAP": 0.01,
    "NISysABP": 1, "Na": 1, "PaCO2": 1, "PaO2": 1, "Platelets": 1, "RespRate": 1, "SaO2": 1,
    "SysABP": 1, "Temp": 0.1, "TroponinI": 0.1, "TroponinT": 0.01, "Urine": 1, "WBC": 0.1,
    "Weight": 0.1, "pH": 0.01,
}
LAB_CODES = frozenset(LAB_PANEL) | frozenset(LIVER_PANEL) | frozenset(ABG_PANEL) | {
    "Albumin", "Cholesterol", "Lactate", "SaO2", "TroponinI", "TroponinT"}
VITAL_CODES = frozenset(CODES) - LAB_CODES

_Z_KNOTS = np.array([statistics.NormalDist().inv_cdf(p) for p in VALUE_QUANTILE_PROBS])
_Q_KNOTS = np.array([CALIBRATION[c].quantiles for c in CODES])  # [code, knot]
_LOADING = np.clip(
    LOADING_SCALE * (2 * np.array([CALIBRATION[c].last_auroc for c in CODES]) - 1), -MAX_LOADING, MAX_LOADING
)
_PATIENT_SHARE = np.array([PATIENT_SHARE_LAB if c in LAB_CODES else PATIENT_SHARE_VITAL for c in CODES])
_RESOLUTION = np.array([RESOLUTION[c] for c in CODES])


# --------------------------------------------------------------------------------------------------
# Small vectorised helpers over "one row per subject" arrays and flat "one row per event" arrays.


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _beta_rate(rng: np.random.Generator, mean: float, concentration: float, n: int) -> np.ndarray:
    """Per-patient rate with the given mean, spread by `concentration` (a rate of 0 or 1 stays exact)."""
    if mean <= 0.0 or mean >= 1.0:
        return np.full(n, mean)
    return rng.beta(mean * concentration, (1 - mean) * concentration, n)


def _gamma_poisson(rng: np.random.Generator, mean: np.ndarray, shape: float) -> np.ndarray:
    """Overdispersed counts (negative binomial) with per-subject `mean`."""
    return rng.poisson(rng.gamma(shape, 1.0, mean.shape) * mean / shape)


def _uniform_minutes(rng: np.random.Generator, subj: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """One random whole minute in [lo, hi] (per subject) for every entry of `subj`."""
    return lo[subj] + np.floor(rng.random(subj.size) * (hi[subj] - lo[subj] + 1)).astype(np.int64)


@dataclass
class _Stays:
    """One chunk's subjects: descriptors, stay timing, care pattern, latent severity."""

    n: int
    icu: np.ndarray  # 0..3 (ICUType - 1)
    age: np.ndarray
    gender: np.ndarray  # float, NaN where not recorded
    height: np.ndarray
    weight_true: np.ndarray  # the patient's weight (kg), also when the descriptor is not recorded
    weight: np.ndarray  # descriptor: NaN where not recorded
    first_min: np.ndarray  # first and last measurement minute
    end_min: np.ndarray
    s0: np.ndarray  # admission severity
    severity: np.ndarray  # [n, HOURS + 1] latent severity on the hourly grid
    art: np.ndarray  # bool care pattern flags
    vent: np.ndarray
    logit: np.ndarray  # label logit without the intercept


def _stays(rng: np.random.Generator, n: int) -> _Stays:
    icu = rng.choice(4, size=n, p=ICU_TYPE_PROBS)
    age = _draw_age(rng, n)
    male = rng.random(n) < P_MALE
    gender = np.where(rng.random(n) < P_GENDER_MISSING, np.nan, male.astype(float))
    h_mean = np.where(male, HEIGHT_CM[1][0], HEIGHT_CM[0][0])
    h_sd = np.where(male, HEIGHT_CM[1][1], HEIGHT_CM[0][1])
    height = np.round(h_mean + h_sd * rng.standard_normal(n), 1)
    height[rng.random(n) < P_HEIGHT_MISSING] = np.nan
    w_med = np.where(male, WEIGHT_KG[1][0], WEIGHT_KG[0][0])
    w_lsd = np.where(male, WEIGHT_KG[1][1], WEIGHT_KG[0][1])
    weight_true = np.round(w_med * np.exp(w_lsd * rng.standard_normal(n)), 1)
    weight = np.where(rng.random(n) < P_WEIGHT_MISSING, np.nan, weight_true)

    end_min = np.round(60 * np.interp(rng.random(n), *STAY_END_KNOTS)).astype(np.int64)
    first_min = np.round(60 * np.interp(rng.random(n), *FIRST_TIME_KNOTS)).astype(np.int64)
    first_min = np.minimum(first_min, end_min)

    s0, severity = _latent(rng, icu, age)

    # Label: how the stay ends (level over the last hours and trend over the last day), not admission facts.
    end_h = end_min / 60.0
    level = np.mean([_severity_at(severity, end_h - k) for k in range(LEVEL_HOURS)], axis=0)
    trend = _severity_at(severity, end_h) - _severity_at(severity, np.maximum(end_h - TREND_HOURS, 0.0))
    logit = W_LEVEL * level + W_TREND * trend + W_AGE * (age - 65) / 10

    sev0 = s0 - _severity_scale().s0_mean
    art = rng.random(n) < _sigmoid(_logit(np.take(P_ART_LINE_BY_ICU, icu)) + CARE_SEVERITY_LOGIT * sev0)
    vent = rng.random(n) < _sigmoid(_logit(np.take(P_VENT_BY_ICU, icu)) + CARE_SEVERITY_LOGIT * sev0)
    return _Stays(
        n, icu, age, gender, height, weight_true, weight, first_min, end_min, s0, severity, art, vent, logit
    )


def _draw_age(rng: np.random.Generator, n: int) -> np.ndarray:
    u = rng.random(n)
    return np.where(u >= 1 - AGE_CAP_SHARE, 90.0, np.floor(np.interp(u, *AGE_KNOTS)))


def _latent(rng: np.random.Generator, icu: np.ndarray, age: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Admission severity and the severity path on the hourly grid (OU recursion over 48 steps)."""
    n = icu.size
    s0 = np.take(ICU_SEVERITY_SHIFT, icu) + AGE_SEVERITY_PER_DECADE * (age - 65) / 10 + S0_SD * rng.standard_normal(n)
    slope = SLOPE_MEAN + SLOPE_SD * rng.standard_normal(n)
    noise = rng.standard_normal((n, HOURS + 1))
    x = np.empty((n, HOURS + 1))
    x[:, 0] = OU_SD * noise[:, 0]
    for h in range(1, HOURS + 1):
        x[:, h] = OU_RHO * x[:, h - 1] + np.sqrt(1 - OU_RHO**2) * OU_SD * noise[:, h]
    hours = np.arange(HOURS + 1)
    jump = np.where(rng.random(n) < P_JUMP, JUMP_MEAN + JUMP_SD * rng.standard_normal(n), 0.0)
    t_jump = rng.integers(1, HOURS, n)
    severity = (
        s0[:, None] + slope[:, None] * hours / HOURS + x + jump[:, None] * (hours[None, :] >= t_jump[:, None])
    )
    return s0, severity


@dataclass(frozen=True)
class _SeverityScale:
    s0_mean: float
    mean: float
    sd: float


@functools.cache
def _severity_scale() -> _SeverityScale:
    """Population moments of the latent severity, from a fixed reference draw.

    Centring and scaling with these (not with the moments of the cohort at hand) keeps a subject's data
    independent of who else is generated with it.
    """
    rng = np.random.default_rng(REFERENCE_SEED)
    icu = rng.choice(4, size=REFERENCE_SUBJECTS, p=ICU_TYPE_PROBS)
    s0, severity = _latent(rng, icu, _draw_age(rng, REFERENCE_SUBJECTS))
    return _SeverityScale(float(s0.mean()), float(severity.mean()), float(severity.std()))


def _severity_at(severity: np.ndarray, hours: np.ndarray, subj: np.ndarray | None = None) -> np.ndarray:
    """Linear interpolation of the hourly severity grid at `hours` (one per subject, or per event)."""
    rows = np.arange(severity.shape[0]) if subj is None else subj
    h = np.clip(hours, 0.0, HOURS)
    lo = np.minimum(np.floor(h).astype(np.int64), HOURS - 1)
    frac = h - lo
    return (1 - frac) * severity[rows, lo] + frac * severity[rows, lo + 1]


# --------------------------------------------------------------------------------------------------
# Sampling: which variable is measured when. Each function returns flat (subject index, minute, code).


@dataclass
class _Events:
    subj: list[np.ndarray]
    minute: list[np.ndarray]
    code: list[np.ndarray]

    def add(self, subj: np.ndarray, minute: np.ndarray, code: str | np.ndarray) -> None:
        self.subj.append(subj)
        self.minute.append(minute)
        self.code.append(np.full(subj.size, CODE_INDEX[code], np.int16) if isinstance(code, str) else code)


def _chart_times(rng: np.random.Generator, st: _Stays) -> tuple[np.ndarray, np.ndarray]:
    """Distinct vitals chart minutes per subject: a jitter-free hourly grid with gaps, plus extra checks."""
    n_ticks = (st.end_min - st.first_min) // 60 + 1
    subj = np.repeat(np.arange(st.n), n_ticks)
    k = np.arange(subj.size) - np.repeat(np.cumsum(n_ticks) - n_ticks, n_ticks)
    keep = (rng.random(subj.size) < P_TICK) | (k == 0)  # the admission chart is always there
    tick_subj, tick_min = subj[keep], (st.first_min[subj] + 60 * k)[keep]
    n_extra = _gamma_poisson(rng, EXTRA_CHARTS_MEAN * (st.end_min - st.first_min) / (60.0 * HOURS), EXTRA_CHARTS_SHAPE)
    extra_subj = np.repeat(np.arange(st.n), n_extra)
    extra_min = _uniform_minutes(rng, extra_subj, st.first_min, st.end_min)
    key = _sorted_unique(np.concatenate([tick_subj, extra_subj]) * (1 << 32) + np.concatenate([tick_min, extra_min]))
    return key >> 32, key & ((1 << 32) - 1)


def _charts(rng: np.random.Generator, st: _Stays, ev: _Events, chart_subj: np.ndarray, chart_min: np.ndarray) -> None:
    n, m = st.n, chart_subj.size
    full = rng.random(m) < P_FULL_CHART
    basic = rng.random(n) < P_BASIC
    has_ni = rng.random(n) < P_CUFF
    groups = {
        "HR": basic,
        "ART": st.art,
        "NI_WITH_ART": st.art & has_ni,
        "NI": ~st.art & has_ni,
        "RespRate": ~st.vent & (rng.random(n) < P_RESP_NO_VENT),
        "Weight": rng.random(n) < P_WEIGHT_SERIES,
        "Urine": rng.random(n) < P_URINE,
        "Temp": basic,
        "GCS": basic,
        "VENT": st.vent | (rng.random(n) < P_FIO2_NO_VENT),
    }
    present = {}
    for group, has in groups.items():
        rate_full, rate_partial, conc = CHART_RATES[group]
        rate = np.where(
            full, _beta_rate(rng, rate_full, conc, n)[chart_subj], _beta_rate(rng, rate_partial, conc, n)[chart_subj]
        )
        present[group] = has[chart_subj] & (rng.random(m) < rate)
    # A partial chart with nothing on it becomes a urine output entry (the commonest lone measurement).
    anything = np.logical_or.reduce(list(present.values()))
    present["Urine"] |= ~anything & groups["Urine"][chart_subj]
    for group, codes in (
        ("HR", ("HR",)),
        ("ART", ("SysABP", "DiasABP", "MAP")),
        ("NI_WITH_ART", ("NISysABP", "NIDiasABP", "NIMAP")),
        ("NI", ("NISysABP", "NIDiasABP", "NIMAP")),
        ("RespRate", ("RespRate",)),
        ("Weight", ("Weight",)),
        ("Urine", ("Urine",)),
        ("Temp", ("Temp",)),
        ("GCS", ("GCS",)),
        ("VENT", ("FiO2",)),
    ):
        for code in codes:
            ev.add(chart_subj[present[group]], chart_min[present[group]], code)
    vent_here = present["VENT"] & st.vent[chart_subj]
    ev.add(chart_subj[vent_here], chart_min[vent_here], "MechVent")


def _draw_times(
    rng: np.random.Generator, st: _Stays, counts: np.ndarray, chart_key: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`counts[i]` random minutes of subject i; with `chart_key`, some snap to that subject's chart times."""
    subj = np.repeat(np.arange(st.n), counts)
    minute = _uniform_minutes(rng, subj, st.first_min, st.end_min)
    if chart_key is not None and chart_key.size:
        key = subj * (1 << 32) + minute
        pos = np.minimum(np.searchsorted(chart_key, key), chart_key.size - 1)
        same_subject = (chart_key[pos] >> 32) == subj
        snap = same_subject & (rng.random(subj.size) < P_LAB_AT_CHART)
        minute = np.where(snap, chart_key[pos] & ((1 << 32) - 1), minute)
    return subj, minute


def _labs(rng: np.random.Generator, st: _Stays, ev: _Events, chart_key: np.ndarray) -> None:
    n = st.n
    stay_frac = (st.end_min - st.first_min) / (60.0 * HOURS)
    n_draws = np.where(
        rng.random(n) < P_BASIC,
        np.maximum(np.round(stay_frac * (LAB_DRAWS_BASE + rng.poisson(LAB_DRAWS_POISSON, n))), 1),
        0,
    ).astype(np.int64)
    subj, minute = _draw_times(rng, st, n_draws, chart_key)
    for code, p in LAB_PANEL.items():
        hit = rng.random(subj.size) < p
        ev.add(subj[hit], minute[hit], code)
    first_draw = np.r_[True, subj[1:] != subj[:-1]] if subj.size else np.zeros(0, bool)
    # Liver panel, troponin: ordered with the first draw, sometimes repeated later.
    liver = (rng.random(n) < P_LIVER)[subj] & (first_draw | (rng.random(subj.size) < P_LIVER_REPEAT))
    for code in LIVER_PANEL:
        ev.add(subj[liver], minute[liver], code)
    albumin = liver & (rng.random(subj.size) < P_ALBUMIN_GIVEN_LIVER)
    ev.add(subj[albumin], minute[albumin], "Albumin")
    trop_kind = rng.random(n)
    for code, lo, hi in (("TroponinT", 0.0, P_TROPONIN_T), ("TroponinI", P_TROPONIN_T, P_TROPONIN_T + P_TROPONIN_I)):
        has = ((trop_kind >= lo) & (trop_kind < hi))[subj] & (first_draw | (rng.random(subj.size) < P_TROPONIN_REPEAT))
        ev.add(subj[has], minute[has], code)
    chol = (rng.random(n) < P_CHOLESTEROL)[subj] & first_draw
    ev.add(subj[chol], minute[chol], "Cholesterol")
    # Extra single HCT / K checks between panels.
    for code, mean in EXTRA_SINGLE_CHECKS.items():
        cnt = np.where(n_draws > 0, rng.poisson(mean * stay_frac), 0)
        s, m = _draw_times(rng, st, cnt)
        ev.add(s, m, code)


def _blood_gases(rng: np.random.Generator, st: _Stays, ev: _Events) -> None:
    n = st.n
    has_abg = rng.random(n) < np.where(st.vent, P_ABG_VENT, P_ABG_NO_VENT)
    mean = np.where(st.vent, ABG_MEAN_VENT, ABG_MEAN_NO_VENT) * (st.end_min - st.first_min) / (60.0 * HOURS)
    counts = np.where(has_abg, np.maximum(_gamma_poisson(rng, mean, 1.5), 1), 0)
    subj, minute = _draw_times(rng, st, counts)
    for code, p in ABG_PANEL.items():
        hit = rng.random(subj.size) < p
        ev.add(subj[hit], minute[hit], code)
    sao2 = (rng.random(n) < P_SAO2_PATIENT)[subj] & (rng.random(subj.size) < P_SAO2_AT_ABG)
    ev.add(subj[sao2], minute[sao2], "SaO2")
    # Lactate: sicker patients more often; at some blood gases and on its own.
    sev0 = st.s0 - _severity_scale().s0_mean
    has_lac = rng.random(n) < _sigmoid(_logit(P_LACTATE) + CARE_SEVERITY_LOGIT * sev0)
    at_abg = has_lac[subj] & (rng.random(subj.size) < LACTATE_AT_ABG)
    ev.add(subj[at_abg], minute[at_abg], "Lactate")
    alone = np.where(has_lac, 1 + _gamma_poisson(rng, np.full(n, LACTATE_EXTRA_MEAN), 0.7), 0)
    s, m = _draw_times(rng, st, alone)
    ev.add(s, m, "Lactate")


def _repeats(rng: np.random.Generator, key: np.ndarray) -> np.ndarray:
    """Rarely, a variable is recorded twice at one timestamp: the keys that get a second row."""
    p = np.zeros(len(CODES))
    for c, rate in REPEAT_CODES.items():
        p[CODE_INDEX[c]] = rate
    return key[rng.random(key.size) < p[_unpack(key)[2]]]


# --------------------------------------------------------------------------------------------------
# Values


def _values(rng: np.random.Generator, st: _Stays, key: np.ndarray) -> np.ndarray:
    """Value of every (sorted) event: severity-driven z-score through the real variable's quantile function."""
    subj, minute, code = _unpack(key)
    # Standardise severity with its population moments, so loadings are correlations.
    scale = _severity_scale()
    sev = (st.severity - scale.mean) / scale.sd
    s = _severity_at(sev, minute / 60.0, subj)
    offset = rng.standard_normal((st.n, len(CODES)))[subj, code]
    load = _LOADING[code]
    share = _PATIENT_SHARE[code]
    z = load * s + np.sqrt(1 - load**2) * (
        np.sqrt(share) * offset + np.sqrt(1 - share) * rng.standard_normal(key.size)
    )
    # Piecewise-linear quantile function in z space (flat beyond the outer knots), all codes at once.
    j = np.clip(np.searchsorted(_Z_KNOTS, z), 1, _Z_KNOTS.size - 1)
    frac = np.clip((z - _Z_KNOTS[j - 1]) / (_Z_KNOTS[j] - _Z_KNOTS[j - 1]), 0.0, 1.0)
    q0, q1 = _Q_KNOTS[code, j - 1], _Q_KNOTS[code, j]
    value = q0 + frac * (q1 - q0)
    # Pressures at one chart are consistent: MAP = (Sys + 2 Dias) / 3 when both were taken.
    _derive_map(key, value)
    # The Weight series follows the patient's weight (the descriptor, or the true weight if unrecorded).
    w = code == CODE_INDEX["Weight"]
    value[w] = st.weight_true[subj[w]] + 1.5 * rng.standard_normal(int(w.sum()))
    res = _RESOLUTION[code]
    value = np.round(value / res) * res
    return np.clip(value, _Q_KNOTS[code, 0], _Q_KNOTS[code, -1]).astype(np.float32)


def _derive_map(key: np.ndarray, value: np.ndarray) -> None:
    """Set diastolic below systolic and MAP from the two, where all three share a timestamp."""
    code = key & _CODE_MASK
    for sys_c, dia_c, map_c in (("SysABP", "DiasABP", "MAP"), ("NISysABP", "NIDiasABP", "NIMAP")):
        i_sys = np.flatnonzero(code == CODE_INDEX[sys_c])
        base = key[i_sys] - CODE_INDEX[sys_c]  # (subject, minute) with code 0
        i_dia, ok_dia = _find(key, base + CODE_INDEX[dia_c])
        i_map, ok_map = _find(key, base + CODE_INDEX[map_c])  # the first of a repeated MAP
        ok = ok_dia & ok_map
        i_sys, i_dia, i_map = i_sys[ok], i_dia[ok], i_map[ok]
        sys_v = value[i_sys]
        dia_v = np.minimum(value[i_dia], sys_v - 10)
        value[i_dia] = dia_v
        value[i_map] = (sys_v + 2 * dia_v) / 3


def _find(sorted_keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of the first occurrence of each wanted key, and whether it is there."""
    pos = np.minimum(np.searchsorted(sorted_keys, wanted), max(sorted_keys.size - 1, 0))
    return pos, sorted_keys[pos] == wanted if sorted_keys.size else np.zeros(wanted.size, bool)


# --------------------------------------------------------------------------------------------------
# Assembly. Until values are drawn, an event is one packed int64 key (subject, minute, code): a plain
# sort orders events by (subject, time, code), and equal keys are the same variable at the same time.

_MINUTE_BITS, _CODE_BITS = 12, 6  # 4096 minutes > 48 h, 64 codes > 37
_CODE_MASK = (1 << _CODE_BITS) - 1
_MINUTE_MASK = (1 << _MINUTE_BITS) - 1


def _pack(subj: np.ndarray, minute: np.ndarray, code: np.ndarray) -> np.ndarray:
    return (subj.astype(np.int64) << (_MINUTE_BITS + _CODE_BITS)) | (minute.astype(np.int64) << _CODE_BITS) | code


def _unpack(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return key >> (_MINUTE_BITS + _CODE_BITS), (key >> _CODE_BITS) & _MINUTE_MASK, key & _CODE_MASK


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    a = np.sort(a)
    return a[np.r_[True, a[1:] != a[:-1]]] if a.size else a


def _chunk(seed_seq: np.random.SeedSequence, n: int) -> tuple[_Stays, np.ndarray, np.ndarray]:
    """Generate one chunk of `n` subjects: stays, sorted event keys and their values."""
    r_stay, r_chart, r_lab, r_abg, r_rep, r_val = (np.random.default_rng(s) for s in seed_seq.spawn(6))
    st = _stays(r_stay, n)
    ev = _Events([], [], [])
    chart_subj, chart_min = _chart_times(r_chart, st)
    _charts(r_chart, st, ev, chart_subj, chart_min)
    _labs(r_lab, st, ev, chart_subj * (1 << 32) + chart_min)
    _blood_gases(r_abg, st, ev)
    # Accidental double draws (two processes hitting one variable at one minute) collapse to one event;
    # repeats are then added on purpose at the real rate.
    key = _sorted_unique(_pack(*(np.concatenate(a) for a in (ev.subj, ev.minute, ev.code))))
    key = np.sort(np.concatenate([key, _repeats(r_rep, key)]))
    return st, key, _values(r_val, st, key)


def _solve_intercept(logit: np.ndarray, rate: float) -> float:
    """Intercept a with mean(sigmoid(a + logit)) = rate (bisection: monotone, deterministic)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _sigmoid(mid + logit).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def ingest_synthetic(p: SyntheticParams) -> IngestResult:
    """Generate the synthetic cohort as canonical (events, subjects, labels) tables plus a report."""
    root = np.random.SeedSequence(p.seed)
    n_chunks = -(-p.n_subjects // CHUNK_SUBJECTS)
    chunk_seqs = root.spawn(n_chunks + 1)  # the last stream draws the labels
    epoch = np.datetime64(ADMISSION_EPOCH, "us")
    event_batches: list[pa.RecordBatch] = []
    stays: list[_Stays] = []
    first_id = SUBJECT_ID_START
    code_dict = pa.array(CODES, pa.string())
    for c in range(n_chunks):
        n = min(CHUNK_SUBJECTS, p.n_subjects - c * CHUNK_SUBJECTS)
        st, key, value = _chunk(chunk_seqs[c], n)
        subj, minute, code = _unpack(key)
        stays.append(st)
        codes = pa.DictionaryArray.from_arrays(pa.array(code.astype(np.int32)), code_dict).cast(pa.string())
        event_batches.append(
            pa.RecordBatch.from_arrays(
                [
                    pa.array(subj + first_id, pa.int64()),
                    pa.array(epoch + minute.astype("timedelta64[m]"), pa.timestamp("us")),
                    codes,
                    pa.array(value, pa.float32()),
                ],
                schema=EVENTS_SCHEMA,
            )
        )
        first_id += n
    events = pa.Table.from_batches(event_batches, schema=EVENTS_SCHEMA).combine_chunks()

    def cat(attr: str) -> np.ndarray:
        return np.concatenate([getattr(s, attr) for s in stays])

    logit = cat("logit")
    intercept = _solve_intercept(logit, p.positive_rate)
    label_rng = np.random.default_rng(chunk_seqs[-1])
    died = label_rng.random(p.n_subjects) < _sigmoid(intercept + logit)

    ids = np.arange(SUBJECT_ID_START, SUBJECT_ID_START + p.n_subjects, dtype=np.int64)
    admission = np.full(p.n_subjects, epoch)
    descriptors = {
        "Age": cat("age"), "Gender": cat("gender"), "Height": cat("height"),
        "ICUType": cat("icu") + 1.0, "Weight": cat("weight"),
    }
    assert tuple(descriptors) == DESCRIPTORS  # one home for the descriptor names
    subjects = pa.table(
        {
            "subject_id": pa.array(ids, pa.int64()),
            "admission_time": pa.array(admission, pa.timestamp("us")),
            "group": pa.array(["synthetic"] * p.n_subjects, pa.string()),
            **{k: pa.array(v.astype(np.float32), pa.float32()) for k, v in descriptors.items()},
        }
    )
    labels = pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array(admission + np.timedelta64(HOURS, "h"), pa.timestamp("us")),
            pa.array(died, pa.bool_()),
            pa.array(admission, pa.timestamp("us")),  # one sample per stay, its window from admission
        ],
        schema=SAMPLES_SCHEMA,
    )

    n_events = events.num_rows
    event_ids = events.column("subject_id").to_numpy()  # sorted
    with_events = event_ids[np.r_[True, event_ids[1:] != event_ids[:-1]]] if n_events else event_ids
    report = IngestReport(
        source="synthetic",
        rows_read=n_events,
        rows_kept=n_events,
        subjects=p.n_subjects,
        positives=int(died.sum()),
        subjects_without_measurements=[int(i) for i in np.setdiff1d(ids, with_events)],
        extra={"synthetic": {"n_subjects": p.n_subjects, "seed": p.seed, "positive_rate": p.positive_rate}},
    )
    return IngestResult(events=events, subjects=subjects, labels=labels, report=report)
