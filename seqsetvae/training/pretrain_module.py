"""LightningModule for self-supervised pretraining (SeqSetVAEPretrain, all parameters trained).

Logged curves (DVCLive): train/loss, train/recon, train/kl, train/beta per `log_every_n_steps` optimiser
steps and per epoch; val/loss, val/recon, val/kl per epoch. Per-set averages are weighted by the number of
real sets in each batch, so an epoch mean is a mean over sets, not over unevenly sized batches.

Validation loss uses the beta of the last training step (val/beta), the objective the epoch trained on. During
the KL warm-up that objective changes every step, so val/loss of two warm-up epochs is not comparable (the
earlier one, at a smaller beta, would look better): best.ckpt and early stopping compare epochs only once the
warm-up has finished (`in_warmup()` false, beta = beta_max), and until then best.ckpt is the latest epoch
(seqsetvae/training/trainer.py, SelectAfterWarmup). A warm-up that never finishes therefore gives best = last.

The warm-up length is pretrain.kl_warmup_steps, or pretrain.kl_warmup_fraction of the run's optimiser steps
(max_epochs x train batches per epoch, Lightning's estimated_stepping_batches), resolved when training starts.
The resolved length is stored in the checkpoint's schedule and a resume continues with the stored one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from seqsetvae.config import PretrainParams
from seqsetvae.data.batch import Batch, to_device
from seqsetvae.errors import DataError
from seqsetvae.data.datamodule import PatientIndex, SetCollator, kept_sets
from seqsetvae.evaluation.representation import (
    GATE_ROWS,
    SplitEncoding,
    encode_split,
    latent_usage,
    linear_probe,
    residual_gate,
    sample_stays,
)
from seqsetvae.models.losses import beta_at, warmup_steps_for
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
from seqsetvae.training.checkpoints import BLOCK, load_checkpoint, model_state_dict, project_block
from seqsetvae.training.module import ProjectModule

log = logging.getLogger(__name__)

KIND = "pretrain"
# Loss terms logged as curves; "loss" is the objective, the others are its parts (nats per set).
TRAIN_CURVES = ("loss", "recon", "kl", "beta")
VAL_CURVES = ("loss", "recon", "recon_presence", "recon_value", "kl", "kl_loss", "beta")


class PretrainModule(ProjectModule):
    kind = KIND

    def __init__(self, cfg: ModelConfig, objective: PretrainParams):
        super().__init__()
        self.cfg = cfg
        self.objective = objective
        self.model = SeqSetVAEPretrain(cfg, objective)
        self._restored_warmup: int | None = None  # the resolved warm-up length a resumed checkpoint holds

    @property
    def kl_warmup_steps(self) -> int:
        """Warm-up length in optimiser steps (resolved from kl_warmup_fraction once training has started)."""
        return self.model.kl_warmup_steps

    def schedule_state(self) -> dict[str, Any]:
        o = self.objective
        return {**super().schedule_state(), "beta": beta_at(int(self.global_step), o.beta_max, self.kl_warmup_steps),
                "kl_warmup_steps": self.kl_warmup_steps}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        block = checkpoint.get(BLOCK)
        if isinstance(block, dict) and "kl_warmup_steps" in block.get("schedule", {}):
            self._restored_warmup = int(block["schedule"]["kl_warmup_steps"])

    def on_train_start(self) -> None:
        o = self.objective
        if o.kl_warmup_fraction is None:
            steps = int(o.kl_warmup_steps)
        else:
            steps = warmup_steps_for(o.kl_warmup_fraction, int(self.trainer.estimated_stepping_batches))
        if self._restored_warmup is not None and self._restored_warmup != steps:
            # Cannot happen for a resume resume_checkpoint accepts (same params, data, epochs: same length);
            # the checkpoint's schedule is the run's, so it wins.
            log.warning("KL warm-up: the checkpoint's %d steps, not the %d computed now, continue the run",
                        self._restored_warmup, steps)
            steps = self._restored_warmup
        self.model.kl_warmup_steps = steps
        log.info("KL warm-up: beta rises to %g over %d optimiser steps (%s)", o.beta_max, steps,
                 f"{o.kl_warmup_fraction:g} of {self.trainer.estimated_stepping_batches}"
                 if o.kl_warmup_fraction is not None else "pretrain.kl_warmup_steps")

    def last_step_beta(self) -> float:
        """Beta of the last optimiser step taken (the one validation reports the epoch at)."""
        return beta_at(max(int(self.global_step) - 1, 0), self.objective.beta_max, self.kl_warmup_steps)

    def in_warmup(self) -> bool:
        """True while the last optimiser step trained at a beta still rising (checkpoint choice waits)."""
        return self.kl_warmup_steps > 0 and int(self.global_step) - 1 < self.kl_warmup_steps

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
        self._log_terms("train", out, batch, TRAIN_CURVES + self.model.objectives.enabled)
        return out["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # The beta the last training step used: see module docstring.
        out = self.model.loss(batch, max(int(self.global_step) - 1, 0))
        self._log_terms("val", out, batch, VAL_CURVES + self.model.objectives.enabled)

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
    model: SeqSetVAEPretrain, loader: DataLoader, device: torch.device, probe: SplitEncoding | None = None,
    probe_codes: np.ndarray | None = None,
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
        out = model.loss(batch, model.kl_warmup_steps, enc=enc)  # recon and kl do not depend on beta
        n = int(batch["set_mask"].sum())
        for k in sums:
            sums[k] += float(out[k]) * n
        n_sets += n
        n_stays += int(batch["set_mask"].shape[0])
        mus.append(enc.mu_sets.cpu())
        if probe is not None:
            codes = None if probe_codes is None else torch.as_tensor(probe_codes, dtype=torch.long, device=device)
            probe.add(enc, batch, model.cfg.vocab_size, keep_sets=True, codes=codes)
    if n_sets == 0:
        raise ValueError("evaluation split has no sets")
    metrics: dict[str, float | int] = {k: v / n_sets for k, v in sums.items()}
    metrics["neg_elbo"] = metrics["recon"] + metrics["kl"]
    metrics["active_units"] = SeqSetVAEPretrain.active_units(torch.cat(mus), model.objective.active_unit_threshold)
    metrics["latent_dim"] = model.cfg.arch.latent_dim
    metrics["n_sets"] = n_sets
    metrics["n_stays"] = n_stays
    return metrics


def gate_loader(dm: Any, name: str, max_stays: int) -> DataLoader:
    """Batches of split `name` for the end-of-stage evaluation and the representation report: every stay in the
    evaluation order (the data module's loader), or, when the split has more than `max_stays`
    (pretrain.eval_max_stays / gate_max_stays > 0), a seeded sample of that many (the same stays for every run:
    representation.sample_stays), batched in order of length."""
    packed = dm.split(name)
    idx = sample_stays(packed.n_patients, max_stays)
    if idx is None:
        return dm.dataloader(name, shuffle=False)
    lp = dm.loader
    idx = idx[np.argsort(kept_sets(packed, lp.max_sets)[idx], kind="stable")]
    batches = [idx[i : i + lp.batch_size].tolist() for i in range(0, idx.size, lp.batch_size)]
    collate = SetCollator(dm.fold_dir / name, lp.max_sets, lp.max_events_per_set, packed)
    return DataLoader(PatientIndex(packed.n_patients), batch_sampler=batches, collate_fn=collate, num_workers=0)


def representation_report(
    model: SeqSetVAEPretrain, val: SplitEncoding, train_batches: DataLoader, val_batches: DataLoader,
    tokens: list[str], device: torch.device, codes: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary for the metrics JSON, details for representation.json): latent usage on val (`val`: every val
    set), the screening gate (residual probe: observation state, + pretrained, + random backbone's stay
    features), the linear probe of the pretrained features and the same probe of a seeded random backbone
    of this architecture. The probes and the gate use the stays of `train_batches` / `val_batches`
    (gate_loader)."""
    o = model.objective
    usage = latent_usage(torch.cat(val.mu_sets), torch.cat(val.logvar_sets), o.free_bits)
    # The observation state (and the read-back targets) of the codes chosen on train (gate_observation_codes),
    # or of every code; column j is the code names[j].
    sel = None if codes is None else torch.as_tensor(codes, dtype=torch.long)
    names = tokens[1:] if codes is None else [tokens[int(c)] for c in codes]
    train_a = encode_split(model, train_batches, device, codes=sel).arrays()
    val_a = encode_split(model, val_batches, device, codes=sel).arrays()
    probe = linear_probe(train_a, val_a, names, o.seed)
    torch.manual_seed(o.seed)
    random_model = SeqSetVAEPretrain(model.cfg, o)
    random_train_a = encode_split(random_model, train_batches, device, codes=sel).arrays()
    random_val_a = encode_split(random_model, val_batches, device, codes=sel).arrays()
    random_probe = linear_probe(random_train_a, random_val_a, names, o.seed)
    gate = residual_gate(train_a, val_a, random_train_a, random_val_a, o.seed)
    summary = {
        "kl_per_dim_min": usage["kl_per_dim_min"],
        "kl_per_dim_max": usage["kl_per_dim_max"],
        "dims_above_floor": usage["dims_above_floor"],
        "informative_units": usage["informative_units"],
        **{f"gate_{row}_{m}": gate[row][m] for row in GATE_ROWS for m in ("auroc", "auprc")},
        **{f"gate_pretrained_minus_{other}_{m}": gate[f"pretrained_minus_{other}"][m]
           for other in ("observation", "random") for m in ("auroc", "auprc")},
        "gate_n_train": gate["n_train"],
        "gate_n_val": gate["n_val"],
        "probe_val_auroc": probe["auroc"],
        "probe_val_auprc": probe["auprc"],
        "probe_last_value_r2": probe["last_value_r2_mean"],
        "random_backbone_probe_val_auroc": random_probe["auroc"],
        "random_backbone_probe_val_auprc": random_probe["auprc"],
        "random_backbone_probe_last_value_r2": random_probe["last_value_r2_mean"],
    }
    details = {"latent_usage_val": usage, "gate": gate, "probe": probe, "random_backbone_probe": random_probe}
    return summary, details
