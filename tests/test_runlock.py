"""One pipeline run at a time per project: the run lock shared by Snakemake, DVC and the stage commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from seqsetvae import cli, runlock
from tests.pipeline_project import Project


def test_second_holder_is_refused_naming_the_first(tmp_path):
    fd = runlock.acquire(tmp_path, "snakemake")
    try:
        with pytest.raises(runlock.RunLockedError, match=r"another pipeline run is in progress \(snakemake, pid \d+\)"):
            runlock.acquire(tmp_path, "seqsetvae split")
    finally:
        runlock.release(fd)
    runlock.release(runlock.acquire(tmp_path, "seqsetvae split"))  # free again once released


def test_commands_launched_under_a_holder_skip_the_lock(tmp_path, monkeypatch):
    fd = runlock.acquire(tmp_path, "snakemake")
    try:
        monkeypatch.setenv(runlock.HELD_ENV, "1")
        with runlock.run_lock(tmp_path, "seqsetvae split"):
            pass
    finally:
        runlock.release(fd)


def test_stage_command_refuses_while_another_run_holds_the_lock(tmp_path, base_params_dict, monkeypatch, caplog):
    monkeypatch.delenv(runlock.HELD_ENV, raising=False)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(base_params_dict))
    fd = runlock.acquire(tmp_path, "snakemake")
    try:
        rc = cli.main(["ingest", "--params", str(params), "--out", str(tmp_path / "ingested")])
    finally:
        runlock.release(fd)
    assert rc == 4
    assert "another pipeline run is in progress (snakemake" in caplog.text
    assert not (tmp_path / "ingested").exists()


@pytest.mark.slow
def test_dvc_and_snakemake_do_not_run_at_once(tmp_path):
    proj = Project.create(tmp_path / "proj")
    env = {k: v for k, v in proj.env.items() if k != runlock.HELD_ENV}
    lock_file = proj.root / runlock.LOCK_NAME
    smk = subprocess.Popen(
        ["snakemake", "--cores", "1", "preprocess"], cwd=proj.root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.time() + 120
        while not (lock_file.exists() and "snakemake" in lock_file.read_text()):
            assert smk.poll() is None, smk.stdout.read()
            assert time.time() < deadline, "snakemake never took the run lock"
            time.sleep(0.2)
        # Snakemake holds DVC's repository lock too: DVC is refused before it removes any output (it
        # deletes a stage's outputs before running the stage command, where our own lock would stop it).
        dvc = proj.dvc("repro", "split", check=False)
        assert dvc.returncode != 0
        assert "Unable to acquire lock" in dvc.stdout + dvc.stderr
    finally:
        out, _ = smk.communicate(timeout=600)
    assert smk.returncode == 0, out  # nothing of Snakemake's run was deleted under it
    assert (proj.root / "data" / "processed").is_dir()
    # Snakemake finished and released the lock: DVC now agrees with what it made.
    assert not {"ingest", "split", "preprocess"} & set(proj.dvc_changed_stages())

    # The other way round: while a DVC-launched stage holds the lock, Snakemake refuses to start.
    fd = runlock.acquire(proj.root, "seqsetvae pretrain")
    try:
        refused = proj.snakemake(check=False)
    finally:
        runlock.release(fd)
    assert refused.returncode != 0
    assert "another pipeline run is in progress (seqsetvae pretrain" in refused.stdout + refused.stderr
    assert not (proj.root / "models").exists()


def test_processes_started_by_a_holder_work_under_its_lock(tmp_path, monkeypatch):
    """Lightning starts the extra DDP ranks by re-running the stage command: they must not be refused."""
    monkeypatch.delenv(runlock.HELD_ENV, raising=False)
    with runlock.run_lock(tmp_path, "seqsetvae pretrain"):
        child = subprocess.run(
            [sys.executable, "-c", "from seqsetvae import runlock; import sys\n"
             f"with runlock.run_lock({str(tmp_path)!r}, 'rank 1'): print('ok')"],
            capture_output=True, text=True,
        )
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr
    assert runlock.HELD_ENV not in os.environ  # released: this process no longer marks children
