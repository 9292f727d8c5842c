"""SetVAE and the batch-level set encoding: permutation and padding invariance, likelihood, determinism.

`random_batch` and `tiny_model_config` are also used by test_seqsetvae.py and test_finetune_model.py.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from seqsetvae.config import params_from_dict
from seqsetvae.data.batch import PAD_CODE, Batch
from seqsetvae.models.losses import set_nll
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain, build_decoder, build_set_encoder
from seqsetvae.models.setvae import SetDecoder, SetVAE

VOCAB = 12


def tiny_model_config(params_dict: dict, vocab: int = VOCAB) -> ModelConfig:
    """The repository's `model` section shrunk to test size (same structure, so it stays valid)."""
    params_dict["model"].update(d_model=16, latent_dim=4, value_hidden=8, decoder_hidden=16, dropout=0.1)
    params_dict["model"]["set_encoder"].update(n_isab=2, n_heads=2, n_inducing=3, ff_dim=16)
    params_dict["model"]["transformer"].update(n_layers=2, n_heads=2, ff_dim=16, n_time_freqs=3)
    return ModelConfig.from_params(params_from_dict(params_dict).model, vocab)


def random_batch(seed: int, b: int = 4, s: int = 6, e: int = 5, vocab: int = VOCAB) -> Batch:
    """A valid batch per the contract: left-aligned sets in time order, >= 1 event per real set.
    Patient 0 has all s sets and its first set all e events, so no dimension is pure padding."""
    g = torch.Generator().manual_seed(seed)
    n_sets = torch.randint(1, s + 1, (b,), generator=g)
    n_sets[0] = s
    set_mask = torch.arange(s)[None] < n_sets[:, None]
    n_ev = torch.randint(1, e + 1, (b, s), generator=g)
    n_ev[0, 0] = e
    event_mask = (torch.arange(e)[None, None] < n_ev[..., None]) & set_mask[..., None]
    codes = torch.randint(PAD_CODE + 1, vocab, (b, s, e), generator=g) * event_mask
    values = torch.randn(b, s, e, generator=g) * event_mask
    times = torch.cumsum(0.1 + 3 * torch.rand(b, s, generator=g), dim=1) * set_mask
    labels = torch.arange(b).remainder(2).float()
    return Batch(codes=codes, values=values, event_mask=event_mask, set_mask=set_mask, set_times=times,
                 labels=labels, subject_id=torch.arange(b), prediction_time=torch.zeros(b, dtype=torch.int64))


def pad_batch(batch: Batch, sets: int = 0, events: int = 0, patients: int = 0) -> Batch:
    """The same batch with extra padding sets, events and patients (junk in padded values/codes where
    the contract allows it would be a contract violation, so padding holds PAD / 0)."""
    out = {}
    for key, t in batch.items():
        if t.dim() >= 2:
            t = torch.nn.functional.pad(t, (0, sets) if t.dim() == 2 else (0, events, 0, sets))
        if patients:
            t = torch.cat([t, torch.zeros((patients, *t.shape[1:]), dtype=t.dtype)])
        out[key] = t
    return Batch(**out)


@pytest.fixture(autouse=True)
def seeded_single_thread():
    """Seed, and run the tiny test models on one thread: at these sizes threads only add overhead, and on
    a busy machine two OpenMP threads stall each other on every small op (figures: docs/benchmark.md)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cfg(params_dict) -> ModelConfig:
    return tiny_model_config(params_dict)


@pytest.fixture
def pretrain_params(params_dict):
    return params_from_dict(params_dict).pretrain


def test_encoder_is_invariant_to_event_order(cfg):
    enc = build_set_encoder(cfg).eval()
    b = random_batch(1)
    real = b["set_mask"]
    codes, values, mask = b["codes"][real], b["values"][real], b["event_mask"][real]
    mu, logvar = enc(codes, values, mask)
    # a different random permutation of the event slots for every set
    perm = torch.argsort(torch.rand(codes.shape), dim=1)
    mu_p, logvar_p = enc(codes.gather(1, perm), values.gather(1, perm), mask.gather(1, perm))
    torch.testing.assert_close(mu, mu_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logvar, logvar_p, rtol=1e-5, atol=1e-5)


def test_batch_encoding_is_invariant_to_padding_events_sets_and_patients(cfg, pretrain_params):
    model = SeqSetVAEPretrain(cfg, pretrain_params).eval()
    b = random_batch(2)
    enc = model.encode(b)
    padded = model.encode(pad_batch(b, sets=3, events=4, patients=2))
    n, s = b["set_mask"].shape
    for name in ("mu", "logvar", "context"):
        torch.testing.assert_close(getattr(enc, name), getattr(padded, name)[:n, :s], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(getattr(padded, name)).all()
    # padded sets and all-padding patients are exact zeros, not garbage
    assert torch.equal(padded.mu[~padded.real], torch.zeros_like(padded.mu[~padded.real]))
    assert torch.equal(padded.context[n:], torch.zeros_like(padded.context[n:]))
    # and the loss (averaged over real sets) is the same
    torch.testing.assert_close(model.loss(b, 5)["loss"], model.loss(pad_batch(b, 2, 3, 1), 5)["loss"])


def test_value_at_the_mean_keeps_the_variable(cfg):
    """Two different variables, both at value 0 (the mean), encode to different tokens and latents."""
    enc = build_set_encoder(cfg).eval()
    codes = torch.tensor([[2], [3]])
    tokens = enc.tokens(codes, torch.zeros(2, 1))
    assert not torch.allclose(tokens[0], tokens[1])
    mu, _ = enc(codes, torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))
    assert not torch.allclose(mu[0], mu[1])


def _reference_nll(logits, mean, logvar, codes, values, mask):
    """Loop-based reference of set_nll for one set (independent of the vectorised implementation)."""
    logits, mean, logvar = logits.tolist(), mean.tolist(), logvar.tolist()
    codes, values, mask = codes.tolist(), values.tolist(), mask.tolist()
    present = {c for c, m in zip(codes, mask) if m}
    presence = 0.0
    for v in range(1, len(logits)):
        p = 1 / (1 + math.exp(-logits[v]))
        presence -= math.log(p) if v in present else math.log(1 - p)
    value = 0.0
    for c, x, m in zip(codes, values, mask):
        if m:
            var = math.exp(logvar[c])
            value += 0.5 * (math.log(2 * math.pi * var) + (x - mean[c]) ** 2 / var)
    return presence, value


def test_set_nll_matches_reference_and_ignores_padding_and_order():
    g = torch.Generator().manual_seed(3)
    n, e, v = 3, 5, 7
    logits, mean, logvar = (torch.randn(n, v, generator=g) for _ in range(3))
    codes = torch.randint(1, v, (n, e), generator=g)
    codes[0, :2] = 4  # a repeated variable in one set
    values = torch.randn(n, e, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    presence, value = set_nll(logits, mean, logvar, codes, values, mask)
    for i in range(n):
        ref_p, ref_v = _reference_nll(logits[i], mean[i], logvar[i], codes[i], values[i], mask[i])
        assert presence[i].item() == pytest.approx(ref_p, rel=1e-5)
        assert value[i].item() == pytest.approx(ref_v, rel=1e-5)
    # junk in padded slots and a permutation of the slots change nothing
    junk_codes = torch.where(mask, codes, torch.randint(1, v, codes.shape, generator=g))
    junk_values = torch.where(mask, values, 99 * torch.randn(n, e, generator=g))
    perm = torch.argsort(torch.rand(n, e, generator=g), dim=1)
    p2, v2 = set_nll(
        logits, mean, logvar, junk_codes.gather(1, perm), junk_values.gather(1, perm), mask.gather(1, perm)
    )
    torch.testing.assert_close(presence, p2)
    torch.testing.assert_close(value, v2)


def test_reconstruction_is_deterministic_in_eval_and_sampled_in_training(cfg):
    vae = SetVAE(build_set_encoder(cfg), SetDecoder(cfg.vocab_size, cfg.arch.latent_dim, 0, 16, 0.0))
    b = random_batch(4)
    real = b["set_mask"]
    args = (b["codes"][real], b["values"][real], b["event_mask"][real])
    vae.eval()
    first, second = vae(*args), vae(*args)
    for key in ("z", "presence_nll", "value_nll"):
        assert torch.equal(first[key], second[key])
    assert torch.equal(first["z"], first["mu"])
    vae.train()
    assert not torch.equal(vae(*args)["z"], vae(*args)["z"])


def test_decoder_requires_context_iff_built_with_it(cfg):
    dec = build_decoder(cfg)  # built with context (the pretrain decoder)
    with pytest.raises(ValueError, match="context"):
        dec(torch.zeros(2, cfg.arch.latent_dim))


def test_model_config_round_trips_through_plain_dict(cfg):
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    bad = dataclasses.replace(cfg.arch, d_model=15)
    with pytest.raises(ValueError, match="model.d_model=15"):
        ModelConfig.from_params(bad, VOCAB)
