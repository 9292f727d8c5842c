"""Seeds and random streams: seeding a run, and the RNG states a checkpoint carries for a bit-identical resume.

All ranks of a DDP run start from the same seed, so their random streams (z samples, dropout) are the same;
a resumed DDP run restores rank 0's streams on every rank, like a fresh one.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch



def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (and dataloader workers). The thread count is seqsetvae/threads.py's."""
    L.seed_everything(seed, workers=True, verbose=False)


def rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain values only, so a checkpoint holding them loads with weights_only."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(mt), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
