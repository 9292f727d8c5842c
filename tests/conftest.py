"""Shared fixtures: the project's params as a dict to override, and the real PhysioNet 2012 data.

The real data is found through one setting: SEQSETVAE_PHYSIONET2012_DIR, defaulting to
`../shared/data/physionet2012` beside the project. Where it is absent the tests that need it are skipped
with that reason, except in CI (CI=true), where its absence is a failure: CI always has it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from seqsetvae.config import PROJECT_ROOT, read_yaml

PHYSIONET_ENV = "SEQSETVAE_PHYSIONET2012_DIR"


def physionet2012_dir() -> Path | None:
    env = os.environ.get(PHYSIONET_ENV)
    path = Path(env) if env else PROJECT_ROOT.parent / "shared" / "data" / "physionet2012"
    return path if (path / "set-a").is_dir() else None


@pytest.fixture(scope="session")
def p12_dir() -> Path:
    path = physionet2012_dir()
    if path is None:
        reason = f"PhysioNet 2012 data not found (set {PHYSIONET_ENV} or put it at ../shared/data/physionet2012)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must have it")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def base_params_dict() -> dict:
    """The repository's params.yaml as a plain dict; deep-copy before changing it."""
    return read_yaml(PROJECT_ROOT / "params.yaml")


@pytest.fixture
def params_dict(base_params_dict) -> dict:
    return copy.deepcopy(base_params_dict)
