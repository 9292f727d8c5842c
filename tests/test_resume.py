"""Crash and resume of the pretrain stage as a real process (`python -m seqsetvae pretrain`).

1. SIGKILL the stage parked at a known step mid-epoch, after a checkpoint (tests/stage_hang.py: no polled
   moment); only complete files are left under output names.
   Rerunning the same command resumes from last.ckpt (not from scratch) and ends with the same bytes in
   the metrics JSON and the same weights as an uninterrupted run of the same command.
2. A stage killed while it writes an output leaves the previous version of that output intact, and the
   next start removes the temporary file of the interrupted write.

Everything runs on a tiny processed cohort with a tiny model, one CPU thread, deterministic algorithms:
on one machine the two runs then execute the same floating-point operations in the same order, so the
comparison is exact, not within a tolerance.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from seqsetvae.config import params_from_dict
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import make_splits
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.training.checkpoints import best_path, last_path, load_checkpoint, model_state_dict
from seqsetvae.training.trainer import trim_curves
from tests.stage_hang import HANG_AT_STEP, run_until_parked, wait_then_kill
from tests.tiny import resume, tiny_params

EPOCHS = 5
STEPS_PER_EPOCH = 6  # trainer.limit_train_batches
# Where the killed run is parked (tests/stage_hang.py): mid-epoch 2, after the checkpoint of epoch 1.
HANG_STEP = 2 * STEPS_PER_EPOCH + 3
CKPT_STEP = 2 * STEPS_PER_EPOCH  # last.ckpt at the park: saved at the end of epoch 1
RUN_TIMEOUT_S = 300  # per subprocess: a hung stage fails the test instead of hanging the suite
TEMP_NAME = re.compile(r"^\..+\.tmp$")  # seqsetvae.io.atomic_path's temporary names: ".<name>.<random>.tmp"

# Runs the CLI with seqsetvae.io's fsync-before-rename hooked: when the temporary file of the output named
# argv[1] has been written in full (the last moment before the rename that publishes it), write the temp
# path to the marker file argv[2] and hang, so the test can SIGKILL the stage exactly mid-write.
HANG_BEFORE_RENAME = r"""
import sys, time
from pathlib import Path
import seqsetvae.io as io

target, marker = sys.argv[1], Path(sys.argv[2])
fsync = io._fsync_file

def hang_before_rename(path):
    fsync(path)
    if Path(path).name.startswith("." + target + "."):
        marker.with_suffix(".part").write_text(str(path))
        marker.with_suffix(".part").rename(marker)  # the marker appears with its content
        time.sleep(3600)

io._fsync_file = hang_before_rename
from seqsetvae.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


def tiny(raw: dict, epochs: int) -> dict:
    """The repository params, shrunk (tests/tiny.py): `epochs` epochs of STEPS_PER_EPOCH steps, one thread."""
    return tiny_params(raw, resume(epochs, STEPS_PER_EPOCH))


@pytest.fixture(scope="module")
def project(tmp_path_factory, base_params_dict) -> Path:
    """A folder with params.yaml (EPOCHS), params_more.yaml (EPOCHS + 1) and the processed tiny cohort."""
    root = tmp_path_factory.mktemp("resume")
    raw = tiny(base_params_dict, EPOCHS)
    params = params_from_dict(raw)
    result = ingest_synthetic(params.data.synthetic)
    splits, _ = make_splits(result.subjects, result.labels, params.split)
    preprocess(result.events, result.subjects, result.labels, splits, params.preprocess, root / "processed")
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    (root / "params_more.yaml").write_text(yaml.safe_dump(tiny(base_params_dict, EPOCHS + 1)), encoding="utf-8")
    # The warm-up as a share of the run: half of EPOCHS x STEPS_PER_EPOCH = 15 steps, resolved at the start and
    # kept in the checkpoint; still rising at the checkpoint the killed run resumes from (step 12).
    share = tiny(base_params_dict, EPOCHS)
    share["pretrain"].update(kl_warmup_steps=None, kl_warmup_fraction=0.5)
    (root / "params_share.yaml").write_text(yaml.safe_dump(share), encoding="utf-8")
    return root


def stage_args(project: Path, run: Path, params: str = "params.yaml") -> list[str]:
    return ["pretrain", "--params", str(project / params), "--data", str(project / "processed"), "--fold", "0",
            "--out", str(run / "out"), "--metrics", str(run / "metrics.json"), "--details", str(run / "details.json"),
            "--curves", str(run / "curves")]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run_stage(argv: list[str], cwd: Path) -> str:
    """Run a command to completion; its log (stderr) on success, a failure showing the log otherwise."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=_env())
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stderr


def _env() -> dict[str, str]:
    # One OpenMP thread as in params (trainer.num_threads), and no progress bars / colour codes in the log.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}


def curve_steps(curve: Path) -> list[int]:
    return pd.read_csv(curve, sep="\t")["step"].tolist()


def steps_logged_before(step: int) -> list[int]:
    """The training curve's steps once `step` optimiser steps are done: trainer.log_every_n_steps 2 logs the
    odd steps, each as its step ends."""
    return list(range(1, step, 2))


def output_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(files under output names, files under temporary names) in `folder`."""
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [p for p in files if not TEMP_NAME.match(p.name)], [p for p in files if TEMP_NAME.match(p.name)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return model_state_dict(load_checkpoint(path), path)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{a} and {b} differ in {len(differ)} tensors, e.g. {differ[0]}"


@pytest.fixture(scope="module")
def uninterrupted(project) -> Path:
    run = project / "uninterrupted"
    run_stage(python("-m", "seqsetvae", *stage_args(project, run)), project)
    return run


@pytest.mark.slow  # stage processes: run, killed and resumed (docs/testing.md)
def test_killed_pretrain_with_a_share_warmup_resumes_bit_identically(project):
    """pretrain.kl_warmup_fraction: the resolved warm-up length is in the checkpoint and the resumed run
    continues the same schedule: same metrics and details bytes, same weights as an uninterrupted run."""
    full, run = project / "share_uninterrupted", project / "share_killed"
    run_stage(python("-m", "seqsetvae", *stage_args(project, full, "params_share.yaml")), project)
    hooked = python("-c", HANG_AT_STEP, str(project / "hang_share"), str(HANG_STEP),
                    *stage_args(project, run, "params_share.yaml"))
    run_until_parked(hooked, project / "hang_share", cwd=project, env=_env(), log=project / "share_killed.log")
    at_kill = load_checkpoint(last_path(run / "out"))
    assert at_kill["global_step"] == CKPT_STEP
    schedule = at_kill["seqsetvae"]["schedule"]
    assert schedule["kl_warmup_steps"] == EPOCHS * STEPS_PER_EPOCH // 2 and 0 < schedule["beta"] < 1
    log = run_stage(python("-m", "seqsetvae", *stage_args(project, run, "params_share.yaml")), project)
    assert "resuming from" in log and "Restored all states from the checkpoint" in log
    assert (run / "metrics.json").read_bytes() == (full / "metrics.json").read_bytes()
    assert (run / "details.json").read_bytes() == (full / "details.json").read_bytes()
    assert_same_weights(last_path(run / "out"), last_path(full / "out"))
    assert_same_weights(best_path(run / "out"), best_path(full / "out"))
    assert '"share_at_beta_max": 0.5' in (full / "details.json").read_text()


# --------------------------------------------------------------------------------------------------
# SIGKILL after a checkpoint, then rerun


@pytest.mark.slow  # stage processes: run, killed and resumed (docs/testing.md)
def test_killed_pretrain_resumes_and_matches_an_uninterrupted_run(project, uninterrupted):
    run = project / "killed"
    curve = run / "curves" / "plots" / "metrics" / "train" / "loss_step.tsv"
    # Parked mid-epoch 2 (HANG_STEP), then SIGKILLed: epoch 1's checkpoint is saved, steps after it logged.
    hooked = python("-c", HANG_AT_STEP, str(project / "hang"), str(HANG_STEP), *stage_args(project, run))
    run_until_parked(hooked, project / "hang", cwd=project, env=_env(), log=project / "killed.log")

    # The checkpoints of the last finished epoch, complete, and nothing else: no save was in progress.
    complete, temporary = output_files(run / "out")
    assert sorted(p.name for p in complete) == ["best.ckpt", "last.ckpt"] and not temporary
    killed_at = {p.name: load_checkpoint(p) for p in complete}  # each loads (DataError on a torn file)
    assert not (run / "metrics.json").exists()  # the stage never got to its metrics
    step_at_kill = killed_at["last.ckpt"]["global_step"]
    epoch_at_kill = killed_at["last.ckpt"]["epoch"]
    assert (step_at_kill, epoch_at_kill) == (CKPT_STEP, CKPT_STEP // STEPS_PER_EPOCH - 1)
    killed_steps = curve_steps(curve)
    assert killed_steps == steps_logged_before(HANG_STEP)
    assert killed_steps[-1] > step_at_kill  # the killed run logged steps that its checkpoint does not hold
    tsvs = sorted((run / "curves" / "plots").rglob("*.tsv"))
    after_ckpt = sum(step >= step_at_kill for tsv in tsvs for step in curve_steps(tsv))  # dropped on resume

    argv = python("-m", "seqsetvae", *stage_args(project, run))
    log = run_stage(argv, project)
    assert f"resuming from {last_path(run / 'out')} (epoch {epoch_at_kill}, global step {step_at_kill})" in log
    # It continued, not restarted: Lightning reports the restore, and the end state is the full run's.
    assert "Restored all states from the checkpoint" in log
    done = load_checkpoint(last_path(run / "out"))
    assert done["global_step"] == EPOCHS * STEPS_PER_EPOCH == load_checkpoint(last_path(uninterrupted / "out"))["global_step"]

    assert (run / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()
    assert (run / "details.json").read_bytes() == (uninterrupted / "details.json").read_bytes()
    assert_same_weights(last_path(run / "out"), last_path(uninterrupted / "out"))
    assert_same_weights(best_path(run / "out"), best_path(uninterrupted / "out"))
    # Optimiser moments too: a resumed run that reinitialised Adam could still land near, never equal.
    opt_a = load_checkpoint(last_path(run / "out"))["optimizer_states"][0]["state"]
    opt_b = load_checkpoint(last_path(uninterrupted / "out"))["optimizer_states"][0]["state"]
    assert all(torch.equal(opt_a[i][k], opt_b[i][k]) for i in opt_b for k in opt_b[i])

    # The killed run's steps after its checkpoint were dropped on resume and logged again, so every curve
    # holds each step once, with the same points as the uninterrupted run.
    assert f"resume: dropped {after_ckpt} curve rows logged after the checkpoint (step >= {step_at_kill})" in log
    for tsv in sorted((uninterrupted / "curves" / "plots").rglob("*.tsv")):
        resumed = run / tsv.relative_to(uninterrupted)
        assert resumed.read_text() == tsv.read_text(), f"{resumed} differs from the uninterrupted run's curve"
    assert curve_steps(curve) == steps_logged_before(EPOCHS * STEPS_PER_EPOCH)


def test_trim_curves_drops_rows_from_the_checkpoint_step_on_and_keeps_the_rest_verbatim(tmp_path):
    metrics = tmp_path / "plots" / "metrics"
    (metrics / "train").mkdir(parents=True)
    step_curve = "step\tloss_step\n1\t35.197757720947266\n3\t1e-05\n5\t34.0\n7\t33.5\n"
    (metrics / "train" / "loss_step.tsv").write_text(step_curve)
    (metrics / "loss.tsv").write_text("timestamp\tstep\tloss\n100\t5\t2.5\n")  # step need not be column 0
    assert trim_curves(tmp_path, 6) == 1
    assert (metrics / "train" / "loss_step.tsv").read_text() == step_curve.removesuffix("7\t33.5\n")
    assert trim_curves(tmp_path, 5) == 2  # step 5 of each file: logged at or after a checkpoint at step 5
    assert (metrics / "loss.tsv").read_text() == "timestamp\tstep\tloss\n"
    assert trim_curves(tmp_path / "absent", 0) == 0


# --------------------------------------------------------------------------------------------------
# SIGKILL mid-write


@pytest.mark.slow  # stage processes, each killed mid-write (docs/testing.md)
@pytest.mark.parametrize(
    ("target", "params_file"),
    [
        # Rerun with the same params: nothing left to train, the stage rewrites its metrics JSON.
        ("metrics.json", "params.yaml"),
        # One more epoch: the stage trains it and saves last.ckpt.
        ("last.ckpt", "params_more.yaml"),
    ],
)
def test_stage_killed_mid_write_leaves_the_previous_output_intact(project, uninterrupted, target, params_file):
    run = project / f"midwrite_{target}"
    if run.exists():
        pytest.fail(f"{run} exists: parametrised runs must not share a folder")
    # Start from a finished run's outputs (copied: the uninterrupted run is compared elsewhere).
    (run / "out").mkdir(parents=True)
    for src in (best_path(uninterrupted / "out"), last_path(uninterrupted / "out")):
        (run / "out" / src.name).write_bytes(src.read_bytes())
    (run / "metrics.json").write_bytes((uninterrupted / "metrics.json").read_bytes())
    output = run / "metrics.json" if target == "metrics.json" else last_path(run / "out")
    previous = output.read_bytes()

    marker = run / "writing"
    argv = python("-c", HANG_BEFORE_RENAME, target, str(marker), *stage_args(project, run, params_file))
    log = project / f"{run.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=project, stdout=out, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
    wait_then_kill(proc, marker, f"the stage writing {target}", log)
    temp = Path(marker.read_text())

    # The new content was complete in the temporary file, but the kill came before the rename: the output
    # name still holds the previous version, byte for byte, and nothing reads the temporary name.
    assert temp.is_file() and TEMP_NAME.match(temp.name) and temp.parent == output.parent
    assert output.read_bytes() == previous
    if target == "last.ckpt":
        assert load_checkpoint(output)["epoch"] == EPOCHS - 1
    complete, temporary = output_files(output.parent)
    assert temp in temporary and output in complete

    if target == "last.ckpt":
        # The next start removes the checkpoint's stray temporary file (prepare_out_dir cleans --out) and
        # finishes the job. (A metrics file's temporary sibling is left beside it under a name nothing reads.)
        log = run_stage(python("-m", "seqsetvae", *stage_args(project, run, params_file)), project)
        assert f"removing {temp}, left by an interrupted write" in log and not temp.exists()
        assert load_checkpoint(output)["epoch"] == EPOCHS
