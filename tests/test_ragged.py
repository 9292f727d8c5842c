"""The ragged set encoder (real events only) computes what the padded reference computes.

Same parameters, two layouts: outputs and gradients must agree to float rounding, for sets of any size
including empty ones, and the ragged path must not depend on event order or on padding width.
"""

from __future__ import annotations

import pytest
import torch

import itertools

import seqsetvae.models.setvae as setvae
from seqsetvae.models.blocks import ISAB, PMA, RaggedLayout, width_groups
from seqsetvae.models.setvae import SetEncoder
from tests.test_setvae import seeded_single_thread  # noqa: F401 (autouse fixture)

D, FF, VOCAB = 16, 32, 12
TOL = dict(rtol=1e-5, atol=1e-5)


def _mask(n: int, e: int, seed: int, allow_empty: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0 if allow_empty else 1, e + 1, (n,), generator=g)
    sizes[0] = e  # one full set, so the padded width is really used
    if allow_empty:
        sizes[1] = 0
    return torch.arange(e)[None] < sizes[:, None]


def _encoder(heads: int, inducing: int, n_isab: int = 2) -> SetEncoder:
    return SetEncoder(VOCAB, D, 4, 8, n_isab, heads, inducing, FF, 0.0)


def _events(mask: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(1, VOCAB, mask.shape, generator=g) * mask
    values = torch.randn(mask.shape, generator=g) * mask
    return codes, values


def _grads(module: torch.nn.Module, out: torch.Tensor) -> list[torch.Tensor]:
    # a fixed random projection, so every output element gets its own gradient weight
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    return list(torch.autograd.grad((out * w).sum(), list(module.parameters())))


@pytest.mark.parametrize("heads,inducing", [(2, 3), (4, 1), (1, 5)])
@pytest.mark.parametrize("seed", [0, 1])
def test_isab_ragged_equals_padded_at_real_events_with_gradients(heads, inducing, seed):
    block = ISAB(D, heads, FF, inducing, 0.0)
    mask = _mask(9, 7, seed, allow_empty=True)
    x = torch.randn(9, 7, D)
    ragged = block.ragged(x[mask], RaggedLayout.from_mask(mask))
    padded = block(x, mask)[mask]
    torch.testing.assert_close(ragged, padded, **TOL)
    for gr, gp in zip(_grads(block, ragged), _grads(block, padded)):
        torch.testing.assert_close(gr, gp, **TOL)


@pytest.mark.parametrize("seeds", [1, 3])
def test_pma_ragged_equals_padded_including_an_empty_set(seeds):
    pool = PMA(D, 4, FF, seeds, 0.0)
    mask = _mask(8, 6, 3, allow_empty=True)
    x = torch.randn(8, 6, D)
    ragged = pool.ragged(x[mask], RaggedLayout.from_mask(mask))
    padded = pool(x, mask)
    torch.testing.assert_close(ragged, padded, **TOL)
    # the empty set attends to nothing: its output is the seeds' own residual path, finite, same in both
    assert torch.isfinite(ragged[1]).all()
    for gr, gp in zip(_grads(pool, ragged), _grads(pool, padded)):
        torch.testing.assert_close(gr, gp, **TOL)


@pytest.mark.parametrize("heads,inducing", [(2, 3), (4, 8)])
def test_encoder_forward_equals_padded_reference(heads, inducing):
    enc = _encoder(heads, inducing)
    mask = _mask(11, 9, 5, allow_empty=True)
    codes, values = _events(mask, 5)
    mu, logvar = enc(codes, values, mask)
    mu_p, logvar_p = enc.forward_padded(codes, values, mask)
    torch.testing.assert_close(mu, mu_p, **TOL)
    torch.testing.assert_close(logvar, logvar_p, **TOL)
    out, out_p = torch.cat([mu, logvar], 1), torch.cat([mu_p, logvar_p], 1)
    for gr, gp in zip(_grads(enc, out), _grads(enc, out_p)):
        torch.testing.assert_close(gr, gp, **TOL)


def test_ragged_encoder_ignores_padding_width_and_event_order():
    enc = _encoder(2, 3).eval()
    mask = _mask(10, 6, 8, allow_empty=False)
    codes, values = _events(mask, 8)
    mu, logvar = enc(codes, values, mask)
    # wider padding (junk would be a contract violation: padding holds PAD / 0) ...
    wide = [torch.nn.functional.pad(t, (0, 5)) for t in (codes, values, mask)]
    mu_w, logvar_w = enc(*wide)
    # ... and each set's event slots shuffled
    perm = torch.argsort(torch.rand(mask.shape), dim=1)
    mu_s, logvar_s = enc(codes.gather(1, perm), values.gather(1, perm), mask.gather(1, perm))
    for other_mu, other_logvar in ((mu_w, logvar_w), (mu_s, logvar_s)):
        torch.testing.assert_close(mu, other_mu, **TOL)
        torch.testing.assert_close(logvar, other_logvar, **TOL)


def test_layout_round_trip_and_validation():
    mask = _mask(5, 4, 2, allow_empty=True)
    layout = RaggedLayout.from_mask(mask)
    x = torch.randn(int(mask.sum()), 3)
    padded = layout.to_padded(x)
    assert torch.equal(layout.to_ragged(padded), x)
    assert torch.equal(padded[~mask], torch.zeros_like(padded[~mask]))
    assert layout.has_event.tolist() == mask.any(1).tolist()
    with pytest.raises(ValueError, match="bool"):
        RaggedLayout.from_mask(mask.long())


def _cheapest_grid(widths: list[int], max_groups: int) -> int:
    """Brute force: the smallest sum(n_g * width_g) over every split of the sorted distinct widths."""
    distinct = sorted(set(widths))
    best = None
    for k in range(1, min(max_groups, len(distinct)) + 1):
        for cuts in itertools.combinations(range(1, len(distinct)), k - 1):
            edges = [0, *cuts, len(distinct)]
            cost = sum(sum(distinct[a] <= w <= distinct[b - 1] for w in widths) * distinct[b - 1]
                       for a, b in zip(edges, edges[1:]))
            best = cost if best is None else min(best, cost)
    return best


def test_width_groups_cover_every_set_once_and_minimise_the_padded_grid():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n, e = int(torch.randint(1, 25, (1,), generator=g)), int(torch.randint(1, 10, (1,), generator=g))
        max_groups = int(torch.randint(1, 5, (1,), generator=g))
        sizes = torch.randint(0, e + 1, (n,), generator=g)
        mask = torch.arange(e)[None] < sizes[:, None]
        # events need not be left-aligned: a set's width is its last real slot + 1
        mask = mask.gather(1, torch.argsort(torch.rand(n, e, generator=g), dim=1))
        widths = [max(int(row.nonzero().max()) + 1, 1) if row.any() else 1 for row in mask]
        groups = width_groups(mask, max_groups)
        assert len(groups) <= max_groups
        assert sorted(torch.cat([idx for idx, _ in groups]).tolist()) == list(range(n))
        assert all(widths[i] <= w for idx, w in groups for i in idx.tolist())
        assert sum(len(idx) * w for idx, w in groups) == _cheapest_grid(widths, max_groups)
        assert [(i.tolist(), w) for i, w in width_groups(mask, max_groups)] == [(i.tolist(), w) for i, w in groups]


def test_encoding_in_width_groups_equals_one_grid_with_gradients(monkeypatch):
    enc = _encoder(2, 3)
    sizes = torch.tensor([9, 1, 0, 2, 9, 5, 1, 3, 7, 2, 1, 4])  # many widths, one empty set
    mask = torch.arange(9)[None] < sizes[:, None]
    codes, values = _events(mask, 11)
    assert len(width_groups(mask, setvae.ENCODER_WIDTH_GROUPS)) > 1
    grouped = torch.cat(enc(codes, values, mask), 1)
    monkeypatch.setattr(setvae, "ENCODER_WIDTH_GROUPS", 1)
    one_grid = torch.cat(enc(codes, values, mask), 1)
    torch.testing.assert_close(grouped, one_grid, **TOL)
    for gg, g1 in zip(_grads(enc, grouped), _grads(enc, one_grid)):
        torch.testing.assert_close(gg, g1, **TOL)
