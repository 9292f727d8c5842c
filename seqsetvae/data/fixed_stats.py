"""The main task's fold vocabulary and normalisation, reused to pack another task's samples.

The backbone is pretrained once per fold on the main task's processed data (data/processed/fold_<k>). A task
finetuned from it must feed it the same token ids and the same normalised values, so its samples are packed
with the main task's statistics, never with statistics refit on its own windows (docs/preprocess.md
"Tasks"). `FixedStats` reads each fold's vocab.json and norm_stats.json of that folder, rebuilds the
per-code statistics over the codes a task's windows hold (a code outside the main vocabulary is `<unk>`, as
an unseen code in val or test is), and copies the two files byte for byte into the task's output, so the
finetune stage can check that a task's data and the backbone's agree (`check_same_statistics`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqsetvae.config import PreprocessParams
from seqsetvae.data.batch import UNK_CODE
from seqsetvae.errors import DataError

VOCAB_FILE = "vocab.json"  # the names preprocess writes (seqsetvae.data.preprocess VOCAB_FILE, NORM_STATS_FILE)
NORM_STATS_FILE = "norm_stats.json"
FILES = (VOCAB_FILE, NORM_STATS_FILE)


def _fold_dir(root: Path, fold: int) -> Path:
    return Path(root) / f"fold_{fold}"


@dataclass(frozen=True)
class FixedStats:
    root: Path  # a preprocess output folder holding fold_<k>/{vocab.json, norm_stats.json}

    def _read(self, fold: int, name: str) -> dict[str, Any]:
        path = _fold_dir(self.root, fold) / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(path, "missing: the main task's preprocess output has no such fold (run preprocess "
                                  "with the same split table first)") from None
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON: {e.msg}", e.lineno) from None

    def fold_dir(self, fold: int) -> Path:
        """The folder holding the fold's vocab.json and norm_stats.json."""
        return _fold_dir(self.root, fold)

    def describe(self) -> str:
        return str(self.root)

    def check(self, folds: list[int], params: PreprocessParams) -> None:
        """Every fold of the split table is in the main output, made with the same normalisation params."""
        for fold in folds:
            vocab, norm = self._read(fold, VOCAB_FILE), self._read(fold, NORM_STATS_FILE)
            want = {"normalisation": params.normalisation, "clip": params.clip,
                    "log_transform": params.log_transform, "log_auto_min_skew": params.log_auto_min_skew}
            have = {k: norm.get(k) for k in want}
            if vocab.get("min_code_count") != params.min_code_count:
                want["min_code_count"], have["min_code_count"] = params.min_code_count, vocab.get("min_code_count")
            diff = {k: (want[k], have[k]) for k in want if want[k] != have[k]}
            if diff:
                raise DataError(_fold_dir(self.root, fold) / NORM_STATS_FILE,
                                "made with other preprocess params than params.yaml's: " + "; ".join(
                                    f"preprocess.{k} is {w!r} in params, {h!r} there" for k, (w, h) in diff.items())
                                + ". Rerun the main preprocess stage first")

    def fold_stats(self, fold: int, code_names: np.ndarray) -> Any:
        """The fold's statistics indexed by `code_names` (the codes of this task's windows, sorted)."""
        from seqsetvae.data.preprocess import FoldStats

        vocab, norm = self._read(fold, VOCAB_FILE), self._read(fold, NORM_STATS_FILE)
        tokens = list(vocab["tokens"])
        token_id = {t: i for i, t in enumerate(tokens) if i > max(vocab["pad"], vocab["unk"])}
        codes = norm["codes"]
        names = code_names.tolist()
        counts = vocab.get("train_counts", {})
        return FoldStats(
            token_of_code=np.array([token_id.get(n, UNK_CODE) for n in names], dtype=np.int32),
            tokens=tokens,
            train_counts=np.array([int(counts.get(n, 0)) for n in names], dtype=np.int64),
            log1p=np.array([bool(codes[n]["log1p"]) if n in codes else False for n in names], dtype=bool),
            center=np.array([float(codes[n]["center"]) if n in codes else 0.0 for n in names], dtype=np.float64),
            scale=np.array([float(codes[n]["scale"]) if n in codes else 1.0 for n in names], dtype=np.float64),
            n_values=np.array([int(codes[n]["n_values"]) if n in codes else 0 for n in names], dtype=np.int64),
            log_codes_absent=list(norm.get("log_transform_codes_absent", [])),
        )


def check_same_statistics(data_fold: Path, backbone_fold: Path) -> None:
    """DataError unless `data_fold` (a task's processed fold) holds the vocabulary and normalisation of
    `backbone_fold` (the processed fold the backbone was pretrained on), byte for byte: another vocabulary
    would feed the backbone other token ids, other statistics other values, and it would fail silently."""
    for name in FILES:
        a, b = Path(data_fold) / name, Path(backbone_fold) / name
        for p in (a, b):
            if not p.is_file():
                raise DataError(p, "missing: run the preprocess stage that writes it")
        if a.read_bytes() != b.read_bytes():
            raise DataError(a, f"differs from {b}, which the backbone was pretrained with: this task's data was "
                               "packed with other statistics. Pack it with the backbone's (seqsetvae preprocess "
                               f"--stats {Path(backbone_fold).parent}), or pretrain on it")
