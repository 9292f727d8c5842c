"""The training stages' curves logger (training/trainer.py CurvesLogger) is DVCLive's Lightning logger with a
cheaper check of when to write its files: it must answer that check as DVCLive does, and so write the same
curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from dvclive.lightning import DVCLiveLogger, _should_sync
from torch import nn

from seqsetvae.training.trainer import DVCLIVE_SYNC_CALLERS, CurvesLogger, called_from_sync_point


def _ask_both_from(name: str) -> tuple[bool, bool]:
    """(ours, DVCLive's) answer, asked from inside a function called `name`, two frames further down."""

    def inner() -> tuple[bool, bool]:
        return called_from_sync_point(), _should_sync()

    def middle() -> tuple[bool, bool]:
        return inner()

    namespace: dict = {"middle": middle}
    exec(f"def {name}():\n    return middle()\n", namespace)
    return namespace[name]()


@pytest.mark.parametrize("name", [*sorted(DVCLIVE_SYNC_CALLERS), "update_eval_step_metrics", "log_metrics", "fit"])
def test_the_sync_check_answers_as_dvclive_does(name):
    ours, dvclive = _ask_both_from(name)
    assert ours == dvclive
    assert ours == (name in DVCLIVE_SYNC_CALLERS)


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _tables(out: Path) -> dict[str, Any]:
    """Every metric TSV under `out`, without the timestamp column, and DVCLive's summary (metrics.json)."""
    tables: dict[str, Any] = {}
    if (out / "metrics.json").exists():
        tables["metrics.json"] = json.loads((out / "metrics.json").read_text())
    for path in sorted(out.rglob("*.tsv")):
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        keep = [i for i, col in enumerate(rows[0]) if col != "timestamp"]
        tables[str(path.relative_to(out))] = [[row[i] for i in keep] for row in rows]
    return tables


class _Snapshots(L.Callback):
    """The curves as they stand on disk at the start of every training batch: what a resume store mirror or a
    user's `dvc plots show` sees mid-run. The files are written at sync points only, so this shows when."""

    def __init__(self, out: Path):
        self.out, self.seen = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(_tables(self.out))


def _curves(logger_cls: type, out: Path) -> tuple[dict[str, Any], list]:
    """Fit a tiny regression with `logger_cls`: (every metric TSV it wrote at the end, the snapshots)."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    logger = logger_cls(dir=str(out), resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
    snapshots = _Snapshots(out)
    trainer = L.Trainer(max_epochs=3, logger=logger, log_every_n_steps=2, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                        callbacks=[snapshots])
    trainer.fit(_Regression(), loader, loader)
    return _tables(out), snapshots.seen


def test_curves_logger_writes_the_curves_dvclive_writes_when_dvclive_writes_them(tmp_path):
    ours, ours_during = _curves(CurvesLogger, tmp_path / "ours")
    reference, reference_during = _curves(DVCLiveLogger, tmp_path / "dvclive")
    assert ours == reference
    assert ours_during == reference_during
    assert len({str(s) for s in ours_during}) > 3  # the files grew during the run, not only at its end
    # Train steps, train epochs and validation all reached the files (each is a sync point).
    assert {"plots/metrics/train/loss_step.tsv", "plots/metrics/train/loss_epoch.tsv",
            "plots/metrics/val/loss.tsv"} <= set(ours)
    assert len(ours["plots/metrics/val/loss.tsv"]) == 1 + 3  # header + one row per epoch
