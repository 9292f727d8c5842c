"""Pretrain SeqSetVAEPretrain (self-supervised: reconstruction + KL, all parameters) on one fold.

Reads `--data/fold_<K>` (written by preprocess); writes `--out/{best,last}.ckpt` with their sha256 in
`--out/SHA256SUMS` (checked by every later load), the details JSON (reconstruction, KL, active latent units
on val and test, from best.ckpt; the representation summary), the metrics JSON (the val figures worth
comparing: `headline_metrics`) and DVCLive training curves. If `--out/last.ckpt` exists, training resumes
from it. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from seqsetvae.config import Params
from seqsetvae.data.datamodule import SetSequenceDataModule
from seqsetvae.errors import DataError
from seqsetvae.evaluation.representation import SplitEncoding
from seqsetvae.io import write_json
from seqsetvae.models.losses import beta_at
from seqsetvae.models.pretrain import ModelConfig
from seqsetvae.training.checkpoints import last_path, load_checkpoint, project_block
from seqsetvae.training.fingerprint import run_fingerprint
from seqsetvae.training.lifecycle import Schedule, StageOutputs, start_run, train_and_record
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.pretrain_module import KIND, PretrainModule, evaluate_pretrain, gate_loader
from seqsetvae.training.pretrain_module import load_pretrain_model, representation_report
from seqsetvae.training.trainer import Monitor

log = logging.getLogger(__name__)

MONITOR = Monitor("val/loss", "min")
REPRESENTATION_FILE = "representation.json"  # per-dimension KL, per-variable read-back R^2 (beside the checkpoints)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="preprocess output folder (holds fold_<K>/)")
    parser.add_argument("--fold", required=True, type=int, help="fold number K")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder: best.ckpt, last.ckpt")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write (val figures DVC compares)")
    parser.add_argument("--details", required=True, type=Path, help="details JSON to write (everything measured)")
    parser.add_argument("--curves", required=True, type=Path, help="DVCLive folder for the training curves")


def fold_dir(data: Path, fold: int) -> Path:
    path = Path(data) / f"fold_{fold}"
    if not path.is_dir():
        raise DataError(path, f"missing: no fold {fold} in {data} (run the preprocess stage; check split.folds)")
    return path


def headline_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """What the pretrain metrics file holds: four val-split figures worth comparing across runs, flat so that
    `dvc metrics show` stays one terminal wide. The screening gate's two differences (residual probe,
    evaluation/representation.py): the mortality AUROC that the pretrained backbone's stay features add to a
    logistic regression on the observation state (`gate_gain`, AUROC), and the same against a random
    backbone's features (`gate_gain_vs_random`, AUROC); then the negative ELBO and the latent dimensions above the KL floor.
    Each gate row's AUROC / AUPRC, the AUPRC differences, the test split, R^2, counts and the thread count are in
    the details."""
    r = result["representation"]
    return {
        "gate_gain": r["gate_pretrained_minus_observation_auroc"],
        "gate_gain_vs_random": r["gate_pretrained_minus_random_auroc"],
        "neg_elbo": result["val"]["neg_elbo"],
        "dims_above_floor": r["dims_above_floor"],
    }


def kl_warmup_summary(last_block: dict[str, Any], beta_max: float) -> dict[str, Any]:
    """Where the KL schedule got to (last.ckpt's schedule): the warm-up length in optimiser steps, the steps
    run, the beta of the last step and the share of the steps run at beta_max (issue 29: at least half)."""
    sched = last_block["schedule"]
    steps, done = sched.get("kl_warmup_steps"), int(sched["global_step"])
    if steps is None:  # a checkpoint written before the warm-up length was stored
        return {"steps": None, "steps_run": done, "beta_last_step": None, "share_at_beta_max": None}
    return {"steps": int(steps), "steps_run": done,
            "beta_last_step": beta_at(max(done - 1, 0), beta_max, int(steps)),
            "share_at_beta_max": max(done - int(steps), 0) / done if done else 0.0}


def pretrain(
    params: Params, data: Path, fold: int, out: Path, metrics: Path, curves: Path | None,
    details: Path | None = None,
) -> dict[str, Any] | None:
    """Train (or resume), then evaluate best.ckpt on val and test; returns every figure measured (the
    details, written to `details` when given; `metrics` gets `headline_metrics` of it).

    Under DDP only global rank 0 evaluates and writes; the other ranks return None after training.
    """
    dm = SetSequenceDataModule(fold_dir(data, fold), params.loader)
    cfg = ModelConfig.from_params(params.model, dm.vocab_size)
    n_threads = start_run(params.pretrain.seed, params.trainer)
    module = PretrainModule(cfg, params.pretrain)
    module.run_fingerprint = run_fingerprint(params, fold, [fold_dir(data, fold)])
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info("pretrain fold %d: %s, %d parameters, vocabulary %d", fold, type(module.model).__name__, n_params,
             dm.vocab_size)
    result = train_and_record(
        module, params.trainer,
        StageOutputs(Path(out), metrics, details, curves, finals=(REPRESENTATION_FILE,)),
        Schedule(MONITOR, params.pretrain.max_epochs, params.pretrain.grad_clip_norm),
        num_threads=n_threads,
        fit=lambda trainer, ckpt: trainer.fit(module, datamodule=dm, ckpt_path=ckpt),
        evaluate=lambda trainer, best: evaluate_best(params, dm, best, trainer.strategy.root_device, n_params),
        headline=headline_metrics,
    )
    if result is not None:
        log_result(fold, result, metrics)
    return result


def evaluate_best(
    params: Params, dm: SetSequenceDataModule, best: Path, device: torch.device, n_params: int,
) -> dict[str, Any]:
    """What the details hold beside best.ckpt's epoch and the thread count: the KL warm-up reached (from
    last.ckpt), the parameter count, reconstruction / KL / active units on val and test, and the
    representation summary. The per-dimension and per-variable figures go to REPRESENTATION_FILE beside the
    checkpoints."""
    model = load_pretrain_model(best, params.pretrain)
    last = last_path(best.parent)
    val_encoding = SplitEncoding()
    result = {
        "kl_warmup": kl_warmup_summary(project_block(load_checkpoint(last), last, kind=KIND),
                                       params.pretrain.beta_max),
        "n_parameters": n_params,
        "val": evaluate_pretrain(model, dm.dataloader("val", shuffle=False), device, probe=val_encoding),
        "test": evaluate_pretrain(model, dm.dataloader("test", shuffle=False), device),
    }
    # What the representation carries (KL per dim, linear probes vs a random backbone).
    max_stays = params.pretrain.gate_max_stays
    summary, per_unit = representation_report(
        model, val_encoding, gate_loader(dm, "train", max_stays), gate_loader(dm, "val", max_stays), dm.tokens,
        device,
    )
    write_json(best.parent / REPRESENTATION_FILE, round_metrics(per_unit))
    return {**result, "representation": summary}


def log_result(fold: int, result: dict[str, Any], metrics: Path) -> None:
    log.info(
        "pretrain fold %d: best epoch %d; val recon %.4g kl %.4g active units %d/%d; test recon %.4g kl %.4g -> %s",
        fold, result["best"]["epoch"], result["val"]["recon"], result["val"]["kl"], result["val"]["active_units"],
        result["val"]["latent_dim"], result["test"]["recon"], result["test"]["kl"], metrics,
    )
    r = result["representation"]
    log.info(
        "pretrain fold %d gate (val, logistic regression on %d train stays, %d val): observation state AUROC %s "
        "AUPRC %s; + pretrained h %s %s; + random h %s %s; pretrained - observation %s / %s, pretrained - random "
        "%s / %s", fold, r["gate_n_train"], r["gate_n_val"], r["gate_observation_auroc"],
        r["gate_observation_auprc"], r["gate_pretrained_auroc"], r["gate_pretrained_auprc"], r["gate_random_auroc"],
        r["gate_random_auprc"], r["gate_pretrained_minus_observation_auroc"],
        r["gate_pretrained_minus_observation_auprc"], r["gate_pretrained_minus_random_auroc"],
        r["gate_pretrained_minus_random_auprc"],
    )
    log.info(
        "pretrain fold %d representation: %d/%d dims above 2x free bits, %d informative; linear probe on val "
        "AUROC %s AUPRC %s last-value R2 %s (random backbone: %s, %s, %s)",
        fold, r["dims_above_floor"], result["val"]["latent_dim"], r["informative_units"], r["probe_val_auroc"],
        r["probe_val_auprc"], r["probe_last_value_r2"], r["random_backbone_probe_val_auroc"],
        r["random_backbone_probe_val_auprc"], r["random_backbone_probe_last_value_r2"],
    )


def run(params: Params, args: argparse.Namespace) -> None:
    pretrain(params, args.data, args.fold, args.out, args.metrics, args.curves, args.details)
