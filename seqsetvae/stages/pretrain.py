"""Pretrain SeqSetVAEPretrain (self-supervised: reconstruction + KL, all parameters) on one fold.

Reads `--data/fold_<K>` (written by preprocess); writes `--out/{best,last}.ckpt` with their sha256 in
`--out/SHA256SUMS` (checked by every later load), the details JSON (reconstruction, KL, active latent units
on val and test, from best.ckpt, on at most pretrain.eval_max_stays stays of each; the representation
summary), the metrics JSON (the val figures worth comparing: `headline_metrics`) and DVCLive training curves. If `--out/last.ckpt` exists, training resumes
from it. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from seqsetvae.config import Params
from seqsetvae.data.datamodule import SetSequenceDataModule
from seqsetvae.errors import DataError
from seqsetvae.io import write_json
from seqsetvae.models.losses import beta_at
from seqsetvae.models.observation import code_stay_counts, select_codes
from seqsetvae.models.pretrain import ModelConfig
from seqsetvae.training.checkpoints import best_path, last_path, load_checkpoint, project_block, remove_checksums, write_checksums
from seqsetvae.evaluation.representation import SplitEncoding
from seqsetvae.training.pretrain_module import (
    KIND,
    PretrainModule,
    evaluate_pretrain,
    gate_loader,
    load_pretrain_model,
    representation_report,
)
from seqsetvae.training.distributed import is_writer, launch_rank
from seqsetvae.training.fingerprint import run_fingerprint
from seqsetvae.training.metrics import round_metrics
from seqsetvae.training.resume import finish_run, incomplete_on_failure, prepare_out_dir, resume_checkpoint
from seqsetvae.threads import use_torch_threads
from seqsetvae.training.rng import seed_everything
from seqsetvae.training.trainer import Monitor, build_trainer

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
    seed_everything(params.pretrain.seed)
    n_threads = use_torch_threads(params.trainer.num_threads)
    prepare_out_dir(out)
    with incomplete_on_failure(out, (REPRESENTATION_FILE,)):
        module = PretrainModule(cfg, params.pretrain)
        module.run_fingerprint = run_fingerprint(params, fold, [fold_dir(data, fold)])
        ckpt = resume_checkpoint(out, module, curves)
        if launch_rank() == 0:
            remove_checksums(out)  # training rewrites the files they describe; recorded again at the end
        n_params = sum(p.numel() for p in module.model.parameters())
        log.info("pretrain fold %d: %s, %d parameters, vocabulary %d", fold, type(module.model).__name__, n_params,
                 dm.vocab_size)
        trainer = build_trainer(
            params.trainer,
            max_epochs=params.pretrain.max_epochs,
            grad_clip_norm=params.pretrain.grad_clip_norm,
            out_dir=out,
            curves_dir=curves,
            monitor=MONITOR,
            resume=ckpt is not None,
        )
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        if not is_writer(trainer):
            return None

        best = best_path(out)
        block = project_block(load_checkpoint(best), best, kind=KIND)
        model = load_pretrain_model(best, params.pretrain)
        device = trainer.strategy.root_device
        val_encoding = SplitEncoding()
        # pretrain.eval_max_stays: val and test are evaluated whole up to that many stays, else on a seeded sample
        # of that many (representation.sample_stays): the end-of-stage evaluation's time stays bounded on a large
        # cohort. The sample's size is the figures' n_stays.
        eval_max = params.pretrain.eval_max_stays
        for split in ("val", "test"):
            n = dm.split(split).n_patients
            if 0 < eval_max < n:
                log.info("pretrain fold %d: evaluating best.ckpt on a seeded sample of %d of %d %s stays "
                         "(pretrain.eval_max_stays)", fold, eval_max, n, split)
        # pretrain.gate_observation_codes K: the gate's observation state covers the K codes in the most TRAIN
        # stays (as the finetune head's, finetune.observation_codes), so its size is 6 K a stay, not 6 x vocabulary.
        train = dm.split("train")
        stay_counts = code_stay_counts(train.codes, train.set_offsets, train.patient_offsets, dm.vocab_size)
        gate_codes = select_codes(stay_counts, params.pretrain.gate_observation_codes)
        result = {
            "best": {"epoch": block["schedule"]["epoch"], "global_step": block["schedule"]["global_step"]},
            "kl_warmup": kl_warmup_summary(project_block(load_checkpoint(last_path(out)), last_path(out), kind=KIND),
                                           params.pretrain.beta_max),
            "n_parameters": n_params,
            "num_threads": n_threads,  # results can depend on it (seqsetvae/threads.py)
            "val": evaluate_pretrain(model, gate_loader(dm, "val", eval_max), device, probe=val_encoding,
                                     probe_codes=gate_codes),
            "test": evaluate_pretrain(model, gate_loader(dm, "test", eval_max), device),
        }
        # What the representation carries (KL per dim, linear probes vs a random backbone): the summary goes
        # into the details (its headline into the metrics), the per-dimension and per-variable figures beside the
        # checkpoints.
        max_stays = params.pretrain.gate_max_stays
        summary, per_unit = representation_report(
            model, val_encoding, gate_loader(dm, "train", max_stays), gate_loader(dm, "val", max_stays), dm.tokens,
            device, codes=gate_codes,
        )
        result["representation"] = summary
        result = round_metrics(result)
        write_json(Path(out) / REPRESENTATION_FILE, round_metrics(per_unit))
        if details is not None:
            write_json(details, result)
        write_json(metrics, headline_metrics(result))
        # Last, once every other output is written: SHA256SUMS marks a finished run (incomplete_on_failure).
        write_checksums(out)  # best.ckpt and last.ckpt as final: every later load checks them
        finish_run(out)  # every output is written: the resume store has served its purpose
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
    return result


def run(params: Params, args: argparse.Namespace) -> None:
    pretrain(params, args.data, args.fold, args.out, args.metrics, args.curves, args.details)
