"""Set-attention blocks: masked keys never change a result, fully padded sets stay finite."""

from __future__ import annotations

import pytest
import torch

from seqsetvae.models.blocks import ISAB, MAB, PMA, SAB, MultiheadAttention
from tests.test_setvae import seeded_single_thread  # noqa: F401 (autouse fixture)

D, HEADS, FF = 16, 4, 32


def _set(n: int = 5, e: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, e, D)
    sizes = torch.randint(1, e + 1, (n,))
    return x, torch.arange(e)[None] < sizes[:, None]


def _pad(x: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `extra` padding elements with large random content: they must not matter."""
    junk = 100 * torch.randn(x.shape[0], extra, D)
    return torch.cat([x, junk], 1), torch.cat([mask, torch.zeros(x.shape[0], extra, dtype=torch.bool)], 1)


def _blocks() -> dict[str, torch.nn.Module]:
    return {
        "sab": SAB(D, HEADS, FF, 0.0),
        "isab": ISAB(D, HEADS, FF, 3, 0.0),
        "pma": PMA(D, HEADS, FF, 2, 0.0),
    }


def test_masked_keys_do_not_change_attention():
    mab = MAB(D, HEADS, FF, 0.0).eval()
    q = torch.randn(4, 3, D)
    y, mask = _set(4, 5)
    padded_y, padded_mask = _pad(y, mask, 4)
    torch.testing.assert_close(mab(q, y, mask), mab(q, padded_y, padded_mask), rtol=1e-5, atol=1e-5)
    # and the content at masked positions of the unpadded tensor does not matter either
    y2 = torch.where(mask[..., None], y, torch.randn_like(y) * 50)
    torch.testing.assert_close(mab(q, y, mask), mab(q, y2, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sab", "isab", "pma"])
def test_padding_never_changes_real_outputs(name):
    block = _blocks()[name].eval()
    x, mask = _set()
    px, pmask = _pad(x, mask, 3)
    out, pout = block(x, mask), block(px, pmask)
    if name == "pma":  # pooled output: one row per seed, all must match
        torch.testing.assert_close(out, pout, rtol=1e-5, atol=1e-5)
    else:  # per-element output: compare the real elements
        torch.testing.assert_close(out[mask], pout[:, : x.shape[1]][mask], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sab", "isab", "pma"])
def test_permutation(name):
    """SAB/ISAB are permutation-equivariant, PMA permutation-invariant, over real elements."""
    block = _blocks()[name].eval()
    x, mask = _set(n=3, e=7)
    perm = torch.randperm(7)
    out, pout = block(x, mask), block(x[:, perm], mask[:, perm])
    if name == "pma":
        torch.testing.assert_close(out, pout, rtol=1e-5, atol=1e-5)
    else:
        torch.testing.assert_close(out[:, perm][mask[:, perm]], pout[mask[:, perm]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sab", "isab", "pma"])
def test_fully_padded_set_is_finite_and_does_not_leak(name):
    block = _blocks()[name].eval()
    x, mask = _set(n=4)
    mask[2] = False  # set 2 is all padding
    out = block(x, mask)
    assert torch.isfinite(out).all()
    alone = block(x[[0, 1, 3]], mask[[0, 1, 3]])  # other sets are unaffected by the empty one
    torch.testing.assert_close(out[[0, 1, 3]], alone, rtol=1e-5, atol=1e-5)


def test_attention_of_fully_padded_row_is_exactly_zero_and_gradients_finite():
    attn = MultiheadAttention(D, HEADS, 0.0)
    x = torch.randn(3, 2, D, requires_grad=True)
    y = torch.randn(3, 4, D, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    out = attn(x, y, mask)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    # no gradient flows into masked keys
    assert torch.equal(y.grad[~mask], torch.zeros_like(y.grad[~mask]))
    assert y.grad[mask].abs().sum() > 0


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="not divisible"):
        MultiheadAttention(10, 4, 0.0)
