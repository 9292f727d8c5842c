"""Compatibility surface: the names the tests import from `seqsetvae.training.runner`. No code lives here.

What pretrain and finetune share is split by concern; import from these homes in new code:

    trainer.py      build_trainer, Monitor, AtomicCheckpointIO, curves_logger, TrimCurvesOnResume,
                    trim_curves, SamplerEpoch: the Lightning Trainer built from params
    resume.py       resume_store, mirror_to_store, restore_from_store, finish_run, resume_checkpoint,
                    prepare_out_dir: resuming a run, also under a runner that deleted its outputs
    checkpoints.py  best_path, last_path (a training output folder's files); safe loading, SHA256SUMS
    fingerprint.py  file_sha256, run_fingerprint: what a run's identity is, for a resume to match
    rng.py          seed_everything, rng_state, set_rng_state: seeding, and the RNG states in a checkpoint
    distributed.py  launch_rank, is_writer, gather_varlen: ranks, who writes, gathering across ranks
    module.py       ProjectModule (the checkpoint block every LightningModule writes), to_device
    metrics.py      round_metrics: the rounding of the metrics JSON the stages write
"""

from seqsetvae.training.checkpoints import best_path, last_path
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.resume import finish_run, prepare_out_dir, restore_from_store, resume_checkpoint, resume_store
from seqsetvae.training.rng import rng_state, seed_everything, set_rng_state
from seqsetvae.training.trainer import AtomicCheckpointIO, Monitor, SamplerEpoch, build_trainer, trim_curves

__all__ = [
    "AtomicCheckpointIO",
    "Monitor",
    "SamplerEpoch",
    "best_path",
    "build_trainer",
    "finish_run",
    "last_path",
    "prepare_out_dir",
    "restore_from_store",
    "resume_checkpoint",
    "resume_store",
    "rng_state",
    "round_metrics",
    "seed_everything",
    "set_rng_state",
    "trim_curves",
]
