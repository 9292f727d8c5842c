"""SetVAE: one set of (variable, value) events -> a latent Gaussian, and a set likelihood from a latent.

Every function here works on flattened sets `[N, E]` (N = the real sets of a batch, E = events) in one
call: no Python loop over sets or patients. Padding events (event_mask False) never change a result.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from seqsetvae.data.batch import PAD_CODE
from seqsetvae.models.blocks import ISAB, PMA, RaggedLayout, width_groups
from seqsetvae.models.losses import set_nll

# Bounds on log-variances (encoder posterior and decoder value likelihood). exp(+-8) covers every scale a
# normalised value can have; without them an early, badly scaled step can overflow exp().
LOGVAR_MIN, LOGVAR_MAX = -8.0, 8.0
# The set encoder runs the sets of a batch in at most this many groups of similar width (blocks.width_groups):
# each group's per-set softmax and weighted sums run on a grid as wide as its own widest set, not the batch's.
# Sets are encoded independently, so grouping changes no result beyond float rounding. 2 is the fastest count
# benchmarks/bench_encoder_groups.py found on P12 batches (more groups: more, smaller kernels); the figures
# are in docs/model.md.
ENCODER_WIDTH_GROUPS = 2


class EventTokens(nn.Module):
    """Token = learned embedding of the variable + MLP embedding of its normalised value.

    Adding a *learned function* of the value (not value x a fixed direction) means a value at the mean
    (0 after normalisation) still leaves the variable's identity in the token.
    """

    def __init__(self, vocab_size: int, d_model: int, value_hidden: int):
        super().__init__()
        self.code = nn.Embedding(vocab_size, d_model, padding_idx=PAD_CODE)
        self.value = nn.Sequential(nn.Linear(1, value_hidden), nn.GELU(), nn.Linear(value_hidden, d_model))

    def forward(self, codes: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.code(codes) + self.value(values.unsqueeze(-1))


class SetEncoder(nn.Module):
    """Events of each set -> (mu, logvar): tokens, ISAB layers, PMA with one seed, linear head."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        latent_dim: int,
        value_hidden: int,
        n_isab: int,
        n_heads: int,
        n_inducing: int,
        ff_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.tokens = EventTokens(vocab_size, d_model, value_hidden)
        self.blocks = nn.ModuleList(ISAB(d_model, n_heads, ff_dim, n_inducing, dropout) for _ in range(n_isab))
        self.pool = PMA(d_model, n_heads, ff_dim, 1, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.to_latent = nn.Linear(d_model, 2 * latent_dim)

    def forward(
        self, codes: torch.Tensor, values: torch.Tensor, event_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """codes, values, event_mask [N, E] -> mu, logvar [N, L], computed on the real events only, in groups
        of sets of similar width (ENCODER_WIDTH_GROUPS)."""
        groups = width_groups(event_mask, ENCODER_WIDTH_GROUPS)
        if len(groups) == 1:
            width = groups[0][1]
            return self._ragged(codes[:, :width], values[:, :width], event_mask[:, :width])
        parts = [self._ragged(codes[idx, :w], values[idx, :w], event_mask[idx, :w]) for idx, w in groups]
        order = torch.cat([idx for idx, _ in groups])
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel(), device=order.device)  # row j of the concatenation is set order[j]
        return torch.cat([mu for mu, _ in parts])[back], torch.cat([logvar for _, logvar in parts])[back]

    def _ragged(
        self, codes: torch.Tensor, values: torch.Tensor, event_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One group of sets, [n, e] -> mu, logvar [n, L], on the ragged layout of its real events."""
        layout = RaggedLayout.from_mask(event_mask)
        x = self.tokens(codes[event_mask], values[event_mask])  # [M, D]
        for block in self.blocks:
            x = block.ragged(x, layout)
        return self._head(self.pool.ragged(x, layout))

    def forward_padded(
        self, codes: torch.Tensor, values: torch.Tensor, event_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference implementation on the padded [N, E] grid; same parameters, same results as forward()."""
        x = self.tokens(codes, values)
        for block in self.blocks:
            x = block(x, event_mask)
        return self._head(self.pool(x, event_mask))

    def _head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """PMA output [N, 1, D] -> mu, logvar [N, L]."""
        mu, logvar = self.to_latent(self.norm(pooled.squeeze(1))).chunk(2, dim=-1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


class SetLikelihood(NamedTuple):
    """Per-variable decoder outputs for N sets, each [N, V]."""

    presence_logits: torch.Tensor
    value_mean: torch.Tensor
    value_logvar: torch.Tensor


class SetDecoder(nn.Module):
    """Latent z (plus an optional context vector) -> per-variable presence logit, value mean, value logvar.

    Decoding to one Bernoulli and one Gaussian per vocabulary entry makes the likelihood a function of the
    set's contents, not of the order of its events, and the whole [N, V] grid is one matrix product.
    """

    def __init__(self, vocab_size: int, latent_dim: int, context_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.vocab_size = vocab_size
        self.context_dim = context_dim
        self.net = nn.Sequential(
            nn.Linear(latent_dim + context_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 3 * vocab_size),
        )

    def forward(self, z: torch.Tensor, context: torch.Tensor | None = None) -> SetLikelihood:
        if (context is None) != (self.context_dim == 0):
            raise ValueError(f"decoder built with context_dim={self.context_dim} got context={context is not None}")
        x = z if context is None else torch.cat([z, context], dim=-1)
        logits, mean, logvar = self.net(x).chunk(3, dim=-1)
        return SetLikelihood(logits, mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX))


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, sample: bool) -> torch.Tensor:
    """z ~ N(mu, exp(logvar)) when `sample` (training), else the posterior mean (deterministic eval)."""
    if not sample:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class SetVAE(nn.Module):
    """Set encoder + set decoder. The decoder may take a context vector (the sequence model's summary of
    the previous sets, in SeqSetVAEPretrain); a standalone SetVAE uses context_dim=0."""

    def __init__(self, encoder: SetEncoder, decoder: SetDecoder):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(
        self,
        codes: torch.Tensor,
        values: torch.Tensor,
        event_mask: torch.Tensor,
        context: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode, sample (training) or take mu (eval), decode; per-set terms, each [N] or [N, L]."""
        mu, logvar = self.encoder(codes, values, event_mask)
        z = reparameterise(mu, logvar, self.training)
        lik = self.decoder(z, context)
        presence_nll, value_nll = set_nll(*lik, codes, values, event_mask)
        return {"mu": mu, "logvar": logvar, "z": z, "presence_nll": presence_nll, "value_nll": value_nll}
