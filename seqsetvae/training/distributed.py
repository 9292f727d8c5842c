"""Several devices / nodes (params trainer.devices, num_nodes, strategy; docs/scaling.md): who is which rank,
who writes, and gathering values of different lengths from every rank.

Every rank trains on its share of each batch (BucketBatchSampler shards itself), logged metrics are reduced
over ranks (sync_dist), and only global rank 0 writes files: checkpoints (Lightning saves on rank 0 only),
curves (the DVCLive logger is created lazily, on rank 0, see trainer.curves_logger), and the stages' metrics
and predictions (they return early on other ranks, see `is_writer`).
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


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
