"""Training stages end to end on a tiny synthetic cohort: pretrain, resume, finetune, the train command.

One processed fold and one pretrain run are built per module (fixtures) and shared by the tests; sizes and
epochs are small so the module stays quick (its time: docs/testing.md), yet large enough that pretraining
measurably lowers the reconstruction loss and the finetuned head separates the synthetic label.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from seqsetvae import cli
from seqsetvae.config import ParamsError, params_from_dict
from seqsetvae.data.datamodule import SetSequenceDataModule
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import make_splits
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.errors import DataError
from seqsetvae.models.finetune import SeqSetVAE
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
from seqsetvae.stages.finetune import finetune
from seqsetvae.stages.pretrain import pretrain
from seqsetvae.training.checkpoints import BLOCK, best_path, last_path, load_checkpoint, model_state_dict, project_block
from seqsetvae.training.finetune_module import build_from_pretrained
from seqsetvae.training.pretrain_module import evaluate_pretrain
from seqsetvae.training.rng import seed_everything
from seqsetvae.training.trainer import AtomicCheckpointIO
from tests.tiny import TRAINING, tiny_params

pytestmark = pytest.mark.usefixtures("restore_torch_threads")  # (conftest.py)

PRETRAIN_EPOCHS = TRAINING["pretrain"]["max_epochs"]


def tiny(raw: dict) -> dict:
    """The repository params, shrunk (tests/tiny.py): small cohort and model, few epochs, one thread."""
    return tiny_params(raw, TRAINING)


@pytest.fixture(scope="module")
def raw_params(base_params_dict) -> dict:
    return tiny(base_params_dict)


@pytest.fixture(scope="module")
def processed(tmp_path_factory, raw_params) -> Path:
    params = params_from_dict(raw_params)
    root = tmp_path_factory.mktemp("training")
    result = ingest_synthetic(params.data.synthetic)
    splits, _ = make_splits(result.subjects, result.labels, params.split)
    preprocess(result.events, result.subjects, result.labels, splits, params.preprocess, root / "processed")
    return root / "processed"


@pytest.fixture(scope="module")
def pretrained(processed, raw_params) -> dict:
    """One pretrain run (the stage's code path), plus the untrained model's val metrics for comparison."""
    params = params_from_dict(raw_params)
    root = processed.parent / "pretrain"
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    seed_everything(params.pretrain.seed)
    untrained = SeqSetVAEPretrain(ModelConfig.from_params(params.model, dm.vocab_size), params.pretrain)
    before = evaluate_pretrain(untrained, dm.dataloader("val", shuffle=False), torch.device("cpu"))
    metrics = pretrain(params, processed, 0, root / "out", root / "metrics.json", root / "curves", root / "details.json")
    return {"out": root / "out", "metrics": metrics, "before": before, "root": root, "raw": raw_params}


# --------------------------------------------------------------------------------------------------
# pretrain


def test_pretrain_lowers_reconstruction_and_writes_outputs(pretrained):
    m, before = pretrained["metrics"], pretrained["before"]
    assert m["val"]["recon"] < 0.9 * before["recon"], (before["recon"], m["val"]["recon"])
    assert m["test"]["recon"] < 0.9 * before["recon"]
    assert 0 <= m["val"]["active_units"] <= m["val"]["latent_dim"] == 16
    root = pretrained["root"]
    assert best_path(pretrained["out"]).is_file() and last_path(pretrained["out"]).is_file()
    # Curves for `dvc plots show`: one TSV per logged metric.
    assert (root / "curves" / "plots" / "metrics" / "val" / "recon.tsv").is_file()
    assert (root / "curves" / "plots" / "metrics" / "train" / "loss_step.tsv").is_file()
    text = (root / "details.json").read_text()
    assert text.index('"best"') < text.index('"test"') < text.index('"val"')  # sorted keys
    assert json.loads(text) == m  # the details are everything the stage measured
    # The metrics file: the gate's two differences on val and two of the model's figures, flat, numbers only
    # (four keys, so `dvc metrics show` stays a terminal wide; each row's AUROC / AUPRC are in the details).
    r = m["representation"]
    assert json.loads((root / "metrics.json").read_text()) == {
        "gate_gain": r["gate_pretrained_minus_observation_auroc"],
        "gate_gain_vs_random": r["gate_pretrained_minus_random_auroc"],
        "neg_elbo": m["val"]["neg_elbo"], "dims_above_floor": r["dims_above_floor"]}
    assert {"gate_observation_auroc", "gate_pretrained_auroc", "gate_random_auroc",
            "gate_pretrained_minus_observation_auprc", "gate_pretrained_minus_random_auprc"} <= set(r)


def test_checkpoints_load_with_weights_only_and_hold_the_schedule(pretrained):
    last = last_path(pretrained["out"])
    raw = torch.load(last, map_location="cpu", weights_only=True)  # the plain call, no allow-listing
    block = raw[BLOCK]
    steps_per_epoch = raw["global_step"] // PRETRAIN_EPOCHS
    assert raw["global_step"] == block["schedule"]["global_step"] > 0
    assert block["schedule"]["epoch"] == PRETRAIN_EPOCHS - 1 and steps_per_epoch > 0
    assert 0 < block["schedule"]["beta"] < 1  # mid warm-up: the position is in the checkpoint
    assert set(block["rng"]) == {"torch", "python", "numpy"}
    assert load_checkpoint(best_path(pretrained["out"]))[BLOCK]["kind"] == "pretrain"


def test_resume_continues_the_run_bit_identically(pretrained, raw_params, processed):
    """1 epoch, then resume to PRETRAIN_EPOCHS from last.ckpt == the uninterrupted run, step for step."""
    root = pretrained["root"].parent / "resume"
    short = copy.deepcopy(raw_params)
    short["pretrain"]["max_epochs"] = 1
    pretrain(params_from_dict(short), processed, 0, root / "out", root / "m1.json", root / "curves")
    first = load_checkpoint(last_path(root / "out"))
    pretrain(params_from_dict(raw_params), processed, 0, root / "out", root / "m2.json", root / "curves")
    resumed = load_checkpoint(last_path(root / "out"))
    full = load_checkpoint(last_path(pretrained["out"]))
    assert first["global_step"] > 0
    assert resumed["global_step"] == full["global_step"] == PRETRAIN_EPOCHS * first["global_step"]
    a, b = model_state_dict(resumed, "resumed"), model_state_dict(full, "full")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # The curves went on from the first run's steps instead of starting again.
    steps = pd.read_csv(root / "curves" / "plots" / "metrics" / "train" / "loss_step.tsv", sep="\t")["step"]
    assert steps.is_monotonic_increasing and steps.max() > first["global_step"]


def test_a_stale_last_checkpoint_is_not_resumed(pretrained, raw_params, processed, tmp_path, caplog):
    """A last.ckpt of another run (another model, or the same model with other params) is not continued:
    the runners rerun a stage because something changed, so it starts afresh."""
    caplog.set_level(logging.INFO, logger="seqsetvae")
    old_fingerprint = load_checkpoint(last_path(pretrained["out"]))[BLOCK]["fingerprint"]
    for key, value in (("model", {"latent_dim": 8}), ("pretrain", {"lr": 1e-4})):
        out = tmp_path / key
        shutil.copytree(pretrained["out"], out)
        other = copy.deepcopy(raw_params)
        other[key].update(value)
        caplog.clear()
        pretrain(params_from_dict(other), processed, 0, out, tmp_path / "m.json", None)
        assert "starting afresh" in caplog.text
        assert not any(r.getMessage().startswith("resuming from") for r in caplog.records)
        assert load_checkpoint(last_path(out))[BLOCK]["fingerprint"] not in ("", old_fingerprint)


# --------------------------------------------------------------------------------------------------
# finetune


def test_pretrained_checkpoint_maps_every_backbone_key(pretrained, raw_params, processed):
    params = params_from_dict(raw_params)
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    model, _ = build_from_pretrained(best_path(pretrained["out"]), params.finetune, dm.vocab_size)
    backbone_keys = {k for k in model.state_dict() if k.split(".")[0] in model.backbone()}
    assert backbone_keys and set(model.key_map()) == backbone_keys  # 100 % of the backbone is mapped
    source = model_state_dict(load_checkpoint(best_path(pretrained["out"])), "best")
    assert all(torch.equal(model.state_dict()[dst], source[src]) for dst, src in model.key_map().items())
    assert not any(p.requires_grad for m in model.backbone().values() for p in m.parameters())


@pytest.fixture(scope="module")
def finetuned(pretrained, raw_params, processed) -> dict:
    params = params_from_dict(raw_params)
    root = pretrained["root"].parent / "finetune"
    m = finetune(params, processed, 0, best_path(pretrained["out"]), root / "out", root / "m.json", root / "curves",
                 root / "pred.parquet")
    return {"metrics": m, "root": root}


def test_finetune_writes_predictions_and_keeps_the_backbone(finetuned, pretrained, raw_params, processed):
    params = params_from_dict(raw_params)
    m, root = finetuned["metrics"], finetuned["root"]
    assert 0 < m["test"]["auprc"] <= 1 and 0 <= m["test"]["auroc"] <= 1
    assert m["best"]["epoch"] < params.finetune.max_epochs
    pred = pd.read_parquet(root / "pred.parquet")
    assert list(pred.columns) == ["subject_id", "prediction_time", "label", "probability"]  # keyed by sample
    assert len(pred) == m["test"]["n"] and pred["subject_id"].is_unique and pred["probability"].between(0, 1).all()
    assert int(pred["label"].sum()) == m["test"]["positives"]
    assert (root / "curves" / "plots" / "metrics" / "val" / "auprc.tsv").is_file()
    # The frozen backbone is bit-identical to the pretrained one after finetuning.
    tuned = model_state_dict(load_checkpoint(best_path(root / "out")), "finetune")
    source = model_state_dict(load_checkpoint(best_path(pretrained["out"])), "pretrain")
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    key_map = SeqSetVAE(ModelConfig.from_params(params.model, dm.vocab_size), params.finetune).key_map()
    assert all(torch.equal(tuned[dst], source[src]) for dst, src in key_map.items())


def test_training_stages_record_the_sha256_of_their_checkpoints(pretrained, finetuned):
    for out in (pretrained["out"], finetuned["root"] / "out"):
        lines = (out / "SHA256SUMS").read_text().splitlines()
        assert lines == [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in (best_path(out), last_path(out))]


@pytest.mark.parametrize("damage", ["flipped tensor bytes", "replaced by another valid checkpoint"])
def test_a_damaged_pretrained_checkpoint_stops_finetune_naming_it(pretrained, raw_params, processed, tmp_path, damage):
    """The finetune stage reads the pretrain best.ckpt; a change to it after pretrain wrote it stops it
    before any training: a torn tensor by the archive's CRCs, a whole valid file by the recorded sha256."""
    folder = tmp_path / "pretrain"
    shutil.copytree(pretrained["out"], folder)
    best = best_path(folder)
    if damage == "flipped tensor bytes":
        with zipfile.ZipFile(best) as zf:
            info = max(zf.infolist(), key=lambda i: i.file_size if "/data/" in i.filename else -1)
        data = bytearray(best.read_bytes())
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        data[start : start + 16] = bytes(b ^ 0x5A for b in data[start : start + 16])
        best.write_bytes(bytes(data))
        expected = f"member {info.filename!r} fails its CRC-32 check"
    else:
        # A whole, valid checkpoint with other weights (last.ckpt can be byte-identical to best.ckpt when
        # the last epoch was the best: checkpoint bytes are deterministic).
        other = load_checkpoint(best)
        name, weight = next((k, v) for k, v in other["state_dict"].items() if v.is_floating_point())
        other["state_dict"][name] = weight + 1.0
        AtomicCheckpointIO().save_checkpoint(other, best)
        expected = "differs from the"
    params = params_from_dict(raw_params)
    root = tmp_path / "finetune"
    with pytest.raises(DataError) as err:
        finetune(params, processed, 0, best, root / "out", root / "m.json", None, root / "pred.parquet")
    assert err.value.path == str(best) and expected in str(err.value)
    assert not (root / "m.json").exists()


# --------------------------------------------------------------------------------------------------
# the standalone command


def test_train_command_end_to_end(pretrained, raw_params, processed, tmp_path, monkeypatch):
    import yaml

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    common = ["--params", str(params_file), "--data", str(processed), "--fold", "0", "--max-epochs", "1"]
    assert cli.main(["train", "--mode", "pretrain", *common, "--batch-size", "32"]) == 0
    ckpt = load_checkpoint(tmp_path / "models" / "pretrain" / "fold_0" / "last.ckpt")
    assert ckpt["epoch"] == 0  # --max-epochs 1 overrode pretrain.max_epochs (3) for this run
    assert (tmp_path / "metrics" / "pretrain" / "fold_0.json").is_file()
    assert (tmp_path / "details" / "pretrain" / "fold_0.json").is_file()  # the default --details
    assert cli.main(["train", "--mode", "finetune", *common]) == 0  # default --pretrained-ckpt: the run above
    assert (tmp_path / "predictions" / "fold_0.parquet").is_file()
    assert load_checkpoint(tmp_path / "models" / "finetune" / "fold_0" / "best.ckpt")[BLOCK]["kind"] == "finetune"
    # A bad override is a params error naming the key, before any work.
    assert cli.main(["train", "--mode", "pretrain", *common[:6], "--max-epochs", "0"]) == 2


def test_pretrain_reports_what_the_representation_carries(pretrained):
    """KL per dim against the floor, informative units, linear probes of pretrained vs random backbone."""
    r = pretrained["metrics"]["representation"]
    assert 0 <= r["informative_units"] <= 16 and 0 <= r["dims_above_floor"] <= 16
    assert 0 <= r["kl_per_dim_min"] <= r["kl_per_dim_max"]
    details = json.loads((pretrained["out"] / "representation.json").read_text())
    assert len(details["latent_usage_val"]["kl_per_dim"]) == 16
    assert min(details["latent_usage_val"]["kl_per_dim"]) == pytest.approx(r["kl_per_dim_min"], rel=1e-3)
    for probe in ("probe", "random_backbone_probe"):
        if details[probe]["auroc"] is not None:
            assert 0.0 <= details[probe]["auroc"] <= 1.0
        assert details[probe]["variables_read_back"] == len(details[probe]["last_value_r2"])
    # The gate: every train stay fitted, every val stay scored (the cohort is below gate_max_stays); its summary
    # in the details is its own figures, the differences the rows' own.
    gate = details["gate"]
    dm = SetSequenceDataModule(pretrained["root"].parent / "processed" / "fold_0",
                               params_from_dict(pretrained["raw"]).loader)
    assert (gate["n_train"], gate["n_val"]) == (dm.split("train").n_patients, dm.split("val").n_patients)
    vocab = dm.vocab_size
    assert gate["observation"]["n_features"] == 6 * (vocab - 1)
    assert gate["pretrained"]["n_features"] == gate["random"]["n_features"] == 6 * (vocab - 1) + 2 * 32  # d_model 32
    for row in ("observation", "pretrained", "random"):
        assert r[f"gate_{row}_auroc"] == pytest.approx(gate[row]["auroc"], rel=1e-5)
        assert 0.5 < gate[row]["auroc"] <= 1.0  # the synthetic label is in the observation state
    assert gate["pretrained_minus_random"]["auroc"] == pytest.approx(
        gate["pretrained"]["auroc"] - gate["random"]["auroc"], abs=1e-5)
    assert r["gate_pretrained_minus_observation_auprc"] == pytest.approx(
        gate["pretrained"]["auprc"] - gate["observation"]["auprc"], abs=1e-5)


def test_the_gate_samples_a_large_split_with_a_fixed_seed(pretrained):
    """gate_max_stays below the split size: a seeded sample of that many stays, the same on every call."""
    from seqsetvae.training.pretrain_module import gate_loader

    dm = SetSequenceDataModule(pretrained["root"].parent / "processed" / "fold_0",
                               params_from_dict(pretrained["raw"]).loader)
    ids = lambda loader: sorted(int(i) for b in loader for i in b["subject_id"])  # noqa: E731
    sampled = ids(gate_loader(dm, "train", 50))
    assert len(sampled) == len(set(sampled)) == 50 and sampled == ids(gate_loader(dm, "train", 50))
    assert ids(gate_loader(dm, "train", 0)) == ids(dm.dataloader("train", shuffle=False))


def test_latent_usage_sees_a_dimension_held_at_the_free_bits_floor():
    """Dim 0 carries information (mu spread, small sigma); dim 1 sits near the floor (mu barely varies
    against sigma ~ 0.95) yet still passes the old Var(mu) > 0.01 active-unit test."""
    from seqsetvae.evaluation.representation import latent_usage
    from seqsetvae.models.pretrain import SeqSetVAEPretrain

    g = torch.Generator().manual_seed(0)
    n = 4000
    mu = torch.stack([2.0 * torch.randn(n, generator=g), 0.2 * torch.randn(n, generator=g)], dim=1)
    logvar = torch.stack([torch.full((n,), math.log(0.05)), torch.full((n,), math.log(0.95))], dim=1)
    usage = latent_usage(mu, logvar, free_bits=0.05)
    assert SeqSetVAEPretrain.active_units(mu, 0.01) == 2  # the old measure is fooled
    assert usage["informative_units"] == 1
    assert usage["kl_per_dim"][1] < 0.1 < usage["kl_per_dim"][0]
    assert usage["dims_above_floor"] == 1


def test_finetune_calibrates_on_val_and_the_no_backbone_control_runs(pretrained, raw_params, processed, tmp_path):
    """calibration platt: scale and bias fitted on val, written beside the checkpoints and applied to the
    test predictions. The no_backbone variant trains the same head on the observation state alone."""
    raw = copy.deepcopy(raw_params)
    raw["finetune"].update(inputs="backbone_and_observation", calibration="platt", max_epochs=2)
    params = params_from_dict(raw)
    ckpt = best_path(pretrained["out"])
    m = finetune(params, processed, 0, ckpt, tmp_path / "out", tmp_path / "m.json", None, tmp_path / "pred.parquet")
    cal = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert cal["fitted_on"] == "val" and cal["scale"] > 0 and m["calibration"]["scale"] == cal["scale"]
    control = finetune(params, processed, 0, ckpt, tmp_path / "ctl", tmp_path / "c.json", None, tmp_path / "c.parquet",
                       variant="no_backbone")
    assert control["variant"]["backbone"] == "none" and control["variant"]["inputs"] == "observation"
    raw["finetune"]["inputs"] = "backbone"
    raw["ablation"]["run"] = ["no_backbone"]  # refused when the params are read, naming the key and the fix
    with pytest.raises(ParamsError, match=r"ablation\.variants\.no_backbone.*backbone none needs inputs.*ablation\.run"):
        params_from_dict(raw)
    raw["ablation"]["run"] = []  # not run by the pipeline, but asked for by hand: the stage refuses it
    with pytest.raises(ParamsError, match="no_backbone.backbone none needs inputs"):
        finetune(params_from_dict(raw), processed, 0, ckpt, tmp_path / "x", tmp_path / "x.json", None,
                 tmp_path / "x.parquet", variant="no_backbone")


def test_platt_calibration_fixes_a_shifted_probability_and_keeps_the_ranking():
    from sklearn.metrics import roc_auc_score

    from seqsetvae.evaluation.calibration import Calibration, logit
    from seqsetvae.evaluation.metrics import expected_calibration_error

    rng = np.random.default_rng(0)
    true_logit = rng.normal(-2.0, 1.5, 5000)
    y = rng.random(5000) < 1 / (1 + np.exp(-true_logit))
    shifted = 1 / (1 + np.exp(-(true_logit + 1.8)))  # what a pos_weight ~ 6 loss does to the log-odds
    cal = Calibration.fit_platt(y, shifted)
    fixed = cal.apply(shifted)
    assert expected_calibration_error(y, fixed, 10) < 0.02 < expected_calibration_error(y, shifted, 10)
    assert roc_auc_score(y, fixed) == pytest.approx(roc_auc_score(y, shifted), abs=1e-12)
    assert cal.bias == pytest.approx(-1.8, abs=0.15) and cal.scale == pytest.approx(1.0, abs=0.1)
    np.testing.assert_allclose(logit(cal.apply(np.array([0.5]))), [cal.bias])


def test_a_variant_trains_its_own_head_inputs(pretrained, raw_params, processed, tmp_path):
    """ablation.variants.<v>.inputs / backbone_projection replace the finetune section's for that variant only:
    the seed's protocol (backbone alone, no bottleneck) runs beside a main model on backbone + observation."""
    raw = copy.deepcopy(raw_params)
    raw["finetune"].update(inputs="backbone_and_observation", backbone_projection=4, max_epochs=1)
    raw["ablation"]["variants"]["backbone_only"] = {"backbone": "pretrained", "label_fraction": 1.0,
                                                    "inputs": "backbone", "backbone_projection": 0}
    params = params_from_dict(raw)
    ckpt = best_path(pretrained["out"])
    runs = {}
    for variant in (None, "backbone_only"):
        out = tmp_path / str(variant)
        result = finetune(params, processed, 0, ckpt, out, out / "m.json", None, out / "p.parquet", variant=variant)
        head = project_block(load_checkpoint(best_path(out)), best_path(out), kind="finetune")["architecture"]["head"]
        runs[variant] = (result["variant"], head)
    main, main_head = runs[None]
    only, only_head = runs["backbone_only"]
    assert (main["inputs"], main["backbone_projection"]) == ("backbone_and_observation", 4)
    assert (main_head["inputs"], main_head["backbone_projection"]) == ("backbone_and_observation", 4)
    assert (only["inputs"], only["backbone_projection"]) == ("backbone", 0)
    assert (only_head["inputs"], only_head["backbone_projection"]) == ("backbone", 0)
    raw["ablation"]["variants"]["backbone_only"]["backbone"] = "none"
    raw["ablation"]["run"] = ["backbone_only"]
    with pytest.raises(ParamsError, match="ablation.variants.backbone_only.*backbone none needs inputs"):
        params_from_dict(raw)


def test_the_end_to_end_variant_trains_the_backbone_beside_the_frozen_main_model(
        finetuned, pretrained, raw_params, processed, tmp_path):
    """ablation.variants.end_to_end (unfreeze: all) trains the backbone with the head, while finetune.unfreeze
    stays none for the main model; a variant that cannot unfreeze (no backbone, a label subsample) is refused
    when the params are read, naming the variant."""
    raw = copy.deepcopy(raw_params)
    raw["finetune"].update(max_epochs=1)
    raw["ablation"]["variants"]["end_to_end"] = {"backbone": "pretrained", "label_fraction": 1.0, "unfreeze": "all"}
    params = params_from_dict(raw)
    assert params.finetune.unfreeze == "none"
    out = tmp_path / "e2e"
    result = finetune(params, processed, 0, best_path(pretrained["out"]), out, out / "m.json", None, out / "p.parquet",
                      variant="end_to_end")
    assert result["variant"]["unfreeze"] == "all"
    tuned = model_state_dict(load_checkpoint(best_path(out)), "finetune")
    source = model_state_dict(load_checkpoint(best_path(pretrained["out"])), "pretrain")
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    key_map = SeqSetVAE(ModelConfig.from_params(params.model, dm.vocab_size), params.finetune).key_map()
    changed = [dst for dst, src in key_map.items() if not torch.equal(tuned[dst], source[src])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("transformer.") for k in changed)
    frozen = model_state_dict(load_checkpoint(best_path(finetuned["root"] / "out")), "finetune")
    assert all(torch.equal(frozen[dst], source[src]) for dst, src in key_map.items())  # the main model's: untouched
    raw["ablation"]["variants"]["end_to_end"]["backbone"] = "none"
    raw["ablation"]["run"] = ["end_to_end"]
    with pytest.raises(ParamsError, match=r"ablation\.variants\.end_to_end.*no backbone to unfreeze"):
        params_from_dict(raw)
    # finetune.unfreeze is not inherited by a variant with no backbone: the no_backbone control keeps running
    # beside an end-to-end main model, training its head alone
    raw["ablation"]["run"] = ["no_backbone"]
    raw["finetune"]["unfreeze"] = "all"
    control = params_from_dict(raw).ablation.variants["no_backbone"].head(params_from_dict(raw).finetune)
    assert control.unfreeze == "none"
    raw["finetune"]["unfreeze"] = "none"
    raw["ablation"]["run"] = ["end_to_end"]
    raw["ablation"]["variants"]["end_to_end"].update(backbone="pretrained", label_fraction=0.5)
    with pytest.raises(ParamsError, match=r"ablation\.variants\.end_to_end.*label_fraction < 1 needs unfreeze none"):
        params_from_dict(raw)


def test_observation_codes_are_chosen_on_train_only_and_kept_in_the_checkpoint(
        pretrained, raw_params, processed, tmp_path, monkeypatch):
    """finetune.observation_codes K: the head's observation state covers the K codes in the most TRAIN stays.
    The stay counts are read from the train split alone (val and test never), the choice is the checkpoint's,
    and the head has 6 K observation inputs whatever the vocabulary."""
    from seqsetvae.models.observation import code_stay_counts, select_codes
    from seqsetvae.training import finetune_module
    from seqsetvae.training.finetune_module import load_finetune_model

    raw = copy.deepcopy(raw_params)
    raw["finetune"].update(inputs="backbone_and_observation", observation_codes=5, max_epochs=1)
    params = params_from_dict(raw)
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    assert dm.vocab_size - 1 > 5
    seen = []
    monkeypatch.setattr(finetune_module, "code_stay_counts",
                        lambda codes, *a, **k: (seen.append(np.asarray(codes)), code_stay_counts(codes, *a, **k))[1])
    out = tmp_path / "out"
    m = finetune(params, processed, 0, best_path(pretrained["out"]), out, tmp_path / "m.json", None,
                 tmp_path / "pred.parquet")
    train = dm.split("train")
    assert len(seen) == 1 and np.array_equal(seen[0], np.asarray(train.codes))  # train's codes, nothing else
    want = select_codes(code_stay_counts(train.codes, train.set_offsets, train.patient_offsets, dm.vocab_size), 5)
    model = load_finetune_model(best_path(out), params.finetune)
    assert model.observation_subset and model.observation_dim == 30
    assert model.observation_codes.tolist() == want.tolist()
    assert model_state_dict(load_checkpoint(best_path(out)), "finetune")["observation_codes"].tolist() == want.tolist()
    assert 0.0 <= m["test"]["auroc"] <= 1.0 and m["test"]["n"] == int(dm.split("test").n_patients)
# --------------------------------------------------------------------------------------------------
# the KL schedule


def _curve(curves: Path, name: str) -> list[float]:
    return pd.read_csv(curves / "plots" / "metrics" / f"{name}.tsv", sep="\t")[name.split("/")[-1]].tolist()


def test_a_warmup_given_as_a_share_finishes_there_and_val_uses_the_training_beta(raw_params, processed):
    """kl_warmup_fraction 0.5 of 4 epochs x 3 steps: beta_max from step 6 on (half the run), resolved length
    in the checkpoint; val/loss at the beta of each epoch's last step; best.ckpt chosen after the warm-up."""
    root = processed.parent / "fraction"
    d = copy.deepcopy(raw_params)
    d["pretrain"].update(max_epochs=4, kl_warmup_steps=None, kl_warmup_fraction=0.5, beta_max=0.8)
    d["trainer"].update(limit_train_batches=3)
    result = pretrain(params_from_dict(d), processed, 0, root / "out", root / "m.json", root / "curves")
    block = load_checkpoint(last_path(root / "out"))[BLOCK]
    assert block["schedule"]["global_step"] == 12 and block["schedule"]["kl_warmup_steps"] == 6
    assert result["kl_warmup"] == {"steps": 6, "steps_run": 12, "beta_last_step": 0.8, "share_at_beta_max": 0.5}
    # Validation after epochs 0..3 (last steps 2, 5, 8, 11) at the beta those steps trained with.
    betas = _curve(root / "curves", "val/beta")
    assert betas == pytest.approx([0.8 * 2 / 6, 0.8 * 5 / 6, 0.8, 0.8], rel=1e-6)
    loss, recon, kl_loss = (np.array(_curve(root / "curves", f"val/{k}")) for k in ("loss", "recon", "kl_loss"))
    assert loss == pytest.approx(recon + np.array(betas) * kl_loss, rel=1e-5)
    # best.ckpt: the lower val/loss of the two epochs after the warm-up (epochs 0 and 1 trained at a smaller beta
    # and are not candidates, however low their val/loss).
    best = load_checkpoint(best_path(root / "out"))[BLOCK]["schedule"]["epoch"]
    assert best == 2 + int(np.argmin(loss[2:]))
    assert result["best"]["epoch"] == best


def test_checkpoint_choice_waits_for_the_warmup_and_tracks_the_latest_epoch_until_then(pretrained):
    """kl_warmup_steps 1000 never finishes in the fixture's run: best.ckpt is the last epoch."""
    best = load_checkpoint(best_path(pretrained["out"]))
    assert best["epoch"] == PRETRAIN_EPOCHS - 1 == pretrained["metrics"]["best"]["epoch"]
    assert 0 < pretrained["metrics"]["kl_warmup"]["beta_last_step"] < 1
    assert pretrained["metrics"]["kl_warmup"]["share_at_beta_max"] == 0.0


def test_a_share_warmup_makes_the_epoch_budget_part_of_the_run(raw_params):
    """With kl_warmup_fraction the warm-up length depends on max_epochs, so a longer run is another run (no
    resume of a shorter one); with kl_warmup_steps more epochs extend the run."""
    from seqsetvae.training.fingerprint import run_fingerprint

    def fp(epochs: int, fraction: float | None) -> str:
        d = copy.deepcopy(raw_params)
        d["pretrain"].update(max_epochs=epochs, kl_warmup_fraction=fraction,
                             kl_warmup_steps=None if fraction is not None else 1000)
        return run_fingerprint(params_from_dict(d), 0, [])

    assert fp(3, None) == fp(4, None)
    assert fp(3, 0.5) != fp(4, 0.5)


def test_exactly_one_warmup_key_is_set(raw_params):
    for steps, fraction in ((1000, 0.5), (None, None)):
        d = copy.deepcopy(raw_params)
        d["pretrain"].update(kl_warmup_steps=steps, kl_warmup_fraction=fraction)
        with pytest.raises(ParamsError, match=r"pretrain\.kl_warmup_fraction"):
            params_from_dict(d)


def test_warmup_steps_for_a_share():
    from seqsetvae.models.losses import beta_at, warmup_steps_for

    assert warmup_steps_for(0.5, 30) == 15 and warmup_steps_for(0.1, 30) == 3 and warmup_steps_for(0.0, 30) == 0
    assert warmup_steps_for(1.0, 30) == 30 and warmup_steps_for(0.35, 30) == 11
    w = warmup_steps_for(0.5, 30)
    assert beta_at(w - 1, 1.0, w) < 1.0 == beta_at(w, 1.0, w)  # beta_max from the stated share of the run on
