"""Print the pipeline's headline metrics (the end of `make demo`): test AUROC / AUPRC per fold with
bootstrap 95 % CIs for SeqSetVAE and the baselines, then mean +- sd over folds from metrics/aggregate.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cell(m: dict, key: str) -> str:
    return f"{m[key]['value']:.3f} [{m[key]['ci_low']:.3f}, {m[key]['ci_high']:.3f}]"


def main() -> int:
    rows = []
    for f in sorted((ROOT / "metrics" / "evaluate").glob("fold_*.json")):
        rows.append(("SeqSetVAE", f.stem, json.loads(f.read_text())))
    for f in sorted((ROOT / "metrics" / "baseline").glob("fold_*.json")):
        m = json.loads(f.read_text())
        rows += [(name, f.stem, m[name]) for name in ("logreg", "gbm") if name in m]
    if not rows:
        print("no metrics yet: run `snakemake --cores 2` or `dvc repro` first", file=sys.stderr)
        return 1
    print(f"{'model':<12} {'fold':<8} {'test AUROC [95% CI]':<26} {'test AUPRC [95% CI]':<26} {'Brier':>7} {'n':>6}")
    for name, fold, m in rows:
        print(f"{name:<12} {fold:<8} {_cell(m, 'auroc'):<26} {_cell(m, 'auprc'):<26} {m['brier']['value']:>7.3f} {m['n']:>6}")
    aggregate = ROOT / "metrics" / "aggregate.json"
    if aggregate.is_file():
        models = json.loads(aggregate.read_text())["models"]
        print("\nmean +- sd over folds (metrics/aggregate.json; full report: reports/report.md)")
        for name, m in models.items():
            print(f"{name:<12} AUROC {m['auroc']['mean']:.3f} +- {m['auroc']['sd']:.3f}   "
                  f"AUPRC {m['auprc']['mean']:.3f} +- {m['auprc']['sd']:.3f}   ({m['n_splits']} fold(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
