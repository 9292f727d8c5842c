"""Both runners, one pipeline: Snakemake and DVC run the same stages from one params.yaml and agree.

Each test runs the real `snakemake` / `dvc` commands in a fresh copy of the project (tests/pipeline_project.py)
on a tiny synthetic cohort.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.pipeline_project import Project

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))
import pipeline  # noqa: E402

pytestmark = pytest.mark.slow


def _all_declared_outputs(proj: Project) -> list[Path]:
    return [proj.root / p for s in pipeline.load_stages(proj.root).values() for p in s.all_outputs]


def _output_bytes(proj: Project) -> dict[str, bytes]:
    """Every metrics / plots / JSON report file the pipeline produced, by relative path."""
    files = {}
    for path in _all_declared_outputs(proj):
        if path.relative_to(proj.root).parts[0] == "curves":
            continue  # DVCLive training curves carry wall-clock timestamps by design
        candidates = [path] if path.is_file() else sorted(path.rglob("*.json"))
        for f in candidates:
            if f.suffix in {".json", ".parquet", ".csv", ".tsv"}:
                files[str(f.relative_to(proj.root))] = f.read_bytes()
    return files


def _downstream(stages, roots: set[str]) -> list[str]:
    """`roots` and every stage that depends on them, transitively."""
    edges = pipeline.edges(stages)
    found = set(roots)
    while True:
        more = {b for a, b in edges if a in found} - found
        if not more:
            return sorted(found)
        found |= more


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory) -> Project:
    proj = Project.create(tmp_path_factory.mktemp("smk") / "proj")
    proj.snakemake()
    return proj


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Project:
    proj = Project.create(tmp_path_factory.mktemp("dvc") / "proj")
    ran = proj.dvc_repro_ran()
    assert ran == sorted(pipeline.load_stages(proj.root)), ran
    return proj


def test_snakemake_run_produces_every_output_and_leaves_dvc_clean(snakemake_project):
    proj = snakemake_project
    missing = [str(p) for p in _all_declared_outputs(proj) if not p.exists()]
    assert not missing, f"declared outputs not produced: {missing}"
    for stage in pipeline.load_stages(proj.root):
        assert (proj.root / "logs" / f"{stage}.log").is_file()
        assert (proj.root / "logs" / f"{stage}.benchmark.tsv").is_file()
    assert (proj.root / "dvc.lock").is_file(), "the Snakemake run did not commit its stages to dvc.lock"
    assert proj.dvc_changed_stages() == []
    assert proj.dvc_repro_ran() == [], "dvc repro re-ran stages after a Snakemake run"


def test_dvc_repro_then_sync_leaves_snakemake_nothing_to_do(dvc_project, snakemake_project):
    proj = dvc_project
    assert all(p.exists() for p in _all_declared_outputs(proj))
    # Same params, same data: both runners produced the same bytes.
    assert _output_bytes(proj) == _output_bytes(snakemake_project)
    proj.sync_after_dvc()
    assert proj.snakemake_planned_rules() == []
    # The sync recorded Snakemake's metadata (params, code) for DVC's outputs, so Snakemake now notices
    # a later params change itself; without it, outputs it never ran have no params to compare.
    stages = pipeline.load_stages(proj.root)
    proj.set_param("finetune.lr", 0.02)
    expected = _downstream(stages, {s for s in stages if s.startswith("finetune@")})
    assert proj.snakemake_planned_rules() == sorted(pipeline.rule_name(s) for s in expected)


def test_dags_are_the_same(snakemake_project):
    proj = snakemake_project
    dot = proj.dvc("dag", "--dot").stdout
    dvc_edges = {(a, b) for a, b in re.findall(r'"?([\w@.-]+)"?\s*->\s*"?([\w@.-]+)"?', dot)}
    smk_dot = proj.snakemake("--forceall", "--rulegraph", "dot").stdout
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"]+)\"", smk_dot, flags=re.M))
    smk_edges = {
        (labels[a], labels[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", smk_dot, flags=re.M)
    }
    smk_edges = {(a, b) for a, b in smk_edges if "all" not in (a, b)}
    stages = pipeline.load_stages(proj.root)
    rule = pipeline.rule_name
    assert {n for n in labels.values() if n != "all"} == {rule(s) for s in stages}
    assert {(rule(a), rule(b)) for a, b in dvc_edges} == smk_edges
    assert smk_edges == {(rule(a), rule(b)) for a, b in pipeline.edges(stages)}


def test_finetune_param_change_reruns_only_finetune_and_what_follows(tmp_path):
    proj = Project.create(tmp_path / "proj")
    proj.snakemake()
    proj.git("add", "-A")
    proj.git("commit", "-qm", "baseline run")
    stages = pipeline.load_stages(proj.root)
    proj.set_param("finetune.lr", 0.01)
    expected = _downstream(stages, {s for s in stages if s.startswith("finetune")})
    assert "pretrain@0" not in expected and "evaluate@0" in expected
    # Snakemake plans exactly those stages; DVC sees exactly those as changed.
    assert proj.snakemake_planned_rules() == sorted(pipeline.rule_name(s) for s in expected)
    # `dvc status` names the stages whose own deps changed; `dvc repro` then reruns what follows them.
    assert proj.dvc_changed_stages() == sorted(s for s in stages if s.startswith("finetune@"))
    diff = proj.dvc("params", "diff").stdout
    assert "finetune.lr" in diff and "0.01" in diff
    before = (proj.root / "metrics" / "finetune" / "fold_0.json").read_text()
    assert proj.dvc_repro_ran() == expected
    after = (proj.root / "metrics" / "finetune" / "fold_0.json").read_text()
    assert before != after, "a 10x learning rate left the finetune metrics unchanged"
    metrics_diff = proj.dvc("metrics", "diff").stdout  # lists only the metrics that moved
    assert "metrics/finetune/fold_0.json" in metrics_diff
    assert "metrics/pretrain/fold_0.json" not in metrics_diff
    # and the Snakemake side agrees once synced
    proj.sync_after_dvc()
    assert proj.snakemake_planned_rules() == []


def test_same_params_twice_give_identical_bytes(tmp_path, snakemake_project):
    proj = Project.create(tmp_path / "proj")
    proj.snakemake()
    assert _output_bytes(proj) == _output_bytes(snakemake_project)


@pytest.mark.parametrize(
    "dotted,value,named",
    [("preprocess.clipp", 3.0, "preprocess.clipp"), ("loader.batch_size", "big", "loader.batch_size")],
)
def test_invalid_params_stop_both_runners_naming_the_key(tmp_path, dotted, value, named):
    proj = Project.create(tmp_path / "proj")
    proj.set_param(dotted, value)
    smk = proj.snakemake(check=False)
    assert smk.returncode != 0
    assert named in smk.stdout + smk.stderr
    dvc = proj.dvc("repro", check=False)
    assert dvc.returncode != 0
    assert named in dvc.stdout + dvc.stderr
    produced = [str(p) for p in _all_declared_outputs(proj) if p.exists()]
    assert not produced, f"a stage produced output despite invalid params: {produced}"


def test_snakemake_report_holds_results_figures_and_metrics(snakemake_project):
    """`snakemake --report` after a run: the results (reports/report.md), every figure the report stage
    drew and every metrics JSON, in their categories; not only the rule graph."""
    import zipfile

    proj = snakemake_project
    proj.snakemake("--report", "report.zip")
    with zipfile.ZipFile(proj.root / "report.zip") as z:
        names = z.namelist()
        html = z.read("report/report.html").decode("utf-8")
        md = [n for n in names if n.endswith("/report.md")]
        assert len(md) == 1 and z.read(md[0]) == (proj.root / "reports" / "report.md").read_bytes()
    figures = sorted(p.name for p in (proj.root / "reports" / "figures").glob("*.png"))
    assert figures and sorted(Path(n).name for n in names if n.endswith(".png")) == figures
    metrics = [p for s in pipeline.load_stages(proj.root).values() for p in s.metrics]
    assert sorted(Path(n).name for n in names if n.endswith(".json")) == sorted(Path(p).name for p in metrics)
    for category in ("1. Results", "2. Figures", "3. Metrics"):
        assert category in html
    assert "metrics/evaluate/fold_0.json" in html
