"""What pretrain and finetune share: seeding, determinism, the Trainer, checkpoint files, resume, metrics.

Checkpoint layout of a training output folder (`--out`):

    best.ckpt   the epoch with the best monitored validation metric (ModelCheckpoint, save_top_k=1)
    last.ckpt   the end of the latest epoch; if it exists when a stage starts, training RESUMES from it

Both are written atomically (temporary file, fsync, rename; see AtomicCheckpointIO), so an interrupted run
leaves either the previous complete file or the new one, never a torn one.

The runners delete a stage's declared outputs before they rerun it (Snakemake always, DVC unless `persist`),
which would take last.ckpt with them: a crash under `snakemake` or `dvc repro` would then restart training
from scratch. So every save of last.ckpt is mirrored into the stage's resume store, `.<out>.resume/` beside
`--out` (see `resume_store`; hard links, no extra disk): best.ckpt, last.ckpt and a copy of the curves. It is
not a declared output, so no runner removes it; a rerun that finds `--out` without last.ckpt restores the
store's files into it and resumes. A stage that finishes removes its store. A resumed run restores the
global step (which drives the KL warm-up), the epoch, optimiser moments, the callbacks' state (best score,
early-stopping counter) and the RNG states, so it continues exactly where the last epoch ended.

Several devices / nodes (params trainer.devices, num_nodes, strategy; docs/scaling.md): every rank trains on
its share of each batch (BucketBatchSampler shards itself), logged metrics are reduced over ranks
(sync_dist), and only global rank 0 writes files: checkpoints (Lightning saves on rank 0 only), curves
(the DVCLive logger is created lazily, on rank 0), and the stages' metrics and predictions (they return
early on other ranks, see `is_writer`). All ranks start from the same seed, so their random streams (z
samples, dropout) are the same; a resumed DDP run restores rank 0's streams on every rank, like a fresh one.
"""

from __future__ import annotations

import hashlib
import json

import logging
import math
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from seqsetvae.config import ParamsError, TrainerParams
from seqsetvae.errors import DataError
from seqsetvae.io import atomic_path, write_text
from seqsetvae.threads import resolve_num_threads
from seqsetvae.training.checkpoints import BLOCK, FORMAT_VERSION, load_checkpoint, project_block

log = logging.getLogger(__name__)

BEST = "best"
LAST = "last"
CKPT_SUFFIX = ".ckpt"
RESUME_SUFFIX = ".resume"
STORE_CURVES = "curves"
METRIC_DIGITS = 6  # metrics JSON values are rounded so reruns on one machine write byte-identical files


def best_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{BEST}{CKPT_SUFFIX}"


def last_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / f"{LAST}{CKPT_SUFFIX}"


def resume_store(out_dir: str | Path) -> Path:
    """The resume store of a training output folder: `.<name>.resume` beside it (models/pretrain/fold_0 ->
    models/pretrain/.fold_0.resume). Outside the declared outputs, so a runner never deletes it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}{RESUME_SUFFIX}"


# --------------------------------------------------------------------------------------------------
# Seeds, threads, determinism


def seed_everything(seed: int, trainer: TrainerParams) -> int:
    """Seed python, numpy and torch (and dataloader workers); set the CPU thread count from params
    (`auto`: what the runner gave this job, seqsetvae/threads.py). Returns the thread count used."""
    L.seed_everything(seed, workers=True, verbose=False)
    n = resolve_num_threads(trainer.num_threads)
    torch.set_num_threads(n)
    return n


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

    def __init__(self, curves_dir: Path | None = None):
        super().__init__()
        self.curves_dir = curves_dir

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        if Path(path).name == last_path(".").name:
            mirror_to_store(Path(path).parent, self.curves_dir)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)


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
        with atomic_path(dst_curves, is_dir=True) as tmp:
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
    """A training stage finished and wrote its outputs: its resume store is no longer needed."""
    store = resume_store(out_dir)
    if store.exists():
        shutil.rmtree(store)


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
    The `Live` object is created on first use and on global rank 0 only (DVCLiveLogger builds it from these
    keyword arguments): another rank creating it would clear the folder that rank 0 writes to, and an
    eager one could not be pickled into ddp_spawn workers.
    """
    # Offline: never post to DVC Studio, even where a token is configured (no network from a stage).
    # setdefault keeps an explicit user choice.
    os.environ.setdefault("DVC_STUDIO_OFFLINE", "true")
    from dvclive.lightning import DVCLiveLogger

    return DVCLiveLogger(dir=str(curves_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)


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


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 for a single process, or before DDP starts).

    Lightning reads it from the environment (RANK, LOCAL_RANK, SLURM_PROCID) at import; it is what a stage
    can know before its Trainer exists, e.g. to let only rank 0 clean the output folder.
    """
    return int(getattr(rank_zero_only, "rank", 0))


def is_writer(trainer: L.Trainer) -> bool:
    """Whether this process writes the stage's outputs after `fit`: global rank 0 only.

    Under strategy ddp every rank runs the whole stage (Lightning re-launches the command per device); the
    others return after `fit`. Under ddp_spawn the workers exit after `fit` and the launching process is
    rank 0.
    """
    if not trainer.is_global_zero:
        log.info("rank %d of %d: training done; rank 0 writes the outputs", trainer.global_rank, trainer.world_size)
        return False
    return True


def gather_varlen(module: L.LightningModule, values: torch.Tensor) -> torch.Tensor:
    """The 1-D `values` of every rank, concatenated in rank order, on every rank (CPU); lengths may differ.

    For metrics that do not decompose into per-rank means (AUROC, AUPRC): each rank scores its share of
    the val set and all ranks then compute the metric on the whole set, so they agree on the best epoch
    and on early stopping. Single process: `values` unchanged.
    """
    world = module.trainer.world_size
    if world == 1:
        return values
    local = values.to(module.device)
    sizes = module.all_gather(torch.tensor([local.shape[0]], device=module.device)).view(-1)
    padded = torch.zeros(int(sizes.max()), dtype=local.dtype, device=module.device)
    padded[: local.shape[0]] = local  # all_gather needs one shape on every rank
    gathered = module.all_gather(padded)  # [world, max size]
    return torch.cat([gathered[r, : int(sizes[r])] for r in range(world)]).cpu()


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
    cbs: list[Callback] = [checkpoint, SamplerEpoch(), *(callbacks or [])]
    if resume and curves_dir is not None:
        cbs.append(TrimCurvesOnResume(curves_dir))
    if trainer.early_stopping_patience > 0:
        cbs.append(EarlyStopping(monitor=monitor.metric, mode=monitor.mode, patience=trainer.early_stopping_patience))
    logger = curves_logger(curves_dir, resume) if curves_dir is not None else False
    hardware = {k: getattr(trainer, k) for k in ("accelerator", "devices", "num_nodes", "strategy", "precision")}
    try:
        return L.Trainer(
            **hardware,  # Lightning's own settings, passed unchanged
            # Our BucketBatchSampler shards itself: Lightning cannot put a DistributedSampler under it.
            use_distributed_sampler=False,
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
            logger=logger,
            plugins=[AtomicCheckpointIO(curves_dir)],
            default_root_dir=out_dir,
        )
    except (MisconfigurationException, ValueError, TypeError) as e:
        # e.g. accelerator gpu on a machine without one, a device list with accelerator cpu (a TypeError)
        settings = ", ".join(f"{k}={v!r}" for k, v in hardware.items())
        raise ParamsError(f"params trainer ({settings}): Lightning refused them: {e}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(params: Any, fold: int, inputs: list[Path], extra: dict[str, Any] | None = None) -> str:
    """sha256 of everything a training run's result depends on: all params, the fold, and the bytes of its
    input files (a folder: every file in it, in sorted order). Stored in checkpoints; a resume continues
    only a run with the same fingerprint."""
    settings = params.to_dict()
    # More epochs extend a run: resuming it then gives what an uninterrupted longer run gives (no
    # schedule depends on the epoch budget), so the budget is not part of the run's identity.
    for section in ("pretrain", "finetune"):
        settings[section].pop("max_epochs", None)
    digest = hashlib.sha256()
    digest.update(json.dumps({"params": settings, "fold": fold, "extra": extra or {}},
                             sort_keys=True, default=str).encode())
    for root in inputs:
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for f in files:
            digest.update(str(f.relative_to(root) if root.is_dir() else f.name).encode())
            digest.update(file_sha256(f).encode())
    return digest.hexdigest()


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
    run_fingerprint: str = ""  # set by the stage (run_fingerprint()); stored in every checkpoint

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
            "fingerprint": self.run_fingerprint,
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on resume (trainer.fit(ckpt_path=...)): continue the random streams where they stopped, so
        # dropout masks and z samples after a resume are those the uninterrupted run would have drawn.
        block = checkpoint.get(BLOCK)
        if isinstance(block, dict) and "rng" in block:
            set_rng_state(block["rng"])


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device`, in a mapping of the batch's own type (a CachedBatch stays one)."""
    return type(batch)((k, v.to(device, non_blocking=True)) for k, v in batch.items())
