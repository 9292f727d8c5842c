"""One training stage's lifecycle, the steps pretrain and finetune share (stages/pretrain.py, stages/finetune.py).

    start_run          seed python / numpy / torch, set torch's thread count (before the stage builds its model)
    train_and_record   prepare the output folder; resume (or not) from last.ckpt; build the Trainer; fit;
                       on the writing rank: evaluate best.ckpt, write the details and metrics JSON, then
                       SHA256SUMS (the mark of a finished run) and drop the resume store; a failure on the way
                       marks the folder INCOMPLETE (resume.incomplete_on_failure)

What differs between the stages comes in as callables: how the module is fitted (`fit`), what is measured from
best.ckpt (`evaluate`, which also writes the stage's own files beside the checkpoints or elsewhere) and what the
metrics file holds (`headline`). See docs/training.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L

from seqsetvae.config import TrainerParams
from seqsetvae.io import write_json
from seqsetvae.threads import use_torch_threads
from seqsetvae.training.checkpoints import best_path, load_checkpoint, project_block, remove_checksums, write_checksums
from seqsetvae.training.distributed import is_writer, launch_rank
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.module import ProjectModule
from seqsetvae.training.resume import finish_run, incomplete_on_failure, prepare_out_dir, resume_checkpoint
from seqsetvae.training.rng import seed_everything
from seqsetvae.training.trainer import Monitor, build_trainer

# fit(trainer, ckpt): train the stage's module, resuming from `ckpt` when it is not None.
Fit = Callable[[L.Trainer, Path | None], None]
# evaluate(trainer, best): the figures measured from best.ckpt (unrounded; round_metrics rounds them all).
Evaluate = Callable[[L.Trainer, Path], dict[str, Any]]


@dataclass(frozen=True)
class StageOutputs:
    """Where a training stage writes: the checkpoint folder, the metrics and details JSON, the curves."""

    out: Path  # best.ckpt, last.ckpt, SHA256SUMS (and INCOMPLETE after a failed run)
    metrics: Path  # `headline` of the details: what DVC compares
    details: Path | None  # everything measured; None: not written
    curves: Path | None  # DVCLive folder; None: no curves
    finals: tuple[str, ...] = ()  # the stage's own files in `out`, removed with SHA256SUMS when the run fails


@dataclass(frozen=True)
class Schedule:
    """How long the Trainer trains and what chooses best.ckpt (trainer.build_trainer)."""

    monitor: Monitor
    max_epochs: int
    grad_clip_norm: float
    epochs_per_validation: int = 1


def start_run(seed: int, trainer: TrainerParams) -> int:
    """Seed every random stream and set torch's thread count; the thread count used (results can depend on
    it: seqsetvae/threads.py). Called before the stage builds its model, so its initial weights are seeded."""
    seed_everything(seed)
    return use_torch_threads(trainer.num_threads)


def train_and_record(
    module: ProjectModule,
    trainer: TrainerParams,
    outputs: StageOutputs,
    schedule: Schedule,
    *,
    num_threads: int,
    fit: Fit,
    evaluate: Evaluate,
    headline: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any] | None:
    """Train `module` (or resume it) into `outputs.out`, evaluate best.ckpt and write the outputs; returns the
    details (rounded): `best` (best.ckpt's epoch and global step), `num_threads`, and what `evaluate` measured.

    Under DDP only global rank 0 evaluates and writes; the other ranks return None after training."""
    out = outputs.out
    prepare_out_dir(out)
    with incomplete_on_failure(out, outputs.finals):
        ckpt = resume_checkpoint(out, module, outputs.curves)
        if launch_rank() == 0:
            remove_checksums(out)  # training rewrites the files they describe; recorded again at the end
        lightning_trainer = build_trainer(
            trainer,
            max_epochs=schedule.max_epochs,
            epochs_per_validation=schedule.epochs_per_validation,
            grad_clip_norm=schedule.grad_clip_norm,
            out_dir=out,
            curves_dir=outputs.curves,
            monitor=schedule.monitor,
            resume=ckpt is not None,
        )
        fit(lightning_trainer, ckpt)
        if not is_writer(lightning_trainer):
            return None

        best = best_path(out)
        block = project_block(load_checkpoint(best), best, kind=module.kind)
        result = {"best": {k: block["schedule"][k] for k in ("epoch", "global_step")},
                  "num_threads": num_threads,  # results can depend on it (seqsetvae/threads.py)
                  **evaluate(lightning_trainer, best)}
        result = round_metrics(result)
        if outputs.details is not None:
            write_json(outputs.details, result)
        write_json(outputs.metrics, headline(result))
        # Last, once every other output is written: SHA256SUMS marks a finished run (incomplete_on_failure).
        write_checksums(out)  # best.ckpt and last.ckpt as final: every later load checks them
        finish_run(out)  # every output is written: the resume store has served its purpose
        return result
