"""LightningModule for finetuning SeqSetVAE, and the backbone-feature cache that makes a frozen run cheap.

With `finetune.unfreeze: none` the backbone is frozen (requires_grad off, eval mode), so its outputs for
a patient never change: `FeatureCache.build` runs the backbone ONCE over a split and keeps every real
set's features ([mu, logvar, context] per set, CSR by patient); the head then trains for all its epochs on
batches gathered from that cache (`CachedFeatureCollator`, vectorised, re-bucketed and reshuffled every
epoch with the data module's BucketBatchSampler). With a partly unfrozen backbone the module trains on raw
batches through the full model instead.

Monitored metric: val/auprc (mode max) picks best.ckpt; val/auroc and val/loss are logged beside it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from seqsetvae.config import FinetuneParams, LoaderParams
from seqsetvae.data.batch import Batch, to_device
from seqsetvae.data.datamodule import BucketBatchSampler, PatientIndex
from seqsetvae.data.packed import PackedSplit
from seqsetvae.errors import DataError
from seqsetvae.evaluation.metrics import metric_functions
from seqsetvae.models.finetune import PretrainedWeightsError, SeqSetVAE
from seqsetvae.models.observation import code_stay_counts, select_codes
from seqsetvae.models.pretrain import ModelConfig
from seqsetvae.training.checkpoints import load_checkpoint, model_state_dict, project_block
from seqsetvae.training.distributed import gather_varlen
from seqsetvae.training.module import ProjectModule

log = logging.getLogger(__name__)

KIND = "finetune"
# finetune params that change the network's shape or what it computes: a resume must match them.
HEAD_KEYS = (
    "fusion", "pooling", "head_hidden", "head_dropout", "backbone_projection", "unfreeze", "aux_recon_weight", "inputs",
    "observation_codes",
)
FEATURE_KEYS = ("mu", "logvar", "context")


def pos_weight_of(labels: np.ndarray, where: str | Path) -> float:
    """Train negatives / positives (the BCE positive-class weight); both classes must be present."""
    pos = int(np.sum(labels > 0.5))
    neg = int(labels.size - pos)
    if pos == 0 or neg == 0:
        raise DataError(where, f"train split has {pos} positive and {neg} negative stays: cannot train a classifier")
    return neg / pos


def choose_observation_codes(model: SeqSetVAE, train: PackedSplit) -> np.ndarray | None:
    """finetune.observation_codes K > 0: give `model` the K codes present in the most stays of the TRAIN
    split (val and test are never read), and return them; None (nothing to choose) when the state covers
    every code. Streams the split's codes (memory O(chunk + vocabulary))."""
    if not model.observation_subset:
        return None
    vocab = model.cfg.vocab_size
    counts = code_stay_counts(train.codes, train.set_offsets, train.patient_offsets, vocab)
    codes = select_codes(counts, model.ft.observation_codes)
    assert codes is not None
    model.set_observation_codes(torch.from_numpy(codes))
    present = int((counts[1:] > 0).sum())
    log.info("observation state: %d of %d codes (finetune.observation_codes), those in the most train stays (%d to "
             "%d of %d); %d codes present in train left out", codes.size, vocab - 1, int(counts[codes].max()),
             int(counts[codes].min()), train.n_patients, present - int((counts[codes] > 0).sum()))
    return codes


class _Rows:
    """Row blocks appended into one [N, F] tensor, preallocated when N is known (no concatenation copy, so the
    peak is the result's size, not twice it); a list and one cat otherwise, or past `capacity`."""

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.buf: torch.Tensor | None = None
        self.parts: list[torch.Tensor] = []
        self.n = 0

    def append(self, x: torch.Tensor) -> None:
        if self.capacity is not None and not self.parts and self.n + x.shape[0] <= self.capacity:
            if self.buf is None:
                self.buf = x.new_empty((self.capacity, *x.shape[1:]))
            self.buf[self.n : self.n + x.shape[0]] = x
        else:
            if self.buf is not None:  # more rows than announced: fall back to concatenation
                self.parts.append(self.buf[: self.n])
                self.buf = None
            self.parts.append(x)
        self.n += int(x.shape[0])

    def result(self) -> torch.Tensor:
        if self.buf is not None:
            return self.buf if self.n == self.capacity else self.buf[: self.n].clone()
        return torch.cat(self.parts)


def _n_rows(batches: Iterable[Batch]) -> int | None:
    """Patients the loader will yield, when it says (a DataLoader over a sized dataset); else None."""
    try:
        return len(batches.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------
# Rows on disk


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype


class DiskRows:
    """An [N, *row] array of one dtype in a raw file (C order, no header), read on demand with os.pread:
    indexing with rows (a slice, an int64 tensor or array of any shape) reads those rows, in runs of
    consecutive rows, and returns a tensor; the file is never mapped or read whole. Memory: what is read.
    Written by `DiskRowsWriter`; never modified afterwards."""

    def __init__(self, path: Path, n: int, row_shape: tuple[int, ...], dtype: torch.dtype):
        self.path = Path(path)
        self.n = int(n)
        self.row_shape = tuple(row_shape)
        self.dtype = dtype
        self._np_dtype = _numpy_dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self._np_dtype.itemsize
        self._fd: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.n, *self.row_shape)

    def dim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return self.n

    def _fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:  # a DataLoader worker opens its own descriptor
        return {**self.__dict__, "_fd": None}

    def _read_run(self, out: np.ndarray, first: int) -> None:
        """Read rows first : first + len(out) into `out` (contiguous)."""
        if not out.nbytes:
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        want, offset, fd = len(view), first * self.row_bytes, self._fileno()
        while want:
            got = os.preadv(fd, [view[len(view) - want :]], offset + len(view) - want)
            if got <= 0:
                raise OSError(f"{self.path}: short read at byte {offset + len(view) - want} (file truncated?)")
            want -= got

    def __getitem__(self, key: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n)
            if step != 1:
                raise IndexError("DiskRows: slices with a step are not supported")
            out = np.empty((max(stop - start, 0), *self.row_shape), self._np_dtype)
            if out.size:
                self._read_run(out, start)
            return torch.from_numpy(out)
        idx = (key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)).astype(np.int64, copy=False)
        flat = idx.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n):
            raise IndexError(f"DiskRows {self.path}: row index out of range 0..{self.n - 1}")
        rows, inverse = np.unique(flat, return_inverse=True)
        buf = np.empty((rows.size, *self.row_shape), self._np_dtype)
        run_starts = np.flatnonzero(np.r_[True, np.diff(rows) != 1])
        for a, b in itertools.pairwise([*run_starts.tolist(), rows.size]):
            self._read_run(buf[a:b], int(rows[a]))
        return torch.from_numpy(buf[inverse].reshape(*idx.shape, *self.row_shape))

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """The rows in order, `rows` at a time."""
        for start in range(0, self.n, rows):
            yield self[start : start + rows]


class DiskRowsWriter:
    """Appends row blocks of one dtype and row shape to a new raw file; `finish()` gives the DiskRows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")  # noqa: SIM115  (closed in finish)
        self.n = 0
        self.row_shape: tuple[int, ...] | None = None
        self.dtype: torch.dtype | None = None

    def append(self, x: torch.Tensor) -> None:
        if self.row_shape is None:
            self.row_shape, self.dtype = tuple(x.shape[1:]), x.dtype
        elif tuple(x.shape[1:]) != self.row_shape or x.dtype != self.dtype:
            raise ValueError(f"{self.path}: rows of {tuple(x.shape[1:])} {x.dtype} after {self.row_shape} {self.dtype}")
        self.file.write(memoryview(x.detach().cpu().contiguous().numpy().reshape(-1).view(np.uint8)))
        self.n += int(x.shape[0])

    def finish(self, row_shape: tuple[int, ...], dtype: torch.dtype) -> DiskRows:
        """Close the file; `row_shape` / `dtype` describe the rows when none was appended."""
        self.file.close()
        return DiskRows(self.path, self.n, self.row_shape if self.row_shape is not None else row_shape,
                        self.dtype or dtype)


# Rows of the cache: a tensor in memory or a DiskRows (the same indexing either way).
Rows = torch.Tensor | DiskRows


def _take(rows_of: Rows, index: np.ndarray, spill: Path | None, chunk_rows: int = 1 << 16) -> Rows:
    """rows_of[index] (index increasing): in memory for a tensor, into a new file beside it for DiskRows,
    `chunk_rows` rows at a time."""
    if isinstance(rows_of, torch.Tensor):
        return rows_of[torch.from_numpy(index)]
    assert spill is not None
    writer = DiskRowsWriter(spill)
    for start in range(0, index.size, chunk_rows):
        writer.append(rows_of[index[start : start + chunk_rows]])
    return writer.finish(rows_of.row_shape, rows_of.dtype)


# --------------------------------------------------------------------------------------------------
# Backbone-feature cache


@dataclass(frozen=True)
class FeatureCache:
    """Frozen-backbone features of every real set of a split, CSR by patient (patients in loader order).
    The per-set and per-patient rows are tensors (in memory) or DiskRows (on disk: `build(..., spill=)`)."""

    features: dict[str, Rows]  # FEATURE_KEYS -> [N sets, dim] float32, CPU
    set_times: Rows  # [N sets]
    observation: Rows  # [P, F] float32 per-variable observation state (F = 0 when the head does not use
    # it; F = 6 x min(finetune.observation_codes, vocabulary - 1): bounded by K, not by the vocabulary)
    offsets: np.ndarray  # [P + 1] int64: sets of patient p are rows offsets[p]:offsets[p+1]
    labels: torch.Tensor  # [P]
    subject_ids: torch.Tensor  # [P]
    prediction_times: torch.Tensor  # [P] int64: with subject_ids, the key of each sample

    @property
    def n_patients(self) -> int:
        return int(self.labels.shape[0])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: SeqSetVAE, batches: Iterable[Batch], device: torch.device, spill: Path | None = None
    ) -> FeatureCache:
        """Run the (frozen, eval-mode) backbone once over `batches`; keep the real sets' features: in memory,
        or, with `spill` (a folder, which must exist), in files `<spill>/<key>.bin` written batch by batch
        (memory: one batch, whatever the split's size)."""
        if model.training or any(p.requires_grad for m in model.backbone().values() for p in m.parameters()):
            raise RuntimeError("FeatureCache.build needs a frozen backbone in eval mode (freeze_backbone, eval)")
        if spill is not None:
            return cls._build_on_disk(model, batches, device, Path(spill))
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*FEATURE_KEYS, "set_times")}
        counts, labels, subject_ids, prediction_times = [], [], [], []
        observation = _Rows(_n_rows(batches))  # [P, F] float32, F bounded by finetune.observation_codes
        for batch in batches:
            feats = model.backbone_features(to_device(batch, device))
            observation.append(feats["observation"].float().cpu())
            real = feats["set_mask"]
            for k in FEATURE_KEYS:
                parts[k].append(feats[k][real].float().cpu())  # row-major over [B, S]: patient by patient
            parts["set_times"].append(feats["set_times"][real].cpu())
            counts.append(real.sum(dim=1).cpu())
            labels.append(batch["labels"])
            subject_ids.append(batch["subject_id"])
            prediction_times.append(batch["prediction_time"])
        if not counts:
            raise ValueError("FeatureCache.build: no batches")
        n = torch.cat(counts).numpy().astype(np.int64)
        return cls(
            features={k: torch.cat(parts[k]) for k in FEATURE_KEYS},
            set_times=torch.cat(parts["set_times"]),
            observation=observation.result(),
            offsets=np.concatenate([[0], np.cumsum(n)]),
            labels=torch.cat(labels),
            subject_ids=torch.cat(subject_ids),
            prediction_times=torch.cat(prediction_times),
        )

    @classmethod
    def _build_on_disk(
        cls, model: SeqSetVAE, batches: Iterable[Batch], device: torch.device, spill: Path
    ) -> FeatureCache:
        """`build` into files: the same rows, in the same order, as the in-memory cache."""
        writers = {k: DiskRowsWriter(spill / f"{k}.bin") for k in (*FEATURE_KEYS, "set_times", "observation")}
        counts, labels, subject_ids, prediction_times = [], [], [], []
        widths: dict[str, tuple[int, ...]] = {}
        for batch in batches:
            feats = model.backbone_features(to_device(batch, device))
            real = feats["set_mask"]
            writers["observation"].append(feats["observation"].float().cpu())
            for k in FEATURE_KEYS:
                writers[k].append(feats[k][real].float().cpu())
                widths[k] = (int(feats[k].shape[-1]),)
            writers["set_times"].append(feats["set_times"][real].cpu())
            widths["observation"] = (int(feats["observation"].shape[-1]),)
            counts.append(real.sum(dim=1).cpu())
            labels.append(batch["labels"])
            subject_ids.append(batch["subject_id"])
            prediction_times.append(batch["prediction_time"])
        if not counts:
            for w in writers.values():
                w.file.close()
            raise ValueError("FeatureCache.build: no batches")
        rows = {k: w.finish(widths.get(k, ()), torch.float32) for k, w in writers.items()}
        n = torch.cat(counts).numpy().astype(np.int64)
        return cls(
            features={k: rows[k] for k in FEATURE_KEYS},
            set_times=rows["set_times"],
            observation=rows["observation"],
            offsets=np.concatenate([[0], np.cumsum(n)]),
            labels=torch.cat(labels),
            subject_ids=torch.cat(subject_ids),
            prediction_times=torch.cat(prediction_times),
        )

    def on_disk(self) -> bool:
        return isinstance(self.observation, DiskRows)

    def close(self) -> None:
        """Close the files of an on-disk cache (nothing to do in memory)."""
        for r in (*self.features.values(), self.set_times, self.observation):
            if isinstance(r, DiskRows):
                r.close()

    def subset(self, patients: np.ndarray, name: str = "subset") -> FeatureCache:
        """The cache restricted to `patients` (positions in this cache, increasing), e.g. a label subsample.
        An on-disk cache writes the subset's rows to new files beside its own (`<key>.<name>.bin`)."""
        patients = np.asarray(patients, dtype=np.int64)
        n = np.diff(self.offsets)[patients]
        # Row numbers of the kept patients' sets, built without a Python loop over patients.
        starts = np.repeat(self.offsets[patients], n)
        within = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        rows = starts + within

        def spill(r: Rows) -> Path | None:
            return r.path.with_name(f"{r.path.stem}.{name}.bin") if isinstance(r, DiskRows) else None

        idx = torch.from_numpy(patients)
        return FeatureCache(
            features={k: _take(v, rows, spill(v)) for k, v in self.features.items()},
            set_times=_take(self.set_times, rows, spill(self.set_times)),
            observation=_take(self.observation, patients, spill(self.observation)),
            offsets=np.concatenate([[0], np.cumsum(n)]),
            labels=self.labels[idx],
            subject_ids=self.subject_ids[idx],
            prediction_times=self.prediction_times[idx],
        )

    def loader(self, loader_params: LoaderParams, shuffle: bool, *, shard: bool = False) -> DataLoader:
        """Batches of cached features: bucketed by length, reshuffled per epoch (seeded) when `shuffle`.

        `shard=True` for the loaders Lightning drives: this DDP rank's share (see BucketBatchSampler).
        """
        lp = loader_params
        sampler = BucketBatchSampler(self.lengths(), lp.batch_size, lp.bucket_size, shuffle, lp.seed, shard=shard)
        # In-process: the cache is already in memory and gathering is one indexing call per tensor.
        return DataLoader(PatientIndex(self.n_patients), batch_sampler=sampler, collate_fn=CachedFeatureCollator(self))


class CachedBatch(dict):
    """A batch gathered from a FeatureCache: the BackboneFeatures keys (padded [B, S_max, ...]) plus `labels`
    and `subject_id`. A type of its own, so the module and `predict` tell it from a raw Batch by type; it
    is itself a BackboneFeatures mapping, so the head reads it directly (SeqSetVAE.head_logits)."""


class CachedFeatureCollator:
    """Patient indices -> CachedBatch."""

    def __init__(self, cache: FeatureCache):
        self.cache = cache

    def __call__(self, indices: list[int]) -> CachedBatch:
        c = self.cache
        idx = np.asarray(indices, dtype=np.int64)
        start = c.offsets[idx]
        n = c.offsets[idx + 1] - start
        s_range = np.arange(int(n.max()))
        mask = s_range[None, :] < n[:, None]
        rows = torch.from_numpy(np.where(mask, start[:, None] + s_range, 0))  # padding reads row 0, zeroed below
        mask_t = torch.from_numpy(mask)
        out = CachedBatch(
            (k, c.features[k][rows] * mask_t[..., None].to(c.features[k].dtype)) for k in FEATURE_KEYS
        )
        out["set_times"] = c.set_times[rows] * mask_t.to(c.set_times.dtype)
        out["set_mask"] = mask_t
        out["observation"] = c.observation[idx]
        out["labels"] = c.labels[idx]
        out["subject_id"] = c.subject_ids[idx]
        out["prediction_time"] = c.prediction_times[idx]
        return out


# --------------------------------------------------------------------------------------------------
# The LightningModule


class FinetuneModule(ProjectModule):
    """Trains SeqSetVAE's head (and any unfrozen backbone part) on raw or cached-feature batches."""

    kind = KIND

    def __init__(self, model: SeqSetVAE, pos_weight: float | None, n_bins: int, pretrained_sha256: str):
        super().__init__()
        self.model = model
        self.cfg: ModelConfig = model.cfg
        self.ft: FinetuneParams = model.ft
        self.pos_weight = pos_weight
        self.pretrained_sha256 = pretrained_sha256
        self._metrics = metric_functions(n_bins)
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def architecture(self) -> dict[str, Any]:
        ft = dataclasses.asdict(self.ft)
        return {
            **super().architecture(),
            "head": {k: ft[k] for k in HEAD_KEYS},
            "pretrained_sha256": self.pretrained_sha256,
        }

    def _loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if isinstance(batch, CachedBatch):
            return self.model.head_loss(batch, batch["labels"], self.pos_weight)  # type: ignore[arg-type]
        return self.model.loss(batch, self.pos_weight)  # type: ignore[arg-type]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self._loss(batch)
        b = int(batch["labels"].shape[0])
        self.log("train/loss", out["loss"].detach(), on_step=True, on_epoch=True, batch_size=b, prog_bar=True,
                 sync_dist=True)
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._loss(batch)
        # sync_dist: the epoch value is the patient-weighted mean over all ranks' shares of val (exact).
        self.log("val/loss", out["loss"], on_epoch=True, batch_size=int(batch["labels"].shape[0]), sync_dist=True)
        self._val_logits.append(out["logits"].float().cpu())
        self._val_labels.append(batch["labels"].cpu())

    def on_validation_epoch_end(self) -> None:
        # AUROC / AUPRC do not decompose over ranks: gather every rank's share of val (disjoint, each stay
        # once) so that every rank scores the whole val set, as a single process would.
        y = gather_varlen(self, torch.cat(self._val_labels)).numpy()
        p = torch.sigmoid(gather_varlen(self, torch.cat(self._val_logits))).numpy()
        self._val_logits.clear()
        self._val_labels.clear()
        if np.unique(y).size < 2:
            raise DataError(None, f"validation batches hold only one class ({int(y.sum())} of {y.size} positive): "
                                  "AUROC/AUPRC undefined; raise trainer.limit_val_batches or use a larger val split")
        # Equal on every rank already; sync_dist averages equal values (exact), as Lightning asks of
        # epoch-level metrics under DDP.
        self.log("val/auroc", self._metrics["auroc"](y, p), prog_bar=True, sync_dist=True)
        self.log("val/auprc", self._metrics["auprc"](y, p), prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameter_groups())


# --------------------------------------------------------------------------------------------------
# Building from checkpoints, predicting


def _pretrained_config(path: str | Path, expect_vocab_size: int) -> tuple[dict[str, Any], ModelConfig]:
    ckpt = load_checkpoint(path)
    block = project_block(ckpt, path, kind="pretrain")
    cfg = ModelConfig.from_dict(block["architecture"]["model_config"])
    if cfg.vocab_size != expect_vocab_size:
        raise DataError(path, f"pretrained on a vocabulary of {cfg.vocab_size} codes, this fold has "
                              f"{expect_vocab_size}: pretrain and finetune must use the same fold")
    return ckpt, cfg


def build_with_random_backbone(
    path: str | Path, ft: FinetuneParams, expect_vocab_size: int
) -> tuple[SeqSetVAE, ModelConfig]:
    """The ablation of pretraining: SeqSetVAE with the architecture of a pretrain checkpoint but its
    randomly initialised backbone (no weights loaded), frozen per params like the pretrained one. Built
    from the same seeded RNG state, the head starts from the same weights as in build_from_pretrained."""
    _, cfg = _pretrained_config(path, expect_vocab_size)
    model = SeqSetVAE(cfg, ft)
    log.info("%s: backbone randomly initialised (architecture of %s), no pretrained weights loaded",
             type(model).__name__, path)
    model.freeze_backbone()
    return model, cfg


def build_from_pretrained(
    path: str | Path, ft: FinetuneParams, expect_vocab_size: int
) -> tuple[SeqSetVAE, ModelConfig]:
    """SeqSetVAE with the backbone of a pretrain checkpoint (explicit key mapping), frozen per params."""
    ckpt, cfg = _pretrained_config(path, expect_vocab_size)
    model = SeqSetVAE(cfg, ft)
    try:
        report = model.load_pretrained(model_state_dict(ckpt, path))
    except PretrainedWeightsError as e:
        raise DataError(path, str(e)) from None
    log.info("%s <- %s: %d backbone tensors loaded, %d missing, %d unexpected (pretrain-only: %s)",
             type(model).__name__, path, report.loaded, len(report.missing), len(report.unexpected),
             ", ".join(sorted({k.split(".")[0] + "." + k.split(".")[1] for k in report.unexpected})) or "none")
    model.freeze_backbone()
    return model, cfg


def load_finetune_model(path: str | Path, ft: FinetuneParams) -> SeqSetVAE:
    """The SeqSetVAE saved in a finetune checkpoint, in eval mode (head settings from the checkpoint)."""
    ckpt = load_checkpoint(path)
    block = project_block(ckpt, path, kind=KIND)
    head = block["architecture"]["head"]
    ft_saved = dataclasses.replace(ft, **{k: v for k, v in head.items() if k != "pooling"},
                                   pooling=type(ft.pooling)(**head["pooling"]))
    model = SeqSetVAE(ModelConfig.from_dict(block["architecture"]["model_config"]), ft_saved)
    try:
        model.load_state_dict(model_state_dict(ckpt, path), strict=True)
    except RuntimeError as e:
        raise DataError(path, f"weights do not fit the model rebuilt from the checkpoint: {e}") from None
    model.freeze_backbone()
    return model.eval()


@torch.no_grad()
def predict(
    model: SeqSetVAE, batches: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> Predictions:
    """(subject_id, prediction_time, label, probability) for every sample in `batches` (raw or cached), sorted
    by sample (subject, then prediction time)."""
    model.eval().to(device)
    ids, times, labels, probs = [], [], [], []
    for batch in batches:
        b = to_device(batch, device)
        logits = model.head_logits(b) if isinstance(b, CachedBatch) else model(b)  # type: ignore[arg-type]
        probs.append(torch.sigmoid(logits.float()).cpu())
        ids.append(batch["subject_id"])
        times.append(batch["prediction_time"])
        labels.append(batch["labels"])
    sid, when = torch.cat(ids).numpy(), torch.cat(times).numpy()
    order = np.lexsort((when, sid))
    return Predictions(sid[order], when[order], torch.cat(labels).numpy()[order],
                       torch.cat(probs).numpy().astype(np.float64)[order])


class Predictions(NamedTuple):
    """One row per sample, sorted by (subject_id, prediction_time)."""

    subject_id: np.ndarray  # int64
    prediction_time: np.ndarray  # int64, microseconds since the epoch
    label: np.ndarray
    probability: np.ndarray  # float64
