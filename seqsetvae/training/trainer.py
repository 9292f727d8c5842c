"""The Lightning Trainer both training stages run: built from params, with best + last checkpoints written
atomically (and mirrored into the resume store, resume.py), early stopping, and DVCLive curves."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from dvclive.lightning import DVCLiveLogger
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from seqsetvae.config import ParamsError, TrainerParams
from seqsetvae.io import atomic_path, write_text
from seqsetvae.training.checkpoints import BEST, LAST, load_checkpoint
from seqsetvae.training.resume import mirror_to_store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks best.ckpt and drives early stopping."""

    metric: str  # e.g. "val/loss"
    mode: str  # "min" | "max"


def _in_warmup(trainer: L.Trainer) -> bool:
    """The module says its objective is still changing (PretrainModule.in_warmup: the KL warm-up); other
    modules have no such phase."""
    in_warmup = getattr(trainer.lightning_module, "in_warmup", None)
    return bool(in_warmup()) if callable(in_warmup) else False


class SelectAfterWarmupCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose best.ckpt compares epochs only once the module's warm-up is over.

    The monitored val/loss is computed at the beta the epoch trained with, so epochs inside the KL warm-up are
    not comparable with each other or with later ones. While the warm-up runs, best.ckpt is the latest epoch
    and its score is recorded as the worst possible, so the first epoch after the warm-up replaces it and
    later ones compete on one objective. That state is ModelCheckpoint's own, saved in last.ckpt: a resume
    continues it. Without a warm-up (finetune) this is ModelCheckpoint unchanged."""

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if not _in_warmup(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)
            return
        self.best_k_models, self.kth_best_model_path, self.best_model_path = {}, "", ""
        self.best_model_score = None
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        worst = torch.tensor(float("inf") if self.mode == "min" else float("-inf"))
        self.best_k_models = {path: worst for path in self.best_k_models}
        self.best_model_score = self.kth_value = worst

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"  # ModelCheckpoint's: earlier checkpoints resume


class SelectAfterWarmupEarlyStopping(EarlyStopping):
    """EarlyStopping that starts counting once the module's warm-up is over (see the checkpoint above)."""

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        if not _in_warmup(trainer):
            super()._run_early_stopping_check(trainer)

    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{EarlyStopping.__qualname__}{kwargs!r}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes through seqsetvae.io.atomic_path and loads with weights_only=True.

    Every save of last.ckpt is then mirrored into the resume store (resume.mirror_to_store). Loading through
    `load_checkpoint` means a resume from a file with a pickle payload, or a truncated one, stops with a
    DataError naming it instead of unpickling it or failing deep inside Lightning.
    """

    def __init__(self, curves_dir: Path | None = None):
        super().__init__()
        self.curves_dir = curves_dir

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # Through a file object: torch.save then names the zip's inner folder "archive", not after the
            # random temporary file, so the same checkpoint content gives the same bytes (and sha256).
            torch.save(checkpoint, f)
        if Path(path).name == LAST:
            mirror_to_store(Path(path).parent, self.curves_dir)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)


def curves_logger(curves_dir: str | Path, resume: bool) -> Any:
    """DVCLive's Lightning logger writing to `curves_dir`: no dvc.yaml, no git experiment, no Studio.

    On a fresh run DVCLive clears the folder's previous curves; on a resume it appends to them (steps go on).
    The `Live` object is created on first use and on global rank 0 only (DVCLiveLogger builds it from these
    keyword arguments): another rank creating it would clear the folder that rank 0 writes to, and an
    eager one could not be pickled into ddp_spawn workers.
    """
    # Offline: never post to DVC Studio, even where a token is configured (no network from a stage).
    # setdefault keeps an explicit user choice.
    os.environ.setdefault("DVC_STUDIO_OFFLINE", "true")
    return CurvesLogger(dir=str(curves_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)


# Lightning's logger-connector methods from which DVCLive writes its files (a "sync") after logging a row:
# the tuple of dvclive.lightning._should_sync (dvclive pinned in requirements.txt; tests/test_curves_logger.py
# checks that the two agree).
DVCLIVE_SYNC_CALLERS = frozenset({"update_train_step_metrics", "update_train_epoch_metrics", "log_eval_end_metrics"})


def called_from_sync_point() -> bool:
    """Whether one of DVCLIVE_SYNC_CALLERS is on the call stack: dvclive.lightning._should_sync's answer.

    That function asks inspect.stack(), which reads the source line of every frame of Lightning's deep
    stack on every logged row, a noticeable share of a demo finetune (figures: docs/training.md). Walking the
    frames' code names gives the same answer without reading any source."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in DVCLIVE_SYNC_CALLERS:
            return True
        frame = frame.f_back
    return False


class CurvesLogger(DVCLiveLogger):
    """DVCLive's Lightning logger with a cheap sync check (called_from_sync_point); same rows, same files."""

    @rank_zero_only
    def log_metrics(
        self, metrics: Mapping[str, float | int | str], step: int | None = None, sync: bool | None = False
    ) -> None:
        # DVCLiveLogger.log_metrics, with its inspect.stack() check replaced: skip it in the MRO.
        super(DVCLiveLogger, self).log_metrics(metrics, step, sync or called_from_sync_point())


class TrimCurvesOnResume(Callback):
    """On a resume, drops the curve rows that the interrupted run logged after its last checkpoint.

    Lightning logs with the optimiser step as the x value, so an uninterrupted run logs steps 0 .. G-1 by
    the time last.ckpt is saved at global step G, and the resumed run logs from step G on. A process killed
    mid-epoch had already appended rows for steps >= G; without this they would appear twice (the killed
    run's and the resumed run's), making the curve non-monotonic. Rows below G are the checkpointed
    history and stay. Runs at train start, after Lightning restored the checkpoint, before any new row.
    """

    def __init__(self, curves_dir: Path):
        self.curves_dir = Path(curves_dir)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            dropped = trim_curves(self.curves_dir, int(trainer.global_step))
            if dropped:
                log.info("resume: dropped %d curve rows logged after the checkpoint (step >= %d) in %s",
                         dropped, trainer.global_step, self.curves_dir)


def trim_curves(curves_dir: Path, step: int) -> int:
    """Remove rows with `step` >= `step` from every DVCLive metric TSV under `curves_dir`; rows removed.

    Works on the text, so the kept rows keep their exact bytes; each file is rewritten atomically.
    """
    dropped = 0
    for tsv in sorted(Path(curves_dir).glob("plots/metrics/**/*.tsv")):
        header, *rows = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        column = header.rstrip("\n").split("\t").index("step")
        kept = [r for r in rows if int(r.split("\t")[column]) < step]
        if len(kept) < len(rows):
            dropped += len(rows) - len(kept)
            write_text(tsv, header + "".join(kept))
    return dropped


class SamplerEpoch(Callback):
    """Tells the train loader's batch sampler the epoch before each training epoch.

    Lightning's own hook only reaches `loader.sampler` and `loader.batch_sampler.sampler`, not a custom
    batch sampler's `set_epoch`, so without this the bucketed train order would be the same every epoch.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaders = trainer.train_dataloader
        for loader in loaders.values() if isinstance(loaders, dict) else [loaders]:
            set_epoch = getattr(getattr(loader, "batch_sampler", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(trainer.current_epoch)


def build_trainer(
    trainer: TrainerParams,
    *,
    max_epochs: int,
    grad_clip_norm: float,
    out_dir: Path,
    curves_dir: Path | None,
    monitor: Monitor,
    resume: bool,
    callbacks: list[Callback] | None = None,
    epochs_per_validation: int = 1,
) -> L.Trainer:
    """A Trainer from params: best + last checkpoints in `out_dir`, early stopping, DVCLive curves.

    `epochs_per_validation` > 1 validates (and so checkpoints and counts early-stopping patience) once
    every that many passes over the training data: a head trained on a label subsample uses it to keep the
    optimiser steps between validations, and so the step budget, of a run on every label."""
    checkpoint = SelectAfterWarmupCheckpoint(
        dirpath=out_dir,
        filename=Path(BEST).stem,  # ModelCheckpoint adds the extension; its last file is "last.ckpt" (LAST)
        monitor=monitor.metric,
        mode=monitor.mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # best.ckpt is replaced in place, never best-v1.ckpt
    )
    cbs: list[Callback] = [checkpoint, SamplerEpoch(), *(callbacks or [])]
    if resume and curves_dir is not None:
        cbs.append(TrimCurvesOnResume(curves_dir))
    if trainer.early_stopping_patience > 0:
        cbs.append(SelectAfterWarmupEarlyStopping(monitor=monitor.metric, mode=monitor.mode,
                                                  patience=trainer.early_stopping_patience))
    logger = curves_logger(curves_dir, resume) if curves_dir is not None else False
    hardware = {k: getattr(trainer, k) for k in ("accelerator", "devices", "num_nodes", "strategy", "precision")}
    try:
        return L.Trainer(
            **hardware,  # Lightning's own settings, passed unchanged
            # Our BucketBatchSampler shards itself: Lightning cannot put a DistributedSampler under it.
            use_distributed_sampler=False,
            deterministic=trainer.deterministic,
            max_epochs=max_epochs,
            check_val_every_n_epoch=epochs_per_validation,
            gradient_clip_val=grad_clip_norm if grad_clip_norm > 0 else None,
            gradient_clip_algorithm="norm",
            limit_train_batches=trainer.limit_train_batches,
            limit_val_batches=trainer.limit_val_batches,
            log_every_n_steps=trainer.log_every_n_steps,
            enable_progress_bar=trainer.progress_bar,
            enable_model_summary=True,
            num_sanity_val_steps=0,  # validation runs at every epoch end anyway; keep resume paths identical
            callbacks=cbs,
            logger=logger,
            plugins=[AtomicCheckpointIO(curves_dir)],
            default_root_dir=out_dir,
        )
    except (MisconfigurationException, ValueError, TypeError) as e:
        # e.g. accelerator gpu on a machine without one, a device list with accelerator cpu (a TypeError)
        settings = ", ".join(f"{k}={v!r}" for k, v in hardware.items())
        raise ParamsError(f"params trainer ({settings}): Lightning refused them: {e}") from None
