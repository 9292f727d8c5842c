"""The Snakefile's extras beyond running the DAG: `--config` refused with its own message, a conda env
per rule for `--use-conda` (so `snakemake --lint` has nothing to say), and which outputs the Snakemake
report holds (the report itself is built from a completed run in tests/test_pipeline.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from seqsetvae.config import PROJECT_ROOT
from tests.pipeline_project import Project

sys.path.insert(0, str(PROJECT_ROOT / "workflow"))
import pipeline  # noqa: E402

REFUSAL = "snakemake --config/--configfile overrides are refused: edit params.yaml so DVC sees the same values"


@pytest.mark.slow
@pytest.mark.parametrize("override", ["split={folds: [1]}", "evaluate={n_bootstrap: 5}", "report={dpi: 110}"])
def test_config_overrides_are_refused_before_schema_validation(tmp_path, override):
    """Nested values reach Snakemake's config as strings ('1'); the refusal must come first, not a schema
    type error. The last case equals params.yaml's value except for the type: still an override."""
    proj = Project.create(tmp_path / "proj")
    out = proj.snakemake("-n", "--config", override, check=False)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert REFUSAL in text, text[-3000:]
    assert "ValidationError" not in text and "is not of type" not in text


@pytest.mark.slow
def test_lint_asks_for_no_conda_environment(tmp_path):
    proj = Project.create(tmp_path / "proj")
    out = proj.run("snakemake", "--lint", check=False)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "Specify a conda environment" not in text, text[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in text, text[-3000:]


def _pins(lines: list[str]) -> dict[str, str]:
    """name (lower case) -> pinned version, from requirement lines `name==version`."""
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name.strip().lower()] = version.strip()
    return pins


def test_conda_env_pins_are_those_of_requirements_txt():
    env = yaml.safe_load((PROJECT_ROOT / pipeline.CONDA_ENV).read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    in_env = _pins(pip)
    required = _pins((PROJECT_ROOT / "requirements.txt").read_text().splitlines())
    assert in_env.pop("torch") == required.pop("torch") + "+cpu"  # the CPU wheel of the same version
    assert in_env == required
    assert "python=3.11" in env["dependencies"]
    # The package itself comes from the checkout, installed by the post-deploy script Snakemake runs.
    deploy = PROJECT_ROOT / pipeline.CONDA_ENV.replace(".yaml", ".post-deploy.sh")
    assert "pip install" in deploy.read_text() and "-e ." in deploy.read_text()


def test_report_holds_the_report_figures_and_metrics_only():
    assert pipeline.report_options("reports/report.md")["category"] == "1. Results"
    figures = pipeline.report_options("reports/figures")
    assert figures["category"] == "2. Figures" and figures["patterns"] == ["{name}.png"]
    headline = pipeline.report_options("metrics/aggregate")
    assert headline["category"] == "3. Metrics" and headline["patterns"] == ["{name}.json"]
    assert pipeline.report_options("details/aggregate.json")["category"] == "3. Metrics"
    assert pipeline.report_options("details/label_efficiency.json")["category"] == "3. Metrics"
    assert pipeline.report_options("metrics/baseline/gbm/fold_0.json")["subcategory"] == "baseline/gbm"
    assert pipeline.report_options("metrics/evaluate/fold_3.json")["subcategory"] == "evaluate"
    assert pipeline.report_options("metrics/evaluate/ablation/labels_10/fold_0.json")["subcategory"] == "evaluate/ablation/labels_10"
    for path in ("data/processed", "models/pretrain/fold_0", "predictions/fold_0.parquet",
                 "plots/evaluate/fold_0/roc.csv", "curves/pretrain/fold_0", "details/evaluate/fold_0.json"):
        assert pipeline.report_options(path) is None, path
