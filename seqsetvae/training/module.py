"""What every project LightningModule shares: the `seqsetvae` block it writes into (and reads back from)
its checkpoints (see checkpoints.py). Moving a batch to a device lives beside the batch type (data/batch.py)."""

from __future__ import annotations

from typing import Any

import lightning as L

from seqsetvae.training.checkpoints import BLOCK, FORMAT_VERSION
from seqsetvae.training.rng import rng_state, set_rng_state


class ProjectModule(L.LightningModule):
    """Base of PretrainModule and FinetuneModule: the `seqsetvae` checkpoint block (see checkpoints.py).

    Subclasses set `kind`, keep their network in `self.model` (state-dict prefix "model.") and its
    ModelConfig in `self.cfg`, and may add to the schedule via `schedule_state()`.
    """

    kind: str
    run_fingerprint: str = ""  # set by the stage (fingerprint.run_fingerprint()); stored in every checkpoint

    def architecture(self) -> dict[str, Any]:
        """What the network's shape depends on; stored in checkpoints, must match for a resume."""
        return {"model_config": self.cfg.to_dict()}

    def schedule_state(self) -> dict[str, Any]:
        return {"global_step": int(self.global_step), "epoch": int(self.current_epoch)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[BLOCK] = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "architecture": self.architecture(),
            "schedule": self.schedule_state(),
            "fingerprint": self.run_fingerprint,
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called on resume (trainer.fit(ckpt_path=...)): continue the random streams where they stopped, so
        # dropout masks and z samples after a resume are those the uninterrupted run would have drawn.
        block = checkpoint.get(BLOCK)
        if isinstance(block, dict) and "rng" in block:
            set_rng_state(block["rng"])
