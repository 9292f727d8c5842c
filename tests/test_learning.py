"""The model learns: a default-size pretrain then a frozen-backbone finetune separate the synthetic label.

The test-sized setup of tests/test_training.py pretrains too little for the frozen features to carry the
label (measured: test AUROC 0.46-0.64 over a sweep of small configs, see docs/training.md). This test
pays for a real, short run instead: the default synthetic cohort (2,000 stays) and the default model,
pretrained for EPOCHS epochs (50 optimiser steps each): the slowest test of the suite, marked slow (its time:
docs/testing.md). Nothing in pretraining sees a label; the head alone is trained on them.

Sized by measurement (docs/testing.md, "Second pass"): the two assertions are the ones this test always made.
The reconstruction bound (< 7.0 nats per set, against about 8.3 untrained) is what the number of epochs
decides: 1 epoch does not reach it (7.84), 2 barely (6.87), 3 with a margin (6.34), 6 (the earlier size)
reached 5.72. The AUROC bound does not move with the epochs (0.80 at 1, 2, 3 and 6): the head also sees the
observation state (finetune.inputs: backbone_and_observation, the default since 2026-12-03), so that bound
holds whatever the pretraining; the finetune still has to learn it. The screening gate at the end of pretrain,
which this test does not read, fits on GATE_MAX_STAYS train stays instead of all 1,600
(pretrain.gate_max_stays, the bound the stage has for large cohorts).
"""

from __future__ import annotations

import copy

import pytest
import torch

from seqsetvae.config import params_from_dict
from seqsetvae.data.preprocess import preprocess
from seqsetvae.data.splits import make_splits
from seqsetvae.data.synthetic import ingest_synthetic
from seqsetvae.stages.finetune import finetune
from seqsetvae.stages.pretrain import pretrain
from seqsetvae.training.checkpoints import best_path

pytestmark = pytest.mark.slow

EPOCHS = 3  # the fewest that reach the reconstruction bound with a margin (docstring)
GATE_MAX_STAYS = 400


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_short_pretrain_then_finetune_reaches_auroc_0_70(base_params_dict, tmp_path):
    raw = copy.deepcopy(base_params_dict)  # the repository's defaults: 2,000 stays, default model size
    raw["pretrain"].update(max_epochs=EPOCHS, gate_max_stays=GATE_MAX_STAYS)
    raw["trainer"].update(num_threads=1, progress_bar=False)
    params = params_from_dict(raw)
    cohort = ingest_synthetic(params.data.synthetic)
    splits, _ = make_splits(cohort.subjects, cohort.labels, params.split)
    processed = tmp_path / "processed"
    preprocess(cohort.events, cohort.subjects, cohort.labels, splits, params.preprocess, processed)

    pre = pretrain(params, processed, 0, tmp_path / "pre", tmp_path / "pre.json", tmp_path / "pre_curves")
    assert pre["val"]["recon_value"] < 7.0, pre  # untrained: ~8.3 nats per set (the per-variable marginal)
    tuned = finetune(params, processed, 0, best_path(tmp_path / "pre"), tmp_path / "ft", tmp_path / "ft.json",
                     tmp_path / "ft_curves", tmp_path / "pred.parquet")
    assert tuned["test"]["auroc"] >= 0.70, tuned
