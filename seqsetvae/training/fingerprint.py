"""Content fingerprints: the sha256 of a file, and of everything a training run's result depends on.

`run_fingerprint` is stored in every checkpoint a run writes; a resume continues only a run whose
fingerprint is the same (see resume.py). `file_sha256` is also what checkpoints.py records in, and checks
against, a finished stage's SHA256SUMS. This module imports nothing else of the project, so any module can
use it without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(params: Any, fold: int, inputs: list[Path], extra: dict[str, Any] | None = None) -> str:
    """sha256 of everything a training run's result depends on: all params, the fold, and the bytes of its
    input files (a folder: every file in it, in sorted order). Stored in checkpoints; a resume continues
    only a run with the same fingerprint."""
    settings = params.to_dict()
    # More epochs extend a run: resuming it then gives what an uninterrupted longer run gives (no
    # schedule depends on the epoch budget), so the budget is not part of the run's identity. Except a KL
    # warm-up given as a share of training (pretrain.kl_warmup_fraction): its length in steps depends on the
    # budget, so a longer run is another run.
    for section in ("pretrain", "finetune"):
        if section == "pretrain" and settings[section].get("kl_warmup_fraction") is not None:
            continue
        settings[section].pop("max_epochs", None)
    digest = hashlib.sha256()
    digest.update(json.dumps({"params": settings, "fold": fold, "extra": extra or {}},
                             sort_keys=True, default=str).encode())
    for root in inputs:
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            digest.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
            digest.update(file_sha256(f).encode())
    return digest.hexdigest()
