"""LightningModule for self-supervised pretraining (SeqSetVAEPretrain, all parameters trained).

Logged curves (DVCLive): train/loss, train/recon, train/kl, train/beta per `log_every_n_steps` optimiser
steps and per epoch; val/loss, val/recon, val/kl per epoch. Per-set averages are weighted by the number of
real sets in each batch, so an epoch mean is a mean over sets, not over unevenly sized batches.

Validation loss uses beta_max (the KL weight at the end of warm-up), not the current beta: during warm-up
the training objective changes every step, and comparing epochs on it would make the first epochs
(small beta) look best. val/loss is therefore comparable across all epochs and picks best.ckpt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from seqsetvae.config import PretrainParams
from seqsetvae.data.batch import Batch, to_device
from seqsetvae.errors import DataError
from seqsetvae.evaluation.representation import SplitEncoding, encode_split, latent_usage, linear_probe
from seqsetvae.models.losses import beta_at
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
from seqsetvae.training.checkpoints import load_checkpoint, model_state_dict, project_block
from seqsetvae.training.module import ProjectModule

KIND = "pretrain"
# Loss terms logged as curves; "loss" is the objective, the others are its parts (nats per set).
TRAIN_CURVES = ("loss", "recon", "kl", "beta")
VAL_CURVES = ("loss", "recon", "recon_presence", "recon_value", "kl")


class PretrainModule(ProjectModule):
    kind = KIND

    def __init__(self, cfg: ModelConfig, objective: PretrainParams):
        super().__init__()
        self.cfg = cfg
        self.objective = objective
        self.model = SeqSetVAEPretrain(cfg, objective)

    def schedule_state(self) -> dict[str, Any]:
        o = self.objective
        return {**super().schedule_state(), "beta": beta_at(int(self.global_step), o.beta_max, o.kl_warmup_steps)}

    def _log_terms(self, stage: str, out: dict[str, torch.Tensor], batch: Batch, names: tuple[str, ...]) -> None:
        n_sets = int(batch["set_mask"].sum())
        on_step = stage == "train"
        # sync_dist: under DDP the epoch value is the set-weighted mean over ALL ranks' sets (Lightning sums
        # value x batch_size and batch_size across ranks), i.e. exactly the single-process figure; the step
        # value is the ranks' mean. Free on one device; a few scalar all-reduces per step on several.
        for name in names:
            self.log(f"{stage}/{name}", out[name].detach(), on_step=on_step, on_epoch=True,
                     batch_size=n_sets, prog_bar=name in ("loss", "recon"), sync_dist=True)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        # global_step = optimiser steps taken so far; restored on resume, so beta continues its warm-up.
        out = self.model.loss(batch, int(self.global_step))
        self._log_terms("train", out, batch, TRAIN_CURVES)
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.model.loss(batch, self.objective.kl_warmup_steps)  # beta = beta_max: see module docstring
        self._log_terms("val", out, batch, VAL_CURVES)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        o = self.objective
        return torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def load_pretrain_model(path: str | Path, objective: PretrainParams) -> SeqSetVAEPretrain:
    """The SeqSetVAEPretrain saved in a pretrain checkpoint, rebuilt from its stored config, in eval mode."""
    ckpt = load_checkpoint(path)
    block = project_block(ckpt, path, kind=KIND)
    model = SeqSetVAEPretrain(ModelConfig.from_dict(block["architecture"]["model_config"]), objective)
    try:
        model.load_state_dict(model_state_dict(ckpt, path), strict=True)
    except RuntimeError as e:  # e.g. forecast_weight now > 0 but the checkpoint has no forecaster
        raise DataError(path, f"weights do not fit the model built from params: {e}") from None
    return model.eval()


@torch.no_grad()
def evaluate_pretrain(
    model: SeqSetVAEPretrain, loader: DataLoader, device: torch.device, probe: SplitEncoding | None = None
) -> dict[str, float | int]:
    """Reconstruction, KL and active latent units of `model` (eval mode) over every batch of `loader`.

    Per-set terms are averaged over all real sets of the split. `neg_elbo` = recon + kl is the negative
    ELBO per set (beta = 1, no free bits). Active units: latent dims whose posterior mean varies across the
    split's sets by more than pretrain.active_unit_threshold (variance over all sets, not per batch).
    Each batch is encoded once; `probe`, if given, also collects the representation probe's inputs from
    that encoding (seqsetvae/evaluation/representation.py).
    """
    model.eval().to(device)
    sums = {"recon": 0.0, "recon_presence": 0.0, "recon_value": 0.0, "kl": 0.0}
    n_sets = n_stays = 0
    mus: list[torch.Tensor] = []
    for batch in loader:
        batch = to_device(batch, device)
        enc = model.encode(batch)
        out = model.loss(batch, model.objective.kl_warmup_steps, enc=enc)
        n = int(batch["set_mask"].sum())
        for k in sums:
            sums[k] += float(out[k]) * n
        n_sets += n
        n_stays += int(batch["set_mask"].shape[0])
        mus.append(enc.mu_sets.cpu())
        if probe is not None:
            probe.add(enc, batch, model.cfg.vocab_size, keep_sets=True)
    if n_sets == 0:
        raise ValueError("evaluation split has no sets")
    metrics: dict[str, float | int] = {k: v / n_sets for k, v in sums.items()}
    metrics["neg_elbo"] = metrics["recon"] + metrics["kl"]
    metrics["active_units"] = SeqSetVAEPretrain.active_units(torch.cat(mus), model.objective.active_unit_threshold)
    metrics["latent_dim"] = model.cfg.arch.latent_dim
    metrics["n_sets"] = n_sets
    metrics["n_stays"] = n_stays
    return metrics


def representation_report(
    model: SeqSetVAEPretrain, val: SplitEncoding, train_batches: DataLoader, val_batches: DataLoader,
    tokens: list[str], device: torch.device,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary for the metrics JSON, details for representation.json): latent usage on val, the linear
    probe of the pretrained features, and the same probe of a seeded random backbone of this architecture."""
    o = model.objective
    usage = latent_usage(torch.cat(val.mu_sets), torch.cat(val.logvar_sets), o.free_bits)
    train = encode_split(model, train_batches, device)
    probe = linear_probe(train.arrays(), val.arrays(), tokens, o.seed)
    torch.manual_seed(o.seed)
    random_model = SeqSetVAEPretrain(model.cfg, o)
    random_probe = linear_probe(encode_split(random_model, train_batches, device).arrays(),
                                encode_split(random_model, val_batches, device).arrays(), tokens, o.seed)
    summary = {
        "kl_per_dim_min": usage["kl_per_dim_min"],
        "kl_per_dim_max": usage["kl_per_dim_max"],
        "dims_above_floor": usage["dims_above_floor"],
        "informative_units": usage["informative_units"],
        "probe_val_auroc": probe["auroc"],
        "probe_val_auprc": probe["auprc"],
        "probe_last_value_r2": probe["last_value_r2_mean"],
        "random_backbone_probe_val_auroc": random_probe["auroc"],
        "random_backbone_probe_val_auprc": random_probe["auprc"],
        "random_backbone_probe_last_value_r2": random_probe["last_value_r2_mean"],
    }
    details = {"latent_usage_val": usage, "probe": probe, "random_backbone_probe": random_probe}
    return summary, details
