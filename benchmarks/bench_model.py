"""Model throughput: pretraining forward+backward sets/second and peak RSS, default and reference sizes.

Batches are synthetic but shaped like PhysioNet 2012 after length bucketing: 32 patients with about 75
sets each (the P12 mean; a bucket's lengths are close, so padding sets are few), events per set drawn
around the P12 mean of ~5.8 (1..26), E padded to the batch maximum, vocabulary ~40. No assertions: this
prints figures.

    python benchmarks/bench_model.py [--steps 10] [--threads 2] [--only default|reference] [--encoder padded]

`--encoder padded` runs the set encoder's padded reference path (SetEncoder.forward_padded) instead of the
ragged one the model uses, to measure what the ragged path gains on the same machine and load. Per-batch
throughput is printed as min / median / max, because on a shared machine single batches vary a lot.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqsetvae.config import PROJECT_ROOT, load_params  # noqa: E402
from seqsetvae.data.batch import Batch  # noqa: E402
from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain  # noqa: E402
from seqsetvae.models.setvae import SetEncoder  # noqa: E402

VOCAB = 42  # PAD, UNK and ~40 P12 variables


def p12_like_batch(g: torch.Generator, b: int = 32, mean_sets: int = 75, vocab: int = VOCAB) -> Batch:
    """One length-bucketed P12-shaped batch: sets per patient in mean_sets +- 10%, ~5.8 events per set."""
    n_sets = torch.randint(int(mean_sets * 0.9), int(mean_sets * 1.1) + 1, (b,), generator=g)
    s = int(n_sets.max())
    set_mask = torch.arange(s)[None] < n_sets[:, None]
    # events per set: 1 + Poisson(4.8), capped at 26 (P12: mean 5.8, p95 10, max 26)
    n_ev = (1 + torch.poisson(torch.full((b, s), 4.8), generator=g)).clamp(max=26).long()
    e = int(n_ev[set_mask].max())
    event_mask = (torch.arange(e)[None, None] < n_ev[..., None]) & set_mask[..., None]
    codes = torch.randint(2, vocab, (b, s, e), generator=g) * event_mask
    values = torch.randn(b, s, e, generator=g) * event_mask
    times = torch.cumsum(torch.rand(b, s, generator=g) * 1.2, dim=1) * set_mask
    labels = (torch.rand(b, generator=g) < 0.14).float()
    return Batch(codes=codes, values=values, event_mask=event_mask, set_mask=set_mask, set_times=times,
                 labels=labels, subject_id=torch.arange(b))


def reference_arch(model_params):
    """The paper-sized model: latent 256, 4 transformer layers of 8 heads, feed-forward 512."""
    return dataclasses.replace(
        model_params,
        d_model=256,
        latent_dim=256,
        decoder_hidden=512,
        set_encoder=dataclasses.replace(model_params.set_encoder, n_heads=8, n_inducing=16, ff_dim=512),
        transformer=dataclasses.replace(model_params.transformer, n_layers=4, n_heads=8, ff_dim=512),
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name: str, arch, pretrain, steps: int, warmup: int) -> None:
    torch.manual_seed(0)
    model = SeqSetVAEPretrain(ModelConfig.from_params(arch, VOCAB), pretrain)
    opt = torch.optim.AdamW(model.parameters(), lr=pretrain.lr)
    g = torch.Generator().manual_seed(0)
    batches = [p12_like_batch(g) for _ in range(steps + warmup)]
    model.train()
    n_sets, elapsed, rates = 0, 0.0, []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        out = model.loss(batch, step=i)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if i >= warmup:
            dt = time.perf_counter() - t0
            elapsed += dt
            n_sets += int(batch["set_mask"].sum())
            rates.append(int(batch["set_mask"].sum()) / dt)
    n_params = sum(p.numel() for p in model.parameters())
    e_mean = sum(int(b["event_mask"].sum()) for b in batches) / sum(int(b["set_mask"].sum()) for b in batches)
    shape = tuple(batches[-1]["codes"].shape)
    print(f"{name:9s} params {n_params / 1e6:6.2f} M | {n_sets / elapsed:8.0f} sets/s fwd+bwd+step "
          f"(per batch min {min(rates):.0f} / median {statistics.median(rates):.0f} / max {max(rates):.0f}; "
          f"{elapsed / steps * 1000:6.0f} ms/batch, last batch {shape}, {e_mean:.1f} events/set) "
          f"| peak RSS {peak_rss_mib():7.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--only", choices=["default", "reference"])
    ap.add_argument("--encoder", choices=["ragged", "padded"], default="ragged")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.encoder == "padded":
        SetEncoder.forward = SetEncoder.forward_padded  # type: ignore[method-assign]  # this process only
    params = load_params(PROJECT_ROOT / "params.yaml")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.encoder} set encoder")
    if args.only in (None, "default"):
        bench("default", params.model, params.pretrain, args.steps, args.warmup)
    if args.only in (None, "reference"):
        bench("reference", reference_arch(params.model), params.pretrain, args.steps, args.warmup)


if __name__ == "__main__":
    main()
