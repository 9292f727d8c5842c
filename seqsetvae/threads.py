"""How many CPU threads a stage uses: exactly the cores its runner gave it.

`num_threads: auto` in params.yaml (trainer, baseline), and `preprocess.num_workers: auto` (worker processes
of one thread each), resolve, in order, to
- SEQSETVAE_THREADS: set by the Snakefile to the rule's `{threads}`, so `snakemake --cores N` shares the N
  cores among the jobs it runs at once without oversubscribing them;
- SLURM_CPUS_PER_TASK: the CPUs of a SLURM job step;
- otherwise every core this process may run on (os.sched_getaffinity): `dvc repro` runs one stage at a
  time, and a stage run by hand has the machine.
A positive integer is used as given; 0 is the same as `auto`.

Why it matters: on the 2-core box two threads trained 1.6-2.1x faster than one when nothing else ran, and two
jobs of two threads each on two cores ran 4-7x slower (oversubscription). Results can depend on the thread
count (floating-point reductions split differently), so stages record the count they used.
"""

from __future__ import annotations

import os

THREADS_ENV = "SEQSETVAE_THREADS"


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
