"""Lightning DataModule over a preprocessed fold: packed splits -> padded `[B, S, E]` batches.

Batches follow the contract in seqsetvae/data/batch.py. Two things keep them cheap:

- Bucketing: patients are sorted by number of sets inside windows of `batch_size * bucket_size` patients,
  then cut into batches, so the patients of one batch have similar lengths and little of `[B, S, E]` is
  padding. For train, the window contents are a seeded permutation that changes every epoch and the batch
  order is shuffled too; val/test use the stored order (deterministic, same every time).
- Collation is vectorised: the index ranges of all sets and events of a batch are computed as arrays and
  gathered with one fancy-indexing call per array (no Python loop over patients, sets or events).

`max_sets > 0` keeps each stay's LAST `max_sets` sets (the most recent state matters most for an outcome at
the end of the window); `max_events_per_set > 0` keeps the first events of a set in code order. How often
either truncates is counted per split at setup and logged once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from seqsetvae.config import LoaderParams
from seqsetvae.data.batch import PAD_CODE, Batch
from seqsetvae.data.packed import PackedSplit
from seqsetvae.data.stats import VOCAB_FILE
from seqsetvae.data.splits import SPLITS
from seqsetvae.errors import DataError

log = logging.getLogger(__name__)


def last_sets(patient_offsets: np.ndarray, max_sets: int, patients: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The one home of the truncation rule: each stay keeps its LAST `max_sets` sets (0 = all).
    Returns the kept sets' [start, end) rows in the packed split for `patients` (default: all)."""
    idx = np.arange(patient_offsets.shape[0] - 1) if patients is None else patients
    end = patient_offsets[idx + 1]
    start = patient_offsets[idx]
    if max_sets > 0:
        start = np.maximum(start, end - max_sets)
    return start, end


def kept_sets(packed: PackedSplit, max_sets: int) -> np.ndarray:
    """Number of sets of each patient after truncation (last_sets)."""
    start, end = last_sets(packed.patient_offsets, max_sets)
    return end - start


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of this process in torch.distributed's default group; (0, 1) when there is none."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of patient indices with similar lengths (see the module docstring), sharded across DDP ranks.

    Lightning cannot put a DistributedSampler under a custom batch sampler (the Trainer runs with
    use_distributed_sampler=False), so the sharding is done here. With `shard=True` and torch.distributed
    initialised (read when iterating, not when built: Lightning starts the process group inside `fit`),
    the sampler builds GLOBAL batches of `batch_size * world_size` patients exactly as a single process
    with that batch size would (same windows, same seeded permutations), and rank r takes every
    world_size-th patient of each global batch (`global[r::world]`: the ranks' shares have the same length
    mix). So W ranks x batch_size B see the same patients per optimiser step as 1 process x W*B, and:

    - train (`shuffle=True`): every rank gets the same number of batches (DDP needs that: each step is a
      gradient all-reduce). A last global batch with fewer than W patients is topped up with the epoch's
      first patients (DistributedSampler's padding), so at most W-1 stays are seen twice per epoch.
    - evaluation (`shuffle=False`): no padding, every patient exactly once over all ranks (a duplicate would
      bias the metrics); a rank may get one batch fewer, which is safe because validation runs no
      collective per step (metrics are reduced once, at epoch end).

    `shard=False` (our own evaluation and cache passes, which must see the whole split on whichever rank
    runs them) or no process group: world size 1, i.e. the plain single-process batches.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, bucket_size: int, shuffle: bool, seed: int,
                 *, shard: bool = False):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.bucket_size = bucket_size
        self.shuffle = shuffle
        self.seed = seed
        self.shard = shard
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The train order is a function of (seed, epoch); trainer.SamplerEpoch calls this before each epoch."""
        self.epoch = epoch

    def replicas(self) -> tuple[int, int]:
        """(rank, world size) this sampler shards for."""
        return distributed_rank_world() if self.shard else (0, 1)

    def global_batches(self, world: int) -> list[np.ndarray]:
        """The batches of `batch_size * world` patients that a single process would draw (world = 1: ours)."""
        n = self.lengths.size
        size = self.batch_size * world
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch])) if self.shuffle else None
        order = rng.permutation(n) if rng is not None else np.arange(n)
        window_id = np.arange(n) // (size * self.bucket_size)
        # Sort by length within each window (stable: ties keep the window's order).
        order = order[np.lexsort((self.lengths[order], window_id))]
        batches = np.split(order, np.arange(size, n, size))
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batches(self) -> list[np.ndarray]:
        """This rank's batches for the current epoch."""
        rank, world = self.replicas()
        batches = self.global_batches(world)
        if world == 1:
            return batches
        if self.lengths.size < world:
            raise ValueError(f"{self.lengths.size} stays cannot be shared by {world} ranks (fewer stays than ranks)")
        if self.shuffle:
            # At most one global batch is short (the split's last); n >= world means another one is full.
            full = next(b for b in batches if b.size >= world)
            batches = [b if b.size >= world else np.concatenate([b, full[: world - b.size]]) for b in batches]
        return [share for b in batches if (share := b[rank::world]).size > 0]

    def __iter__(self):
        for b in self.batches():
            yield b.tolist()

    def __len__(self) -> int:
        rank, world = self.replicas()
        n = self.lengths.size
        size = self.batch_size * world
        n_global = -(-n // size)
        if world == 1 or self.shuffle:
            return n_global
        last = n - (n_global - 1) * size  # patients in the last global batch; ranks >= last get none of it
        return n_global - (1 if rank >= last else 0)


class PatientIndex(Dataset):
    """Items are patient indices; the collator does the gathering for a whole batch at once."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class SetCollator:
    """Patient indices -> Batch, gathered with fancy indexing from the (memory-mapped) packed split."""

    def __init__(self, directory: Path, max_sets: int, max_events_per_set: int, packed: PackedSplit | None = None):
        self.directory = Path(directory)
        self.max_sets = max_sets
        self.max_events_per_set = max_events_per_set
        self._packed = packed

    @property
    def packed(self) -> PackedSplit:
        if self._packed is None:
            self._packed = PackedSplit.load(self.directory)
        return self._packed

    def __getstate__(self) -> dict[str, Any]:
        # A worker process maps the files itself instead of receiving a pickled copy of every array.
        state = self.__dict__.copy()
        state["_packed"] = None
        return state

    def __call__(self, indices: list[int]) -> Batch:
        p = self.packed
        idx = np.asarray(indices, dtype=np.int64)
        s_start, s_end = last_sets(p.patient_offsets, self.max_sets, idx)
        n_sets = s_end - s_start
        s_range = np.arange(int(n_sets.max()))
        set_mask = s_range[None, :] < n_sets[:, None]
        sidx = np.where(set_mask, s_start[:, None] + s_range, 0)  # padding points at set 0, masked below

        e_start = p.set_offsets[sidx]
        n_ev = np.where(set_mask, p.set_offsets[sidx + 1] - e_start, 0)
        if self.max_events_per_set > 0:
            n_ev = np.minimum(n_ev, self.max_events_per_set)
        e_range = np.arange(int(n_ev.max()))
        event_mask = e_range < n_ev[..., None]
        eidx = np.where(event_mask, e_start[..., None] + e_range, 0)

        return Batch(
            codes=torch.from_numpy(np.where(event_mask, p.codes[eidx], PAD_CODE).astype(np.int64)),
            values=torch.from_numpy(np.where(event_mask, p.values[eidx], 0.0).astype(np.float32)),
            event_mask=torch.from_numpy(event_mask),
            set_mask=torch.from_numpy(set_mask),
            set_times=torch.from_numpy(np.where(set_mask, p.set_times[sidx], 0.0).astype(np.float32)),
            labels=torch.from_numpy(np.asarray(p.labels[idx], dtype=np.float32)),
            subject_id=torch.from_numpy(np.asarray(p.subject_ids[idx], dtype=np.int64)),
            prediction_time=torch.from_numpy(np.asarray(p.prediction_times[idx], dtype=np.int64)),
        )


def padding_fraction(batches: Any) -> float:
    """Share of the `[B, S, E]` event slots over all `batches` that are padding."""
    real = total = 0
    for b in batches:
        real += int(b["event_mask"].sum())
        total += b["event_mask"].numel()
    return 1.0 - real / total if total else 0.0


def truncation_counts(packed: PackedSplit, loader: LoaderParams) -> dict[str, int]:
    """How much `max_sets` / `max_events_per_set` cut from a split (counted once, not per batch)."""
    n_sets = packed.sets_per_patient()
    ev = packed.events_per_set()
    over_sets = n_sets > loader.max_sets if loader.max_sets > 0 else np.zeros_like(n_sets, dtype=bool)
    start, _ = last_sets(packed.patient_offsets, loader.max_sets)
    kept = np.arange(packed.n_sets) >= np.repeat(start, n_sets)  # the sets that survive max_sets
    cap = loader.max_events_per_set
    over_ev = kept & (ev > cap) if cap > 0 else np.zeros_like(kept)
    return {
        "stays": packed.n_patients,
        "stays_over_max_sets": int(over_sets.sum()),
        "sets_dropped": int(packed.n_sets - kept.sum()),
        "sets_over_max_events": int(over_ev.sum()),
        "events_dropped": int((ev[kept] - np.minimum(ev[kept], cap)).sum()) if cap > 0 else 0,
    }


class SetSequenceDataModule(L.LightningDataModule):
    """Train/val/test dataloaders over `fold_dir` (one `fold_<k>` folder written by preprocess)."""

    def __init__(self, fold_dir: str | Path, loader: LoaderParams):
        super().__init__()
        self.fold_dir = Path(fold_dir)
        self.loader = loader
        vocab_path = self.fold_dir / VOCAB_FILE
        try:
            self._vocab: dict[str, Any] = json.loads(vocab_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(vocab_path, "missing: run the preprocess stage first") from None
        except (OSError, ValueError) as e:
            raise DataError(vocab_path, f"unreadable: {e}") from None
        self._splits: dict[str, PackedSplit] = {}
        self.truncation: dict[str, dict[str, int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._vocab["tokens"])

    @property
    def tokens(self) -> list[str]:
        return list(self._vocab["tokens"])

    def setup(self, stage: str | None = None) -> None:
        for name in SPLITS:
            self.split(name)

    def split(self, name: str) -> PackedSplit:
        """The packed split (memory-mapped), loaded on first use; truncation is counted and logged then."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        if name not in self._splits:
            packed = PackedSplit.load(self.fold_dir / name)
            self._splits[name] = packed
            t = truncation_counts(packed, self.loader)
            self.truncation[name] = t
            if t["stays_over_max_sets"] or t["sets_over_max_events"]:
                log.info(
                    "%s/%s: %d of %d stays have more than loader.max_sets=%d sets (the last are kept, %d sets "
                    "dropped); %d sets have more than loader.max_events_per_set=%d events (%d events dropped)",
                    self.fold_dir.name, name, t["stays_over_max_sets"], t["stays"], self.loader.max_sets,
                    t["sets_dropped"], t["sets_over_max_events"], self.loader.max_events_per_set, t["events_dropped"],
                )
        return self._splits[name]

    def dataloader(self, name: str, shuffle: bool, *, shard: bool = False) -> DataLoader:
        """Batches of split `name`; `shuffle=False` is a fixed order, the same on every call (evaluation).

        `shard=True`: this DDP rank's share (see BucketBatchSampler); the loaders Lightning drives use it,
        our own evaluation passes (the whole split, on rank 0) do not.
        """
        packed = self.split(name)
        lp = self.loader
        sampler = BucketBatchSampler(kept_sets(packed, lp.max_sets), lp.batch_size, lp.bucket_size, shuffle, lp.seed,
                                     shard=shard)
        collate = SetCollator(self.fold_dir / name, lp.max_sets, lp.max_events_per_set, packed)
        return DataLoader(
            PatientIndex(packed.n_patients),
            batch_sampler=sampler,
            collate_fn=collate,
            num_workers=lp.num_workers,
            persistent_workers=lp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train", shuffle=True, shard=True)

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val", shuffle=False, shard=True)

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.dataloader("test", shuffle=False)
