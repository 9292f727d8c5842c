"""SeqSetVAEPretrain: self-supervised pretraining of the set encoder and the causal transformer.

    set t events --SetEncoder--> (mu_t, logvar_t) --sample--> z_t
    mu_0..mu_T   --CausalSetTransformer--> h_0..h_T        (the sequence model sees mu only)
    set t  ~  SetDecoder(z_t, context of sets < t)         (h_{t-1}; a learned start vector at t = 0)

loss = reconstruction + beta(step) * KL(free bits)  [+ forecast_weight * next-set NLL, off by default]
       [+ the objectives of models/objectives.py: multi-horizon value forecasting from h_t and masked span
        modelling, each off by default (pretrain.horizon_forecast / pretrain.span_mask)].
Because set t is decoded with the context of the earlier sets, the transformer is trained by the
reconstruction term: the better it summarises the past, the less z_t has to carry, the lower the KL.

The whole batch [B, S, E] is encoded in one call: the real sets are gathered into [N, E] (boolean index),
encoded together, and scattered back to [B, S, L]; no Python loop over sets or patients.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from seqsetvae.config import ModelParams, ParamsError, PretrainParams, SetEncoderParams, TransformerParams
from seqsetvae.data.batch import Batch
from seqsetvae.models.losses import beta_at, free_bits_kl, gaussian_kl, set_nll
from seqsetvae.models.objectives import PretrainObjectives
from seqsetvae.models.sequence import CausalSetTransformer
from seqsetvae.models.setvae import SetDecoder, SetEncoder, SetVAE, reparameterise


# Architecture keys newer than some checkpoints -> the value those checkpoints were trained with.
ARCH_KEYS_ADDED_LATER: dict[str, Any] = {"decoder_time": False}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the backbone: params.yaml `model` plus the vocabulary size found by preprocess.

    Plain data: `to_dict()` goes into checkpoints next to the weights, which then load with
    `torch.load(weights_only=True)`, and `from_dict()` rebuilds the same model.
    """

    vocab_size: int
    arch: ModelParams

    @classmethod
    def from_params(cls, model: ModelParams, vocab_size: int) -> ModelConfig:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2 (PAD plus at least one code), got {vocab_size}")
        for section, width, heads in (
            ("set_encoder", model.d_model, model.set_encoder.n_heads),
            ("transformer", model.d_model, model.transformer.n_heads),
        ):
            if width % heads:
                raise ParamsError(f"params model.d_model={width} is not divisible by model.{section}.n_heads={heads}")
        return cls(vocab_size=vocab_size, arch=model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        a = dict(d["arch"])
        # Keys added to the architecture after a checkpoint was written, with the value that reproduces
        # the model it was trained as (the decoder without time conditioning).
        for key, value in ARCH_KEYS_ADDED_LATER.items():
            a.setdefault(key, value)
        a["set_encoder"] = SetEncoderParams(**a["set_encoder"])
        a["transformer"] = TransformerParams(**a["transformer"])
        return cls.from_params(ModelParams(**a), int(d["vocab_size"]))


def build_set_encoder(cfg: ModelConfig) -> SetEncoder:
    a, s = cfg.arch, cfg.arch.set_encoder
    return SetEncoder(
        cfg.vocab_size, a.d_model, a.latent_dim, a.value_hidden, s.n_isab, s.n_heads, s.n_inducing, s.ff_dim, a.dropout
    )


def build_transformer(cfg: ModelConfig) -> CausalSetTransformer:
    a, t = cfg.arch, cfg.arch.transformer
    return CausalSetTransformer(a.latent_dim, a.d_model, t.n_layers, t.n_heads, t.ff_dim, t.n_time_freqs, a.dropout)


def build_decoder(cfg: ModelConfig) -> SetDecoder:
    a = cfg.arch
    return SetDecoder(cfg.vocab_size, a.latent_dim, a.d_model, a.decoder_hidden, a.dropout)


class SequenceEncoding(NamedTuple):
    """The backbone's view of a batch. `*_sets` are the real sets only ([N, ...], row-major over [B, S])."""

    real: torch.Tensor  # [B, S] bool, = set_mask
    mu_sets: torch.Tensor  # [N, L]
    logvar_sets: torch.Tensor  # [N, L]
    mu: torch.Tensor  # [B, S, L], 0 at padded sets
    logvar: torch.Tensor  # [B, S, L], 0 at padded sets
    context: torch.Tensor  # [B, S, D] transformer output (sets <= t), 0 at padded sets


def encode_sequence(encoder: SetEncoder, transformer: CausalSetTransformer, batch: Batch) -> SequenceEncoding:
    """Encode every real set of the batch in one call, scatter to [B, S, L], run the transformer on mu."""
    real = batch["set_mask"]
    mu_sets, logvar_sets = encoder(batch["codes"][real], batch["values"][real], batch["event_mask"][real])
    b, s = real.shape
    mu = mu_sets.new_zeros(b, s, mu_sets.shape[-1]).index_put((real,), mu_sets)
    logvar = logvar_sets.new_zeros(b, s, logvar_sets.shape[-1]).index_put((real,), logvar_sets)
    context = transformer(mu, batch["set_times"], real)
    return SequenceEncoding(real, mu_sets, logvar_sets, mu, logvar, context)


def reconstruction_nll(
    decoder: SetDecoder, transformer: CausalSetTransformer, enc: SequenceEncoding, z_sets: torch.Tensor, batch: Batch,
    with_time: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-set (presence_nll, value_nll) [N] of each real set t given z_t and the context of sets < t
    (plus, `with_time` = model.decoder_time, the transformer's time encoding of set t)."""
    real = enc.real
    previous = transformer.previous_context(enc.context)
    if with_time:  # when set t happens (time since admission, gap to set t-1): known before set t is seen
        previous = previous + transformer.time(batch["set_times"], real)
    lik = decoder(z_sets, previous[real])
    return set_nll(*lik, batch["codes"][real], batch["values"][real], batch["event_mask"][real])


class SeqSetVAEPretrain(nn.Module):
    """Pretraining model. `loss(batch, step)` returns the named loss terms; all parameters are trained."""

    def __init__(self, cfg: ModelConfig, objective: PretrainParams):
        super().__init__()
        self.cfg = cfg
        self.objective = objective
        # Warm-up length in optimiser steps: pretrain.kl_warmup_steps, or, with pretrain.kl_warmup_fraction, 0
        # until the training module resolves the share against the run's length (PretrainModule.on_train_start).
        self.kl_warmup_steps: int = objective.kl_warmup_steps if objective.kl_warmup_steps is not None else 0
        self.setvae = SetVAE(build_set_encoder(cfg), build_decoder(cfg))
        self.transformer = build_transformer(cfg)
        # Next-set forecasting: predict z_{t+1} from h_t and the gap to set t+1, decode it with context h_t.
        # Built only when used, so a model without it has no dead parameters.
        self.forecaster: nn.Module | None = None
        if objective.forecast_weight > 0:
            a = cfg.arch
            self.forecaster = nn.Sequential(
                nn.Linear(a.d_model + 1, a.decoder_hidden), nn.GELU(), nn.Linear(a.decoder_hidden, a.latent_dim)
            )
        # Objectives without the reconstruction shortcut (issue 29 C); no parameters when both are off.
        self.objectives = PretrainObjectives(cfg.arch.d_model, cfg.arch.decoder_hidden, cfg.vocab_size, objective)

    def encode(self, batch: Batch) -> SequenceEncoding:
        return encode_sequence(self.setvae.encoder, self.transformer, batch)

    def forward(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        return self.loss(batch, step)

    def loss(self, batch: Batch, step: int, enc: SequenceEncoding | None = None) -> dict[str, torch.Tensor]:
        """Loss terms, each a scalar averaged over the batch's real sets (nats per set).

        recon = presence_nll + value_nll; kl = raw KL (reported); kl_loss = KL with free bits (optimised);
        loss = recon + beta * kl_loss + forecast_weight * forecast. `step` drives the beta warm-up.
        `enc`: the batch's encoding when the caller already has it (evaluation reuses it for its probes).
        With span masking on, every term but `span` is computed on the batch with the spans hidden (a
        given `enc` of the whole batch is not used), and loss adds the weighted `horizon` and `span` terms.
        """
        obj = self.objective
        full = batch
        batch, span_view = self.objectives.hide(batch, step, self.training)
        enc = self.encode(batch) if enc is None or span_view is not None else enc
        z_sets = reparameterise(enc.mu_sets, enc.logvar_sets, self.training)
        presence_nll, value_nll = reconstruction_nll(
            self.setvae.decoder, self.transformer, enc, z_sets, batch, self.cfg.arch.decoder_time
        )
        n_sets = max(int(enc.real.sum()), 1)
        presence = presence_nll.sum() / n_sets
        value = value_nll.sum() / n_sets
        kl_dims = gaussian_kl(enc.mu_sets, enc.logvar_sets)  # [N, L]
        kl = kl_dims.sum() / n_sets
        kl_loss = free_bits_kl(kl_dims, obj.free_bits)
        beta = beta_at(step, obj.beta_max, self.kl_warmup_steps)
        forecast = self._forecast_nll(enc, batch) if self.forecaster is not None else kl.new_zeros(())
        recon = presence + value
        extra = self.objectives.terms(enc.context, self.transformer.start, full, span_view)
        loss = recon + beta * kl_loss + obj.forecast_weight * forecast + self.objectives.weighted(extra)
        return {
            "loss": loss,
            "recon": recon,
            "recon_presence": presence,
            "recon_value": value,
            "kl": kl,
            "kl_loss": kl_loss,
            "beta": kl.new_tensor(beta),
            "forecast": forecast,
            **extra,
        }

    def _forecast_nll(self, enc: SequenceEncoding, batch: Batch) -> torch.Tensor:
        """Mean NLL of set t+1 decoded from h_t alone (no information from set t+1 itself but its time)."""
        assert self.forecaster is not None
        has_next = enc.real[:, 1:]  # [B, S-1]: set t+1 exists (so set t does too: left-aligned)
        if not bool(has_next.any()):
            return enc.context.new_zeros(())
        h = enc.context[:, :-1][has_next]
        gap = (batch["set_times"][:, 1:] - batch["set_times"][:, :-1])[has_next].clamp(min=0.0)
        z_next = self.forecaster(torch.cat([h, torch.log1p(gap).unsqueeze(-1)], dim=-1))
        if self.cfg.arch.decoder_time:  # as in reconstruction: the decoder is told when set t+1 happens
            h = h + self.transformer.time(batch["set_times"], enc.real)[:, 1:][has_next]
        lik = self.setvae.decoder(z_next, h)
        nxt = (slice(None), slice(1, None))
        presence_nll, value_nll = set_nll(
            *lik, batch["codes"][nxt][has_next], batch["values"][nxt][has_next], batch["event_mask"][nxt][has_next]
        )
        return (presence_nll + value_nll).mean()

    @torch.no_grad()
    def posterior_means(self, batch: Batch) -> torch.Tensor:
        """mu of every real set of the batch, [N, L] (for active units; call in eval mode)."""
        real = batch["set_mask"]
        mu, _ = self.setvae.encoder(batch["codes"][real], batch["values"][real], batch["event_mask"][real])
        return mu

    @staticmethod
    def active_units(mu: torch.Tensor, threshold: float) -> int:
        """Number of latent dims whose posterior mean varies across sets: Var_n(mu[n, d]) > threshold.

        `mu` is [N sets, L] gathered over a data set (e.g. posterior_means over the validation loader).
        """
        if mu.shape[0] < 2:
            return 0
        return int((mu.double().var(dim=0) > threshold).sum())
