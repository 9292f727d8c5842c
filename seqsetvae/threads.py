"""How many CPU threads a stage uses: exactly the cores its runner gave it. The one home of that decision.

Who decides what:
- the runner's request: each stage's `meta.snakemake.threads` in dvc.yaml (beside its memory), which
  workflow/pipeline.py reads for the Snakefile's `threads:` and the SLURM profile turns into cpus_per_task;
  `dvc repro` requests nothing: it runs one stage at a time, which has the machine;
- how the runner hands its count to the stage: `SNAKEMAKE_EXPORT` below, the prefix of every Snakemake job's
  shell command (the Snakefile uses it as is);
- how the stage turns a params value into a count (`resolve_num_threads`) and applies it to torch
  (`use_torch_threads`, called by the training stages; the baselines limit OpenMP / BLAS with the count).

`num_threads: auto` in params.yaml (trainer, baseline) resolves, in order, to
- SEQSETVAE_THREADS: set by the Snakefile to the rule's `{threads}`, so `snakemake --cores N` shares the N
  cores among the jobs it runs at once without oversubscribing them;
- SLURM_CPUS_PER_TASK: the CPUs of a SLURM job step;
- otherwise every core this process may run on (os.sched_getaffinity): `dvc repro` runs one stage at a
  time, and a stage run by hand has the machine.
A positive integer is used as given; 0 is the same as `auto`.

Why it matters: more threads than cores across the jobs running at once (oversubscription) makes every job
several times slower (figures: docs/benchmark.md, "Speed figures behind code choices"). Results can depend on
the thread count (floating-point reductions split differently), so stages record the count they used.
"""

from __future__ import annotations

import os

THREADS_ENV = "SEQSETVAE_THREADS"

# The start of a Snakemake job's shell command: the rule's `{threads}` (Snakemake's placeholder, min(the
# stage's meta.snakemake.threads, --cores)) exported for `auto` to read.
SNAKEMAKE_EXPORT = f"export {THREADS_ENV}={{threads}}; "


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"environment variable {name}={raw!r}: expected a positive integer")
    return int(raw)


def resolve_num_threads(value: int | str) -> int:
    """The thread count for a params value (`auto`, 0, or a positive integer)."""
    if isinstance(value, int) and value > 0:
        return value
    for env in (THREADS_ENV, "SLURM_CPUS_PER_TASK"):
        if (n := _positive_int(env)) is not None:
            return n
    return available_cores()


def use_torch_threads(value: int | str) -> int:
    """Set torch's intra-op CPU threads from a params value (trainer.num_threads); returns the count used."""
    import torch  # here, not at the top: preprocess and the baselines import this module without torch

    n = resolve_num_threads(value)
    torch.set_num_threads(n)
    return n
