"""Causal sequence model, KL free bits and warm-up, and the SeqSetVAEPretrain objective."""

from __future__ import annotations

import io

import pytest
import torch

from seqsetvae.config import params_from_dict
from seqsetvae.models.losses import beta_at, free_bits_kl, gaussian_kl
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
from tests.test_setvae import random_batch, seeded_single_thread, tiny_model_config  # noqa: F401 (fixture)


@pytest.fixture
def cfg(params_dict) -> ModelConfig:
    return tiny_model_config(params_dict)


def _pretrain_params(params_dict, **overrides):
    params_dict["pretrain"].update(overrides)
    return params_from_dict(params_dict).pretrain


# ------------------------------------------------------------------------------------------ causality


@pytest.mark.parametrize("t", [0, 2, 4])
def test_changing_later_sets_does_not_change_earlier_outputs(cfg, params_dict, t):
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict)).eval()
    b = random_batch(7, b=3, s=6)
    b["set_mask"][:] = True  # every patient has all 6 sets, so positions > t exist for all
    b["event_mask"][:, :, 0] = True
    b["codes"] = torch.where(b["event_mask"], b["codes"].clamp(min=1), 0)
    changed = {k: v.clone() for k, v in b.items()}
    g = torch.Generator().manual_seed(1)
    later = torch.zeros_like(b["set_mask"])
    later[:, t + 1 :] = True
    new_codes = torch.randint(1, cfg.vocab_size, b["codes"].shape, generator=g)
    changed["codes"] = torch.where(later[..., None] & b["event_mask"], new_codes, b["codes"])
    changed["values"] = torch.where(later[..., None], 5 * torch.randn(b["values"].shape, generator=g), b["values"])
    changed["set_times"] = torch.where(later, b["set_times"] + 10 * torch.arange(6.0), b["set_times"])
    enc, enc2 = model.encode(b), model.encode(changed)
    torch.testing.assert_close(enc.context[:, : t + 1], enc2.context[:, : t + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(enc.mu[:, : t + 1], enc2.mu[:, : t + 1], rtol=1e-5, atol=1e-5)
    if t + 1 < 6:  # the change is visible where it should be
        assert not torch.allclose(enc.context[:, t + 1 :], enc2.context[:, t + 1 :], atol=1e-4)


def test_time_encoding_matters(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict)).eval()
    b = random_batch(8)
    shifted = dict(b, set_times=b["set_times"] * 3)
    assert not torch.allclose(model.encode(b).context, model.encode(shifted).context, atol=1e-4)


# ------------------------------------------------------------------------------------------ KL terms


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3), torch.randn(5, 3)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p))
    assert torch.equal(gaussian_kl(torch.zeros(2, 2), torch.zeros(2, 2)), torch.zeros(2, 2))


def test_free_bits_floor_each_dimension_and_cut_its_gradient():
    mu = torch.tensor([[0.01, 2.0], [0.02, -1.0]], requires_grad=True)  # dim 0 tiny KL, dim 1 large
    logvar = torch.zeros(2, 2)
    kl = gaussian_kl(mu, logvar)
    free = 0.5
    value = free_bits_kl(kl, free)
    expected = free + kl[:, 1].mean()  # dim 0 is below the floor, so it counts as `free`
    torch.testing.assert_close(value, expected)
    value.backward()
    assert torch.equal(mu.grad[:, 0], torch.zeros(2))  # no pressure on a dim below the floor
    assert (mu.grad[:, 1] != 0).all()
    assert free_bits_kl(kl.detach(), 0.0) == pytest.approx(kl.detach().mean(0).sum().item())


def test_beta_warmup_is_linear_then_flat():
    assert beta_at(0, 2.0, 100) == 0.0
    assert beta_at(25, 2.0, 100) == pytest.approx(0.5)
    assert beta_at(100, 2.0, 100) == 2.0
    assert beta_at(10_000, 2.0, 100) == 2.0
    assert beta_at(0, 0.7, 0) == 0.7  # no warm-up
    with pytest.raises(ValueError, match="step"):
        beta_at(-1, 1.0, 10)


# ------------------------------------------------------------------------------------------ objective


def test_loss_terms_compose_as_specified(cfg, params_dict):
    params = _pretrain_params(params_dict, beta_max=0.8, kl_warmup_steps=10, free_bits=0.1)
    model = SeqSetVAEPretrain(cfg, params).eval()
    b = random_batch(9)
    for step in (0, 5, 50):
        out = model.loss(b, step)
        assert set(out) >= {"loss", "recon", "kl", "kl_loss", "forecast", "beta"}
        beta = beta_at(step, 0.8, 10)
        torch.testing.assert_close(out["loss"], out["recon"] + beta * out["kl_loss"])
        torch.testing.assert_close(out["recon"], out["recon_presence"] + out["recon_value"])
        assert out["kl_loss"] >= 0.1 * cfg.arch.latent_dim - 1e-6  # the floor, summed over dims
        assert out["forecast"] == 0 and model.forecaster is None


def test_forecast_term_when_weighted(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict, forecast_weight=0.5)).eval()
    out = model.loss(random_batch(10), 100)
    assert model.forecaster is not None and out["forecast"] > 0
    torch.testing.assert_close(out["loss"], out["recon"] + out["beta"] * out["kl_loss"] + 0.5 * out["forecast"])


def test_every_parameter_is_trained_including_the_transformer(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict, forecast_weight=0.1)).train()
    model.loss(random_batch(11), 10)["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict, kl_warmup_steps=0))
    b = random_batch(12, b=6, s=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    with torch.no_grad():
        before = model.loss(b, 0)["loss"].item()
    model.train()
    for step in range(25):
        opt.zero_grad()
        model.loss(b, step)["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = model.loss(b, 25)["loss"].item()
    assert after < 0.9 * before, (before, after)


def test_active_units_counts_dims_whose_mean_varies():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(500, 4, generator=g) * torch.tensor([1.0, 0.5, 0.05, 0.0])  # variances 1, .25, .0025, 0
    assert SeqSetVAEPretrain.active_units(mu, 0.01) == 2
    assert SeqSetVAEPretrain.active_units(mu, 1e-4) == 3
    assert SeqSetVAEPretrain.active_units(mu[:1], 0.01) == 0


def test_posterior_means_are_the_real_sets(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict)).eval()
    b = random_batch(13)
    mu = model.posterior_means(b)
    assert mu.shape == (int(b["set_mask"].sum()), cfg.arch.latent_dim)
    torch.testing.assert_close(mu, model.encode(b).mu[b["set_mask"]])


def test_checkpoint_round_trip_with_weights_only(cfg, params_dict):
    params = _pretrain_params(params_dict)
    model = SeqSetVAEPretrain(cfg, params).eval()
    buf = io.BytesIO()
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = SeqSetVAEPretrain(ModelConfig.from_dict(ckpt["config"]), params).eval()
    clone.load_state_dict(ckpt["state_dict"])
    b = random_batch(14)
    a, c = model.loss(b, 3), clone.loss(b, 3)
    for key in a:
        assert torch.equal(a[key], c[key]), key


@pytest.mark.parametrize("decoder_time", [False, True])
def test_decoder_sees_the_time_of_the_set_it_reconstructs_only_when_asked(params_dict, decoder_time):
    """model.decoder_time: moving only the last set in time changes its reconstruction NLL through the
    decoder's time input; without it, the NLL of set t depends on sets < t and z_t alone."""
    from seqsetvae.models.pretrain import reconstruction_nll

    params_dict["model"]["decoder_time"] = decoder_time
    cfg = tiny_model_config(params_dict)
    model = SeqSetVAEPretrain(cfg, _pretrain_params(params_dict)).eval()
    b = random_batch(9, b=1, s=5)
    b["set_mask"][:] = True
    b["event_mask"][:, :, 0] = True
    b["codes"] = torch.where(b["event_mask"], b["codes"].clamp(min=1), 0)
    later = dict(b, set_times=b["set_times"].clone())
    later["set_times"][0, -1] += 7.0

    def nll(batch):
        enc = model.encode(batch)
        presence, value = reconstruction_nll(model.setvae.decoder, model.transformer, enc, enc.mu_sets, batch,
                                             cfg.arch.decoder_time)
        return presence + value

    before, after = nll(b), nll(later)
    torch.testing.assert_close(before[:-1], after[:-1])  # earlier sets never see the later time
    assert (not torch.allclose(before[-1], after[-1])) == decoder_time


def test_a_checkpoint_config_from_before_decoder_time_loads_as_without_it(params_dict):
    cfg = tiny_model_config(params_dict)
    old = cfg.to_dict()
    del old["arch"]["decoder_time"]
    assert ModelConfig.from_dict(old).arch.decoder_time is False
