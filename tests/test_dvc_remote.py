"""The default DVC remote is shared by every clone of the project on one machine or shared disk
(workflow/scripts/setup_remote.py): push from clone A, pull in a fresh clone B, and DVC is clean in B."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_project import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))
import setup_remote  # noqa: E402


def clone(src: Project, dest: Path) -> Project:
    """`git clone src dest`, then the setup step `make install` runs (setup_remote.py)."""
    subprocess.run(["git", "clone", "-q", str(src.root), str(dest)], check=True, env=src.env)
    proj = Project(dest)
    proj.run("python", "workflow/scripts/setup_remote.py")
    return proj


def test_local_origin_is_recognised_and_remote_urls_are_not(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    subprocess.run(["git", "init", "-q", str(a)], check=True)
    assert setup_remote.local_origin(a) is None  # no origin: this clone's own store
    assert setup_remote.shared_store(a) == str((a / ".dvcstore").resolve())
    b = tmp_path / "b"
    subprocess.run(["git", "clone", "-q", str(a), str(b)], check=True, capture_output=True)
    assert setup_remote.local_origin(b) == a.resolve()
    assert setup_remote.shared_store(b) == str(a.resolve() / ".dvcstore")
    # A url set in the origin's config.local wins, so a clone of a clone finds the same store.
    (a / ".dvc").mkdir()
    (a / ".dvc" / "config.local").write_text("['remote \"localstore\"']\n    url = /srv/dvc/store\n")
    assert setup_remote.shared_store(b) == "/srv/dvc/store"
    for url in ("https://github.com/x/y.git", "git@github.com:x/y.git", "ssh://host/x/y"):
        subprocess.run(["git", "remote", "set-url", "origin", url], cwd=b, check=True)
        assert setup_remote.local_origin(b) is None, url
        assert setup_remote.shared_store(b) == str((b / ".dvcstore").resolve())


@pytest.mark.slow
def test_push_from_one_clone_pull_in_a_fresh_clone(tmp_path):
    a = Project.create(tmp_path / "a")
    a.run("python", "workflow/scripts/setup_remote.py")
    a.dvc("repro", "split")
    a.dvc("push")
    a.git("add", "dvc.lock")
    a.git("commit", "-qm", "ingest and split")

    b = clone(a, tmp_path / "b")
    assert not (b.root / "data" / "splits.parquet").exists()
    b.dvc("pull", "--with-deps", "split")
    assert (b.root / "data" / "splits.parquet").read_bytes() == (a.root / "data" / "splits.parquet").read_bytes()
    assert json.loads(b.dvc("status", "--json", "split").stdout or "{}") == {}
    # A clone of the clone finds the same store (through B's .dvc/config.local).
    c = clone(b, tmp_path / "c")
    c.dvc("pull", "--with-deps", "split")
    assert json.loads(c.dvc("status", "--json", "split").stdout or "{}") == {}
    assert not (b.root / ".dvcstore").exists() and not (c.root / ".dvcstore").exists()
