"""Test AUROC / AUPRC and wall time of the classical baselines on PhysioNet 2012. Prints figures only.

    python benchmarks/bench_baselines.py [INGESTED_DIR] [--no-descriptors]

Without INGESTED_DIR the raw data (params `data.physionet2012.dir`, or SEQSETVAE_PHYSIONET2012_DIR) is
ingested first into a temporary folder, untimed. Then, with the repository's params.yaml otherwise as is:

1. protocol `random` (80/10/10 stratified), folds 0-4: both baselines per fold, per-fold and mean +- sd
   test AUROC / AUPRC (the literature's 5-split protocol);
2. protocol `physionet2012_set_a_test` (train / val from sets b and c, test = set a), fold 0.

--no-descriptors drops the static descriptors (Age, Gender, Height, ICUType, admission Weight) from the
features: the baselines then see only the time series, as SeqSetVAE does (docs/benchmark.md, "Why it
falls short").

Wall time per fold covers features + grid search + test evaluation (bootstrap included), not file IO.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from seqsetvae.config import PROJECT_ROOT, Params, load_params
from seqsetvae.data.canonical import SUBJECT_KEY_COLUMNS, read_ingested, write_ingested
from seqsetvae.data.splits import make_splits
from seqsetvae.baselines import MODELS, fold_features, run_baselines
from seqsetvae.data.summaries import samples_from_labels

RANDOM_FOLDS = [0, 1, 2, 3, 4]


def _ingested(params: Params, given: Path | None, tmp: Path) -> Path:
    if given is not None:
        return given
    from seqsetvae.data.physionet2012 import ingest_physionet2012

    p12 = params.data.physionet2012
    if os.environ.get("SEQSETVAE_PHYSIONET2012_DIR"):
        p12 = dataclasses.replace(p12, dir=os.environ["SEQSETVAE_PHYSIONET2012_DIR"])
    out = tmp / "ingested"
    print("ingesting PhysioNet 2012 (untimed) ...", flush=True)
    write_ingested(out, ingest_physionet2012(p12, PROJECT_ROOT))
    return out


def _protocol(params: Params, tables: tuple, protocol: str, folds: list[int], descriptors: bool) -> None:
    events, subjects, labels = tables
    categorical = params.baseline.categorical_descriptors
    if not descriptors:
        subjects = subjects.select([c for c in subjects.column_names if c in SUBJECT_KEY_COLUMNS])
        categorical = []
    split_params = dataclasses.replace(params.split, protocol=protocol, folds=folds)
    splits, _ = make_splits(subjects, labels, split_params)
    print(f"\nprotocol {protocol}, folds {folds}, {'with' if descriptors else 'without'} static descriptors")
    print(f"{'fold':>4} {'model':>6}  {'AUROC':>6} {'AUPRC':>6}  {'n test':>6} {'pos':>4}  {'wall s':>6}  chosen")
    scores: dict[str, list[tuple[float, float]]] = {m: [] for m in MODELS}
    total = 0.0
    for k in folds:
        t = time.perf_counter()
        features = fold_features(events, subjects, samples_from_labels(subjects, labels), splits, k,
                                 params.preprocess.window_hours, categorical, max_codes=params.baseline.max_codes)
        metrics = run_baselines(features, params.baseline, params.evaluate).metrics
        wall = time.perf_counter() - t
        total += wall
        for m in MODELS:
            r = metrics[m]
            scores[m].append((r["auroc"]["value"], r["auprc"]["value"]))
            wall_text = f"{wall:6.1f}" if m == MODELS[0] else " " * 6  # one time for the fold's two models
            print(f"{k:>4} {m:>6}  {r['auroc']['value']:6.4f} {r['auprc']['value']:6.4f}  {r['n']:>6} "
                  f"{r['positives']:>4}  {wall_text}  {r['hyperparameters']}", flush=True)
    for m in MODELS:
        a = np.asarray(scores[m])
        sd = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(2)
        print(f"mean {m:>6}  AUROC {a[:, 0].mean():.4f} +- {sd[0]:.4f}   AUPRC {a[:, 1].mean():.4f} +- {sd[1]:.4f}")
    print(f"wall: {total:.1f} s for {len(folds)} fold(s), {total / len(folds):.1f} s per fold "
          f"(num_threads {params.baseline.num_threads})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ingested", nargs="?", type=Path, help="an ingested folder (default: ingest the raw data)")
    parser.add_argument("--no-descriptors", action="store_true", help="time-series summaries only")
    args = parser.parse_args()
    params = load_params(PROJECT_ROOT / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="bench_baselines.") as tmp:
        ingested = _ingested(params, args.ingested, Path(tmp))
        tables = read_ingested(ingested)
        print(f"events: {tables[0].num_rows:,}  subjects: {tables[1].num_rows:,}  "
              f"window {params.preprocess.window_hours:g} h")
        _protocol(params, tables, "random", RANDOM_FOLDS, not args.no_descriptors)
        _protocol(params, tables, "physionet2012_set_a_test", [0], not args.no_descriptors)


if __name__ == "__main__":
    main()
