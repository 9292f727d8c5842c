"""SeqSetVAE: the finetuning model, a frozen pretrained backbone with a classification head.

    backbone (frozen: requires_grad off AND eval mode)        head (trained)
    set events -> SetEncoder -> mu_t, logvar_t ------------> fuse(mu_t, logvar_t) --+
                  mu_t -> CausalSetTransformer -> h_t ------------------------------+-> [h_t, fused_t]
                                                                      LayerNorm -> pooling over time -> MLP -> logit

The transformer is fed `mu` exactly as in pretraining, so a frozen transformer never sees inputs it was
not trained on; the mu/logvar fusion enters the head beside its output. That makes everything the head
needs a function of the frozen backbone alone (`backbone_features`), which the training stage can compute
once and cache for all head epochs.

Pooling (multi-scale over time): the last set; attention pooling over all sets; mean and max over the sets
in the last w hours before the last set, for each window w. Class imbalance: one mechanism from params
(pos_weight BCE, or focal loss).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict

import torch
from torch import nn

from seqsetvae.config import FinetuneParams, ParamsError
from seqsetvae.data.batch import Batch
from seqsetvae.models.losses import binary_loss, gaussian_kl
from seqsetvae.models.observation import FEATURES, RunningMoments, n_observed_codes, observation_vector
from seqsetvae.models.pretrain import (
    ModelConfig,
    SeqSetVAEPretrain,
    build_decoder,
    build_set_encoder,
    build_transformer,
    SequenceEncoding,
    encode_sequence,
    reconstruction_nll,
)
from seqsetvae.models.setvae import reparameterise

log = logging.getLogger(__name__)

# Finetune submodule -> its prefix in SeqSetVAEPretrain's state dict. The one place the two layouts meet.
PRETRAIN_PREFIX: dict[str, str] = {
    "encoder": "setvae.encoder.",
    "transformer": "transformer.",
    "decoder": "setvae.decoder.",  # present only with an auxiliary reconstruction loss
}

# Backbone modules frozen under each `finetune.unfreeze` policy.
FROZEN_BY_POLICY: dict[str, tuple[str, ...]] = {
    "none": ("encoder", "transformer", "decoder"),
    "transformer": ("encoder",),
    "all": (),
}


class PretrainedWeightsError(ValueError):
    """A pretrained state dict does not provide every backbone tensor (or gives one of the wrong shape)."""


@dataclass(frozen=True)
class LoadReport:
    loaded: int
    missing: list[str]
    unexpected: list[str]


class BackboneFeatures(TypedDict):
    """Everything the head needs; a function of the backbone only (cacheable when it is frozen)."""

    mu: torch.Tensor  # [B, S, L]
    logvar: torch.Tensor  # [B, S, L]
    context: torch.Tensor  # [B, S, D] causal transformer output (sets <= t)
    set_mask: torch.Tensor  # [B, S]
    set_times: torch.Tensor  # [B, S] hours since admission
    observation: torch.Tensor  # [B, F] per-variable observation state (models/observation.py); F = 0 when unused


def fusion_dim(method: str, latent_dim: int) -> int:
    return {"mu_only": latent_dim, "simple_concat": 2 * latent_dim, "enhanced_concat": 2 * latent_dim + 2}[method]


def fuse(mu: torch.Tensor, logvar: torch.Tensor, method: str) -> torch.Tensor:
    """Per-set features from the posterior: mu_only [mu] | simple_concat [mu, sigma] |
    enhanced_concat [mu, sigma, mean variance (1/L) sum_d sigma_d^2, rms(mu) = ||mu|| / sqrt(L)].

    The two summaries are per-dimension averages, on the scale of a single sigma_d^2 and mu_d: as sums
    (total variance, ||mu||) they grew with L and took 50-90 % of the LayerNorm's variance that follows,
    so the normaliser's divisor changed per set with them.
    """
    if method == "mu_only":
        return mu
    sigma = torch.exp(0.5 * logvar)
    if method == "simple_concat":
        return torch.cat([mu, sigma], dim=-1)
    if method == "enhanced_concat":
        mean_var = sigma.pow(2).mean(dim=-1, keepdim=True)
        rms_mu = mu.pow(2).mean(dim=-1, keepdim=True).sqrt()
        return torch.cat([mu, sigma, mean_var, rms_mu], dim=-1)
    raise ValueError(f"unknown finetune.fusion {method!r}")


class TemporalPooling(nn.Module):
    """[B, S, F] per-set features -> [B, out_dim]: last set, attention, windowed mean/max (as enabled)."""

    def __init__(self, dim: int, last: bool, attention: bool, windows_hours: list[float], hidden: int):
        super().__init__()
        self.last = last
        self.attention = (
            nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)) if attention else None
        )
        self.register_buffer("windows", torch.tensor(sorted(windows_hours), dtype=torch.float32), persistent=False)
        self.out_dim = dim * (int(last) + int(attention) + 2 * len(windows_hours))
        if self.out_dim == 0:
            raise ParamsError("params finetune.pooling: enable at least one of last, attention, windows_hours")

    def forward(self, f: torch.Tensor, set_mask: torch.Tensor, set_times: torch.Tensor) -> torch.Tensor:
        has_set = set_mask.any(dim=1, keepdim=True)  # [B, 1]; a patient with no set pools to zeros
        last_idx = (set_mask.sum(dim=1, keepdim=True) - 1).clamp(min=0)  # sets are left-aligned
        pooled = []
        if self.last:
            pooled.append(f.gather(1, last_idx[..., None].expand(-1, -1, f.shape[-1])).squeeze(1))
        if self.attention is not None:
            scores = self.attention(f).squeeze(-1).masked_fill(~set_mask, float("-inf"))
            scores = scores.masked_fill(~has_set, 0.0)  # guard the all-padding row against NaN
            weights = torch.softmax(scores, dim=1) * has_set
            pooled.append(torch.einsum("bs,bsf->bf", weights, f))
        if self.windows.numel():
            last_time = set_times.gather(1, last_idx)  # [B, 1]
            # in_win [B, W, S]: real sets within w hours before the last set (the last set always is)
            in_win = set_mask[:, None, :] & (set_times[:, None, :] >= last_time[:, :, None] - self.windows[:, None])
            count = in_win.sum(dim=-1, keepdim=True).clamp(min=1).to(f.dtype)
            mean = torch.einsum("bws,bsf->bwf", in_win.to(f.dtype), f) / count
            big_neg = torch.finfo(f.dtype).min
            mx = f[:, None].masked_fill(~in_win[..., None], big_neg).amax(dim=2)
            mx = mx.masked_fill(~in_win.any(dim=-1, keepdim=True), 0.0)
            pooled += [mean.flatten(1), mx.flatten(1)]
        return torch.cat(pooled, dim=-1)


class SeqSetVAE(nn.Module):
    """Finetuning model. Typical use:

        model = SeqSetVAE(cfg, params.finetune)
        model.load_pretrained(pretrain_state_dict)
        model.freeze_backbone()
        opt = torch.optim.AdamW(model.parameter_groups())
        out = model.loss(batch, pos_weight)      # or head_loss(backbone_features(batch) cached, labels, ...)
    """

    def __init__(self, cfg: ModelConfig, ft: FinetuneParams):
        super().__init__()
        if ft.aux_recon_weight > 0 and ft.unfreeze == "none":
            raise ParamsError(
                "params finetune.aux_recon_weight > 0 needs finetune.unfreeze transformer or all: "
                "with the whole backbone frozen the reconstruction loss trains nothing"
            )
        if ft.aux_kl_weight > 0 and ft.unfreeze != "all":
            raise ParamsError(
                "params finetune.aux_kl_weight > 0 needs finetune.unfreeze all: the KL depends on the set encoder only"
            )
        self.cfg = cfg
        self.ft = ft
        a = cfg.arch
        self.encoder = build_set_encoder(cfg)
        self.transformer = build_transformer(cfg)
        self.decoder = build_decoder(cfg) if ft.aux_recon_weight > 0 else None
        feat_dim = a.d_model + fusion_dim(ft.fusion, a.latent_dim)
        self.feature_norm = nn.LayerNorm(feat_dim)
        # finetune.backbone_projection: a per-set bottleneck before pooling. Without it the pooled backbone
        # features (~6 x feat_dim) outnumber the observation state's and the head overfits them.
        self.projection = nn.Linear(feat_dim, ft.backbone_projection) if ft.backbone_projection else None
        pooled_dim = ft.backbone_projection or feat_dim
        p = ft.pooling
        self.pooling = TemporalPooling(pooled_dim, p.last, p.attention, p.windows_hours, ft.head_hidden)
        # finetune.inputs: what the head sees. "observation" alone (no backbone) is the control that shows
        # what the learned representation adds over the hand-made per-variable state.
        self.uses_backbone = ft.inputs in ("backbone", "backbone_and_observation")
        uses_observation = ft.inputs != "backbone"
        n_codes = n_observed_codes(cfg.vocab_size, ft.observation_codes) if uses_observation else 0
        self.observation_dim = len(FEATURES) * n_codes
        # finetune.observation_codes K: the state covers only K codes chosen on train (set_observation_codes),
        # so its width is bounded by K, not the vocabulary. Registered only then (the state dict of a model
        # over every code is unchanged); zeros (PAD) until set: observation() refuses to run on them.
        self.observation_subset = uses_observation and n_codes < cfg.vocab_size - 1
        if self.observation_subset:
            self.register_buffer("observation_codes", torch.zeros(n_codes, dtype=torch.long))
        # Standardisation of the observation state with train statistics (set_observation_scaler), saved
        # with the weights so a checkpoint predicts alone.
        self.register_buffer("observation_mean", torch.zeros(self.observation_dim))
        self.register_buffer("observation_scale", torch.ones(self.observation_dim))
        head_in = (self.pooling.out_dim if self.uses_backbone else 0) + self.observation_dim
        self.head = nn.Sequential(
            nn.Linear(head_in, ft.head_hidden),
            nn.GELU(),
            nn.Dropout(ft.head_dropout),
            nn.Linear(ft.head_hidden, 1),
        )
        self._frozen: tuple[str, ...] = ()

    # ---------------------------------------------------------------- backbone: weights and freezing

    def backbone(self) -> dict[str, nn.Module]:
        """The backbone submodules this model has (decoder only with an auxiliary reconstruction loss)."""
        return {name: m for name in PRETRAIN_PREFIX if (m := getattr(self, name)) is not None}

    def key_map(self) -> dict[str, str]:
        """Every backbone tensor of this model (own state-dict key) -> its key in SeqSetVAEPretrain's."""
        return {
            f"{name}.{k}": PRETRAIN_PREFIX[name] + k
            for name, module in self.backbone().items()
            for k in module.state_dict()
        }

    def load_pretrained(self, state_dict: dict[str, torch.Tensor], source_prefix: str = "") -> LoadReport:
        """Copy every backbone tensor from a SeqSetVAEPretrain state dict through `key_map`.

        Fails (PretrainedWeightsError, naming the keys) if any backbone tensor is missing or has another
        shape. Pretrain-only tensors (decoder, forecaster) are unexpected here and ignored, by count.
        `source_prefix` is stripped from the source keys first (e.g. "model." in a Lightning checkpoint).
        """
        source = {k[len(source_prefix) :]: v for k, v in state_dict.items() if k.startswith(source_prefix)}
        mapping = self.key_map()
        missing = sorted(src for src in mapping.values() if src not in source)
        if missing:
            shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
            raise PretrainedWeightsError(
                f"pretrained state dict lacks {len(missing)} backbone key(s) of {type(self).__name__}: {shown}"
            )
        own = self.state_dict()
        wrong = [
            f"{src} {tuple(source[src].shape)} vs {tuple(own[dst].shape)}"
            for dst, src in mapping.items()
            if source[src].shape != own[dst].shape
        ]
        if wrong:
            raise PretrainedWeightsError(f"pretrained backbone tensors of the wrong shape: {'; '.join(wrong)}")
        result = self.load_state_dict({dst: source[src] for dst, src in mapping.items()}, strict=False)
        not_backbone = [k for k in result.missing_keys if k in mapping]
        assert not not_backbone and not result.unexpected_keys, (not_backbone, result.unexpected_keys)
        used = set(mapping.values())
        unexpected = sorted(k for k in source if k not in used)
        log.info(
            "%s: loaded %d backbone tensors from a %s state dict; missing 0; unexpected %d (pretrain-only, ignored)",
            type(self).__name__, len(mapping), SeqSetVAEPretrain.__name__, len(unexpected),
        )
        return LoadReport(loaded=len(mapping), missing=[], unexpected=unexpected)

    def freeze_backbone(self) -> None:
        """Freeze the backbone modules that `finetune.unfreeze` does not release: requires_grad off and
        eval mode, kept in eval by `train()` (no dropout, deterministic features)."""
        self._frozen = tuple(n for n in FROZEN_BY_POLICY[self.ft.unfreeze] if getattr(self, n) is not None)
        for name in self._frozen:
            getattr(self, name).requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> SeqSetVAE:
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self

    def parameter_groups(self) -> list[dict]:
        """AdamW groups: head at finetune.lr, unfrozen backbone at finetune.backbone_lr; frozen excluded."""
        backbone_ids = {id(p) for m in self.backbone().values() for p in m.parameters()}
        head = [p for p in self.parameters() if id(p) not in backbone_ids and p.requires_grad]
        body = [p for p in self.parameters() if id(p) in backbone_ids and p.requires_grad]
        groups = [{"params": head, "lr": self.ft.lr, "weight_decay": self.ft.weight_decay}]
        if body:
            groups.append({"params": body, "lr": self.ft.backbone_lr, "weight_decay": self.ft.weight_decay})
        return groups

    # ---------------------------------------------------------------- features, logits, losses

    def backbone_features(self, batch: Batch) -> BackboneFeatures:
        """Backbone outputs for a batch (deterministic when the backbone is frozen: eval mode, z unused).
        With inputs: observation the head reads none of them, so the backbone does not run: its features are
        zero-width (the no-backbone control then costs no backbone pass; docs/benchmark.md has its cost)."""
        if not self.uses_backbone:
            real, times = batch["set_mask"], batch["set_times"]
            none = times.new_zeros(*real.shape, 0)
            return BackboneFeatures(mu=none, logvar=none, context=none, set_mask=real, set_times=times,
                                    observation=self.observation(batch))
        return self._features(encode_sequence(self.encoder, self.transformer, batch), batch)

    def observation(self, batch: Batch) -> torch.Tensor:
        """[B, F] observation state of the batch (F = 0 when the head does not use it)."""
        if not self.observation_dim:
            return batch["set_times"].new_zeros(batch["set_times"].shape[0], 0)
        if not self.observation_subset:
            return observation_vector(batch, self.cfg.vocab_size)
        if bool((self.observation_codes == 0).any()):
            raise RuntimeError("finetune.observation_codes is set but the codes are not: call set_observation_codes "
                               "(with codes chosen on the train split) before computing the observation state")
        return observation_vector(batch, self.cfg.vocab_size, self.observation_codes)

    def set_observation_codes(self, codes: torch.Tensor | list[int]) -> None:
        """The codes the observation state covers (finetune.observation_codes > 0): increasing vocabulary
        indices, as many as the model was built for (models/observation.py select_codes, on train)."""
        if not self.observation_subset:
            raise RuntimeError("set_observation_codes: this model's observation state covers every code")
        codes = torch.as_tensor(codes, dtype=torch.long)
        n = self.observation_codes.numel()
        if codes.shape != (n,) or bool((codes <= 0).any() or (codes >= self.cfg.vocab_size).any()):
            raise ValueError(f"set_observation_codes: need {n} codes in 1..{self.cfg.vocab_size - 1}, got {codes.tolist()[:10]}")
        if bool((codes[1:] <= codes[:-1]).any()):
            raise ValueError("set_observation_codes: codes must be increasing (vocabulary order) and distinct")
        self.observation_codes.copy_(codes)

    def set_observation_scaler(self, train_observation: torch.Tensor | Iterable[torch.Tensor]) -> None:
        """Standardise the observation state with the mean and sd (ddof 1) of the train split's state: a
        [P, F] tensor or DiskRows (read in row chunks) or an iterable of [B, F] batches. Streamed in float64
        (RunningMoments): memory O(chunk + F), never a float64 copy of the state."""
        moments = RunningMoments(self.observation_dim)
        if isinstance(train_observation, torch.Tensor) or hasattr(train_observation, "row_bytes"):
            moments.update_rows(train_observation)  # a tensor, or a FeatureCache's rows on disk (DiskRows)
        else:
            moments.extend(train_observation)
        self.observation_mean.copy_(moments.mean.to(self.observation_mean.dtype))
        self.observation_scale.copy_(moments.std().clamp(min=1e-3).to(self.observation_scale.dtype))

    def _features(self, enc: SequenceEncoding, batch: Batch) -> BackboneFeatures:
        return BackboneFeatures(
            mu=enc.mu, logvar=enc.logvar, context=enc.context, set_mask=enc.real, set_times=batch["set_times"],
            observation=self.observation(batch),
        )

    def head_logits(self, feats: BackboneFeatures) -> torch.Tensor:
        """[B] logits from backbone features: fuse, normalise, pool over time; beside the standardised
        observation state when used; MLP."""
        parts = []
        if self.uses_backbone:
            f = torch.cat([feats["context"], fuse(feats["mu"], feats["logvar"], self.ft.fusion)], dim=-1)
            f = self.feature_norm(f)
            if self.projection is not None:
                f = self.projection(f)
            parts.append(self.pooling(f, feats["set_mask"], feats["set_times"]))
        if self.observation_dim:
            parts.append((feats["observation"] - self.observation_mean) / self.observation_scale)
        return self.head(torch.cat(parts, dim=-1)).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.head_logits(self.backbone_features(batch))

    def head_loss(self, feats: BackboneFeatures, labels: torch.Tensor, pos_weight: float | None) -> dict:
        """Classification loss from (possibly cached) backbone features: {"loss", "classification", "logits"}."""
        logits = self.head_logits(feats)
        cls = binary_loss(logits, labels, self.ft.imbalance, pos_weight, self.ft.focal_gamma)
        return {"loss": cls, "classification": cls, "logits": logits.detach()}

    def loss(self, batch: Batch, pos_weight: float | None) -> dict[str, torch.Tensor]:
        """Classification loss plus the auxiliary terms (0 unless weighted), each a scalar; `logits` detached.

        pos_weight: train negatives / positives (used when finetune.imbalance is pos_weight).
        """
        ft = self.ft
        enc = encode_sequence(self.encoder, self.transformer, batch)
        out = self.head_loss(self._features(enc, batch), batch["labels"], pos_weight)
        n_sets = max(int(enc.real.sum()), 1)
        zero = out["loss"].new_zeros(())
        aux_recon, aux_kl = zero, zero
        if self.decoder is not None:
            z = reparameterise(enc.mu_sets, enc.logvar_sets, self.encoder.training)
            presence, value = reconstruction_nll(
                self.decoder, self.transformer, enc, z, batch, self.cfg.arch.decoder_time
            )
            aux_recon = (presence + value).sum() / n_sets
        if ft.aux_kl_weight > 0:
            aux_kl = gaussian_kl(enc.mu_sets, enc.logvar_sets).sum() / n_sets
        out["aux_recon"], out["aux_kl"] = aux_recon, aux_kl
        out["loss"] = out["classification"] + ft.aux_recon_weight * aux_recon + ft.aux_kl_weight * aux_kl
        return out
