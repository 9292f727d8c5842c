"""One pipeline run at a time per project: the run lock shared by Snakemake, DVC and the stage commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from seqsetvae import cli, runlock
from seqsetvae.config import PROJECT_ROOT
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


# A stage command that holds its stage until the test lets it go: the test acts while Snakemake is known
# to be inside that stage, whatever the machine's load, instead of polling for a moment and hoping.
GATE_SCRIPT = """\
import sys, time
from pathlib import Path
gate = Path(sys.argv[1])
(gate / "started").touch()
deadline = time.monotonic() + 900  # a safety net against a hang only; the test releases the gate
while not (gate / "release").exists():
    if time.monotonic() > deadline:
        sys.exit("gate never released")
    time.sleep(0.05)
"""


def wait_for(path, proc, what, timeout=600):
    """Wait until `path` exists while `proc` runs. The timeout only guards against a hang: the outcome
    of the test never depends on how long this takes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"{what}: the runner exited first\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_dvc_and_snakemake_do_not_run_at_once(tmp_path):
    proj = Project.create(tmp_path / "proj")
    gate = tmp_path / "gate"
    gate.mkdir()
    (proj.root / "gate.py").write_text(GATE_SCRIPT)
    dvc_yaml = proj.root / "dvc.yaml"
    split_cmd = "seqsetvae split --ingested data/ingested --out data/splits.parquet"
    assert split_cmd in dvc_yaml.read_text()
    dvc_yaml.write_text(dvc_yaml.read_text().replace(split_cmd, f"python gate.py {gate} && {split_cmd}"))
    env = {k: v for k, v in proj.env.items() if k != runlock.HELD_ENV}
    smk = subprocess.Popen(
        ["snakemake", "--cores", "1", "preprocess"], cwd=proj.root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(gate / "started", smk, "the split stage under snakemake")
        # Snakemake is inside `split`, after `ingest`: it holds our run lock and DVC's repository lock, so
        # DVC is refused before it removes any output (it deletes a stage's outputs before running the
        # stage command, where our own lock would stop it).
        dvc = proj.dvc("repro", "split", check=False)
        assert dvc.returncode != 0
        assert "Unable to acquire lock" in dvc.stdout + dvc.stderr
        assert "Running stage" not in dvc.stdout + dvc.stderr
        assert (proj.root / "data" / "ingested").is_dir()  # nothing deleted under the running stage
    finally:
        (gate / "release").touch()
        out, _ = smk.communicate(timeout=900)
    assert smk.returncode == 0, out  # nothing of Snakemake's run was deleted under it
    assert (proj.root / "data" / "processed").is_dir()
    # Snakemake finished and released the lock only after committing its run: DVC agrees with what it made.
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


def test_the_snakemake_sync_commits_under_the_dvc_lock_it_holds(tmp_path, monkeypatch):
    """The Snakefile commits its run to dvc.lock before it releases DVC's lock: a commit that needed the lock
    itself would be refused while we hold it (which proves the lock is real), and the one made with
    lock_held=True goes through without releasing it, so no `dvc repro` can slip in between."""
    from dvc.lock import LockError

    sys.path.insert(0, str(PROJECT_ROOT / "workflow"))
    import pipeline

    proj = Project.create(tmp_path / "proj")
    monkeypatch.chdir(proj.root)
    proj.run("seqsetvae", "ingest", "shard", "--shard", "0", "--out", "data/ingested", "--parts", "data/ingest")
    assert "ingest_shard@0" in proj.dvc_changed_stages()
    lock = runlock.acquire_dvc_lock(proj.root)
    try:
        with pytest.raises(LockError):
            pipeline.dvc_commit(proj.root, ["ingest_shard@0"], lock_held=False)
        pipeline.dvc_commit(proj.root, ["ingest_shard@0"], lock_held=True)
        # still ours: another DVC command is refused
        refused = proj.dvc("status", check=False)
        assert "Unable to acquire lock" in refused.stdout + refused.stderr
    finally:
        runlock.release_dvc_lock(lock)
    assert "ingest_shard@0" not in proj.dvc_changed_stages()


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
