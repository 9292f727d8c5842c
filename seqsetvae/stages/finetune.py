"""Finetune SeqSetVAE for in-hospital mortality from a pretrained backbone, on one fold.

Loads the backbone of `--pretrained` through SeqSetVAE's explicit key mapping, freezes it (unless
finetune.unfreeze), caches its features once per split when it is wholly frozen, and trains the head.
Writes `--out/{best,last}.ckpt` (best = highest val AUPRC) with their sha256 in `--out/SHA256SUMS` (checked
by every later load), the details JSON (val/test AUROC, AUPRC from best.ckpt, calibration, variant), the
metrics JSON (val AUROC / AUPRC: test figures are the evaluate stage's), DVCLive curves, and the test
predictions parquet (subject_id, label, probability) that the evaluate stage reads. If `--out/last.ckpt`
exists, training resumes from it. See docs/training.md.

`--variant NAME` runs the ablation variant `ablation.variants.NAME` instead of the main model: a randomly
initialised backbone (same architecture, same frozen protocol) and / or the head trained on a seeded,
stratified fraction of the train split's labelled subjects (val and test unchanged). `--backbone` and
`--label-fraction` do the same for a label-efficiency run (params `label_efficiency`, whose seed draws the
subsample). Every label subsample comes from seqsetvae.data.splits.label_subsample (nested across fractions).

`--backbone-data` (an extra task of params `tasks`, whose `--data` is its own processed folder): the fold's
vocab.json and norm_stats.json must equal, byte for byte, those of the folder the backbone was pretrained on
(seqsetvae.data.fixed_stats.check_same_statistics), else the run stops before training.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pyarrow as pa
import torch

from seqsetvae.config import AblationVariant, FinetuneParams, ModelParams, Params, ParamsError, head_problem
from seqsetvae.data.datamodule import SetSequenceDataModule
from seqsetvae.data.fixed_stats import check_same_statistics
from seqsetvae.data.splits import label_subsample
from seqsetvae.errors import DataError
from seqsetvae.evaluation.calibration import Calibration
from seqsetvae.evaluation.metrics import metric_functions
from seqsetvae.io import write_json, write_parquet
from seqsetvae.stages.options import label_fraction_arg
from seqsetvae.stages.pretrain import fold_dir
from seqsetvae.training.checkpoints import checkpoint_file
from seqsetvae.training.distributed import launch_rank
from seqsetvae.training.finetune_module import FeatureCache, FinetuneModule, Predictions, build_from_pretrained
from seqsetvae.training.finetune_module import build_with_random_backbone, choose_observation_codes
from seqsetvae.training.finetune_module import load_finetune_model, pos_weight_of, predict
from seqsetvae.training.fingerprint import file_sha256, run_fingerprint
from seqsetvae.training.lifecycle import Schedule, StageOutputs, start_run, train_and_record
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.trainer import Monitor

log = logging.getLogger(__name__)

MONITOR = Monitor("val/auprc", "max")
SPLITS = ("train", "val", "test")
CALIBRATION_FILE = "calibration.json"  # the Platt scale and bias fitted on val (beside the checkpoints)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="preprocess output folder (holds fold_<K>/)")
    parser.add_argument("--fold", required=True, type=int, help="fold number K")
    parser.add_argument(
        "--pretrained", required=True, type=checkpoint_file,
        help="pretrain checkpoint, or the pretrain output folder (its best.ckpt)",
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder: best.ckpt, last.ckpt")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write (val AUROC / AUPRC)")
    parser.add_argument("--details", required=True, type=Path, help="details JSON to write (everything measured)")
    parser.add_argument("--curves", required=True, type=Path, help="DVCLive folder for the training curves")
    parser.add_argument("--predictions", required=True, type=Path, help="test predictions parquet to write")
    parser.add_argument("--backbone-data", default=None, type=Path,
                        help="the preprocess output the backbone was pretrained on, when --data is another task's "
                             "(params tasks): its fold vocabulary and statistics must be --data's, byte for byte")
    parser.add_argument("--variant", default=None,
                        help="ablation variant: a name under params ablation.variants (default: the main model)")
    parser.add_argument("--backbone", default=None, choices=BACKBONES,
                        help="label efficiency: the frozen backbone, pretrained weights or random ones of the same "
                             "architecture (default: pretrained)")
    parser.add_argument("--label-fraction", default=None, type=label_fraction_arg,
                        help="label efficiency: the head trains on this share (0, 1] of the train split's labels, "
                             "a nested subsample seeded by params label_efficiency.seed (default: 1, every label)")


BACKBONES = ("pretrained", "random")


@dataclasses.dataclass(frozen=True)
class RunKind:
    """What one finetune run trains: the main model, an ablation variant or a label-efficiency point."""

    name: str  # "main", the ablation variant's name, or "label_efficiency"
    backbone: str  # pretrained | random | none
    label_fraction: float
    label_seed: int | None  # seed of the label subsample (None: every label)
    fraction_key: str  # where the fraction was set, for error messages
    head: FinetuneParams  # the finetune section, with an ablation variant's own inputs / projection / unfreeze


def run_kind(params: Params, variant: str | None, backbone: str | None, label_fraction: float | None) -> RunKind:
    if variant is not None:
        if backbone is not None or label_fraction is not None:
            raise ParamsError(f"--variant {variant} takes its backbone and label fraction from "
                              f"ablation.variants.{variant}: give --backbone / --label-fraction without --variant")
        v: AblationVariant = params.ablation.variant(variant)
        return RunKind(variant, v.backbone, v.label_fraction, params.ablation.seed,
                       f"ablation.variants.{variant}.label_fraction", v.head(params.finetune))
    if backbone is not None or label_fraction is not None:
        return RunKind("label_efficiency", backbone or "pretrained", 1.0 if label_fraction is None else label_fraction,
                       params.label_efficiency.seed, "--label-fraction", params.finetune)
    return RunKind("main", "pretrained", 1.0, None, "", params.finetune)


# A label subsample smaller than this is refused (check_label_subsample): a head fitted on a handful of
# stays measures nothing, and the epoch budget (passes_per_epoch) grows as the subsample shrinks.
MIN_SUBSAMPLE_STAYS = 20
MIN_SUBSAMPLE_POSITIVES = 3


def passes_per_epoch(n_train: int, n_kept: int) -> int:
    """Passes over a label subsample of `n_kept` of the `n_train` train stays that make one finetune epoch:
    as many stays seen as one pass over every label (1 for the whole split)."""
    return max(1, math.ceil(n_train / n_kept - 1e-9))


def check_label_subsample(key: str, fraction: float, fold: int, kept: int, positives: int, n_train: int) -> None:
    """ParamsError naming `key` when the subsample keeps fewer than the minimum stays or positives."""
    if kept >= MIN_SUBSAMPLE_STAYS and positives >= MIN_SUBSAMPLE_POSITIVES:
        return
    raise ParamsError(
        f"{key} {fraction:g} keeps {kept} of fold {fold}'s {n_train} train stays ({positives} positive); a label "
        f"subsample needs at least {MIN_SUBSAMPLE_STAYS} stays and {MIN_SUBSAMPLE_POSITIVES} positives: raise the "
        "fraction (under the pipeline: label_efficiency.fractions or the ablation variant's label_fraction)"
    )


def check_both_classes(labels: np.ndarray, where: Path, fold: int) -> None:
    """DataError naming the split when it lacks a class: val chooses the head by AUPRC, test reports AUROC
    and AUPRC, and neither is defined on one class."""
    positives = int((labels > 0.5).sum())
    if 0 < positives < labels.size:
        return
    raise DataError(where, f"fold {fold}: {labels.size} stays, {positives} positive: AUROC and AUPRC need both "
                           "classes; choose another split for this fold (split.seed, split.fractions)")


def check_architecture(model: ModelParams, pretrained_arch: ModelParams, pretrained: Path) -> None:
    """ParamsError naming every params `model` key that differs from the pretrained checkpoint's: finetune
    builds the checkpoint's architecture, so params (and the run fingerprint) would describe another model."""
    def flat(d: dict[str, Any], prefix: str = "model") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}") if isinstance(v, dict) else {f"{prefix}.{k}": v})
        return out

    want, have = flat(dataclasses.asdict(model)), flat(dataclasses.asdict(pretrained_arch))
    diffs = [f"{k} is {want.get(k)!r} in params but {have.get(k)!r} in the checkpoint"
             for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    if diffs:
        raise ParamsError(f"params.yaml does not describe the pretrained model {pretrained}: {'; '.join(diffs)}. "
                          "Set them as the checkpoint has them, or rerun pretrain with these params")


def finetune(
    params: Params,
    data: Path,
    fold: int,
    pretrained: Path,
    out: Path,
    metrics: Path,
    curves: Path | None,
    predictions: Path,
    variant: str | None = None,
    details: Path | None = None,
    backbone: str | None = None,
    label_fraction: float | None = None,
    backbone_data: Path | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) the head, evaluate best.ckpt on val and test; returns every figure measured (the
    details, written to `details` when given). `metrics` gets the val AUROC / AUPRC only: the figures the
    head was chosen on. The test split's figures are the evaluate stage's metrics, so a change shows once.
    Under DDP only global rank 0 evaluates and writes; the other ranks return None after training.
    `variant` names an ablation variant of params (None: the main model, pretrained with every label);
    `backbone` / `label_fraction` make it a label-efficiency run (params label_efficiency)."""
    kind = run_kind(params, variant, backbone, label_fraction)
    head = head_params(params, kind, variant)
    if backbone_data is not None:  # another task's data: it must speak the backbone's vocabulary and scale
        check_same_statistics(fold_dir(data, fold), fold_dir(backbone_data, fold))
    dm = SetSequenceDataModule(fold_dir(data, fold), params.loader)
    for split in ("val", "test"):  # before any training, as evaluate and baseline refuse it
        check_both_classes(np.asarray(dm.split(split).labels), fold_dir(data, fold) / split, fold)
    n_threads = start_run(head.seed, params.trainer)
    run = HeadTraining.build(params, kind, head, dm, data, fold, pretrained, variant, predictions, Path(out))
    # A head on a label subsample gets as many optimiser steps as one on every label: one "epoch" is
    # ceil(train stays / stays kept) passes over the subsample (about 1 / fraction), and validation,
    # checkpointing and early-stopping patience count those epochs. Without it, 1 % of P12's labels made 3
    # steps an epoch and 60 in all, and the head was still improving when max_epochs stopped it
    # (docs/training.md). From the stays kept, not the nominal fraction: the subsample keeps at least one
    # stay per class, so a tiny fraction would otherwise ask for 1 / fraction passes over a few stays.
    passes = passes_per_epoch(run.labels.labels.size, run.labels.keep.size)
    with run.cleanup:  # the feature cache's folder goes when the stage ends, however it ends
        result = train_and_record(
            run.module, params.trainer,
            StageOutputs(Path(out), metrics, details, curves, finals=(CALIBRATION_FILE,)),
            Schedule(MONITOR, head.max_epochs * passes, head.grad_clip_norm, epochs_per_validation=passes),
            num_threads=n_threads, fit=run.fit, evaluate=run.evaluate,
            headline=lambda r: {"val": {k: r["val"][k] for k in ("auroc", "auprc")}},
        )
    if result is not None:
        log.info("finetune fold %d: best epoch %d; val AUROC %.4f AUPRC %.4f; test AUROC %.4f AUPRC %.4f -> %s, %s",
                 fold, result["best"]["epoch"], result["val"]["auroc"], result["val"]["auprc"],
                 result["test"]["auroc"], result["test"]["auprc"], metrics, predictions)
    return result


def head_params(params: Params, kind: RunKind, variant: str | None) -> FinetuneParams:
    """The finetune section this run trains with (an ablation variant may set its own inputs / bottleneck;
    backbone_only: the seed's protocol), after the cross-key rules. The run asked for may be a variant
    outside ablation.run or a label-efficiency point, which params loading did not check: the same rules
    (config.head_problem), applied to this run."""
    ft = kind.head
    own_unfreeze = params.ablation.variant(variant).unfreeze if variant is not None else None
    problem = head_problem(kind.backbone, kind.label_fraction, ft.inputs, own_unfreeze, params.finetune.unfreeze)
    if problem is not None:
        what, fix = problem
        where = f"ablation.variants.{variant}." if variant is not None else f"--label-fraction {kind.label_fraction}: "
        raise ParamsError(where + what + (f". {fix}" if fix else ""))
    if kind.backbone == "none":  # the control row: the same head on the hand-made inputs alone, no backbone
        ft = dataclasses.replace(ft, inputs="observation")
    return ft


@dataclasses.dataclass(frozen=True)
class TrainLabels:
    """The train split's labels (loader order) and which of them the head sees."""

    labels: np.ndarray
    subject_ids: np.ndarray
    keep: np.ndarray  # positions in the split the head trains on: every one for the main model
    positives: int  # among those kept

    @classmethod
    def choose(cls, dm: SetSequenceDataModule, kind: RunKind, fold: int, where: Path) -> "TrainLabels":
        """Every train label, or the run's seeded label subsample (refused when it keeps too few)."""
        labels = np.asarray(dm.split("train").labels)
        ids = np.asarray(dm.split("train").subject_ids)
        if kind.label_fraction < 1.0:
            assert kind.label_seed is not None
            keep = label_subsample(labels, kind.label_fraction, kind.label_seed, ids=ids,
                                   what=f"{where} ({kind.fraction_key} {kind.label_fraction:g})")
        else:
            keep = np.arange(labels.size)
        positives = int((labels[keep] > 0.5).sum())
        if keep.size < labels.size:
            check_label_subsample(kind.fraction_key, kind.label_fraction, fold, keep.size, positives, labels.size)
        return cls(labels, ids, keep, positives)

    @property
    def subsampled(self) -> bool:
        return self.keep.size < self.labels.size


@dataclasses.dataclass
class HeadTraining:
    """What finetune adds to the shared training lifecycle (training/lifecycle.py): the model and its
    LightningModule, how it is fitted (on cached backbone features when the backbone is wholly frozen) and
    what is measured from best.ckpt (val / test AUROC and AUPRC, Platt calibration, the test predictions)."""

    params: Params
    kind: RunKind
    head: FinetuneParams
    dm: SetSequenceDataModule
    model: Any  # SeqSetVAE (models/finetune.py)
    module: FinetuneModule
    labels: TrainLabels
    predictions: Path
    out: Path  # the stage's output folder: the feature cache's folder goes inside it
    caches: dict[str, FeatureCache] = dataclasses.field(default_factory=dict)
    device: torch.device | None = None  # the Trainer's, set by `fit`
    cleanup: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)

    @classmethod
    def build(cls, params: Params, kind: RunKind, head: FinetuneParams, dm: SetSequenceDataModule, data: Path,
              fold: int, pretrained: Path, variant: str | None, predictions: Path, out: Path) -> "HeadTraining":
        """The model (from the pretrained backbone or a random one; refused when params describe another
        architecture), the train labels it sees and its module, whose run fingerprint a resume must match."""
        random_backbone = kind.backbone == "random"
        build = build_with_random_backbone if random_backbone else build_from_pretrained
        model, cfg = build(pretrained, head, dm.vocab_size)
        check_architecture(params.model, cfg.arch, pretrained)
        choose_observation_codes(model, dm.split("train"))  # finetune.observation_codes: on train only
        labels = TrainLabels.choose(dm, kind, fold, fold_dir(data, fold) / "train")
        pos_weight = pos_weight_of(labels.labels[labels.keep], fold_dir(data, fold) / "train")
        # The backbone's identity goes into the checkpoint: a resume must start from the same weights.
        backbone_id = ("random-init:" if random_backbone else "") + file_sha256(pretrained)
        module = FinetuneModule(model, pos_weight, params.evaluate.calibration_bins, backbone_id)
        module.run_fingerprint = run_fingerprint(
            params, fold, [fold_dir(data, fold)],
            {"variant": variant, "backbone": backbone_id, "label_fraction": kind.label_fraction,
             "label_seed": kind.label_seed},
        )
        log.info("finetune fold %d: unfreeze=%s, %d trainable of %d parameters, pos_weight %.3f",
                 fold, head.unfreeze, sum(p.numel() for p in model.parameters() if p.requires_grad),
                 sum(p.numel() for p in model.parameters()), pos_weight)
        return cls(params, kind, head, dm, model, module, labels, predictions, out)

    def fit(self, trainer: L.Trainer, ckpt: Path | None) -> None:
        self.device = trainer.strategy.root_device
        if self.head.unfreeze == "none":
            self.cache_features()
            # Every rank holds the whole cache (built unsharded); the loaders give each rank its share.
            loader = self.params.loader
            trainer.fit(self.module, train_dataloaders=self.caches["train"].loader(loader, shuffle=True, shard=True),
                        val_dataloaders=self.caches["val"].loader(loader, shuffle=False, shard=True), ckpt_path=ckpt)
        else:
            if self.model.observation_dim:
                self.model.set_observation_scaler(
                    self.model.observation(b) for b in self.dm.dataloader("train", shuffle=False))
            trainer.fit(self.module, datamodule=self.dm, ckpt_path=ckpt)

    def cache_features(self) -> None:
        """The whole backbone is frozen: its features are a fixed function of the data. Compute them once per
        split (the train cache cut to the label subsample), and fit the observation scaler on train."""
        t0 = time.perf_counter()
        model, labels = self.model, self.labels
        model.to(self.device).eval()
        # On disk (<out>/.feature_cache.rank<r>/<split>/, removed when the stage ends): the features of every set
        # of every sample do not fit in memory at MIMIC-IV scale; batches read their rows back (DiskRows).
        spill = self.cleanup.enter_context(feature_cache_dir(self.out))
        for s in SPLITS:
            (spill / s).mkdir()
        self.caches = {s: FeatureCache.build(model, self.dm.dataloader(s, shuffle=False), self.device, spill=spill / s)
                       for s in SPLITS}
        if labels.subsampled:
            in_subsample = np.isin(self.caches["train"].subject_ids.numpy(), labels.subject_ids[labels.keep])
            self.caches["train"] = self.caches["train"].subset(np.flatnonzero(in_subsample), name="label_subsample")
            log.info("%s: the head trains on %d of %d train stays (%d positive; label fraction %g, seed %d)",
                     self.kind.name, self.caches["train"].n_patients, labels.labels.size, labels.positives,
                     self.kind.label_fraction, self.kind.label_seed)
        if model.observation_dim:
            model.set_observation_scaler(self.caches["train"].observation)
        model.cpu().train()  # Lightning keeps the mode it finds; train() leaves the frozen backbone in eval
        log.info("backbone features cached for %s sets in %.1f s",
                 " / ".join(f"{s} {self.caches[s].offsets[-1]}" for s in SPLITS), time.perf_counter() - t0)

    def evaluate(self, trainer: L.Trainer, best: Path) -> dict[str, Any]:
        """Val and test AUROC / AUPRC of best.ckpt, the Platt calibration fitted on val (written beside the
        checkpoints) and the run's variant; writes the test predictions, calibrated where fitted."""
        ft, kind = self.head, self.kind
        best_model = load_finetune_model(best, ft)
        fns = metric_functions(self.params.evaluate.calibration_bins)
        result: dict[str, Any] = {"variant": {
            "name": kind.name, "backbone": kind.backbone, "label_fraction": kind.label_fraction,
            "label_seed": kind.label_seed, "train_stays": int(self.labels.keep.size),
            "train_positives": self.labels.positives, "inputs": ft.inputs,
            "backbone_projection": ft.backbone_projection, "unfreeze": ft.unfreeze}}
        test_rows: Predictions | None = None
        calibration: Calibration | None = None
        for split in ("val", "test"):
            batches = (self.caches[split].loader(self.params.loader, shuffle=False) if self.caches
                       else self.dm.dataloader(split, shuffle=False))
            rows = predict(best_model, batches, self.device)
            y, p = rows.label, rows.probability
            result[split] = {"auroc": fns["auroc"](y, p), "auprc": fns["auprc"](y, p), "n": int(y.size),
                             "positives": int(y.sum())}
            if split == "val" and ft.calibration == "platt":
                calibration = Calibration.fit_platt(y, p)  # on val only; test is never used to choose anything
            if split == "test":
                test_rows = rows._replace(probability=calibration.apply(p)) if calibration is not None else rows
        if calibration is not None:
            result["calibration"] = calibration.to_dict()
            write_json(best.parent / CALIBRATION_FILE, round_metrics(calibration.to_dict()))
        assert test_rows is not None
        write_parquet(self.predictions, prediction_table(test_rows))
        return result


@contextlib.contextmanager
def feature_cache_dir(out: Path) -> Iterator[Path]:
    """A fresh folder for the frozen backbone's feature cache, `<out>/.feature_cache.rank<r>` (one per DDP rank:
    each builds its own cache), removed when the stage ends, however it ends; one left by a killed run is
    replaced."""
    path = Path(out) / f".feature_cache.rank{launch_rank()}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def prediction_table(rows: Predictions) -> pa.Table:
    """The predictions parquet the evaluate stage reads: one row per sample, keyed by (subject_id,
    prediction_time)."""
    return pa.table({
        "subject_id": pa.array(rows.subject_id, pa.int64()),
        "prediction_time": pa.array(rows.prediction_time, pa.int64()).cast(pa.timestamp("us")),
        "label": pa.array(rows.label.astype(np.int8), pa.int8()),
        "probability": pa.array(rows.probability, pa.float64()),
    })


def run(params: Params, args: argparse.Namespace) -> None:
    finetune(params, args.data, args.fold, args.pretrained, args.out, args.metrics, args.curves, args.predictions,
             args.variant, args.details, backbone=args.backbone, label_fraction=args.label_fraction,
             backbone_data=args.backbone_data)
