"""Crash and resume under the runners: SIGKILL `snakemake` / `dvc repro` (and the stage under it) mid-pretrain.

A runner deletes a stage's declared outputs before it reruns it, so last.ckpt in `--out` cannot survive a
rerun; the stage's resume store beside it (`models/pretrain/.fold_0.resume`, not a declared output) does.
Shown here, in a throwaway copy of the project on a tiny cohort:

1. Snakemake killed mid-pretrain marks the output incomplete (a plain rerun refuses it), and after
   `snakemake --unlock`, `--rerun-incomplete` resumes from the store's checkpoint instead of starting afresh.
2. `dvc repro` killed mid-pretrain leaves dvc.lock untouched (the stage shows as changed), and the next
   `dvc repro` resumes the same way.
3. Both resumed runs end with the same metrics bytes as an uninterrupted run (one CPU thread,
   deterministic algorithms: the same floating-point operations in the same order).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from seqsetvae.training.checkpoints import BLOCK, load_checkpoint
from seqsetvae.training.runner import last_path, resume_store
from tests.pipeline_project import Project
from tests.test_resume import STEPS_PER_EPOCH, mid_epoch

pytestmark = pytest.mark.slow

EPOCHS = 5
TIMEOUT_S = 300
OUT = Path("models/pretrain/fold_0")
METRICS = Path("metrics/pretrain/fold_0.json")
STEP_CURVE = Path("curves/pretrain/fold_0/plots/metrics/train/loss_step.tsv")

OVERRIDES = {
    "pretrain": {"max_epochs": EPOCHS, "kl_warmup_steps": 1000},  # beta changes every step: a lost step shows
    "trainer": {"limit_train_batches": STEPS_PER_EPOCH, "log_every_n_steps": 2, "early_stopping_patience": 0},
}


def kill_runner_mid_pretrain(proj: Project, argv: list[str]) -> dict:
    """Start a runner in its own process group; once the resume store holds a checkpoint and the curve shows
    steps after it, SIGKILL the whole group (runner and stage). Returns the store's last.ckpt at the kill."""
    proc = subprocess.Popen(argv, cwd=proj.root, env=proj.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    store_last = last_path(resume_store(proj.root / OUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not (store_last.exists() and mid_epoch(proj.root / STEP_CURVE)):
            if proc.poll() is not None:
                pytest.fail(f"{argv} exited ({proc.returncode}) before a checkpoint:\n{proc.communicate()[0][-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{argv}: no checkpoint within {TIMEOUT_S} s")
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"{argv} ended on its own ({proc.returncode}) before the kill"
    block = load_checkpoint(store_last)[BLOCK]["schedule"]
    assert 0 < block["global_step"] < EPOCHS * STEPS_PER_EPOCH, block
    return block


def resumed_message(block: dict) -> str:
    return f"resuming from {last_path(OUT)} (epoch {block['epoch']}, global step {block['global_step']})"


@pytest.fixture(scope="module")
def proj(tmp_path_factory) -> Project:
    return Project.create(tmp_path_factory.mktemp("resume_runners") / "proj", OVERRIDES)


def test_snakemake_killed_mid_pretrain_marks_it_incomplete_and_resumes(proj):
    at_kill = kill_runner_mid_pretrain(proj, ["snakemake", "--cores", "1", "pretrain_0"])
    assert not (proj.root / METRICS).exists()

    # Snakemake's own marker: a plain rerun refuses the half-made output instead of taking it as finished.
    refused = proj.snakemake("-n", "pretrain_0", check=False)
    assert refused.returncode != 0
    assert "incomplete" in (refused.stdout + refused.stderr).lower()
    assert str(OUT) in refused.stdout + refused.stderr

    # A killed Snakemake also leaves its directory lock; `--unlock` is the documented way to clear it.
    proj.snakemake("--unlock")
    proj.snakemake("--rerun-incomplete", "pretrain_0")
    log = (proj.root / "logs" / "pretrain@0.log").read_text()
    assert "restoring the interrupted run's state" in log
    assert resumed_message(at_kill) in log
    assert "Restored all states from the checkpoint" in log
    assert load_checkpoint(proj.root / last_path(OUT))["global_step"] == EPOCHS * STEPS_PER_EPOCH
    assert not resume_store(proj.root / OUT).exists(), "a finished stage removes its resume store"


def uninterrupted_metrics(proj: Project) -> bytes:
    """The reference: the same stage rerun from scratch, uninterrupted (--force removes its outputs first,
    --no-run-cache keeps DVC from restoring them from its run cache instead of running)."""
    fresh = proj.dvc("repro", "--force", "--no-run-cache", "--single-item", "pretrain@0")
    assert "resuming from" not in fresh.stdout + fresh.stderr
    assert not resume_store(proj.root / OUT).exists()
    return (proj.root / METRICS).read_bytes()


def test_dvc_repro_killed_mid_pretrain_leaves_the_lock_and_resumes(proj):
    resumed_by_snakemake = (proj.root / METRICS).read_bytes()
    assert "pretrain@0" not in proj.dvc_changed_stages()  # Snakemake's onsuccess committed it to dvc.lock
    assert resumed_by_snakemake == uninterrupted_metrics(proj)

    # A run DVC has never seen (a new pretrain seed: nothing in its run cache), killed mid-training.
    proj.set_param("pretrain.seed", 1)
    lock_before = (proj.root / "dvc.lock").read_bytes()
    at_kill = kill_runner_mid_pretrain(proj, ["dvc", "repro", "--single-item", "pretrain@0"])
    assert (proj.root / "dvc.lock").read_bytes() == lock_before, "a killed dvc repro must not update dvc.lock"
    assert "pretrain@0" in proj.dvc_changed_stages()

    out = proj.dvc("repro", "--single-item", "pretrain@0")
    assert resumed_message(at_kill) in out.stdout + out.stderr
    assert not resume_store(proj.root / OUT).exists()
    resumed_by_dvc = (proj.root / METRICS).read_bytes()
    assert resumed_by_dvc != resumed_by_snakemake  # the new seed trained another model
    assert resumed_by_dvc == uninterrupted_metrics(proj)
