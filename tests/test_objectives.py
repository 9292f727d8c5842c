"""Pretraining objectives without the reconstruction shortcut (models/objectives.py, issue 29 C):
multi-horizon value forecasting from h_t (C1) and masked span modelling (C2)."""

from __future__ import annotations

import pytest
import torch

from seqsetvae.config import ParamsError, params_from_dict
from seqsetvae.data.batch import PAD_CODE
from seqsetvae.models.objectives import (
    hide_spans,
    horizon_nll_cells,
    horizon_targets,
    predict_hidden,
    stay_variable_uniforms,
)
from seqsetvae.models.pretrain import SeqSetVAEPretrain
from tests.test_setvae import VOCAB, random_batch, seeded_single_thread, tiny_model_config  # noqa: F401 (fixture)

HORIZONS = [2.0, 12.0]


@pytest.fixture
def cfg(params_dict):
    return tiny_model_config(params_dict)


def _params(params_dict, horizon=0.0, span=0.0, **span_overrides):
    d = params_dict["pretrain"]
    d["horizon_forecast"].update(weight=horizon, horizons_hours=HORIZONS)
    d["span_mask"].update(weight=span, **span_overrides)
    return params_from_dict(params_dict).pretrain


def _full_batch(seed: int, b: int = 3, s: int = 10, e: int = 5):
    """random_batch with every set real (so positions after t exist for every stay)."""
    batch = random_batch(seed, b=b, s=s, e=e)
    batch["set_mask"][:] = True
    batch["event_mask"][:, :, 0] = True
    batch["codes"] = torch.where(batch["event_mask"], batch["codes"].clamp(min=1), PAD_CODE)
    g = torch.Generator().manual_seed(seed)
    batch["values"] = torch.where(batch["event_mask"], torch.randn(batch["values"].shape, generator=g), 0.0)
    batch["set_times"] = torch.cumsum(0.1 + 3 * torch.rand(b, s, generator=g), dim=1)
    return batch


# ------------------------------------------------------------------------------------------ C1


def test_horizon_targets_match_a_loop_reference():
    batch = random_batch(1, b=5, s=9, e=4)
    mean, count = horizon_targets(batch, VOCAB, HORIZONS)
    assert mean.shape == count.shape == (5, 9, 2, VOCAB)
    for b in range(5):
        for t in range(9):
            for h, delta in enumerate(HORIZONS):
                for v in range(VOCAB):
                    vals = [
                        float(batch["values"][b, u, e])
                        for u in range(9) for e in range(4)
                        if batch["set_mask"][b, t] and batch["set_mask"][b, u] and batch["event_mask"][b, u, e]
                        and v != PAD_CODE and int(batch["codes"][b, u, e]) == v
                        and batch["set_times"][b, t] < batch["set_times"][b, u] <= batch["set_times"][b, t] + delta
                    ]
                    assert count[b, t, h, v] == len(vals)
                    expected = sum(vals) / len(vals) if vals else 0.0
                    assert float(mean[b, t, h, v]) == pytest.approx(expected, abs=1e-5)
    assert count.sum() > 0  # the reference is not vacuous


@pytest.mark.parametrize("t", [0, 3, 6])
def test_horizon_forecast_is_causal(cfg, params_dict, t):
    """h_t sees sets <= t only, and no target or loss term at t depends on a set after t + the longest horizon;
    set t's own values are never a target at t."""
    model = SeqSetVAEPretrain(cfg, _params(params_dict, horizon=1.0)).eval()
    batch = _full_batch(2)
    batch["set_times"] = torch.arange(10.0).expand(3, -1) * 4.0  # one set every 4 h: 12 h reaches 3 sets ahead
    g = torch.Generator().manual_seed(3)

    def changed(mask):
        out = dict(batch)
        out["values"] = torch.where(mask[..., None], batch["values"] + 3 + torch.randn(batch["values"].shape, generator=g),
                                    batch["values"])
        return out

    after = torch.zeros(3, 10, dtype=torch.bool)
    after[:, t + 1 :] = True
    beyond = torch.zeros_like(after)
    beyond[:, t + 4 :] = True  # time > time_t + 12 h
    inside = torch.zeros_like(after)
    inside[:, t + 1] = True  # time_t + 4 h: inside both horizons
    own = torch.zeros_like(after)
    own[:, t] = True

    def cells(b):
        enc = model.encode(b)
        nll, scored = horizon_nll_cells(model.objectives.horizon, enc.context, b, VOCAB, HORIZONS)
        return enc.context, nll, horizon_targets(b, VOCAB, HORIZONS)[0]

    h0, nll0, tgt0 = cells(batch)
    h1, _, _ = cells(changed(after))
    torch.testing.assert_close(h1[:, : t + 1], h0[:, : t + 1], rtol=0, atol=1e-6)  # h_t: sets <= t only
    assert not torch.allclose(h1[:, t + 1 :], h0[:, t + 1 :], atol=1e-4)
    _, nll2, tgt2 = cells(changed(beyond))
    assert torch.equal(tgt2[:, : t + 1], tgt0[:, : t + 1])
    torch.testing.assert_close(nll2[:, : t + 1], nll0[:, : t + 1], rtol=0, atol=1e-6)
    _, _, tgt3 = cells(changed(inside))
    assert not torch.equal(tgt3[:, t], tgt0[:, t])  # a value inside the horizon is a target at t
    _, _, tgt4 = cells(changed(own))
    assert torch.equal(tgt4[:, t], tgt0[:, t])  # set t itself is never a target at t (no copy path)


def test_horizon_loss_is_the_mean_nll_over_scored_cells(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _params(params_dict, horizon=0.7)).eval()
    batch = random_batch(4, b=4, s=8)
    out = model.loss(batch, 100)
    nll, scored = horizon_nll_cells(model.objectives.horizon, model.encode(batch).context, batch, VOCAB, HORIZONS)
    assert scored.sum() > 0 and not scored[..., PAD_CODE].any()
    assert not scored[~batch["set_mask"]].any()
    torch.testing.assert_close(out["horizon"], nll.sum() / scored.sum())
    torch.testing.assert_close(
        out["loss"], out["recon"] + out["beta"] * out["kl_loss"] + 0.7 * out["horizon"], rtol=1e-6, atol=1e-6
    )
    assert out["span"] == 0


# ------------------------------------------------------------------------------------------ C2


def test_span_choice_share_lengths_and_determinism():
    u = stay_variable_uniforms(0, -1, torch.arange(4000), 50, 3)
    assert u.shape == (4000, 50, 3) and (u >= 0).all() and (u < 1).all()
    assert float((u[..., 0] < 0.25).double().mean()) == pytest.approx(0.25, abs=0.01)
    for k in range(3):  # the streams are not copies of each other
        assert abs(torch.corrcoef(torch.stack([u[..., k].flatten(), u[..., (k + 1) % 3].flatten()]))[0, 1]) < 0.02
    assert torch.equal(u, stay_variable_uniforms(0, -1, torch.arange(4000), 50, 3))  # deterministic
    assert not torch.equal(u, stay_variable_uniforms(0, 7, torch.arange(4000), 50, 3))  # new at each step
    assert not torch.equal(u, stay_variable_uniforms(1, -1, torch.arange(4000), 50, 3))  # seeded


def test_hidden_spans_are_spans_of_chosen_pairs_and_do_not_depend_on_the_batch():
    batch = _full_batch(5, b=6, s=30, e=5)  # ~45 h stays
    view = hide_spans(batch, VOCAB, 0.5, [6.0, 12.0], seed=0, step=-1)
    hid = view.hidden
    assert hid.any() and not (hid & ~batch["event_mask"]).any()
    for b in range(6):
        for v in range(1, VOCAB):
            sel = hid[b] & (batch["codes"][b] == v)
            if sel.any():
                times = batch["set_times"][b][sel.any(dim=1)]
                assert float(times.max() - times.min()) < 12.0
                # every event of v between the first and last hidden one is hidden: one contiguous span
                inside = (batch["codes"][b] == v) & batch["event_mask"][b]
                inside &= ((batch["set_times"][b] >= times.min()) & (batch["set_times"][b] <= times.max()))[:, None]
                assert torch.equal(inside, sel)
    # The same stay gets the same span alone as in its batch (eval: a function of the stay only).
    alone = {k: v[2:3] for k, v in batch.items()}
    assert torch.equal(hide_spans(alone, VOCAB, 0.5, [6.0, 12.0], seed=0, step=-1).hidden[0], hid[2])


def test_visible_batch_keeps_the_contract():
    batch = _full_batch(6, b=4, s=20, e=3)
    batch["codes"][:, :, 1:] = batch["codes"][:, :, :1]  # one variable per set, so hiding empties sets
    view = hide_spans(batch, VOCAB, 0.6, [6.0, 24.0], seed=0, step=3)
    vis = view.visible
    n = vis["set_mask"].sum(dim=1)
    assert (n < batch["set_mask"].sum(dim=1)).any()  # some sets were emptied and dropped
    assert torch.equal(vis["set_mask"], torch.arange(20)[None] < n[:, None])  # left-aligned
    assert (vis["event_mask"].any(dim=2) == vis["set_mask"]).all()  # every real set has an event
    assert (vis["set_times"][:, 1:] >= vis["set_times"][:, :-1])[vis["set_mask"][:, 1:]].all()  # time order
    assert (vis["codes"][~vis["event_mask"]] == PAD_CODE).all() and (vis["values"][~vis["event_mask"]] == 0).all()
    assert int(vis["event_mask"].sum()) == int(batch["event_mask"].sum() - view.hidden.sum())
    # the context of each original set is the last visible set at or before it
    for b in range(4):
        for s in range(20):
            i = int(view.context_index[b, s])
            earlier = vis["set_mask"][b] & (vis["set_times"][b] <= batch["set_times"][b, s])
            assert i == int(earlier.sum()) - 1


def test_hidden_events_never_reach_the_encoder(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _params(params_dict, horizon=1.0, span=1.0, span_hours=[3.0, 8.0])).eval()
    batch = _full_batch(7, b=4, s=12)
    view = model.objectives.hide(batch, 0, training=False)[1]
    assert view.hidden.any()
    other = dict(batch)
    other["values"] = torch.where(view.hidden, batch["values"] + 5.0, batch["values"])
    view2 = model.objectives.hide(other, 0, training=False)[1]
    assert torch.equal(view2.hidden, view.hidden)
    for key in ("codes", "values", "event_mask", "set_mask", "set_times"):
        assert torch.equal(view2.visible[key], view.visible[key]), key
    enc, enc2 = model.encode(view.visible), model.encode(view2.visible)
    assert torch.equal(enc.context, enc2.context) and torch.equal(enc.mu, enc2.mu)
    out, out2 = model.loss(batch, 10), model.loss(other, 10)
    for key in ("recon", "kl", "horizon"):  # everything but the span term is blind to the hidden values
        assert torch.equal(out[key], out2[key]), key
    assert out2["span"] > out["span"]  # the span term scores them


def test_span_loss_covers_exactly_the_hidden_events(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _params(params_dict, span=0.5, span_hours=[3.0, 8.0])).eval()
    batch = _full_batch(8, b=4, s=12)
    view = model.objectives.hide(batch, 0, training=False)[1]
    enc = model.encode(view.visible)
    pred = predict_hidden(model.objectives.span, model.transformer.start, enc.context, batch, view)
    assert torch.equal(pred.values, batch["values"][view.hidden])
    assert torch.equal(pred.codes, batch["codes"][view.hidden])
    nll = 0.5 * (torch.log(torch.tensor(2 * torch.pi)) + pred.logvar + (pred.values - pred.mean) ** 2 / pred.logvar.exp())
    out = model.loss(batch, 10)
    torch.testing.assert_close(out["span"], nll.mean())
    torch.testing.assert_close(out["loss"], out["recon"] + out["beta"] * out["kl_loss"] + 0.5 * out["span"])
    # a visible event's value changes the context but is not scored: the number of scored events is fixed
    assert pred.values.numel() == int(view.hidden.sum()) > 0


def test_span_mask_is_seeded_in_training_and_fixed_in_eval(cfg, params_dict):
    model = SeqSetVAEPretrain(cfg, _params(params_dict, span=1.0))
    batch = _full_batch(9, b=4, s=30)
    hid = lambda step, training: model.objectives.hide(batch, step, training)[1].hidden  # noqa: E731
    assert torch.equal(hid(0, False), hid(50, False))  # eval: one mask per stay
    assert torch.equal(hid(3, True), hid(3, True))  # train: a function of (seed, step)
    assert not torch.equal(hid(3, True), hid(4, True))


# ------------------------------------------------------------------------------------------ switches


def test_off_by_default_adds_no_parameter_and_no_loss(cfg, params_dict):
    params = params_from_dict(params_dict).pretrain
    assert params.horizon_forecast.weight == 0 and params.span_mask.weight == 0
    model = SeqSetVAEPretrain(cfg, params).eval()
    assert not [n for n, _ in model.named_parameters() if n.startswith("objectives.")]
    assert model.objectives.enabled == ()
    batch = random_batch(10)
    out = model.loss(batch, 100)
    assert out["horizon"] == 0 and out["span"] == 0
    torch.testing.assert_close(out["loss"], out["recon"] + out["beta"] * out["kl_loss"])
    enc = model.encode(batch)  # the caller's encoding is still used when spans are off
    torch.testing.assert_close(model.loss(batch, 100, enc=enc)["loss"], out["loss"])


def test_every_parameter_is_trained_with_both_objectives_and_the_old_forecast(cfg, params_dict):
    params_dict["pretrain"]["forecast_weight"] = 0.1
    model = SeqSetVAEPretrain(cfg, _params(params_dict, horizon=1.0, span=1.0, span_hours=[3.0, 8.0])).train()
    assert model.objectives.enabled == ("horizon", "span")
    out = model.loss(_full_batch(11, b=4, s=12), 10)
    assert out["forecast"] > 0 and out["horizon"] > 0 and out["span"] > 0
    out["loss"].backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize(
    "section, key, value",
    [("span_mask", "share", 1.5), ("span_mask", "span_hours", [6.0]), ("horizon_forecast", "horizons_hours", []),
     ("horizon_forecast", "weight", -1.0)],
)
def test_params_are_validated(params_dict, section, key, value):
    params_dict["pretrain"][section][key] = value
    with pytest.raises(ParamsError):
        params_from_dict(params_dict)


def test_a_finetune_model_loads_a_backbone_pretrained_with_both_objectives(cfg, params_dict):
    from seqsetvae.models.finetune import SeqSetVAE

    params_dict["finetune"].update(head_hidden=8)
    params_dict["ablation"]["run"] = []
    pre = SeqSetVAEPretrain(cfg, _params(params_dict, horizon=1.0, span=1.0))
    ft = SeqSetVAE(cfg, params_from_dict(params_dict).finetune)
    report = ft.load_pretrained(pre.state_dict())
    heads = [k for k in pre.state_dict() if k.startswith("objectives.")]
    assert heads and set(heads) <= set(report.unexpected) and report.missing == []
