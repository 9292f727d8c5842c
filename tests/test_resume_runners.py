"""Crash and resume under the runners: SIGKILL `snakemake` / `dvc repro` (and the stage under it) mid-pretrain.

A runner deletes a stage's declared outputs before it reruns it, so last.ckpt in `--out` cannot survive a
rerun; the stage's resume store beside it (`models/pretrain/.fold_0.resume`, not a declared output) does.
Shown here, in a throwaway copy of the project on a tiny cohort, whose pretrain stage command goes through
tests/stage_hang.py's hook: the kill lands at a known training step (mid-epoch 2, after epoch 1's
checkpoint), not at a polled moment.

1. Snakemake killed mid-pretrain marks the output incomplete (a plain rerun refuses it), and after
   `snakemake --unlock`, `--rerun-incomplete` resumes from the store's checkpoint instead of starting afresh.
2. `dvc repro` killed mid-pretrain leaves dvc.lock untouched (the stage shows as changed), and the next
   `dvc repro` resumes the same way.
3. Both resumed runs end with the same metrics bytes as an uninterrupted run (one CPU thread,
   deterministic algorithms: the same floating-point operations in the same order).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from seqsetvae.config import deep_merge
from seqsetvae.training.checkpoints import BLOCK, last_path, load_checkpoint
from seqsetvae.training.resume import resume_store
from tests.pipeline_project import Project
from tests.stage_hang import HANG_AT_STEP, run_until_parked
from tests.test_resume import CKPT_STEP, HANG_STEP, STEPS_PER_EPOCH, curve_steps, steps_logged_before

pytestmark = pytest.mark.slow

EPOCHS = 5
OUT = Path("models/pretrain/fold_0")
METRICS = Path("metrics/pretrain/fold_0.json")
STEP_CURVE = Path("curves/pretrain/fold_0/plots/metrics/train/loss_step.tsv")

OVERRIDES = {
    "pretrain": {"max_epochs": EPOCHS, "kl_warmup_steps": 1000},  # beta changes every step: a lost step shows
    "trainer": {"limit_train_batches": STEPS_PER_EPOCH, "log_every_n_steps": 2, "early_stopping_patience": 0},
}


PRETRAIN_CMD = "seqsetvae pretrain --data"  # the start of the pretrain stage's cmd in dvc.yaml


def hang_dir(proj: Project) -> Path:
    return proj.root.parent / "hang"  # outside the project: no runner sees it


def hook_pretrain(proj: Project) -> None:
    """Run the pretrain stage, under both runners, through HANG_AT_STEP (written into the project): it parks
    at HANG_STEP when armed, and trains straight through otherwise. dvc.yaml is the stage definition both
    runners read; this copy's is edited before anything runs, so every run sees the same command."""
    (proj.root / "hang_pretrain.py").write_text(HANG_AT_STEP)
    dvc_yaml = proj.root / "dvc.yaml"
    assert dvc_yaml.read_text().count(PRETRAIN_CMD) == 1
    hooked = f"python hang_pretrain.py {hang_dir(proj)} {HANG_STEP} pretrain --data"
    dvc_yaml.write_text(dvc_yaml.read_text().replace(PRETRAIN_CMD, hooked))


def kill_runner_mid_pretrain(proj: Project, argv: list[str], log: str) -> dict:
    """Run a runner until its pretrain stage parks at HANG_STEP, then SIGKILL both. Returns the schedule of
    the resume store's last.ckpt at the kill: epoch 1's, the last checkpoint before the park."""
    run_until_parked(argv, hang_dir(proj), cwd=proj.root, env=proj.env, log=proj.root.parent / log)
    block = load_checkpoint(last_path(resume_store(proj.root / OUT)))[BLOCK]["schedule"]
    assert (block["global_step"], block["epoch"]) == (CKPT_STEP, CKPT_STEP // STEPS_PER_EPOCH - 1), block
    assert curve_steps(proj.root / STEP_CURVE) == steps_logged_before(HANG_STEP)  # steps past the checkpoint
    return block


def resumed_message(block: dict) -> str:
    return f"resuming from {last_path(OUT)} (epoch {block['epoch']}, global step {block['global_step']})"


@pytest.fixture(scope="module")
def proj(tmp_path_factory, tiny_run) -> Project:
    """The session's whole tiny run with OVERRIDES: the stages before pretrain are up to date, so the runners
    run pretrain (its params changed) and nothing before it."""
    proj = tiny_run.copy_to(tmp_path_factory.mktemp("resume_runners") / "proj")
    proj.write_params(deep_merge(proj.params(), OVERRIDES))
    hook_pretrain(proj)
    return proj


def test_snakemake_killed_mid_pretrain_marks_it_incomplete_and_resumes(proj):
    at_kill = kill_runner_mid_pretrain(proj, ["snakemake", "--cores", "1", "pretrain_0"], "snakemake.log")
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
    at_kill = kill_runner_mid_pretrain(proj, ["dvc", "repro", "--single-item", "pretrain@0"], "dvc_repro.log")
    assert (proj.root / "dvc.lock").read_bytes() == lock_before, "a killed dvc repro must not update dvc.lock"
    assert "pretrain@0" in proj.dvc_changed_stages()

    out = proj.dvc("repro", "--single-item", "pretrain@0")
    assert resumed_message(at_kill) in out.stdout + out.stderr
    assert not resume_store(proj.root / OUT).exists()
    resumed_by_dvc = (proj.root / METRICS).read_bytes()
    assert resumed_by_dvc != resumed_by_snakemake  # the new seed trained another model
    assert resumed_by_dvc == uninterrupted_metrics(proj)
