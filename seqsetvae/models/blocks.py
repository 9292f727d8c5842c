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

Two layouts, same parameters and the same results (to float rounding; tests/test_ragged.py checks it):

- padded, `forward(x [N, E, D], mask [N, E])`: the reference. Every per-element op also runs on the
  padding, E being the widest set of the batch.
- ragged, `ragged(x [M, D], layout)`: only the M real events, flattened set-major (`RaggedLayout`). This
  is what the set encoder uses. A P12 set has ~5.9 events against a batch maximum of ~15, so the
  per-event work (layer norms, projections, feed-forwards: nearly all of the encoder's cost) shrinks by
  ~2.5x. Only the softmax and the per-set weighted sums (a small share of the FLOPs) run on the padded
  [N, E] grid: on CPU one batched matmul over it was faster than segment reductions over events
  (scatter_reduce/index_add) or than gathering each set's summaries per event ([M, m, D]); the figures are
  in docs/model.md.
  The learned queries of ISAB's first MAB and of PMA are the same for every set, so their layer norm and
  query projection are computed once, not once per set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RaggedLayout:
    """Where the M real events of N sets sit in the padded [N, E] grid.

    Ragged tensors are [M, ...] in the row-major order of `mask`, i.e. `padded[mask]`: events of set 0,
    then of set 1, and so on. A set may have no event (it then attends to nothing, as in the padded path).
    """

    mask: torch.Tensor  # [N, E] bool, True = real event
    has_event: torch.Tensor  # [N] bool

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> RaggedLayout:
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"event mask must be a 2-d bool tensor [N, E], got {mask.dtype} {tuple(mask.shape)}")
        return cls(mask=mask, has_event=mask.any(dim=1))

    @property
    def n_sets(self) -> int:
        return self.mask.shape[0]

    def to_padded(self, x: torch.Tensor) -> torch.Tensor:
        """[M, C] -> [N, E, C], zeros at padding (differentiable: the backward is a gather)."""
        n, e = self.mask.shape
        return x.new_zeros(n, e, x.shape[-1]).index_put((self.mask,), x)

    def to_ragged(self, x: torch.Tensor) -> torch.Tensor:
        """[N, E, C] -> [M, C]."""
        return x[self.mask]


def width_groups(mask: torch.Tensor, max_groups: int) -> list[tuple[torch.Tensor, int]]:
    """Split the N sets of `mask` [N, E] into at most `max_groups` groups of similar width: per group, the
    indices of its sets (ascending) and its width (the last real event's slot + 1 over its sets, at least 1).

    The groups minimise the padded grid sum(n_g * width_g) that the ragged blocks' per-set softmax and
    weighted sums run on: one grid as wide as the batch's widest set (a 25-event lab panel) makes every
    5-event vitals set pay for 25 slots. An exact dynamic programme over the distinct widths (at most E of
    them), so the grouping is a function of the mask alone: same mask, same groups, same results.
    """
    n, e = mask.shape
    if n == 0:
        return [(torch.arange(0, device=mask.device), e)]
    slot = torch.arange(1, e + 1, device=mask.device)
    width = (slot * mask).amax(dim=1).clamp(min=1) if e > 0 else torch.ones(n, dtype=torch.long, device=mask.device)
    values, counts = torch.unique(width, return_counts=True)  # distinct widths, ascending
    d = values.numel()
    if max_groups <= 1 or d == 1:
        return [(torch.arange(n, device=mask.device), int(values[-1]))]
    v = values.double().cpu()
    cum = torch.cat([v.new_zeros(1), counts.double().cpu().cumsum(0)])  # cum[i]: sets of the i narrowest widths
    first, last = torch.arange(d)[:, None], torch.arange(d)[None, :]
    # cost[p, i]: one group holding distinct widths p..i, padded to the widest of them
    cost = torch.where(first <= last, (cum[None, 1:] - cum[:d, None]) * v[None, :], torch.inf)
    best = [cost[0]]  # best[k][i]: widths 0..i in k + 1 groups
    start = []  # start[k - 1][i]: where the last of those k + 1 groups begins
    for _ in range(min(max_groups, d) - 1):
        total = best[-1][:-1, None] + cost[1:]  # [p - 1, i]: widths 0..p-1 as before, then p..i
        cheapest, p = total.min(dim=0)
        best.append(cheapest)
        start.append(p + 1)
    k = min(range(len(best)), key=lambda j: (float(best[j][-1]), j))  # ties: fewer groups
    bounds, i = [], d - 1
    while k > 0:
        p = int(start[k - 1][i])
        bounds.append((p, i))
        i, k = p - 1, k - 1
    bounds.append((0, i))
    return [
        (torch.nonzero((width >= values[lo]) & (width <= values[hi])).squeeze(1), int(values[hi]))
        for lo, hi in reversed(bounds)
    ]


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

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, D] -> [..., H, L, dh]."""
        return x.unflatten(-1, (self.n_heads, -1)).transpose(-3, -2)

    def shared_queries_to_ragged(self, x: torch.Tensor, y: torch.Tensor, layout: RaggedLayout) -> torch.Tensor:
        """The same queries x [Lq, D] for every set attend to each set's events y [M, D] -> [N, Lq, D]."""
        n, e = layout.mask.shape
        lq, d = x.shape
        h = self.n_heads
        kv = self.kv(y)  # [M, 2D]: k then v, as in forward()
        # Scores of every event against every (head, query) in ONE matmul on the ragged keys: the queries
        # are shared, so they form a block-diagonal [D, H*Lq] matrix (head h's keys only meet head h's
        # queries). No per-set matmuls, no padded copy of the keys.
        q = self._heads(self.q(x)) * (d // h) ** -0.5  # [H, Lq, dh], projected once for all sets
        scores = kv[:, :d] @ torch.block_diag(*q.transpose(1, 2))  # [M, H*Lq]
        # Softmax over each set's events on the padded grid: padding gets -inf, i.e. weight 0. A set with
        # no event gets 0 everywhere instead (finite, uniform); its output is zeroed below as in forward().
        fill = torch.where(layout.has_event, float("-inf"), 0.0).to(scores.dtype)[:, None, None]
        weights = fill.expand(n, e, h * lq).index_put((layout.mask,), scores).softmax(dim=1)
        weights = F.dropout(weights, self.dropout if self.training else 0.0).view(n, e, h, lq)
        v = layout.to_padded(kv[:, d:]).view(n, e, h, d // h)  # zeros at padding
        if lq == 1:  # PMA with one seed: a weighted sum over events (a matmul with one row is slower)
            o = (weights * v).sum(dim=1, keepdim=True)  # [N, 1, H, dh]
        else:
            o = torch.matmul(weights.permute(0, 2, 3, 1), v.transpose(1, 2)).transpose(1, 2)  # [N, Lq, H, dh]
        return self.out(o.flatten(2)) * layout.has_event[:, None, None].to(o.dtype)

    def ragged_to_sets(self, x: torch.Tensor, y: torch.Tensor, layout: RaggedLayout) -> torch.Tensor:
        """Each event x [M, D] attends to its own set's elements y [N, Lk, D] (no padding) -> [M, D]."""
        # Padded queries and one batched matmul per step: each event meets only its own set's Lk keys, so
        # this is inherently a batch of small per-set products; the padding rows cost little here (no
        # mask needed: y has no padding), and are dropped before the output projection.
        dh = x.shape[-1] // self.n_heads
        q = self._heads(layout.to_padded(self.q(x))).contiguous()  # [N, H, E, dh]
        k, v = self._heads(self.kv(y).unflatten(-1, (2, -1)).movedim(2, 0)).contiguous()  # each [N, H, Lk, dh]
        weights = torch.matmul(q, k.transpose(-1, -2) * dh**-0.5).softmax(dim=-1)  # [N, H, E, Lk]
        o = torch.matmul(F.dropout(weights, self.dropout if self.training else 0.0), v)  # [N, H, E, dh]
        return self.out(layout.to_ragged(o.transpose(1, 2).flatten(2)))


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

    def shared_queries_to_ragged(self, x: torch.Tensor, y: torch.Tensor, layout: RaggedLayout) -> torch.Tensor:
        """Ragged form of forward(x expanded to [N, Lq, D], padded y, mask): x [Lq, D], y [M, D] -> [N, Lq, D]."""
        h = x + self.drop(self.attn.shared_queries_to_ragged(self.ln_q(x), self.ln_k(y), layout))
        return h + self.drop(self.ff(self.ln_ff(h)))

    def ragged_to_sets(self, x: torch.Tensor, y: torch.Tensor, layout: RaggedLayout) -> torch.Tensor:
        """Ragged form of forward(padded x, y, None): x [M, D], y [N, Lk, D] -> [M, D]."""
        h = x + self.drop(self.attn.ragged_to_sets(self.ln_q(x), self.ln_k(y), layout))
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

    def ragged(self, x: torch.Tensor, layout: RaggedLayout) -> torch.Tensor:
        """x [M, D] real events -> [M, D]; equals forward() at the real events."""
        summary = self.mab_in.shared_queries_to_ragged(self.inducing[0], x, layout)  # [N, m, D]
        return self.mab_out.ragged_to_sets(x, summary, layout)


class PMA(nn.Module):
    """Pooling by multihead attention: k learned seeds attend to the set's real elements."""

    def __init__(self, dim: int, n_heads: int, ff_dim: int, n_seeds: int, dropout: float):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, n_seeds, dim) * dim**-0.5)
        self.mab = MAB(dim, n_heads, ff_dim, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x, mask)  # [N, k, D]

    def ragged(self, x: torch.Tensor, layout: RaggedLayout) -> torch.Tensor:
        """x [M, D] real events -> [N, k, D]; equals forward()."""
        return self.mab.shared_queries_to_ragged(self.seeds[0], x, layout)
