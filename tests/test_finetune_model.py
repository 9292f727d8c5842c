"""SeqSetVAE (finetune): checked weight loading, frozen backbone, fusion, pooling, imbalance losses."""

from __future__ import annotations

import copy
import io
import logging

import numpy as np
import pytest
import torch

from seqsetvae.config import ParamsError, params_from_dict
from seqsetvae.models.finetune import PretrainedWeightsError, SeqSetVAE, TemporalPooling, fuse
from seqsetvae.models.losses import binary_loss
from seqsetvae.models.observation import observation_vector
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
from tests.test_setvae import random_batch, seeded_single_thread, tiny_model_config  # noqa: F401 (fixture)


def _build(params_dict, **finetune) -> tuple[SeqSetVAEPretrain, SeqSetVAE]:
    cfg = tiny_model_config(params_dict)
    params_dict["finetune"].update(head_hidden=8, **finetune)
    params_dict["ablation"]["run"] = []  # the default no_backbone control needs hand-made inputs; not these tests'
    params = params_from_dict(params_dict)
    return SeqSetVAEPretrain(cfg, params.pretrain), SeqSetVAE(cfg, params.finetune)


# ------------------------------------------------------------------------------------------ loading


def test_every_backbone_key_is_mapped_from_a_pretrain_state_dict(params_dict, caplog):
    pre, ft = _build(params_dict)
    mapping = ft.key_map()
    backbone_keys = {k for k in ft.state_dict() if k.split(".")[0] in ("encoder", "transformer")}
    assert set(mapping) == backbone_keys  # 100 % of the backbone
    with caplog.at_level(logging.INFO, logger="seqsetvae.models.finetune"):
        report = ft.load_pretrained(pre.state_dict())
    assert report.loaded == len(backbone_keys) and report.missing == []
    pre_only = [k for k in pre.state_dict() if k.startswith("setvae.decoder.")]
    assert report.unexpected == sorted(pre_only) and pre_only
    assert "SeqSetVAE" in caplog.text and f"loaded {len(backbone_keys)}" in caplog.text
    assert f"unexpected {len(pre_only)}" in caplog.text
    pre_sd, ft_sd = pre.state_dict(), ft.state_dict()
    for dst, src in mapping.items():
        assert torch.equal(ft_sd[dst], pre_sd[src]), dst


def test_loading_a_state_dict_missing_a_backbone_key_fails_naming_it(params_dict):
    pre, ft = _build(params_dict)
    sd = pre.state_dict()
    del sd["transformer.layers.layers.1.linear2.weight"]
    with pytest.raises(PretrainedWeightsError, match=r"transformer\.layers\.layers\.1\.linear2\.weight"):
        ft.load_pretrained(sd)


def test_loading_a_tensor_of_the_wrong_shape_fails_naming_it(params_dict):
    pre, ft = _build(params_dict)
    sd = pre.state_dict()
    sd["setvae.encoder.to_latent.bias"] = torch.zeros(3)
    with pytest.raises(PretrainedWeightsError, match=r"setvae\.encoder\.to_latent\.bias"):
        ft.load_pretrained(sd)


def test_source_prefix_is_stripped(params_dict):
    pre, ft = _build(params_dict)
    sd = {f"model.{k}": v for k, v in pre.state_dict().items()}
    assert ft.load_pretrained(sd, source_prefix="model.").loaded == len(ft.key_map())


def test_pretrained_backbone_gives_the_pretrain_encoding(params_dict):
    pre, ft = _build(params_dict)
    ft.load_pretrained(pre.state_dict())
    pre.eval(), ft.eval()
    b = random_batch(3)
    feats, enc = ft.backbone_features(b), pre.encode(b)
    assert torch.equal(feats["mu"], enc.mu) and torch.equal(feats["context"], enc.context)


# ------------------------------------------------------------------------------------------ freezing


def test_frozen_backbone_is_bit_identical_after_training_and_stays_in_eval(params_dict):
    pre, ft = _build(params_dict)
    ft.load_pretrained(pre.state_dict())
    ft.freeze_backbone()
    ft.train()  # must not wake the backbone up
    backbone_before = {k: v.clone() for k, v in ft.state_dict().items() if k in ft.key_map()}
    head_before = {
        n: p.detach().clone() for n, p in ft.named_parameters() if n.split(".")[0] not in ("encoder", "transformer")
    }
    opt = torch.optim.AdamW(ft.parameter_groups())
    b = random_batch(4)
    for _ in range(3):
        assert all(not m.training for name in ("encoder", "transformer") for m in getattr(ft, name).modules())
        assert ft.head.training and ft.pooling.training
        opt.zero_grad()
        ft.loss(b, pos_weight=3.0)["loss"].backward()
        opt.step()
        ft.train()
    for k, v in ft.state_dict().items():
        if k in backbone_before:
            assert torch.equal(v, backbone_before[k]), k
    assert all(not p.requires_grad for n, p in ft.named_parameters() if n in ft.key_map())
    changed = [n for n, p in ft.named_parameters() if n in head_before and not torch.equal(p, head_before[n])]
    assert set(changed) == set(head_before)
    ft.eval()
    assert not ft.head.training


def test_unfreeze_transformer_releases_only_the_transformer(params_dict):
    _, ft = _build(params_dict, unfreeze="transformer")
    ft.freeze_backbone()
    ft.train()
    assert not ft.encoder.training and ft.transformer.training
    assert all(not p.requires_grad for p in ft.encoder.parameters())
    assert all(p.requires_grad for p in ft.transformer.parameters())
    lrs = sorted(g["lr"] for g in ft.parameter_groups())
    assert lrs == sorted([params_dict["finetune"]["lr"], params_dict["finetune"]["backbone_lr"]])


def test_aux_losses_need_an_unfrozen_backbone(params_dict):
    with pytest.raises(ParamsError, match="finetune.aux_recon_weight"):
        _build(params_dict, aux_recon_weight=0.1, unfreeze="none")
    with pytest.raises(ParamsError, match="finetune.aux_kl_weight"):
        _build(params_dict, aux_kl_weight=0.1, unfreeze="transformer")


def test_aux_recon_maps_the_decoder_and_adds_its_term(params_dict):
    pre, ft = _build(params_dict, aux_recon_weight=0.5, aux_kl_weight=0.2, unfreeze="all")
    report = ft.load_pretrained(pre.state_dict())
    assert not [k for k in report.unexpected if k.startswith("setvae.decoder.")]
    ft.freeze_backbone()
    out = ft.loss(random_batch(5), pos_weight=2.0)
    assert out["aux_recon"] > 0 and out["aux_kl"] > 0
    torch.testing.assert_close(out["loss"], out["classification"] + 0.5 * out["aux_recon"] + 0.2 * out["aux_kl"])


# ------------------------------------------------------------------------------------------ features, head


@pytest.mark.parametrize(("fusion", "inputs"), [("mu_only", "backbone"), ("simple_concat", "backbone"),
                                               ("enhanced_concat", "backbone"),
                                               ("enhanced_concat", "backbone_and_observation")])
def test_cached_backbone_features_give_the_same_logits(params_dict, fusion, inputs):
    pre, ft = _build(params_dict, fusion=fusion, inputs=inputs)
    ft.load_pretrained(pre.state_dict())
    ft.freeze_backbone()
    ft.eval()
    b = random_batch(6)
    with torch.no_grad():
        cached = ft.backbone_features(b)
    logits = ft(b)
    assert logits.shape == (b["labels"].shape[0],) and torch.isfinite(logits).all()
    assert torch.equal(ft.head_logits(cached), logits)


def test_fusion_features():
    mu, logvar = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    sigma = torch.exp(0.5 * logvar)
    assert torch.equal(fuse(mu, logvar, "mu_only"), mu)
    torch.testing.assert_close(fuse(mu, logvar, "simple_concat"), torch.cat([mu, sigma], -1))
    enhanced = fuse(mu, logvar, "enhanced_concat")
    assert enhanced.shape == (2, 3, 10)
    # per-dimension averages, not sums: on the scale of one sigma_d^2 and |mu_d| whatever the latent size
    torch.testing.assert_close(enhanced[..., 8], logvar.exp().mean(-1))
    torch.testing.assert_close(enhanced[..., 9], mu.norm(dim=-1) / 2.0)
    wide = fuse(mu.repeat(1, 1, 16), logvar.repeat(1, 1, 16), "enhanced_concat")
    torch.testing.assert_close(wide[..., -2:], enhanced[..., -2:])


def test_window_pooling_uses_the_last_hours_by_set_time():
    pool = TemporalPooling(dim=1, last=True, attention=False, windows_hours=[2.0, 100.0], hidden=4)
    f = torch.tensor([[1.0, 5.0, 3.0, 7.0], [4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])[..., None]
    times = torch.tensor([[0.0, 1.0, 9.0, 10.5], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = pool(f, mask, times)  # [last, mean_2h, mean_100h, max_2h, max_100h]
    torch.testing.assert_close(out[0], torch.tensor([7.0, 5.0, 4.0, 7.0, 7.0]))  # 2 h: sets at 9 and 10.5
    torch.testing.assert_close(out[1], torch.tensor([4.0, 4.0, 4.0, 4.0, 4.0]))
    assert torch.equal(out[2], torch.zeros(5))  # a patient with no set pools to zeros, not NaN


def test_attention_pooling_ignores_padded_sets():
    pool = TemporalPooling(dim=3, last=False, attention=True, windows_hours=[], hidden=4).eval()
    f, times = torch.randn(2, 4, 3), torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = pool(f, mask, times)
    f2 = f.clone()
    f2[0, 2:] = 100.0
    torch.testing.assert_close(pool(f2, mask, times), out)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros(3))


def test_imbalance_losses():
    logits, labels = torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    weighted = torch.where(labels == 1, 4.0 * bce, bce).mean()
    torch.testing.assert_close(binary_loss(logits, labels, "pos_weight", 4.0, 2.0), weighted)
    torch.testing.assert_close(binary_loss(logits, labels, "none", None, 2.0), bce.mean())
    p_true = torch.where(labels == 1, torch.sigmoid(logits), 1 - torch.sigmoid(logits))
    torch.testing.assert_close(binary_loss(logits, labels, "focal", None, 2.0), ((1 - p_true) ** 2 * bce).mean())
    with pytest.raises(ValueError, match="pos_weight"):
        binary_loss(logits, labels, "pos_weight", None, 2.0)


def test_finetune_checkpoint_round_trip_with_weights_only(params_dict):
    pre, ft = _build(params_dict)
    ft.load_pretrained(pre.state_dict())
    ft.eval()
    buf = io.BytesIO()
    torch.save({"config": ft.cfg.to_dict(), "state_dict": ft.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    clone = SeqSetVAE(ModelConfig.from_dict(ckpt["config"]), ft.ft)
    clone.load_state_dict(ckpt["state_dict"])
    clone.eval()
    b = random_batch(7)
    assert torch.equal(ft(b), clone(b))


def test_observation_state_reaches_the_head_standardised_with_train_statistics(params_dict):
    _, ft = _build(params_dict, inputs="backbone_and_observation")
    ft.freeze_backbone()
    ft.eval()
    b = random_batch(6)
    obs = ft.observation(b)
    assert obs.shape == (b["labels"].shape[0], ft.observation_dim) and ft.observation_dim > 0
    before = ft(b)
    ft.set_observation_scaler(obs)
    assert not torch.allclose(before, ft(b))  # the scaler is applied
    torch.testing.assert_close(ft.observation_mean, obs.mean(0))
    # the scaler travels with the weights (buffers in the state dict)
    assert {"observation_mean", "observation_scale"} <= set(ft.state_dict())


def test_observation_only_head_ignores_the_backbone(params_dict):
    """finetune.inputs observation: the no-backbone control; backbone weights cannot change its output."""
    pre, ft = _build(params_dict, inputs="observation")
    ft.freeze_backbone()
    ft.eval()
    b = random_batch(6)
    before = ft(b)
    ft.load_pretrained(pre.state_dict())  # other backbone weights
    assert torch.equal(before, ft(b))
    assert ft.head[0].in_features == ft.observation_dim

    # ... and the backbone does not even run: its features are zero-width, so a cache of them costs nothing
    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran for an observation-only head")

    ft.encoder.forward = no_backbone
    feats = ft.backbone_features(b)
    assert feats["mu"].shape[-1] == feats["context"].shape[-1] == 0
    assert torch.equal(ft.head_logits(feats), before)


def test_backbone_projection_is_a_trained_bottleneck_before_pooling(params_dict):
    """finetune.backbone_projection k: each set's features are mapped to k dims before pooling, so the head
    sees k per pooled view; the map is head (trained, in the head's optimiser group), not backbone."""
    pre, ft = _build(params_dict, inputs="backbone_and_observation", backbone_projection=8)
    ft.load_pretrained(pre.state_dict())
    ft.freeze_backbone()
    views = int(ft.pooling.last) + int(ft.pooling.attention is not None) + 2 * ft.pooling.windows.numel()
    assert ft.head[0].in_features == 8 * views + ft.observation_dim
    head_params = {id(p) for p in ft.parameter_groups()[0]["params"]}
    assert all(p.requires_grad and id(p) in head_params for p in ft.projection.parameters())
    b = random_batch(6)
    ft.head_loss(ft.backbone_features(b), b["labels"], pos_weight=2.0)["loss"].backward()
    assert ft.projection.weight.grad is not None and ft.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for m in ft.backbone().values() for p in m.parameters())
    _, plain = _build(params_dict, inputs="backbone_and_observation", backbone_projection=0)
    assert plain.projection is None and plain.head[0].in_features == plain.pooling.out_dim + plain.observation_dim


# ------------------------------------------------------------------------------------------ observation width


def _observation_model(params_dict, vocab: int, k: int, inputs: str = "observation") -> SeqSetVAE:
    cfg = tiny_model_config(params_dict, vocab)
    params_dict["finetune"].update(head_hidden=8, inputs=inputs, observation_codes=k)
    params_dict["ablation"]["run"] = []
    return SeqSetVAE(cfg, params_from_dict(params_dict).finetune)


def test_the_default_observation_width_leaves_a_small_vocabulary_as_it_was(params_dict):
    """params.yaml's finetune.observation_codes is above P12's and the demo's vocabularies (38 codes): every
    code, no code buffer, the same state dict, inputs and head as before the key existed."""
    k = params_dict["finetune"]["observation_codes"]
    assert k == 0 or k >= 38
    _, ft = _build(params_dict, inputs="backbone_and_observation")
    assert not ft.observation_subset and ft.observation_dim == 6 * (ft.cfg.vocab_size - 1)
    assert not any("observation_codes" in key for key in ft.state_dict())
    b = random_batch(3)
    assert torch.equal(ft.observation(b), observation_vector(b, ft.cfg.vocab_size))


def test_observation_codes_bound_the_state_and_travel_with_the_weights(params_dict):
    ft = _observation_model(params_dict, vocab=40, k=5, inputs="backbone_and_observation")
    assert ft.observation_subset and ft.observation_dim == 30 and ft.observation_mean.shape == (30,)
    b = random_batch(4, vocab=40)
    with pytest.raises(RuntimeError, match="set_observation_codes"):
        ft.observation(b)  # codes not chosen yet: refused, never a silent first-K
    for bad in ([1, 2, 3], [0, 1, 2, 3, 4], [1, 2, 3, 4, 40], [5, 4, 3, 2, 1]):
        with pytest.raises(ValueError, match="set_observation_codes"):
            ft.set_observation_codes(bad)
    codes = torch.tensor([2, 3, 11, 20, 39])
    ft.set_observation_codes(codes)
    assert torch.equal(ft.observation(b), observation_vector(b, 40, codes))
    ft.set_observation_scaler(ft.observation(b))
    clone = _observation_model(params_dict, vocab=40, k=5, inputs="backbone_and_observation")
    clone.load_state_dict(ft.state_dict())  # the codes are a buffer of the checkpoint
    assert torch.equal(clone.observation_codes, codes)
    ft.eval(), clone.eval()
    assert torch.equal(ft(b), clone(b))


def test_the_cached_observation_state_per_stay_is_bounded_by_k_not_by_the_vocabulary(params_dict, monkeypatch):
    """FeatureCache.build keeps [P, 6 K] float32, the same bytes per stay at vocabularies of 200 and 20,000,
    in one preallocated tensor (no concatenation copy)."""
    from torch.utils.data import DataLoader

    from seqsetvae.data.datamodule import PatientIndex
    from seqsetvae.training import finetune_module
    from seqsetvae.training.finetune_module import FeatureCache

    result = finetune_module._Rows.result
    def preallocated(self):
        assert self.buf is not None and not self.parts  # filled in place, never concatenated
        return result(self)
    monkeypatch.setattr(finetune_module._Rows, "result", preallocated)

    k = 16
    per_stay = {}
    for vocab in (200, 20_000):
        ft = _observation_model(copy.deepcopy(params_dict), vocab=vocab, k=k)
        ft.set_observation_codes(torch.arange(1, k + 1) * (vocab // (k + 1)))
        ft.freeze_backbone()
        ft.eval()
        batches = [random_batch(i, b=5, vocab=vocab) for i in range(3)]
        # As the data module's loaders: a dataset of 15 patients, batches of patient indices.
        loader = DataLoader(PatientIndex(15), batch_sampler=[[5 * i + j for j in range(5)] for i in range(3)],
                            collate_fn=lambda idx: batches[idx[0] // 5])
        cache = FeatureCache.build(ft, loader, torch.device("cpu"))
        obs = cache.observation
        assert obs.shape == (15, 6 * k) and obs.dtype == torch.float32
        assert obs.untyped_storage().nbytes() == 15 * 6 * k * 4  # exactly the result: preallocated, no slack
        per_stay[vocab] = obs.untyped_storage().nbytes() // 15
        torch.testing.assert_close(obs[:5], ft.observation(batches[0]))
    assert per_stay[200] == per_stay[20_000] == 6 * k * 4


def test_cache_rows_fall_back_to_concatenation_when_the_count_is_unknown_or_wrong():
    from seqsetvae.training.finetune_module import _Rows

    parts = [torch.randn(n, 3) for n in (4, 2, 5)]
    for capacity in (None, 5, 11, 20):
        rows = _Rows(capacity)
        for x in parts:
            rows.append(x)
        assert torch.equal(rows.result(), torch.cat(parts)), capacity


# ------------------------------------------------------------------------------------------ the cache on disk


def test_disk_rows_read_back_the_rows_written_by_slice_and_by_any_index(tmp_path):
    """DiskRows gives exactly the rows written: slices, index tensors of any shape (repeats, out of order,
    the collator's padded [B, S] matrices), arrays; a bad index names the file."""
    from seqsetvae.training.finetune_module import DiskRowsWriter

    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(n, 3, generator=g) for n in (5, 1, 7, 4)]
    whole = torch.cat(blocks)
    writer = DiskRowsWriter(tmp_path / "x.bin")
    for b in blocks:
        writer.append(b)
    rows = writer.finish((3,), torch.float32)
    assert rows.shape == (17, 3) and rows.dim() == 2 and len(rows) == 17
    assert (tmp_path / "x.bin").stat().st_size == 17 * 3 * 4
    assert torch.equal(rows[:], whole) and torch.equal(rows[4:11], whole[4:11]) and rows[20:].shape == (0, 3)
    idx = torch.tensor([[16, 0, 0], [3, 4, 5], [9, 2, 16]])
    assert torch.equal(rows[idx], whole[idx])
    assert torch.equal(rows[np.array([2, 7, 8])], whole[[2, 7, 8]])
    assert torch.equal(torch.cat(list(rows.chunks(5))), whole)
    with pytest.raises(IndexError, match="x.bin"):
        rows[torch.tensor([17])]
    with pytest.raises(ValueError, match="y.bin"):
        writer2 = DiskRowsWriter(tmp_path / "y.bin")
        writer2.append(torch.zeros(2, 3))
        writer2.append(torch.zeros(2, 4))
    times = DiskRowsWriter(tmp_path / "t.bin")
    times.append(torch.arange(4.0))
    t = times.finish((), torch.float32)
    assert torch.equal(t[torch.tensor([[3, 1], [0, 0]])], torch.tensor([[3.0, 1.0], [0.0, 0.0]]))
    empty = DiskRowsWriter(tmp_path / "e.bin")
    empty.append(torch.zeros(4, 0))  # a head without the observation state: zero-width rows
    e = empty.finish((0,), torch.float32)
    assert e[torch.tensor([1, 3])].shape == (2, 0)


@pytest.mark.parametrize("inputs", ["backbone_and_observation", "backbone"])
def test_the_cache_on_disk_holds_the_in_memory_cache_bit_for_bit(params_dict, tmp_path, inputs):
    """FeatureCache.build with `spill` writes the same rows as in memory: the same features, observation
    state, offsets and keys; the same collated batches; the same label subsample; the same scaler."""
    from torch.utils.data import DataLoader

    from seqsetvae.config import LoaderParams
    from seqsetvae.data.datamodule import PatientIndex
    from seqsetvae.training.finetune_module import CachedFeatureCollator, DiskRows, FeatureCache

    ft = _observation_model(copy.deepcopy(params_dict), vocab=40, k=5, inputs=inputs)
    if ft.observation_subset:
        ft.set_observation_codes(torch.tensor([2, 5, 9, 20, 33]))
    ft.freeze_backbone()
    ft.eval()
    batches = [random_batch(i, b=5, vocab=40) for i in range(3)]
    for i, b in enumerate(batches):
        b["subject_id"] = torch.arange(5) + 5 * i
    loader = DataLoader(PatientIndex(15), batch_sampler=[[5 * i + j for j in range(5)] for i in range(3)],
                        collate_fn=lambda idx: batches[idx[0] // 5])
    mem = FeatureCache.build(ft, loader, torch.device("cpu"))
    disk = FeatureCache.build(ft, loader, torch.device("cpu"), spill=tmp_path)
    assert disk.on_disk() and not mem.on_disk()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["mu.bin", "logvar.bin", "context.bin", "set_times.bin", "observation.bin"])
    assert isinstance(disk.features["mu"], DiskRows) and np.array_equal(disk.offsets, mem.offsets)
    for k in ("mu", "logvar", "context"):
        assert torch.equal(disk.features[k][:], mem.features[k])
    assert torch.equal(disk.set_times[:], mem.set_times) and torch.equal(disk.observation[:], mem.observation)
    for key in ("labels", "subject_ids", "prediction_times"):
        assert torch.equal(getattr(disk, key), getattr(mem, key))
    for idx in ([0, 1, 2], [14, 3, 7, 0], list(range(15))):
        a, b = CachedFeatureCollator(mem)(idx), CachedFeatureCollator(disk)(idx)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keep = np.array([1, 4, 5, 11, 14])
    sm, sd = mem.subset(keep), disk.subset(keep, name="sub")
    assert sd.on_disk() and (tmp_path / "mu.sub.bin").is_file() and np.array_equal(sm.offsets, sd.offsets)
    assert torch.equal(sd.features["context"][:], sm.features["context"]) and torch.equal(sd.observation[:], sm.observation)
    lp = LoaderParams(**{**params_dict["loader"], "batch_size": 2})
    for (x, y) in zip(sm.loader(lp, shuffle=True), sd.loader(lp, shuffle=True), strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    if ft.observation_dim:
        ft.set_observation_scaler(mem.observation)
        want = ft.observation_mean.clone(), ft.observation_scale.clone()
        ft.set_observation_scaler(disk.observation)
        assert torch.equal(ft.observation_mean, want[0]) and torch.equal(ft.observation_scale, want[1])
    disk.close()
