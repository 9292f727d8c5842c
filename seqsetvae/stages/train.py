"""Standalone training: `seqsetvae train --mode pretrain|finetune`, outside the pipeline.

The same code path as the `pretrain` and `finetune` stages, with the pipeline's paths as defaults:

    models/<mode>/fold_<K>/{best,last}.ckpt   metrics/<mode>/fold_<K>.json   details/<mode>/fold_<K>.json
    curves/<mode>/fold_<K>/
    predictions/fold_<K>.parquet (finetune)    pretrained checkpoint: models/pretrain/fold_<K>/best.ckpt

`--batch-size` and `--max-epochs` override params.yaml (loader.batch_size, <mode>.max_epochs) for this run
only; nothing is written back to params.yaml. As in the stages, an existing `<out>/last.ckpt` is resumed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seqsetvae.config import Params
from seqsetvae.stages.finetune import finetune
from seqsetvae.stages.pretrain import pretrain

MODES = ("pretrain", "finetune")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", required=True, choices=MODES, help="which training to run")
    parser.add_argument("--data", type=Path, default=Path("data/processed"), help="preprocess output (default: %(default)s)")
    parser.add_argument("--fold", type=int, default=0, help="fold number K (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint folder (default: models/<mode>/fold_<K>)")
    parser.add_argument("--pretrained-ckpt", type=Path, default=None,
                        help="finetune only: pretrain checkpoint (default: models/pretrain/fold_<K>/best.ckpt)")
    parser.add_argument("--batch-size", type=int, default=None, help="override loader.batch_size for this run")
    parser.add_argument("--max-epochs", type=int, default=None, help="override <mode>.max_epochs for this run")
    parser.add_argument("--metrics", type=Path, default=None, help="metrics JSON (default: metrics/<mode>/fold_<K>.json)")
    parser.add_argument("--details", type=Path, default=None, help="details JSON (default: details/<mode>/fold_<K>.json)")
    parser.add_argument("--curves", type=Path, default=None, help="DVCLive folder (default: curves/<mode>/fold_<K>)")
    parser.add_argument("--predictions", type=Path, default=None,
                        help="finetune only: test predictions (default: predictions/fold_<K>.parquet)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Params overrides for this run; merged before validation, so a bad value names its params key."""
    out: dict[str, Any] = {}
    if args.batch_size is not None:
        out["loader"] = {"batch_size": args.batch_size}
    if args.max_epochs is not None:
        out[args.mode] = {"max_epochs": args.max_epochs}
    return out


def run(params: Params, args: argparse.Namespace) -> None:
    mode, k = args.mode, args.fold
    if mode == "pretrain" and (args.pretrained_ckpt is not None or args.predictions is not None):
        # A usage error, reported like argparse's own (exit code 2).
        print("seqsetvae train: error: --pretrained-ckpt and --predictions apply to --mode finetune only", file=sys.stderr)
        raise SystemExit(2)
    out = args.out or Path("models") / mode / f"fold_{k}"
    metrics = args.metrics or Path("metrics") / mode / f"fold_{k}.json"
    details = args.details or Path("details") / mode / f"fold_{k}.json"
    curves = args.curves or Path("curves") / mode / f"fold_{k}"
    if mode == "pretrain":
        pretrain(params, args.data, k, out, metrics, curves, details)
    else:
        pretrained = args.pretrained_ckpt or Path("models") / "pretrain" / f"fold_{k}" / "best.ckpt"
        predictions = args.predictions or Path("predictions") / f"fold_{k}.parquet"
        finetune(params, args.data, k, pretrained, out, metrics, curves, predictions, details=details)
