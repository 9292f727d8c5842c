"""Resuming a training run: which last.ckpt continues it, and the resume store that outlives a runner's cleanup.

Checkpoint layout of a training output folder (`--out`; names and paths in checkpoints.py):

    best.ckpt   the epoch with the best monitored validation metric (ModelCheckpoint, save_top_k=1)
    last.ckpt   the end of the latest epoch; if it exists when a stage starts, training RESUMES from it

Both are written atomically (temporary file, fsync, rename; see trainer.AtomicCheckpointIO), so an
interrupted run leaves either the previous complete file or the new one, never a torn one.

The runners delete a stage's declared outputs before they rerun it (Snakemake always, DVC unless `persist`),
which would take last.ckpt with them: a crash under `snakemake` or `dvc repro` would then restart training
from scratch. So every save of last.ckpt is mirrored into the stage's resume store, `.<out>.resume/` beside
`--out` (see `resume_store`; hard links, no extra disk): best.ckpt, last.ckpt and a copy of the curves. It is
not a declared output, so no runner removes it; a rerun that finds `--out` without last.ckpt restores the
store's files into it and resumes. A stage that finishes removes its store. A resumed run restores the
global step (which drives the KL warm-up), the epoch, optimiser moments, the callbacks' state (best score,
early-stopping counter) and the RNG states (rng.py), so it continues exactly where the last epoch ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seqsetvae.io import atomic_path, write_text
from seqsetvae.training.checkpoints import SUMS, best_path, last_path, load_checkpoint, project_block
from seqsetvae.training.distributed import launch_rank
from seqsetvae.training.module import ProjectModule

log = logging.getLogger(__name__)

RESUME_SUFFIX = ".resume"
INCOMPLETE = "INCOMPLETE"  # in a training output folder whose run failed (incomplete_on_failure)
STORE_CURVES = "curves"


def resume_store(out_dir: str | Path) -> Path:
    """The resume store of a training output folder: `.<name>.resume` beside it (models/pretrain/fold_0 ->
    models/pretrain/.fold_0.resume). Outside the declared outputs, so a runner never deletes it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}{RESUME_SUFFIX}"


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put `src` at `dst` atomically: a hard link where the file system allows one, a copy otherwise."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _put_state(src: Path, dst: Path, src_curves: Path | None, dst_curves: Path | None) -> None:
    """Put the resume state of checkpoint folder `src` into `dst`: best.ckpt, then the curves, then last.ckpt.

    Order matters for a kill between the steps: last.ckpt, the commit point, is never newer in `dst` than its
    best.ckpt and curves. (An older last.ckpt with a newer best.ckpt is harmless: the resumed run retrains
    that epoch and writes the same best.ckpt again.) Checkpoints are only ever replaced by rename, never
    written in place, so a hard link keeps the exact bytes it was made from.
    """
    dst.mkdir(parents=True, exist_ok=True)
    if best_path(src).exists():
        _link_or_copy(best_path(src), best_path(dst))
    if src_curves is not None and dst_curves is not None and src_curves.is_dir():
        with atomic_path(dst_curves, is_dir=True, marked=False) as tmp:  # DVCLive's folder (io.atomic_path)
            shutil.copytree(src_curves, tmp, dirs_exist_ok=True)
    _link_or_copy(last_path(src), last_path(dst))


def mirror_to_store(out_dir: Path, curves_dir: Path | None) -> None:
    """Mirror the resume state of `out_dir` (just after last.ckpt was saved) into its resume store."""
    store = resume_store(out_dir)
    _put_state(out_dir, store, None if curves_dir is None else Path(curves_dir), store / STORE_CURVES)


def restore_from_store(out_dir: Path, curves_dir: Path | None) -> bool:
    """If `out_dir` has no last.ckpt but its resume store has one, put the store's checkpoints (and curves)
    back in place; True when it did. What a rerun under a runner, which deleted the outputs, resumes from."""
    store = resume_store(out_dir)
    if last_path(out_dir).exists() or not last_path(store).exists():
        return False
    log.info("%s has no last.ckpt (a runner removes a stage's outputs before rerunning it): restoring the "
             "interrupted run's state from %s", out_dir, store)
    _put_state(store, out_dir, store / STORE_CURVES, None if curves_dir is None else Path(curves_dir))
    return True


def finish_run(out_dir: Path) -> None:
    """A training stage finished and wrote its outputs: its resume store is no longer needed, nor the mark
    of an earlier failed run (`INCOMPLETE`)."""
    (Path(out_dir) / INCOMPLETE).unlink(missing_ok=True)
    store = resume_store(out_dir)
    if store.exists():
        shutil.rmtree(store)


@contextlib.contextmanager
def incomplete_on_failure(out_dir: Path, finals: tuple[str, ...] = ()) -> Iterator[None]:
    """Around a training stage's work on `out_dir`, from `prepare_out_dir` to its last output: if it fails,
    `out_dir` must not look finished. Its `SHA256SUMS` (the stage writes it last, after every other output:
    it is the mark of a finished run) and the files named in `finals` go, and `INCOMPLETE` says what failed.
    The checkpoints stay, and the resume store beside the folder: a rerun resumes from them, and its success
    removes `INCOMPLETE` (`finish_run`). A killed process cannot write the mark; it leaves no SHA256SUMS
    either. Only the process launched as rank 0 changes the folder."""
    try:
        yield
    except BaseException as e:
        if launch_rank() == 0 and Path(out_dir).is_dir():
            reason = str(e).splitlines()[0][:500] if str(e) else ""
            try:
                for name in (SUMS, *finals):
                    (Path(out_dir) / name).unlink(missing_ok=True)
                write_text(Path(out_dir) / INCOMPLETE,
                           f"This training run failed ({type(e).__name__}: {reason}); its outputs are not complete.\n"
                           "Rerun the stage: it resumes from last.ckpt (here or in the resume store beside this "
                           "folder).\n")
            except OSError as os_error:  # a full or read-only disk: the original error is the one to report
                log.warning("could not mark %s incomplete: %s", out_dir, os_error)
        raise


def resume_checkpoint(out_dir: Path, module: ProjectModule, curves_dir: Path | None = None) -> Path | None:
    """last.ckpt in `out_dir` if it continues this very run (same kind, architecture, params and inputs).

    Without one in `out_dir`, the resume store's is restored first (a runner deleted the outputs of the
    interrupted run; see `resume_store`). A last.ckpt of any other run (params changed since, new data,
    another pretrained backbone) is stale: the runners rerun the stage because something changed, so it is
    removed, with the store, and training starts afresh. Resuming it would silently reuse a model trained
    with the old settings.
    """
    path = last_path(out_dir)
    if launch_rank() == 0:
        restore_from_store(out_dir, curves_dir)
    elif not path.exists() and last_path(resume_store(out_dir)).exists():
        path = last_path(resume_store(out_dir))  # ranks started at once (SLURM): the same bytes as rank 0's
    if not path.exists():
        return None
    block = project_block(load_checkpoint(path), path, kind=module.kind)
    architecture = module.architecture()
    if block["architecture"] != architecture:
        stale = _first_difference(block["architecture"], architecture)
    elif block.get("fingerprint") != module.run_fingerprint:
        stale = "params or inputs changed since it was written"
    else:
        log.info(
            "resuming from %s (epoch %d, global step %d)",
            path, block["schedule"]["epoch"], block["schedule"]["global_step"],
        )
        return path
    log.info("not resuming from %s: another run (%s); starting afresh", path, stale)
    if launch_rank() == 0:
        for old in (path, best_path(out_dir)):
            old.unlink(missing_ok=True)
        finish_run(out_dir)
    return None


def _first_difference(a: Any, b: Any, key: str = "") -> str:
    """Where two architecture records first differ, for the log line that says why a run starts afresh."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
    return f"{key or 'value'}: checkpoint {a!r}, now {b!r}"


def prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir`; remove stray temporary files of an interrupted atomic write (never a real output).

    Only the process launched as rank 0 removes anything: under DDP the other ranks run this too.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if launch_rank() != 0:
        return
    for stray in out_dir.glob(".*.tmp"):
        if stray.is_file():
            log.info("removing %s, left by an interrupted write", stray)
            stray.unlink()
