"""Park a pretrain stage at a known training step and SIGKILL it there: the kill tests' one mechanism.

A kill test must act on a state it knows, not on a moment it polled for. Polling the stage's files every
few milliseconds and killing when they look right fails on a loaded machine: between the check and the
kill the stage can finish its epoch, save another checkpoint, or end. Instead the stage runs through
HANG_AT_STEP, which hooks the pretrain LightningModule: when training reaches a given global step and the
hook is armed, it says so (a marker file) and sleeps. The test waits for the marker, then kills. What is
on disk is then exactly the state at that step, however slow the machine: the checkpoints of the epochs
before it and the curve rows of the steps before it (DVCLive appends each row to its TSV, opening and
closing the file, as it is logged).

The hook fires once per arming: `run_until_parked` arms it, the hook consumes the arming when it parks.
Any other run through the same wrapper (the resumed run, a reference run) trains straight through, so a
runner's stage command can go through the wrapper for a whole test module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ARMED = "armed"  # present: the next run through HANG_AT_STEP parks at its step
PARKED = "parked"  # written by the parked stage: it will not move on from here
HANG_GUARD_S = 600  # only against a stage that never parks; no outcome depends on how long parking takes

# Run as `python -c HANG_AT_STEP HANG_DIR STEP CLI_ARGS...` (or from a file of this text): the seqsetvae CLI
# with PretrainModule.training_step hooked. Entering the training step at global step STEP (STEP optimiser
# steps taken) with HANG_DIR/armed present, it renames armed to parked and sleeps until killed.
HANG_AT_STEP = r"""
import sys, time
from pathlib import Path
from seqsetvae.training.pretrain_module import PretrainModule

hang, step = Path(sys.argv[1]), int(sys.argv[2])
training_step = PretrainModule.training_step

def park_at_step(self, batch, batch_idx):
    if int(self.global_step) == step and (hang / "armed").exists():
        (hang / "armed").rename(hang / "parked")
        time.sleep(3600)
    return training_step(self, batch, batch_idx)

PretrainModule.training_step = park_at_step
from seqsetvae.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


def wait_then_kill(proc: subprocess.Popen, marker: Path, what: str, log: Path, timeout: float = HANG_GUARD_S) -> None:
    """Wait until `marker` exists while `proc` (started in a session of its own) runs, then SIGKILL its whole
    process group (a runner and the stage under it). Fails if `proc` ends first; `log` holds its output."""
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"{what}: it exited ({proc.returncode}) first; log:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not reached in {timeout} s (a hang guard); log:\n{_tail(log)}")
            time.sleep(0.05)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group is gone: proc exited first (the failure above says so)
            pass
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"{what}: it ended on its own ({proc.returncode}) before the kill"


def run_until_parked(argv: list[str], hang: Path, *, cwd: Path, env: dict[str, str], log: Path) -> None:
    """Arm the hook in `hang`, run `argv` (a command whose pretrain stage goes through HANG_AT_STEP with
    `hang`) with its output in `log`, and SIGKILL it, runner and stage, once the stage has parked."""
    hang.mkdir(parents=True, exist_ok=True)
    (hang / PARKED).unlink(missing_ok=True)
    (hang / ARMED).touch()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_then_kill(proc, hang / PARKED, f"{argv[:3]} parking at its hang step", log)
    assert not (hang / ARMED).exists()


def _tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"
