"""Peak RSS of the frozen finetune's observation-state cache and scaler: before and after finetune.observation_codes.

    python benchmarks/bench_observation_cache.py [--stays N] [--codes V] [--k K] [--mode old|new|both]

Builds a synthetic packed split of N stays over a vocabulary of V codes (Zipf-like code mix, 12 sets of
8 events a stay), then, each mode in a fresh process so that its peak is its own:

- old: what main did before the key: the state over every code, per batch, concatenated (a list and one
  `torch.cat`), then the scaler from a float64 copy of the whole [N, 6 (V - 1)] matrix
  (`x.double().mean(0)`, `.std(0)`);
- new: `choose_observation_codes` (the K codes in the most stays, counted streaming over the split),
  `FeatureCache.build` (the state of those K codes only, float32, preallocated) and
  `SeqSetVAE.set_observation_scaler` (float64 moments streamed over row chunks).

The head reads the observation state only (`finetune.inputs: observation`), so the backbone does not run:
the figures are the observation state's, which is what grows with stays x codes. Prints, per mode, the
process's peak RSS, its RSS before the cache (imports, model, data), their difference, and that difference
per stay.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SETS_PER_STAY, EVENTS_PER_SET = 12, 8


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synthetic_split(n_stays: int, vocab: int, seed: int = 0):
    from seqsetvae.data.packed import PackedSplit

    rng = np.random.default_rng(seed)
    n_sets = n_stays * SETS_PER_STAY
    n_events = n_sets * EVENTS_PER_SET
    # Zipf-like: code c (1-based among the non-PAD codes) has weight 1 / c.
    weights = 1.0 / np.arange(1, vocab)
    codes = rng.choice(np.arange(1, vocab, dtype=np.int32), size=n_events, p=weights / weights.sum())
    return PackedSplit(
        codes=codes.astype(np.int32),
        values=rng.standard_normal(n_events).astype(np.float32),
        set_offsets=np.arange(0, n_events + 1, EVENTS_PER_SET, dtype=np.int64),
        set_times=np.tile(np.linspace(0.5, 47.5, SETS_PER_STAY, dtype=np.float32), n_stays),
        patient_offsets=np.arange(0, n_sets + 1, SETS_PER_STAY, dtype=np.int64),
        subject_ids=np.arange(n_stays, dtype=np.int64),
        labels=(rng.random(n_stays) < 0.15).astype(np.float32),
    )


def run_mode(mode: str, n_stays: int, vocab: int, k: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from seqsetvae.config import params_from_dict, read_yaml, PROJECT_ROOT
    from seqsetvae.data.datamodule import BucketBatchSampler, PatientIndex, SetCollator
    from seqsetvae.models.finetune import SeqSetVAE
    from seqsetvae.models.pretrain import ModelConfig
    from seqsetvae.training.finetune_module import FeatureCache, choose_observation_codes

    torch.set_num_threads(1)
    raw = copy.deepcopy(read_yaml(PROJECT_ROOT / "params.yaml"))
    raw["finetune"].update(inputs="observation", observation_codes=0 if mode == "old" else k)
    raw["ablation"]["run"] = []
    params = params_from_dict(raw)
    model = SeqSetVAE(ModelConfig.from_params(params.model, vocab), params.finetune)
    model.freeze_backbone()
    model.eval()
    split = synthetic_split(n_stays, vocab)
    lp = params.loader
    loader = DataLoader(
        PatientIndex(n_stays),
        batch_sampler=BucketBatchSampler(split.sets_per_patient(), lp.batch_size, lp.bucket_size, False, lp.seed),
        collate_fn=SetCollator(Path("."), lp.max_sets, lp.max_events_per_set, split),
    )
    before = _rss_mib()
    t0 = time.perf_counter()
    if mode == "old":
        with torch.no_grad():
            parts = [model.observation(b).float() for b in loader]
        observation = torch.cat(parts)
        del parts
        x = observation.double()
        mean, scale = x.mean(dim=0), x.std(dim=0).clamp(min=1e-3)
        del x
    else:
        choose_observation_codes(model, split)
        cache = FeatureCache.build(model, loader, torch.device("cpu"))
        observation = cache.observation
        model.set_observation_scaler(observation)
        mean, scale = model.observation_mean, model.observation_scale
    wall = time.perf_counter() - t0
    peak = _rss_mib()
    return {
        "mode": mode, "stays": n_stays, "codes": vocab - 1, "state_columns": int(observation.shape[1]),
        "state_mib": round(observation.numel() * observation.element_size() / 2**20, 1),
        "rss_before_mib": round(before), "peak_rss_mib": round(peak), "added_mib": round(peak - before),
        "added_bytes_per_stay": round((peak - before) * 2**20 / n_stays),
        "wall_s": round(wall, 1), "finite": bool(torch.isfinite(mean).all() and torch.isfinite(scale).all()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stays", type=int, default=10_000)
    ap.add_argument("--codes", type=int, default=2_000, help="vocabulary size V (PAD included)")
    ap.add_argument("--k", type=int, default=128, help="finetune.observation_codes for the new mode")
    ap.add_argument("--mode", choices=["old", "new", "both"], default="both")
    args = ap.parse_args()
    if args.mode != "both":
        print(json.dumps(run_mode(args.mode, args.stays, args.codes, args.k)))
        return
    rows = []
    for mode in ("old", "new"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--stays", str(args.stays), "--codes", str(args.codes),
             "--k", str(args.k)], check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))


if __name__ == "__main__":
    main()
