"""Shared fixtures: the project's params as a dict to override, the real PhysioNet 2012 data, and the work
that several test files share (done once per test session, docs/testing.md): one tiny pipeline run that the
pipeline tests copy instead of re-running it.

The real data is found through one setting: SEQSETVAE_PHYSIONET2012_DIR, defaulting to
`../shared/data/physionet2012` beside the project. Where it is absent the tests that need it are skipped
with that reason, except in CI (CI=true), where its absence is a failure: CI always has it. Every test that
uses it (the `p12_dir` fixture, directly or through another fixture) is marked `realdata` and `slow` at
collection, so no test can read the real data without the marker.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

from seqsetvae.config import PROJECT_ROOT, read_yaml

PHYSIONET_ENV = "SEQSETVAE_PHYSIONET2012_DIR"
REAL_DATA_FIXTURE = "p12_dir"


def pytest_collection_modifyitems(config, items):
    """A test that uses the real data is `realdata` (and, as the marker says, `slow`), whether or not its file
    says so: `fixturenames` holds every fixture a test needs, through other fixtures too."""
    for item in items:
        if REAL_DATA_FIXTURE in getattr(item, "fixturenames", ()):
            if item.get_closest_marker("realdata") is None:
                item.add_marker(pytest.mark.realdata)
            if item.get_closest_marker("slow") is None:
                item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One whole tiny pipeline run (tests/tiny.py's TINY_OVERRIDES, every stage, under Snakemake, which also
    commits the stages to dvc.lock), committed to the project's git repo: made once per session, for the
    tests that need a finished run. Never changed by a test: each takes its own copy (`tiny_run.copy_to`)."""
    from tests.pipeline_project import Project

    proj = Project.create(tmp_path_factory.mktemp("tiny_run") / "proj")
    proj.snakemake()
    proj.git("add", "-A")
    proj.git("commit", "-qm", "pipeline run")
    return proj
