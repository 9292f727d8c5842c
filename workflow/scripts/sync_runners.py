"""Keep Snakemake and DVC in agreement about what is up to date.

    python workflow/scripts/sync_runners.py after-snakemake [--since EPOCH]
        `dvc commit` the stages whose Snakemake job ran (benchmark file written since EPOCH), so dvc.lock
        records their deps, params and outs and `dvc status` is clean. The Snakefile's onsuccess handler
        does the same in-process (pipeline.dvc_commit) while it still holds DVC's lock; this command is
        for a run whose handler did not get there.

    python workflow/scripts/sync_runners.py after-dvc
        The Snakefile does this itself at start (pipeline.catch_up_with_dvc) when DVC changed the workspace
        and `dvc status` is clean; this is the same step by hand. Checks that DVC sees the workspace as up to
        date, then `snakemake --touch --forceall` marks every output current in Snakemake's metadata
        (mtimes, params, code), so `snakemake -n` has nothing to do and a later params change is noticed.
        (--forceall: without it --touch skips outputs that look up to date and records no metadata.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "workflow"))
import pipeline  # noqa: E402


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True)


def after_snakemake(since: float) -> None:
    """Run by hand (the Snakefile calls pipeline.dvc_commit itself, under the DVC lock it holds)."""
    ran = pipeline.stages_ran_since(ROOT, since)
    if not ran:
        print("sync: no stage ran; dvc.lock unchanged")
        return
    print("+ dvc commit --force", " ".join(ran), flush=True)
    pipeline.dvc_commit(ROOT, ran, lock_held=False)
    print(f"sync: committed {len(ran)} stage(s) to dvc.lock: {', '.join(ran)}")


def after_dvc(cores: int) -> None:
    status = subprocess.run(["dvc", "status", "--quiet"], cwd=ROOT)
    if status.returncode != 0:
        sys.exit("sync: `dvc status` is not clean; run `dvc repro` (or `dvc checkout`) first, then sync")
    _run(["snakemake", "--touch", "--forceall", "--cores", str(cores), "--quiet", "all"])
    print("sync: Snakemake metadata now matches the DVC workspace")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("after-snakemake")
    a.add_argument("--since", type=float, default=0.0)
    b = sub.add_parser("after-dvc")
    b.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.cmd == "after-snakemake":
        after_snakemake(args.since)
    else:
        after_dvc(args.cores)


if __name__ == "__main__":
    main()
