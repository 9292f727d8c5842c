"""Safe checkpoint loading, and the parts of a Lightning checkpoint the project reads.

Every checkpoint is loaded with `torch.load(weights_only=True)`: only tensors and plain containers are
unpickled, so a file carrying a pickled Python object (whose `__reduce__` could run code) is refused
instead of executed. Failures become a `DataError` naming the file: missing, truncated / corrupt, or
refused because of a pickle payload.

What a project checkpoint holds besides Lightning's own keys (`state_dict`, `global_step`, `epoch`,
`loops`, `optimizer_states`, `callbacks`, ...): a `seqsetvae` block written by the LightningModules in
this package,

    seqsetvae.format_version   int
    seqsetvae.kind             "pretrain" | "finetune"
    seqsetvae.architecture     {"model_config": ModelConfig.to_dict()} (backbone + vocabulary size), plus for
                               finetune the head settings and the pretrained file's sha256: rebuilds the model
    seqsetvae.schedule         {"global_step", "beta", "epoch"}: the schedule position, for humans and checks
    seqsetvae.rng              RNG states (torch, python, numpy) for a bit-identical resume
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from seqsetvae.errors import DataError

FORMAT_VERSION = 1
BLOCK = "seqsetvae"
# The LightningModules keep their network under this attribute, so its state-dict keys carry this prefix.
MODEL_PREFIX = "model."


BEST = "best.ckpt"


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint argument: a file, or a training stage's output folder meaning its best checkpoint
    (the pipeline passes the folder, which is what both runners track as the pretrain output)."""
    path = Path(path)
    return path / BEST if path.is_dir() else path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file on the CPU with weights_only=True; DataError naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found" if not path.exists() else "checkpoint path is not a file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refuses any global outside torch's allow-list ("Unsupported global" / "unsupported
        # GLOBAL"): a pickled object, possibly code. Any other unpickling error is a damaged file.
        lines = [line.strip() for line in str(e).splitlines() if "global" in line.lower()]
        if lines:
            raise DataError(
                path, f"refused: the file holds pickled Python objects, not only tensors ({lines[0]}); not loaded"
            ) from None
        raise DataError(path, f"truncated or corrupt checkpoint file (UnpicklingError: {e})") from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
        # torch reports a cut-off zip as OSError / RuntimeError, garbage as KeyError, an empty file as EOFError.
        raise DataError(path, f"truncated or corrupt checkpoint file ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError(path, "not a Lightning checkpoint: no 'state_dict' entry")
    return ckpt


def project_block(ckpt: dict[str, Any], path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """The `seqsetvae` block of a checkpoint, checked for format version and (optionally) kind."""
    block = ckpt.get(BLOCK)
    if not isinstance(block, dict):
        raise DataError(path, f"not a SeqSetVAE checkpoint: no '{BLOCK}' block (written by another program?)")
    if block.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"checkpoint format_version {block.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    if kind is not None and block.get("kind") != kind:
        raise DataError(path, f"is a {block.get('kind')!r} checkpoint, expected a {kind!r} one")
    return block


def model_state_dict(ckpt: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The network's state dict: Lightning's `state_dict` with the LightningModule attribute prefix removed.

    Keys outside the prefix (there should be none) are an error, not silently dropped.
    """
    state = ckpt["state_dict"]
    outside = sorted(k for k in state if not k.startswith(MODEL_PREFIX))
    if outside:
        raise DataError(path, f"{len(outside)} state_dict key(s) outside '{MODEL_PREFIX}', e.g. {outside[0]!r}")
    return {k[len(MODEL_PREFIX) :]: v for k, v in state.items()}
