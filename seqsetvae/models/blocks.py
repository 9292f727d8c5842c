"""Set-attention blocks (Set Transformer, Lee et al. 2019) with key padding masks.

Every block takes a boolean key mask (True = real element). Masked keys get exactly zero attention weight,
so padding never changes a result. A query whose keys are *all* padding (a fully padded set) would give
softmax over an empty row, i.e. NaN; the attention here guards that case: such rows attend to nothing and
their attention output is exactly zero, so the block still returns finite values.

Blocks use pre-layer-norm residuals (more stable to train than the paper's post-norm):
    MAB(X, Y) = H + FF(LN(H)),  H = X + Attn(LN(X), LN(Y), LN(Y))
    SAB(X)    = MAB(X, X)
    ISAB(X)   = MAB(X, MAB(I, X))      I: m learned inducing points, cost O(n m) instead of O(n^2)
    PMA_k(X)  = MAB(S, X)              S: k learned seed vectors
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MultiheadAttention(nn.Module):
    """Multi-head attention over a key padding mask; fully masked rows return exactly zero."""

    def __init__(self, dim: int, n_heads: int, dropout: float):
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [N, Lq, D] attends to y [N, Lk, D]; key_mask [N, Lk] bool (True = real) or None."""
        n, lq, d = x.shape
        lk = y.shape[1]
        h = self.n_heads
        q = self.q(x).view(n, lq, h, d // h).transpose(1, 2)
        k, v = self.kv(y).view(n, lk, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn_mask = None
        has_key = None
        if key_mask is not None:
            has_key = key_mask.any(dim=1)  # [N]
            # Guard: a row with no real key would softmax over -inf only (NaN). Let it see every key,
            # then zero its output below; real rows are untouched by this.
            safe = key_mask | ~has_key[:, None]
            attn_mask = safe[:, None, None, :]  # [N, 1, 1, Lk] broadcast over heads and queries
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        o = self.out(o.transpose(1, 2).reshape(n, lq, d))
        if has_key is not None:
            o = o * has_key[:, None, None].to(o.dtype)
        return o


class MAB(nn.Module):
    """Multihead attention block: queries X attend to keys Y (masked), then a feed-forward."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)
        self.attn = MultiheadAttention(dim, n_heads, dropout)
        self.ln_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        h = x + self.drop(self.attn(self.ln_q(x), self.ln_k(y), key_mask))
        return h + self.drop(self.ff(self.ln_ff(h)))


class SAB(nn.Module):
    """Set attention block: self-attention among the set's real elements."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.mab = MAB(dim, n_heads, ff_dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mab(x, x, mask)


class ISAB(nn.Module):
    """Induced set attention block: m learned inducing points summarise the set, the set reads them back."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, n_inducing: int, dropout: float):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, n_inducing, dim) * dim**-0.5)
        self.mab_in = MAB(dim, n_heads, ff_dim, dropout)
        self.mab_out = MAB(dim, n_heads, ff_dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        summary = self.mab_in(self.inducing.expand(x.shape[0], -1, -1), x, mask)  # [N, m, D]
        # The summary has no padding, so the way back needs no mask; padded rows of the output are
        # garbage-but-finite and stay masked as keys in every later block.
        return self.mab_out(x, summary, None)


class PMA(nn.Module):
    """Pooling by multihead attention: k learned seeds attend to the set's real elements."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, n_seeds: int, dropout: float):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, n_seeds, dim) * dim**-0.5)
        self.mab = MAB(dim, n_heads, ff_dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, mask)  # [N, k, D]
