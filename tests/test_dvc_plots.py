"""DVC sees the pipeline's outputs as a DVC user expects, whichever runner made them:

- `dvc plots show` draws ROC as fpr / tpr, PR as recall / precision and calibration as predicted /
  observed (x / y declared in dvc.yaml), and reads no Snakemake marker file as plot data;
- Snakemake's `.snakemake_timestamp` (its marker in folder outputs) is in no folder hash, so `dvc.lock`
  and git's view of `curves/` and `plots/` do not change when DVC reruns a stage Snakemake ran.
"""

from __future__ import annotations

import json

import pytest

from tests.pipeline_project import Project

pytestmark = pytest.mark.slow

EXPECTED_AXES = {
    "plots/evaluate/fold_0/roc.csv": ("fpr", "tpr"),
    "plots/evaluate/fold_0/pr.csv": ("recall", "precision"),
    "plots/evaluate/fold_0/calibration.csv": ("predicted", "observed"),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_run) -> Project:
    """A whole Snakemake run on the tiny params, committed to git (a copy of the session's)."""
    return tiny_run.copy_to(tmp_path_factory.mktemp("plots") / "proj")


def _encoding_fields(spec: dict) -> tuple[str, str]:
    """(x field, y field) of a vega-lite spec as DVC renders it (layers or not)."""
    def find(node):
        if isinstance(node, dict):
            enc = node.get("encoding")
            if isinstance(enc, dict) and "x" in enc and "y" in enc:
                return enc["x"].get("field"), enc["y"].get("field")
            for v in node.values():
                if (r := find(v)) is not None:
                    return r
        elif isinstance(node, list):
            for v in node:
                if (r := find(v)) is not None:
                    return r
        return None

    return find(spec)


def test_dvc_plots_show_draws_curves_against_their_axes(ran):
    out = ran.dvc("plots", "show", "--json")
    shown = json.loads(out.stdout)
    assert "failed to load" not in out.stderr.lower() and "snakemake_timestamp" not in out.stdout + out.stderr
    plots = shown.get("data", shown)
    for path, (x, y) in EXPECTED_AXES.items():
        entries = [v for k, v in plots.items() if k.endswith(path)]
        assert entries, f"{path} not among the plots: {sorted(plots)}"
        spec = entries[0][0]["content"]
        assert _encoding_fields(spec) == (x, y), (path, _encoding_fields(spec))
    assert "dvc_plots" in (ran.root / ".gitignore").read_text()


def test_snakemake_marker_is_in_no_folder_hash(ran):
    markers = sorted(ran.root.rglob(".snakemake_timestamp"))
    assert any("curves" in str(m) for m in markers), "expected Snakemake to mark its folder outputs"
    assert not any("plots" in m.parts for m in markers), f"marker files in plot folders: {markers}"
    assert ran.git("status", "--porcelain").stdout == "", "git tracks Snakemake's marker files"
    lock = (ran.root / "dvc.lock").read_text()
    # DVC reruns a stage Snakemake ran: same folder hashes, nothing for git to record.
    ran.dvc("repro", "-f", "-s", "evaluate@0")
    assert (ran.root / "dvc.lock").read_text() == lock
    assert ran.git("status", "--porcelain").stdout == ""
    # Without the markers DVC sees the same folders (curves/ carry wall-clock times, so no rerun there).
    for m in markers:
        m.unlink()
    assert ran.dvc_changed_stages() == []
    ran.dvc("commit", "-f")
    assert (ran.root / "dvc.lock").read_text() == lock
