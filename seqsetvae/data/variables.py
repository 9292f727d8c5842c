"""The PhysioNet 2012 variables: the 37 time series codes and the static descriptors.

Shared by the PhysioNet 2012 loader (what is a known parameter) and the synthetic generator (what it
imitates). `Weight` is both a descriptor (the 00:00 admission weight) and a time series.
"""

from __future__ import annotations

# Time series parameters of the challenge (36 vitals/labs plus Weight over time).
TIME_SERIES: tuple[str, ...] = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP", "FiO2",
    "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg", "NIDiasABP", "NIMAP",
    "NISysABP", "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI",
    "TroponinT", "Urine", "WBC", "Weight", "pH",
)

# Static descriptors recorded at 00:00 (RecordID is the subject id, not a descriptor value).
DESCRIPTORS: tuple[str, ...] = ("Age", "Gender", "Height", "ICUType", "Weight")

RECORD_ID = "RecordID"
NOT_RECORDED = -1.0  # descriptor value meaning "not recorded" in the raw files
