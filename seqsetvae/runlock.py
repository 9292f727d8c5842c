"""One pipeline run at a time per project, whichever runner starts it.

Snakemake locks its working directory only against other Snakemake runs, DVC its repository only against
other DVC commands: a `dvc repro` started while `snakemake` runs (or the other way round) would write the
same outputs at once. Both runners therefore take one advisory lock, `.seqsetvae-run.lock` in the project
folder (the folder of params.yaml):

- the Snakefile takes it in the main Snakemake process for the whole run (not for dry runs) and exports
  SEQSETVAE_RUN_LOCK_HELD=1, so the stage commands it launches run under its lock;
- every stage command (`seqsetvae <stage>`, which is what `dvc repro` runs) takes it for its own duration
  unless it was launched under a holder; the processes it starts itself (extra DDP ranks) inherit the mark.

A second run is refused with a message naming the holder; it never waits, so nothing hangs. The lock is an
flock: released by the kernel when the holder exits, however it exits, so a crash leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_NAME = ".seqsetvae-run.lock"
HELD_ENV = "SEQSETVAE_RUN_LOCK_HELD"


class RunLockedError(RuntimeError):
    """Another pipeline run holds the project's run lock."""


def acquire(root: str | Path, holder: str) -> int:
    """Take the project's run lock without waiting; return the open descriptor that holds it."""
    path = Path(root) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        current = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"{path}: another pipeline run is in progress ({current}); wait for it to finish, "
            "one run at a time per project (Snakemake and DVC write the same outputs)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}, pid {os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def run_lock(root: str | Path, holder: str) -> Iterator[None]:
    """Hold the run lock for the block, unless this process runs under a holder (HELD_ENV=1)."""
    if os.environ.get(HELD_ENV) == "1":
        yield
        return
    fd = acquire(root, holder)
    # Processes this holder starts (e.g. the extra DDP ranks Lightning launches by re-running the command)
    # work for it: they inherit the mark and skip the lock.
    os.environ[HELD_ENV] = "1"
    try:
        yield
    finally:
        del os.environ[HELD_ENV]
        release(fd)


def acquire_dvc_lock(root: str | Path) -> Any:
    """Hold DVC's own repository lock (`.dvc/tmp/lock`, zc.lockfile, as DVC takes it) for a Snakemake run.

    Why: our run lock stops a stage *command*, but `dvc repro` removes a stage's outputs before it starts
    the command, so a `dvc repro` during a Snakemake run deleted outputs Snakemake had just made, and only
    then was refused. Holding DVC's lock refuses `dvc repro` (and every other locking DVC command) before
    it touches anything: DVC retries for a few seconds, then exits with "Unable to acquire lock".
    Returns the held lock (release with `release_dvc_lock`), or None in a folder that is not a DVC project.
    The kernel drops it when the process exits. A project with DVC's `core.hardlink_lock` is not covered.
    """
    import zc.lockfile

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        return None
    (dvc_dir / "tmp").mkdir(exist_ok=True)
    path = dvc_dir / "tmp" / "lock"
    try:
        return zc.lockfile.LockFile(str(path))
    except zc.lockfile.LockError:
        raise RunLockedError(f"a DVC command is running in {Path(root)} (it holds {path}); "
                             "wait for it to finish") from None


def release_dvc_lock(lock: Any) -> None:
    if lock is not None:
        lock.close()
