"""Pretraining throughput on the PhysioNet 2012 training split: sets/s, estimated epoch time, peak RSS.

    python benchmarks/bench_train.py                        # prepare P12 (untimed, cached), both sizes
    python benchmarks/bench_train.py --processed DIR        # a preprocess output folder (fold_0/ inside)
    python benchmarks/bench_train.py --size reference --batches 20
    python benchmarks/bench_train.py --size default --threads 1 2   # each thread count, and the speed-up

For each model size it times `--batches` training steps (batch from the loader + forward + backward +
optimiser step: what one epoch repeats) after `--warmup` untimed steps, counts the real sets they held,
and extrapolates to the whole training split (after loader truncation). Each size (and each thread count of
`--threads`, passed as SEQSETVAE_THREADS, what `trainer.num_threads: auto` reads) runs in its own process
so its peak RSS and thread pool are its own; the speed-up of each count over the first is printed as a ratio
measured in the same run. Sizes: `default` = params.yaml; `reference` = the paper-sized model (d_model
256, latent 256, transformer 4 layers x 8 heads, feed-forward 512). Prints figures; asserts nothing.
Targets on 2 CPU cores: default >= ~2,300 sets/s (a ~700,000-set epoch in <= 5 min), peak RSS <= 4 GB;
reference >= 260 sets/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seqsetvae.threads import THREADS_ENV  # noqa: E402  (a module of its own: imports nothing heavy)

REFERENCE = {"d_model": 256, "latent_dim": 256, "transformer": {"n_layers": 4, "n_heads": 8, "ff_dim": 512}}


def prepare(params_path: Path, p12_dir: Path, work: Path) -> Path:
    """ingest + split + preprocess the real data into work/processed (untimed; reused when present)."""
    from seqsetvae.config import load_params
    from seqsetvae.data.canonical import write_ingested
    from seqsetvae.data.preprocess import preprocess
    from seqsetvae.data.splits import make_splits
    from seqsetvae.stages.ingest import ingest

    processed = work / "processed"
    if (processed / "fold_0").is_dir():
        return processed
    params = load_params(params_path, overrides={
        "data": {"source": "physionet2012", "physionet2012": {"dir": str(p12_dir), "download": False}},
        "split": {"folds": [0]},
    })
    t0 = time.perf_counter()
    result = ingest(params)
    write_ingested(work / "ingested", result)
    splits, _ = make_splits(result.subjects, result.labels, params.split)
    preprocess(result.events, result.subjects, result.labels, splits, params.preprocess, processed)
    print(f"prepared {processed} in {time.perf_counter() - t0:.0f} s (untimed)", flush=True)
    return processed


def measure(params_path: Path, processed: Path, size: str, batches: int, warmup: int) -> dict:
    import torch

    from seqsetvae.config import load_params
    from seqsetvae.data.datamodule import SetSequenceDataModule, kept_sets
    from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
    from seqsetvae.threads import use_torch_threads
    from seqsetvae.training.rng import seed_everything

    params = load_params(params_path, overrides={"model": copy.deepcopy(REFERENCE)} if size == "reference" else None)
    seed_everything(params.pretrain.seed)
    use_torch_threads(params.trainer.num_threads)
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    train = dm.split("train")
    epoch_sets = int(kept_sets(train, params.loader.max_sets).sum())
    model = SeqSetVAEPretrain(ModelConfig.from_params(params.model, dm.vocab_size), params.pretrain).train()
    opt = torch.optim.AdamW(model.parameters(), lr=params.pretrain.lr, weight_decay=params.pretrain.weight_decay)
    it = iter(dm.train_dataloader())
    n_sets = 0
    t0 = 0.0
    for i in range(warmup + batches):
        if i == warmup:
            t0 = time.perf_counter()
        batch = next(it)
        loss = model.loss(batch, i)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if params.pretrain.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), params.pretrain.grad_clip_norm)
        opt.step()
        if i >= warmup:
            n_sets += int(batch["set_mask"].sum())
    elapsed = time.perf_counter() - t0
    rate = n_sets / elapsed
    return {
        "size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "batch_size": params.loader.batch_size,
        "batches_timed": batches,
        "sets_timed": n_sets,
        "seconds": round(elapsed, 2),
        "sets_per_s": round(rate, 1),
        "train_stays": train.n_patients,
        "epoch_sets": epoch_sets,
        "est_epoch_s": round(epoch_sets / rate, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def add_data_arguments(ap: argparse.ArgumentParser) -> None:
    """--params, and where the P12 training data comes from (`processed_dir` reads them)."""
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--processed", type=Path, default=None, help="preprocess output (default: prepare P12)")
    ap.add_argument("--p12", type=Path, default=ROOT.parent / "shared" / "data" / "physionet2012")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "p12")


def processed_dir(args: argparse.Namespace) -> Path:
    """--processed, or P12 prepared into --work (untimed, cached)."""
    return args.processed or prepare(args.params, args.p12, args.work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(ap)
    ap.add_argument("--size", choices=["default", "reference", "both"], default="both")
    ap.add_argument("--batches", type=int, default=40, help="timed training steps per size")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, lazy init)")
    ap.add_argument("--threads", type=int, nargs="+", default=None, metavar="T",
                    help="run each size once per thread count T (its own process) and print the speed-up over "
                         "the first count (default: the count trainer.num_threads resolves to)")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by the parent process)")
    args = ap.parse_args()
    if args.threads is not None and any(t < 1 for t in args.threads):
        ap.error("--threads: counts must be positive integers")

    processed = processed_dir(args)
    if args.json or (args.size != "both" and args.threads is None):
        r = measure(args.params, processed, args.size, args.batches, args.warmup)
        print(json.dumps(r) if args.json else r, flush=True)
        return
    targets = {"default": 2300.0, "reference": 260.0}
    sizes = ("default", "reference") if args.size == "both" else (args.size,)
    for size in sizes:
        first_rate = None
        for threads in args.threads or [None]:
            env = dict(os.environ)
            if threads is not None:
                env[THREADS_ENV] = str(threads)
            cmd = [sys.executable, __file__, "--params", str(args.params), "--processed", str(processed), "--size",
                   size, "--batches", str(args.batches), "--warmup", str(args.warmup), "--json"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            r = json.loads(out.strip().splitlines()[-1])
            first_rate = first_rate or r["sets_per_s"]
            speedup = f"  {r['sets_per_s'] / first_rate:.2f}x the first count" if args.threads else ""
            print(
                f"{size:9s} {r['parameters']:>9,d} params  {r['sets_per_s']:>8.1f} sets/s (target >= {targets[size]:.0f}) "
                f" est. epoch {r['est_epoch_s'] / 60:5.1f} min for {r['epoch_sets']:,d} sets / {r['train_stays']:,d} stays"
                f"  peak RSS {r['peak_rss_mb'] / 1024:.2f} GB  [{r['batches_timed']} batches of {r['batch_size']}, "
                f"{r['threads']} threads, {r['seconds']} s]{speedup}",
                flush=True,
            )


if __name__ == "__main__":
    main()
