"""What pretrain and finetune share: seeding, determinism, the Trainer, checkpoint files, resume, metrics.

Checkpoint layout of a training output folder (`--out`):

    best.ckpt   the epoch with the best monitored validation metric (ModelCheckpoint, save_top_k=1)
    last.ckpt   the end of the latest epoch; if it exists when a stage starts, training RESUMES from it

Both are written atomically (temporary file, fsync, rename; see AtomicCheckpointIO), so an interrupted run
leaves either the previous complete file or the new one, never a torn one. A resumed run restores the
global step (which drives the KL warm-up), the epoch, optimiser moments, the callbacks' state (best score,
early-stopping counter) and the RNG states, so it continues exactly where the last epoch ended.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from seqsetvae.config import TrainerParams
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path
from seqsetvae.training.checkpoints import BLOCK, FORMAT_VERSION, load_checkpoint, project_block

log = logging.getLogger(__name__)

BEST = "best"
LAST = "last"
CKPT_SUFFIX = ".ckpt"
METRIC_DIGITS = 6  # metrics JSON values are rounded so reruns on one machine write byte-identical files


def best_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{BEST}{CKPT_SUFFIX}"


def last_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{LAST}{CKPT_SUFFIX}"


# --------------------------------------------------------------------------------------------------
# Seeds, threads, determinism


def seed_everything(seed: int, trainer: TrainerParams) -> None:
    """Seed python, numpy and torch (and dataloader workers); set the CPU thread count from params."""
    L.seed_everything(seed, workers=True, verbose=False)
    if trainer.num_threads > 0:
        torch.set_num_threads(trainer.num_threads)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values only, so a checkpoint holding them loads with weights_only."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )


# --------------------------------------------------------------------------------------------------
# Checkpoint IO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes through seqsetvae.io.atomic_path and loads with weights_only=True.

    Loading through `load_checkpoint` means a resume from a file with a pickle payload, or a truncated one,
    stops with a DataError naming it instead of unpickling it or failing deep inside Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)


# --------------------------------------------------------------------------------------------------
# Trainer construction


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks best.ckpt and drives early stopping."""

    metric: str  # e.g. "val/loss"
    mode: str  # "min" | "max"


def curves_logger(curves_dir: str | Path, resume: bool) -> Any:
    """DVCLive's Lightning logger writing to `curves_dir`: no dvc.yaml, no git experiment, no Studio.

    On a fresh run DVCLive clears the folder's previous curves; on a resume it appends to them (steps go on).
    """
    # Offline: never post to DVC Studio, even where a token is configured (no network from a stage).
    # setdefault keeps an explicit user choice.
    os.environ.setdefault("DVC_STUDIO_OFFLINE", "true")
    from dvclive import Live
    from dvclive.lightning import DVCLiveLogger

    live = Live(dir=str(curves_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)
    return DVCLiveLogger(experiment=live)


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
) -> L.Trainer:
    """A Trainer from params: best + last checkpoints in `out_dir`, early stopping, DVCLive curves."""
    checkpoint = ModelCheckpoint(
        dirpath=out_dir,
        filename=BEST,
        monitor=monitor.metric,
        mode=monitor.mode,
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # best.ckpt is replaced in place, never best-v1.ckpt
    )
    cbs: list[Callback] = [checkpoint, *(callbacks or [])]
    if trainer.early_stopping_patience > 0:
        cbs.append(EarlyStopping(monitor=monitor.metric, mode=monitor.mode, patience=trainer.early_stopping_patience))
    return L.Trainer(
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        precision=trainer.precision,
        deterministic=trainer.deterministic,
        max_epochs=max_epochs,
        gradient_clip_val=grad_clip_norm if grad_clip_norm > 0 else None,
        gradient_clip_algorithm="norm",
        limit_train_batches=trainer.limit_train_batches,
        limit_val_batches=trainer.limit_val_batches,
        log_every_n_steps=trainer.log_every_n_steps,
        enable_progress_bar=trainer.progress_bar,
        enable_model_summary=True,
        num_sanity_val_steps=0,  # validation runs at every epoch end anyway; keep resume paths identical
        callbacks=cbs,
        logger=curves_logger(curves_dir, resume) if curves_dir is not None else False,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=out_dir,
    )


def resume_checkpoint(out_dir: Path, module: ProjectModule) -> Path | None:
    """last.ckpt in `out_dir` if there is one to resume from (checked: loadable, same kind and architecture)."""
    path = last_path(out_dir)
    if not path.exists():
        return None
    block = project_block(load_checkpoint(path), path, kind=module.kind)
    architecture = module.architecture()
    if block["architecture"] != architecture:
        diff = _first_difference(block["architecture"], architecture)
        raise DataError(
            path,
            f"cannot resume: it was trained with another model ({diff}); delete {out_dir} to start afresh",
        )
    log.info(
        "resuming from %s (epoch %d, global step %d)",
        path, block["schedule"]["epoch"], block["schedule"]["global_step"],
    )
    return path


def _first_difference(a: Any, b: Any, key: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
    return f"{key or 'value'}: checkpoint {a!r}, now {b!r}"


def prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir`; remove stray temporary files of an interrupted atomic write (never a real output)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stray in out_dir.glob(".*.tmp"):
        if stray.is_file():
            log.info("removing %s, left by an interrupted write", stray)
            stray.unlink()


# --------------------------------------------------------------------------------------------------
# Metrics


def round_metrics(obj: Any) -> Any:
    """Plain floats rounded to METRIC_DIGITS significant digits (ints, strings kept), recursively.

    Significant digits, not decimals: a KL of 1234.5678 and an AUROC of 0.812345 are both kept to the
    precision that is stable across reruns on one machine.
    """
    if isinstance(obj, dict):
        return {str(k): round_metrics(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_metrics(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    x = float(obj)
    if not math.isfinite(x):
        raise ValueError(f"metric is not finite: {x}")
    if x == 0.0:
        return 0.0
    return round(x, METRIC_DIGITS - 1 - math.floor(math.log10(abs(x))))


# --------------------------------------------------------------------------------------------------
# What every project LightningModule writes into (and reads back from) its checkpoints


class ProjectModule(L.LightningModule):
    """Base of PretrainModule and FinetuneModule: the `seqsetvae` checkpoint block (see checkpoints.py).

    Subclasses set `kind`, keep their network in `self.model` (state-dict prefix "model.") and its
    ModelConfig in `self.cfg`, and may add to the schedule via `schedule_state()`.
    """

    kind: str

    def architecture(self) -> dict[str, Any]:
        """What the network's shape depends on; stored in checkpoints, must match for a resume."""
        return {"model_config": self.cfg.to_dict()}

    def schedule_state(self) -> dict[str, Any]:
        return {"global_step": int(self.global_step), "epoch": int(self.current_epoch)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BLOCK] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "architecture": self.architecture(),
            "schedule": self.schedule_state(),
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on resume (trainer.fit(ckpt_path=...)): continue the random streams where they stopped, so
        # dropout masks and z samples after a resume are those the uninterrupted run would have drawn.
        block = checkpoint.get(BLOCK)
        if isinstance(block, dict) and "rng" in block:
            set_rng_state(block["rng"])


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
