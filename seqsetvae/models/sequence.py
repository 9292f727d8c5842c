"""Causal transformer over a patient's sequence of sets, with continuous time encodings.

Sets are irregularly spaced, so positions are encoded by *time*, not index: sinusoidal features of
log1p(hours since admission) and of log1p(hours since the previous set). The log compresses the 0-48 h
range so that minutes early in a stay and hours late in it are both resolved. A causal mask stops any
position from attending to a later one; a key padding mask hides padded sets.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEncoding(nn.Module):
    """[B, S] set times (hours) -> [B, S, d_model] from sinusoids of log1p(time) and log1p(gap)."""

    def __init__(self, n_freqs: int, d_model: int):
        super().__init__()
        # Geometric frequencies over log1p(hours) in [0, ~5]: periods from ~25 down to ~0.2 log-units.
        # Fixed (not learned) and derived from n_freqs, so not saved in the state dict.
        freqs = torch.exp(torch.linspace(math.log(0.25), math.log(32.0), n_freqs))
        self.register_buffer("freqs", freqs, persistent=False)
        self.proj = nn.Linear(2 * (2 * n_freqs + 1), d_model)

    def forward(self, set_times: torch.Tensor, set_mask: torch.Tensor) -> torch.Tensor:
        t = set_times.clamp(min=0.0) * set_mask
        prev = torch.cat([torch.zeros_like(t[:, :1]), t[:, :-1]], dim=1)
        gap = (t - prev).clamp(min=0.0)  # the first set's gap is its time since admission
        feats = []
        for x in (torch.log1p(t), torch.log1p(gap)):
            angles = x.unsqueeze(-1) * self.freqs
            feats += [x.unsqueeze(-1), torch.sin(angles), torch.cos(angles)]
        return self.proj(torch.cat(feats, dim=-1))


class CausalSetTransformer(nn.Module):
    """Per-set input vectors [B, S, in_dim] -> per-set context [B, S, d_model], causal in time.

    Output at position t depends only on sets 0..t. `previous_context` gives, for each t, the summary of
    sets strictly before t (a learned start vector at t = 0): what a decoder may use to reconstruct set t.
    """

    def __init__(
        self,
        in_dim: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_dim: int,
        n_time_freqs: int,
        dropout: float,
    ):
        super().__init__()
        self.input_proj = nn.Linear(in_dim, d_model)
        self.time = TimeEncoding(n_time_freqs, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, ff_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor=False: keep one dense code path in train and eval (same numerics).
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.start = nn.Parameter(torch.zeros(1, 1, d_model))

    def forward(self, x: torch.Tensor, set_times: torch.Tensor, set_mask: torch.Tensor) -> torch.Tensor:
        s = x.shape[1]
        h = self.input_proj(x) + self.time(set_times, set_mask)
        causal = torch.triu(torch.ones(s, s, dtype=torch.bool, device=x.device), diagonal=1)  # True = blocked
        padding = ~set_mask
        # Guard: a patient with no real set would have every key masked (NaN softmax). Sets are
        # left-aligned, so position 0 is real for every patient that has one; unmasking it changes nothing
        # for them and keeps all-padding rows finite (they are zeroed below).
        padding[:, 0] = False
        h = self.layers(h, mask=causal, src_key_padding_mask=padding, is_causal=True)
        return self.norm(h) * set_mask.unsqueeze(-1).to(h.dtype)

    def previous_context(self, h: torch.Tensor) -> torch.Tensor:
        """h [B, S, D] (output of forward) -> context of sets < t at each t: [start, h_0, ..., h_{S-2}]."""
        return torch.cat([self.start.expand(h.shape[0], 1, -1), h[:, :-1]], dim=1)
