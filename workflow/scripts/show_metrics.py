"""Print the pipeline's headline metrics (the end of `make demo`): test AUROC / AUPRC per fold, with CIs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    files = sorted((ROOT / "metrics" / "evaluate").glob("*.json"))
    if not files:
        print("no metrics yet: run `snakemake --cores 2` or `dvc repro` first", file=sys.stderr)
        return 1
    print(f"{'model':<12} {'fold':<8} {'AUROC [95% CI]':<28} {'AUPRC [95% CI]':<28} {'Brier':>7} {'n':>6}")
    for f in files:
        m = json.loads(f.read_text())
        cell = lambda k: f"{m[k]['value']:.3f} [{m[k]['ci_low']:.3f}, {m[k]['ci_high']:.3f}]"  # noqa: E731
        print(f"{m.get('model', '?'):<12} {f.stem:<8} {cell('auroc'):<28} {cell('auprc'):<28} "
              f"{m['brier']['value']:>7.3f} {m['n']:>6}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
