"""How much encoding a batch's sets in groups of similar width saves (seqsetvae.models.setvae.ENCODER_WIDTH_GROUPS).

    python benchmarks/bench_encoder_groups.py                     # P12 fold 0 (prepared as bench_train.py does)
    python benchmarks/bench_encoder_groups.py --processed DIR --batches 60 --groups 1 2 3 4 --threads 2

For each training batch, one pretraining forward + backward per group count, in alternating order, on the same
model: the per-batch speed-up over the first count is a ratio measured seconds apart under the same load, so a
shared, noisy machine still gives a usable figure. Prints the per-batch median (with quartiles) and the ratio of
total times. Asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_train import add_data_arguments, processed_dir  # noqa: E402  (imports nothing heavy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_arguments(ap)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--groups", type=int, nargs="+", default=[1, 2, 3, 4], help="group counts; the first is the base")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    import seqsetvae.models.setvae as setvae
    from seqsetvae.config import load_params
    from seqsetvae.data.datamodule import SetSequenceDataModule
    from seqsetvae.models.pretrain import ModelConfig, SeqSetVAEPretrain
    from seqsetvae.training.rng import seed_everything

    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    processed = processed_dir(args)
    dm = SetSequenceDataModule(processed / "fold_0", params.loader)
    batches = [b for _, b in zip(range(args.batches + 2), dm.train_dataloader())]
    seed_everything(params.pretrain.seed)
    model = SeqSetVAEPretrain(ModelConfig.from_params(params.model, dm.vocab_size), params.pretrain).train()

    def seconds(batch: dict, groups: int) -> float:
        setvae.ENCODER_WIDTH_GROUPS = groups
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model.loss(batch, 0)["loss"].backward()
        return time.perf_counter() - t

    for b in batches[:2]:  # warm-up: allocator, lazy init
        for g in args.groups:
            seconds(b, g)
    times: dict[int, list[float]] = {g: [] for g in args.groups}
    for i, b in enumerate(batches[2:]):
        for g in (args.groups if i % 2 == 0 else reversed(args.groups)):
            times[g].append(seconds(b, g))
    base = args.groups[0]
    print(f"{len(batches) - 2} batches, {args.threads} threads; forward + backward per batch, each group count in turn")
    for g in args.groups:
        ratio = [a / b for a, b in zip(times[base], times[g])]
        q = statistics.quantiles(ratio, n=4)
        print(f"groups {g}: {statistics.median(times[g]) * 1000:.0f} ms per batch (median); speed-up over {base}: "
              f"per-batch median {statistics.median(ratio):.2f} (quartiles {q[0]:.2f}-{q[2]:.2f}), "
              f"total {sum(times[base]) / sum(times[g]):.2f}")


if __name__ == "__main__":
    main()
