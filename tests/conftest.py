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
import shutil
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


def _shared_dir(tmp_path_factory) -> Path:
    """A folder all test processes of this session share: pytest's temporary root, or under pytest-xdist
    (`-n 2`) the one above each worker's."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One whole tiny pipeline run (tests/tiny.py's TINY_OVERRIDES, every stage, under Snakemake, which also
    commits the stages to dvc.lock), committed to the project's git repo: made once per session, for the
    tests that need a finished run. Never changed by a test: each takes its own copy (`tiny_run.copy_to`).
    Under pytest-xdist the first worker that needs it makes it, under a file lock, and the others wait for it
    and use the same run."""
    from filelock import FileLock

    from tests.pipeline_project import Project

    shared = _shared_dir(tmp_path_factory)
    root, done = shared / "tiny_run" / "proj", shared / "tiny_run.done"
    with FileLock(str(shared / "tiny_run.lock")):
        if done.is_file():
            return Project(root)
        shutil.rmtree(root, ignore_errors=True)  # what a run that failed in another worker left
        root.parent.mkdir(exist_ok=True)
        proj = Project.create(root)
        proj.snakemake()
        proj.git("add", "-A")
        proj.git("commit", "-qm", "pipeline run")
        done.touch()
        return proj


@pytest.fixture(scope="module")
def restore_torch_threads():
    """Put torch's intra-op thread count back after a module whose stages set it (trainer.num_threads)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
