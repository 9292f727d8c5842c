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

import numpy as np
import pyarrow as pa

from seqsetvae.config import AblationVariant, FinetuneParams, ModelParams, Params, ParamsError, head_problem
from seqsetvae.data.datamodule import SetSequenceDataModule
from seqsetvae.data.splits import label_subsample
from seqsetvae.evaluation.calibration import Calibration
from seqsetvae.errors import DataError
from seqsetvae.evaluation.metrics import metric_functions
from seqsetvae.io import write_json, write_parquet
from seqsetvae.stages.options import label_fraction_arg
from seqsetvae.stages.pretrain import fold_dir
from seqsetvae.training.checkpoints import (
    best_path,
    checkpoint_file,
    load_checkpoint,
    project_block,
    remove_checksums,
    write_checksums,
)
from seqsetvae.training.finetune_module import (
    KIND,
    FeatureCache,
    FinetuneModule,
    build_from_pretrained,
    build_with_random_backbone,
    choose_observation_codes,
    Predictions,
    load_finetune_model,
    pos_weight_of,
    predict,
)
from seqsetvae.training.distributed import is_writer, launch_rank
from seqsetvae.training.fingerprint import file_sha256, run_fingerprint
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.resume import finish_run, incomplete_on_failure, prepare_out_dir, resume_checkpoint
from seqsetvae.threads import use_torch_threads
from seqsetvae.training.rng import seed_everything
from seqsetvae.training.trainer import Monitor, build_trainer

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
) -> dict[str, Any] | None:
    """Train (or resume) the head, evaluate best.ckpt on val and test; returns every figure measured (the
    details, written to `details` when given). `metrics` gets the val AUROC / AUPRC only: the figures the
    head was chosen on. The test split's figures are the evaluate stage's metrics, so a change shows once.
    Under DDP only global rank 0 evaluates and writes; the other ranks return None after training.
    `variant` names an ablation variant of params (None: the main model, pretrained with every label);
    `backbone` / `label_fraction` make it a label-efficiency run (params label_efficiency)."""
    kind = run_kind(params, variant, backbone, label_fraction)
    ft = kind.head  # an ablation variant may set its own inputs / bottleneck (backbone_only: the seed's protocol)
    random_backbone = kind.backbone == "random"
    # The run asked for may be a variant outside ablation.run or a label-efficiency point, which params
    # loading did not check: the same rules (config.head_problem), applied to this run.
    own_unfreeze = params.ablation.variant(variant).unfreeze if variant is not None else None
    problem = head_problem(kind.backbone, kind.label_fraction, ft.inputs, own_unfreeze, params.finetune.unfreeze)
    if problem is not None:
        what, fix = problem
        where = f"ablation.variants.{variant}." if variant is not None else f"--label-fraction {kind.label_fraction}: "
        raise ParamsError(where + what + (f". {fix}" if fix else ""))
    if kind.backbone == "none":  # the control row: the same head on the hand-made inputs alone, no backbone
        ft = dataclasses.replace(ft, inputs="observation")
    label_fraction = kind.label_fraction
    dm = SetSequenceDataModule(fold_dir(data, fold), params.loader)
    for split in ("val", "test"):  # before any training, as evaluate and baseline refuse it
        check_both_classes(np.asarray(dm.split(split).labels), fold_dir(data, fold) / split, fold)
    seed_everything(ft.seed)
    n_threads = use_torch_threads(params.trainer.num_threads)
    build = build_with_random_backbone if random_backbone else build_from_pretrained
    model, cfg = build(pretrained, ft, dm.vocab_size)
    check_architecture(params.model, cfg.arch, pretrained)
    choose_observation_codes(model, dm.split("train"))  # finetune.observation_codes: on train only
    train_labels = np.asarray(dm.split("train").labels)
    train_ids = np.asarray(dm.split("train").subject_ids)
    # Which train patients the head sees (positions in the split, which the frozen cache keeps in loader
    # order; mapped through subject ids below). The whole split for the main model.
    if label_fraction < 1.0:
        assert kind.label_seed is not None
        keep = label_subsample(train_labels, label_fraction, kind.label_seed, ids=train_ids,
                               what=f"{fold_dir(data, fold) / 'train'} ({kind.fraction_key} {label_fraction:g})")
    else:
        keep = np.arange(train_labels.size)
    kept_labels = train_labels[keep]
    train_positives = int((kept_labels > 0.5).sum())
    if keep.size < train_labels.size:
        check_label_subsample(kind.fraction_key, label_fraction, fold, keep.size, train_positives, train_labels.size)
    pos_weight = pos_weight_of(kept_labels, fold_dir(data, fold) / "train")
    # The backbone's identity goes into the checkpoint: a resume must start from the same weights.
    backbone_id = ("random-init:" if random_backbone else "") + file_sha256(pretrained)
    module = FinetuneModule(model, pos_weight, params.evaluate.calibration_bins, backbone_id)
    module.run_fingerprint = run_fingerprint(
        params, fold, [fold_dir(data, fold)],
        {"variant": variant, "backbone": backbone_id, "label_fraction": label_fraction, "label_seed": kind.label_seed},
    )
    prepare_out_dir(out)
    with incomplete_on_failure(out, (CALIBRATION_FILE,)), feature_cache_dir(out) as spill:
        ckpt = resume_checkpoint(out, module, curves)
        if launch_rank() == 0:
            remove_checksums(out)  # training rewrites the files they describe; recorded again at the end
        # A head on a label subsample gets as many optimiser steps as one on every label: one "epoch" is
        # ceil(train stays / stays kept) passes over the subsample (about 1 / fraction), and validation,
        # checkpointing and early-stopping patience count those epochs. Without it, 1 % of P12's labels made 3
        # steps an epoch and 60 in all, and the head was still improving when max_epochs stopped it
        # (docs/training.md). From the stays kept, not the nominal fraction: the subsample keeps at least one
        # stay per class, so a tiny fraction would otherwise ask for 1 / fraction passes over a few stays.
        passes = passes_per_epoch(train_labels.size, keep.size)
        trainer = build_trainer(
            params.trainer,
            max_epochs=ft.max_epochs * passes,
            epochs_per_validation=passes,
            grad_clip_norm=ft.grad_clip_norm,
            out_dir=out,
            curves_dir=curves,
            monitor=MONITOR,
            resume=ckpt is not None,
        )
        device = trainer.strategy.root_device
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("finetune fold %d: unfreeze=%s, %d trainable of %d parameters, pos_weight %.3f",
                 fold, ft.unfreeze, n_train, sum(p.numel() for p in model.parameters()), pos_weight)

        caches: dict[str, FeatureCache] = {}
        if ft.unfreeze == "none":
            # The whole backbone is frozen: its features are a fixed function of the data. Compute them once.
            t0 = time.perf_counter()
            model.to(device).eval()
            # On disk (spill/<split>/, removed when the stage ends): features of every set of every sample, which
            # at MIMIC-IV scale do not fit in memory; batches read their rows back (finetune_module.DiskRows).
            caches = {}
            for s in SPLITS:
                (spill / s).mkdir()
                caches[s] = FeatureCache.build(model, dm.dataloader(s, shuffle=False), device, spill=spill / s)
            if keep.size < train_labels.size:
                kept_ids = train_ids[keep]
                in_subsample = np.isin(caches["train"].subject_ids.numpy(), kept_ids)
                caches["train"] = caches["train"].subset(np.flatnonzero(in_subsample), name="label_subsample")
                log.info("%s: the head trains on %d of %d train stays (%d positive; label fraction %g, seed %d)",
                         kind.name, caches["train"].n_patients, train_labels.size, train_positives, label_fraction,
                         kind.label_seed)
            if model.observation_dim:
                model.set_observation_scaler(caches["train"].observation)
            model.cpu().train()  # Lightning keeps the mode it finds; train() leaves the frozen backbone in eval
            log.info("backbone features cached for %s sets in %.1f s",
                     " / ".join(f"{s} {caches[s].offsets[-1]}" for s in SPLITS), time.perf_counter() - t0)
            # Every rank holds the whole cache (built above, unsharded); the loaders give each rank its share.
            trainer.fit(module, train_dataloaders=caches["train"].loader(params.loader, shuffle=True, shard=True),
                        val_dataloaders=caches["val"].loader(params.loader, shuffle=False, shard=True), ckpt_path=ckpt)
        else:
            if model.observation_dim:
                model.set_observation_scaler(model.observation(b) for b in dm.dataloader("train", shuffle=False))
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        if not is_writer(trainer):
            return None

        best = best_path(out)
        block = project_block(load_checkpoint(best), best, kind=KIND)
        best_model = load_finetune_model(best, ft)
        fns = metric_functions(params.evaluate.calibration_bins)
        result: dict[str, Any] = {"best": {k: block["schedule"][k] for k in ("epoch", "global_step")}}
        result["num_threads"] = n_threads  # results can depend on it (seqsetvae/threads.py)
        result["variant"] = {"name": kind.name, "backbone": kind.backbone, "label_fraction": label_fraction,
                             "label_seed": kind.label_seed, "train_stays": int(keep.size),
                             "train_positives": train_positives, "inputs": ft.inputs,
                             "backbone_projection": ft.backbone_projection, "unfreeze": ft.unfreeze}
        test_rows: Predictions | None = None
        calibration: Calibration | None = None
        for split in ("val", "test"):
            batches = caches[split].loader(params.loader, shuffle=False) if caches else dm.dataloader(split, shuffle=False)
            rows = predict(best_model, batches, device)
            y, p = rows.label, rows.probability
            result[split] = {"auroc": fns["auroc"](y, p), "auprc": fns["auprc"](y, p), "n": int(y.size),
                             "positives": int(y.sum())}
            if split == "val" and ft.calibration == "platt":
                calibration = Calibration.fit_platt(y, p)  # on val only; test is never used to choose anything
            if split == "test":
                test_rows = rows._replace(probability=calibration.apply(p)) if calibration is not None else rows
        if calibration is not None:
            result["calibration"] = calibration.to_dict()
            write_json(Path(out) / CALIBRATION_FILE, round_metrics(calibration.to_dict()))
        result = round_metrics(result)

        assert test_rows is not None
        write_parquet(predictions, prediction_table(test_rows))
        if details is not None:
            write_json(details, result)
        write_json(metrics, {"val": {k: result["val"][k] for k in ("auroc", "auprc")}})
        # Last, once every other output is written: SHA256SUMS marks a finished run (incomplete_on_failure).
        write_checksums(out)  # best.ckpt and last.ckpt as final: every later load checks them
        finish_run(out)  # every output is written: the resume store has served its purpose
        log.info("finetune fold %d: best epoch %d; val AUROC %.4f AUPRC %.4f; test AUROC %.4f AUPRC %.4f -> %s, %s",
                 fold, result["best"]["epoch"], result["val"]["auroc"], result["val"]["auprc"],
                 result["test"]["auroc"], result["test"]["auprc"], metrics, predictions)
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
             args.variant, args.details, backbone=args.backbone, label_fraction=args.label_fraction)
