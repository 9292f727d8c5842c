"""Several devices: the sharding batch sampler, and pretrain / finetune under DDP on 2 CPU processes (gloo).

The DDP runs use strategy `ddp`, launched the way the pipeline launches a stage: the `seqsetvae` command in
a subprocess, which Lightning re-runs once per extra device (its subprocess launcher re-executes
`sys.argv`). That is why they cannot run in-process: under pytest, `sys.argv` is pytest's own command line,
and the re-launched rank would run the test session again. (`ddp_spawn` would work in-process but is not
what a user runs.)

Equivalence: 2 ranks x batch B against 1 process x batch 2B. The sampler gives both the same patients per
optimiser step and the same number of steps, so the runs differ only in (a) the loss normalisation (DDP
averages the two ranks' batch means; one process takes one mean over the whole batch; with free bits the
KL floor applies to each half's mean), (b) float summation order, and (c) random draws: every rank starts
from the same seed, so the two halves of a step get the same z-sample noise stream, not the single
process's one stream over 2B. (c) dominates pretraining; finetuning here has no dropout (head_dropout 0,
frozen backbone in eval mode), so only (a) and (b) remain there. Tolerances below are set against what
was measured on this cohort (see the constants).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from seqsetvae.config import ParamsError, params_from_dict
from seqsetvae.data import datamodule
from seqsetvae.data.datamodule import BucketBatchSampler
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import make_splits
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.stages.finetune import finetune
from seqsetvae.stages.pretrain import pretrain
from seqsetvae.training.checkpoints import best_path, last_path, load_checkpoint
from seqsetvae.training.trainer import Monitor, SamplerEpoch, build_trainer
from tests.test_training import tiny  # tests/tiny.py's TRAINING sizes

B = 16  # per-device batch size of the DDP runs; the single-process reference uses 2 * B
WORLD = 2

# Pretraining, DDP vs single process, relative difference of the val reconstruction / KL (nats per set).
# Measured here: 0.7 % / 3.5 %. For scale, changing only pretrain.seed moved them by 18 % / 19 %.
PRETRAIN_RECON_RTOL = 0.05
PRETRAIN_KL_RTOL = 0.10
# Finetuning (no random draws), absolute difference of val / test AUROC. Measured here: none in the 6
# digits kept (AUROC is rank-based, and equal halves make the mean of the ranks' means the batch mean);
# the margin covers unequal halves (odd batches) on other cohorts. For scale: with head dropout 0.2 (random
# draws) the difference was 0.006, and changing finetune.seed alone moved test AUROC by 0.05.
FINETUNE_AUROC_ATOL = 0.005


# --------------------------------------------------------------------------------------------------
# The sampler's sharding (rank and world size patched in: no process group needed)


def _shares(monkeypatch, sampler: BucketBatchSampler, world: int) -> list[list[np.ndarray]]:
    """Each rank's batches (per rank: a list of index arrays), as that rank's sampler would yield them."""
    out = []
    for rank in range(world):
        monkeypatch.setattr(datamodule, "distributed_rank_world", lambda r=rank: (r, world))
        out.append(sampler.batches())
        assert len(sampler) == len(out[-1])
    return out


@pytest.mark.parametrize("n", [97, 64, 33, 3])
@pytest.mark.parametrize("world", [2, 3])
def test_eval_shards_are_disjoint_and_cover_the_split_once(monkeypatch, n, world):
    lengths = np.random.default_rng(n).integers(1, 50, n)
    sampler = BucketBatchSampler(lengths, 8, 2, shuffle=False, seed=0, shard=True)
    shares = _shares(monkeypatch, sampler, world)
    seen = np.concatenate([b for rank in shares for b in rank])
    assert np.array_equal(np.sort(seen), np.arange(n))  # every stay exactly once over all ranks


@pytest.mark.parametrize("n", [97, 64, 33, 3])
@pytest.mark.parametrize("world", [2, 3])
def test_train_shards_match_the_single_process_batches_of_world_times_b(monkeypatch, n, world):
    lengths = np.random.default_rng(n).integers(1, 50, n)
    sharded = BucketBatchSampler(lengths, 8, 2, shuffle=True, seed=5, shard=True)
    single = BucketBatchSampler(lengths, 8 * world, 2, shuffle=True, seed=5)
    for epoch in (0, 1):
        sharded.set_epoch(epoch)
        single.set_epoch(epoch)
        shares = _shares(monkeypatch, sharded, world)
        reference = single.batches()
        assert {len(s) for s in shares} == {len(reference)}  # same number of steps on every rank
        for step, batch in enumerate(reference):
            union = np.concatenate([s[step] for s in shares])
            assert all(s[step].size > 0 for s in shares)
            if batch.size >= world:  # the step holds exactly the patients of the single-process step
                assert np.array_equal(np.sort(union), np.sort(batch))
            else:  # a short last batch is topped up with stays seen elsewhere in the epoch
                assert set(batch) <= set(union) and union.size == world


def test_without_a_process_group_or_unsharded_the_batches_are_the_plain_ones(monkeypatch):
    lengths = np.arange(50) % 7 + 1
    plain = BucketBatchSampler(lengths, 8, 2, shuffle=True, seed=1)
    monkeypatch.setattr(datamodule, "distributed_rank_world", lambda: (1, 2))
    unsharded = BucketBatchSampler(lengths, 8, 2, shuffle=True, seed=1, shard=False)
    assert [b.tolist() for b in unsharded.batches()] == [b.tolist() for b in plain.global_batches(1)]
    monkeypatch.undo()
    assert not torch.distributed.is_initialized()
    sharded = BucketBatchSampler(lengths, 8, 2, shuffle=True, seed=1, shard=True)
    assert [b.tolist() for b in sharded.batches()] == [b.tolist() for b in plain.batches()]


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch.tolist())
        return (self.w * batch.float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_sampler_epoch_reshuffles_the_train_order_every_epoch():
    """Lightning does not call a custom batch sampler's set_epoch; the SamplerEpoch callback does."""
    sampler = BucketBatchSampler(np.arange(40) % 5 + 1, 4, 2, shuffle=True, seed=0)
    loader = DataLoader(list(range(40)), batch_sampler=sampler)
    module = _Recorder()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, callbacks=[SamplerEpoch()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=loader)
    first, second = module.seen[:10], module.seen[10:]
    assert len(second) == 10 and first != second
    sampler.set_epoch(1)
    assert second == [b.tolist() for b in sampler.batches()]


@pytest.mark.parametrize("change", [{"accelerator": "gpu"}, {"devices": [0, 1]}])
def test_hardware_lightning_refuses_is_a_params_error(params_dict, tmp_path, change):
    """No GPU here: accelerator gpu, or device ids with accelerator cpu, name the trainer params."""
    params_dict["trainer"].update({"accelerator": "cpu", **change})
    params = params_from_dict(params_dict)
    with pytest.raises(ParamsError, match=r"params trainer \(accelerator="):
        build_trainer(params.trainer, max_epochs=1, grad_clip_norm=0.0, out_dir=tmp_path, curves_dir=None,
                      monitor=Monitor("val/loss", "min"), resume=False)


# --------------------------------------------------------------------------------------------------
# pretrain and finetune under DDP, against one process with the same effective batch


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, base_params_dict) -> tuple[Path, dict]:
    raw = tiny(base_params_dict)
    raw["data"]["synthetic"]["n_subjects"] = 400
    raw["pretrain"]["max_epochs"] = 2
    raw["finetune"].update(max_epochs=3, head_dropout=0.0)
    params = params_from_dict(raw)
    root = tmp_path_factory.mktemp("distributed")
    result = ingest_synthetic(params.data.synthetic)
    splits, _ = make_splits(result.subjects, result.labels, params.split)
    preprocess(result.events, result.subjects, result.labels, splits, params.preprocess, root / "processed")
    return root, raw


def _with(raw: dict, *, batch_size: int, devices: int, strategy: str) -> dict:
    d = copy.deepcopy(raw)
    d["loader"]["batch_size"] = batch_size
    d["trainer"].update(accelerator="cpu", devices=devices, strategy=strategy)
    return d


def _cli(root: Path, raw: dict, *args: str) -> str:
    """Run `python -m seqsetvae ARGS` in `root` with `raw` as its params.yaml; returns its stderr + stdout."""
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "seqsetvae", *args], cwd=root, capture_output=True, text=True,
                          timeout=300)
    output = proc.stderr + proc.stdout
    assert proc.returncode == 0, output[-6000:]
    return output


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def runs(cohort) -> dict:
    root, raw = cohort
    processed = root / "processed"
    single = params_from_dict(_with(raw, batch_size=WORLD * B, devices=1, strategy="auto"))
    pre_single = pretrain(single, processed, 0, root / "single/pre", root / "single/pre.json", root / "single/pc")
    pretrained = best_path(root / "single/pre")
    ft_single = finetune(single, processed, 0, pretrained, root / "single/ft", root / "single/ft.json",
                         root / "single/fc", root / "single/pred.parquet")

    ddp = _with(raw, batch_size=B, devices=WORLD, strategy="ddp")
    pre_log = _cli(root, ddp, "pretrain", "--data", "processed", "--fold", "0", "--out", "ddp/pre",
                   "--metrics", "ddp/pre.json", "--details", "ddp/pre_details.json", "--curves", "ddp/pc")
    # From the single-process backbone, so that the finetune comparison sees only DDP's effect on the head.
    ft_log = _cli(root, ddp, "finetune", "--data", "processed", "--fold", "0", "--pretrained", str(pretrained),
                  "--out", "ddp/ft", "--metrics", "ddp/ft.json", "--details", "ddp/ft_details.json", "--curves", "ddp/fc",
                  "--predictions", "ddp/pred.parquet")
    return {"root": root, "pre_single": pre_single, "ft_single": ft_single, "pre_log": pre_log, "ft_log": ft_log,
            "pre_ddp": json.loads((root / "ddp/pre_details.json").read_text()),
            "ft_ddp": json.loads((root / "ddp/ft_details.json").read_text())}


@pytest.mark.slow  # stage processes: a 2-rank DDP pretrain and finetune (docs/testing.md)
def test_ddp_runs_two_ranks_and_only_rank_0_writes(runs):
    root = runs["root"]
    for log, metrics in ((runs["pre_log"], "ddp/pre.json"), (runs["ft_log"], "ddp/ft.json")):
        assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
        assert log.count("rank 1 of 2: training done; rank 0 writes the outputs") == 1
        assert log.count(f"-> {metrics}") == 1  # the metrics (and predictions) were written by one rank
    assert _files(root / "ddp/pre") == _files(root / "single/pre") == ["SHA256SUMS", "best.ckpt", "last.ckpt", "representation.json"]
    assert _files(root / "ddp/ft") == ["SHA256SUMS", "best.ckpt", "calibration.json", "last.ckpt"]
    assert _files(root / "ddp/pc") == _files(root / "single/pc")  # one set of curves, no second writer
    assert (root / "ddp/pred.parquet").is_file()


@pytest.mark.slow  # stage processes: a 2-rank DDP pretrain and finetune (docs/testing.md)
def test_ddp_takes_the_same_steps_as_one_process_with_the_whole_batch(runs):
    root = runs["root"]
    for stage in ("pre", "ft"):
        ddp = load_checkpoint(last_path(root / "ddp" / stage))
        single = load_checkpoint(last_path(root / "single" / stage))
        assert ddp["global_step"] == single["global_step"] > 0
        assert ddp["epoch"] == single["epoch"]


@pytest.mark.slow  # stage processes: a 2-rank DDP pretrain and finetune (docs/testing.md)
def test_ddp_pretrain_metrics_agree_with_one_process(runs):
    ddp, single = runs["pre_ddp"]["val"], runs["pre_single"]["val"]
    assert ddp["n_sets"] == single["n_sets"] and ddp["n_stays"] == single["n_stays"]  # the whole val set
    assert ddp["recon"] == pytest.approx(single["recon"], rel=PRETRAIN_RECON_RTOL)
    assert ddp["kl"] == pytest.approx(single["kl"], rel=PRETRAIN_KL_RTOL)


@pytest.mark.slow  # stage processes: a 2-rank DDP pretrain and finetune (docs/testing.md)
def test_ddp_finetune_metrics_agree_with_one_process(runs):
    ddp, single = runs["ft_ddp"], runs["ft_single"]
    for split in ("val", "test"):
        assert ddp[split]["n"] == single[split]["n"] and ddp[split]["positives"] == single[split]["positives"]
        assert ddp[split]["auroc"] == pytest.approx(single[split]["auroc"], abs=FINETUNE_AUROC_ATOL)
