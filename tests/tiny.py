"""The one tiny-params helper: the repository's params.yaml shrunk so that a run takes seconds.

`tiny_params(base)` is what every tiny run starts from: the pipeline tests' projects (tests/pipeline_project.py),
the in-process training tests and the resume tests. A test that needs other sizes says only what differs,
as override dicts merged over it (TRAINING, RESUME below), so the shared part is written once.
"""

from __future__ import annotations

from typing import Any

from seqsetvae.config import deep_merge

# Merged over the repository's params.yaml: a whole pipeline run (about 11 stages) takes seconds per stage.
TINY_OVERRIDES: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic": {"n_subjects": 150, "seed": 1}},
    "split": {"folds": [0]},
    "loader": {"batch_size": 16},
    "model": {
        "d_model": 16, "latent_dim": 8, "value_hidden": 8, "decoder_hidden": 16,
        "set_encoder": {"n_isab": 1, "n_heads": 2, "n_inducing": 4, "ff_dim": 16},
        "transformer": {"n_layers": 1, "n_heads": 2, "ff_dim": 16, "n_time_freqs": 2},
    },
    "pretrain": {"max_epochs": 2},
    "finetune": {"max_epochs": 2},
    "trainer": {"num_threads": 1, "progress_bar": False, "log_every_n_steps": 1},
    "baseline": {"logreg": {"C": [0.1]}, "gbm": {"learning_rate": [0.1], "max_leaf_nodes": [7], "l2_regularization": [0.0], "max_iter": 50}},
}

# In-process training (tests/test_training.py, tests/test_distributed.py, tests/test_resume.py): a cohort with
# more positives and bigger val / test shares, every event of a set, CPU, no early stop, and a KL warm-up longer
# than the run (beta changes every step, so a resume that lost a step would show).
_IN_PROCESS: dict[str, Any] = {
    "data": {"synthetic": {"positive_rate": 0.3, "seed": 0}},
    "split": {"folds": [0], "fractions": {"train": 0.6, "val": 0.2, "test": 0.2}},
    "loader": {"max_events_per_set": 0, "num_workers": 0},
    "model": {"dropout": 0.0},
    "pretrain": {"lr": 3e-3, "kl_warmup_steps": 1000, "forecast_weight": 0.0},
    # One thread: on a shared 2-core machine two OpenMP threads per process thrash (figures: docs/benchmark.md).
    "trainer": {"accelerator": "cpu", "num_threads": 1, "early_stopping_patience": 0, "progress_bar": False},
}

# tests/test_training.py: a cohort and model big enough that pretraining measurably lowers the reconstruction
# and the finetuned head learns something, in a few epochs.
TRAINING: dict[str, Any] = deep_merge(_IN_PROCESS, {
    "data": {"synthetic": {"n_subjects": 600}},
    "loader": {"batch_size": 16, "max_sets": 16},
    "model": {"d_model": 32, "latent_dim": 16, "value_hidden": 16, "decoder_hidden": 64,
              "set_encoder": {"n_inducing": 4, "ff_dim": 64},
              "transformer": {"ff_dim": 64, "n_time_freqs": 4}},
    "pretrain": {"max_epochs": 3},
    "finetune": {"max_epochs": 10, "lr": 3e-3, "head_hidden": 32, "unfreeze": "none", "aux_recon_weight": 0.0,
                 "aux_kl_weight": 0.0},
    "trainer": {"log_every_n_steps": 5, "limit_train_batches": 1.0, "limit_val_batches": 1.0},
})


def resume(epochs: int, steps_per_epoch: int) -> dict[str, Any]:
    """tests/test_resume.py: the smallest model, `steps_per_epoch` optimiser steps an epoch, deterministic."""
    return deep_merge(_IN_PROCESS, {
        "data": {"synthetic": {"n_subjects": 120}},
        "loader": {"batch_size": 8, "max_sets": 8},
        "model": {"set_encoder": {"n_inducing": 2}},
        "pretrain": {"max_epochs": epochs, "seed": 0},
        "finetune": {"max_epochs": 20},
        "trainer": {"deterministic": True, "log_every_n_steps": 2, "limit_train_batches": steps_per_epoch,
                    "limit_val_batches": 1.0},
    })


def tiny_params(base: dict, *overrides: dict) -> dict:
    """`base` (the repository's params as a dict; left unchanged) with TINY_OVERRIDES and then each of
    `overrides` merged over it."""
    params = deep_merge(base, TINY_OVERRIDES)
    for o in overrides:
        params = deep_merge(params, o)
    return params
