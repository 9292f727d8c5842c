"""How the training stages round the values of the metrics JSON they write (metrics, representation,
calibration), so reruns on one machine write byte-identical files."""

from __future__ import annotations

import math
from typing import Any

METRIC_DIGITS = 6  # significant digits kept


def round_metrics(obj: Any) -> Any:
    """Plain floats rounded to METRIC_DIGITS significant digits (ints, strings kept), recursively.

    Significant digits, not decimals: a KL of 1234.5678 and an AUROC of 0.812345 are both kept to the
    precision that is stable across reruns on one machine.
    """
    if isinstance(obj, dict):
        return {str(k): round_metrics(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_metrics(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    x = float(obj)
    if not math.isfinite(x):
        raise ValueError(f"metric is not finite: {x}")
    if x == 0.0:
        return 0.0
    return round(x, METRIC_DIGITS - 1 - math.floor(math.log10(abs(x))))
